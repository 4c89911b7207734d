"""Tables over all variants of one eval, and the flat per-variant metrics files DVC shows.

The eval stages write one JSON per SAE; the figures stage (``notebooks/07_figures.py``) gathers them
here into one summary table per eval (``results/<profile>/tables/<eval>_summary.csv``) and one small
``results/<profile>/metrics/<variant>.json`` per variant with flat headline keys, so that
``dvc metrics show`` prints a readable table (one row per variant) and ``dvc metrics diff`` compares
runs.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from .io import atomic_write_json
from .results import Results, read_absorption, read_probing, read_scr, read_unlearning

SUMMARY_COLUMNS = {
    "absorption": ("mean_absorption_score", "mean_absorption_fraction_score", "mean_full_absorption_score",
                   "mean_num_split_features", "mean_num_split_features_legacy", "n_letters_legacy",
                   "n_letters_current", "current_valid", "prompt_accuracy", "l0_on_test_prompts", "seconds_total"),
    "scr": tuple(f"scr_metric_threshold_{n}" for n in (2, 5, 10, 20, 50, 100, 500))
    + tuple(f"tpp_threshold_{n}_total_metric" for n in (2, 5, 10, 20, 50, 100, 500)),
    "probing": ("sae_top_1_test_accuracy", "llm_top_1_test_accuracy", "sae_top_5_test_accuracy",
                "llm_top_5_test_accuracy", "sae_top_20_test_accuracy", "llm_top_20_test_accuracy",
                "sae_test_accuracy", "llm_test_accuracy"),
    "unlearning": ("unlearning_score",),
    "sae_probes": tuple(f"sae_top_{k}_test_{m}" for k in (1, 2, 5) for m in ("accuracy", "auc"))
    + ("llm_test_accuracy", "llm_test_auc"),
}
"""Columns of each eval's summary table (those present in the results; others are left out)."""

METRIC_KEYS = ("l0", "mse", "ev", "cossim", "kl_score", "ce_score", "frac_alive",
               "mean_absorption_score", "mean_absorption_fraction_score", "mean_full_absorption_score",
               "scr_metric_threshold_2", "scr_metric_threshold_20", "tpp_threshold_2_total_metric",
               "tpp_threshold_20_total_metric", "sae_top_1_test_accuracy", "sae_top_5_test_accuracy",
               "sae_test_accuracy", "unlearning_score")
"""Headline keys of ``results/<profile>/metrics/<variant>.json`` (the ones a variant has)."""


def _read(eval_name: str, folder: Path, variant: str) -> dict | None:
    path = folder / eval_name / f"{variant}.json"
    if not path.exists():
        return None
    if eval_name == "absorption":
        return read_absorption(path)
    if eval_name == "scr":
        out = dict(read_scr(path))
        tpp = folder / "scr" / f"{variant}_tpp.json"
        if tpp.exists():
            out.update(read_scr(tpp))
        return out
    if eval_name in ("probing", "sae_probes"):  # same eval_result_metrics layout ({llm: ..., sae: ...})
        return read_probing(path)[0]
    return read_unlearning(path)


def eval_summary(results_dir: str | Path, eval_name: str, variants: Iterable[str]) -> pd.DataFrame:
    """One row per variant that has a result of ``eval_name``; :data:`SUMMARY_COLUMNS` that exist."""
    if eval_name not in SUMMARY_COLUMNS:
        raise ValueError(f"no summary table for eval {eval_name!r}; known: {', '.join(SUMMARY_COLUMNS)}")
    rows = {}
    for v in variants:
        doc = _read(eval_name, Path(results_dir), v)
        if doc is not None:
            rows[v] = doc
    table = pd.DataFrame.from_dict(rows, orient="index")
    cols = [c for c in SUMMARY_COLUMNS[eval_name] if c in table.columns]
    return table[cols].rename_axis("variant")


def variant_metrics(results: Results, keys: Iterable[str] = METRIC_KEYS) -> dict[str, dict[str, float]]:
    """Variant → its finite values of ``keys`` (single runs, no seed pooling), in ``keys`` order."""
    keys = [k for k in keys if k in results.wide.columns]
    out = {}
    for v in results.variants:
        row = {k: float(results.wide.at[v, k]) for k in keys}
        out[v] = {k: x for k, x in row.items() if math.isfinite(x)}
    return out


def write_variant_metrics(results: Results, folder: str | Path, keys: Iterable[str] = METRIC_KEYS) -> list[Path]:
    """Write ``folder/<variant>.json`` (flat ``{key: value}``) for every variant of ``results``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [atomic_write_json(folder / f"{v}.json", m) for v, m in variant_metrics(results, keys).items()]


def sweep_plot_tables(sweep: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``figures.sweep_table`` → one wide table per (penalty, reading): ``lam_mult``, ``log10_lam_mult`` and
    one column per metric (seed means), sorted by λ: the λ-sweep plots of ``dvc plots show``."""
    out = {}
    for (kind, reading), g in sweep.groupby(["penalty", "reading"]):
        wide = g.pivot_table(index="lam_mult", columns="metric", values="mean").reset_index().sort_values("lam_mult")
        wide.insert(1, "log10_lam_mult", [math.log10(x) for x in wide["lam_mult"]])
        wide.columns.name = None
        out[f"{kind}_{reading}"] = wide
    return out
