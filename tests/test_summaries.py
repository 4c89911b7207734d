"""Per-eval summary tables, flat per-variant metrics (`dvc metrics show`) and the λ-sweep plot tables."""
import json
import math

import pandas as pd
import pytest
from test_figures import write_synthetic_results  # the results tree the eval stages write

from saelib import figures, summaries
from saelib.results import load_results, read_absorption, read_probing


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    folder = tmp_path_factory.mktemp("res") / "results" / "smoke"
    names = write_synthetic_results(folder, profile="smoke")
    return folder, names


def test_eval_summaries_have_one_row_per_variant_with_the_files_values(tree):
    folder, names = tree
    absorption = summaries.eval_summary(folder, "absorption", names + ["never_run"])
    assert "never_run" not in absorption.index and len(absorption) > 0
    v = absorption.index[0]
    assert absorption.loc[v, "mean_absorption_score"] == read_absorption(folder / "absorption" / f"{v}.json")["mean_absorption_score"]
    probing = summaries.eval_summary(folder, "probing", names)
    assert probing.loc[v, "sae_top_1_test_accuracy"] == read_probing(folder / "probing" / f"{v}.json")[0]["sae_top_1_test_accuracy"]
    with pytest.raises(ValueError, match="no summary table"):
        summaries.eval_summary(folder, "core", names)


def test_variant_metrics_are_flat_finite_and_match_the_results(tree, tmp_path):
    folder, names = tree
    results = load_results(folder, variants=names, profile="smoke")
    written = summaries.write_variant_metrics(results, tmp_path / "metrics")
    assert sorted(p.stem for p in written) == sorted(results.variants)
    for path in written:
        doc = json.loads(path.read_text())
        assert doc and all(isinstance(x, float) and math.isfinite(x) for x in doc.values())
        assert list(doc) == [k for k in summaries.METRIC_KEYS if k in doc]  # the documented order
        for k, x in doc.items():
            assert x == results.value(path.stem, k)


def test_sweep_plot_tables_are_sorted_wide_tables_per_penalty_and_reading(tree):
    folder, names = tree
    sweep = figures.sweep_table(load_results(folder, variants=names, profile="smoke"))
    tables = summaries.sweep_plot_tables(sweep)
    assert set(tables) == {f"{k}_{r}" for k, r in sweep[["penalty", "reading"]].drop_duplicates().itertuples(index=False)}
    for stem, wide in tables.items():
        kind, reading = stem.split("_", 1)
        part = sweep[(sweep["penalty"] == kind) & (sweep["reading"] == reading)]
        assert list(wide["lam_mult"]) == sorted(part["lam_mult"].unique())
        row = part.iloc[0]
        got = wide.loc[wide["lam_mult"] == row["lam_mult"], row["metric"]].item()
        assert got == pytest.approx(part[(part["lam_mult"] == row["lam_mult"]) & (part["metric"] == row["metric"])]["mean"].mean())
        assert wide["log10_lam_mult"].tolist() == pytest.approx([math.log10(x) for x in wide["lam_mult"]])
    assert summaries.sweep_plot_tables(pd.DataFrame(columns=sweep.columns)) == {}
