"""Results loading, seed statistics, figures, tables, ledger and README block on a synthetic results/
folder shaped exactly like the eval stages' output (core, absorption, scr + tpp, probing, unlearning).

The synthetic numbers have a known structure (see ``TRUTH``), so the verdicts and intervals can be
checked by hand: CompeteSAE run 6 has *higher* absorption than its no-penalty twin (→ contradicted),
orthogonality run 4 lower than TopK (→ supported), absorption falls with λ over ortho runs 1–4.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from scipy import stats  # noqa: E402

from saelib import claims, figures  # noqa: E402
from saelib.results import diff_ci, load_results, mean_ci, pooled_sd, seed_base  # noqa: E402
from scripts_module import load_script  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEED_SD = {"mean_absorption_score": 0.001, "mse": 1.0, "kl_score": 0.002, "scr_metric_threshold_2": 0.005,
           "sae_top_1_test_accuracy": 0.004}
"""Synthetic run-to-run spread: seed s of a group is base + (s − 1)·SD (s = 0, 1, 2)."""

# variant: (k, penalty (kind, reading, lam, ramp) or None, {metric: base value})
TRUTH = {
    "topk": (9, None, {"mean_absorption_score": 0.020, "mse": 100.0, "kl_score": 0.95, "scr_metric_threshold_2": 0.10,
                       "sae_top_1_test_accuracy": 0.70}),
    "topk_k100": (3, None, {"mean_absorption_score": 0.040, "mse": 200.0, "kl_score": 0.90,
                            "scr_metric_threshold_2": 0.08, "sae_top_1_test_accuracy": 0.65}),
    "relu_l1": (None, None, {"mean_absorption_score": 0.005, "mse": 10.0, "kl_score": 0.99, "scr_metric_threshold_2": 0.02,
                             "sae_top_1_test_accuracy": 0.60}),
    "compete_run6": (3, ("competition", "as_run", 0.01, 400), {"mean_absorption_score": 0.050, "mse": 210.0,
                                                              "kl_score": 0.89, "scr_metric_threshold_2": 0.09,
                                                              "sae_top_1_test_accuracy": 0.66}),
    "compete_no_warmup": (3, ("competition", "as_run", 0.01, 0), {"mean_absorption_score": 0.060, "mse": 205.0,
                                                                 "kl_score": 0.89, "scr_metric_threshold_2": 0.085,
                                                                 "sae_top_1_test_accuracy": 0.66}),
    "sweep_compete_run_x1e2": (3, ("competition", "as_run", 1.0, 400), {"mean_absorption_score": 0.045, "mse": 220.0,
                                                                       "kl_score": 0.88, "scr_metric_threshold_2": 0.09,
                                                                       "sae_top_1_test_accuracy": 0.64}),
    "sweep_compete_run_x1e4": (3, ("competition", "as_run", 100.0, 400), {"mean_absorption_score": 0.030, "mse": 400.0,
                                                                         "kl_score": 0.70, "scr_metric_threshold_2": 0.05,
                                                                         "sae_top_1_test_accuracy": 0.60}),
    "ortho_run4": (9, ("orthogonality", "as_run", 0.075, 0), {"mean_absorption_score": 0.010, "mse": 101.0,
                                                             "kl_score": 0.95, "scr_metric_threshold_2": 0.12,
                                                             "sae_top_1_test_accuracy": 0.72}),
    "ortho_run1": (9, ("orthogonality", "as_run", 0.01, 0), {"mean_absorption_score": 0.030, "mse": 100.0,
                                                            "kl_score": 0.95, "scr_metric_threshold_2": 0.11,
                                                            "sae_top_1_test_accuracy": 0.71}),
    "ortho_run3": (9, ("orthogonality", "as_run", 0.05, 0), {"mean_absorption_score": 0.020, "mse": 100.5,
                                                            "kl_score": 0.95, "scr_metric_threshold_2": 0.115,
                                                            "sae_top_1_test_accuracy": 0.71}),
    "ortho_run2": (9, ("orthogonality", "as_run", 0.1, 0), {"mean_absorption_score": 0.015, "mse": 102.0,
                                                           "kl_score": 0.95, "scr_metric_threshold_2": 0.13,
                                                           "sae_top_1_test_accuracy": 0.73}),
    "ortho_described": (9, ("orthogonality", "as_described", 0.075, 200), {"mean_absorption_score": 0.021, "mse": 100.0,
                                                                           "kl_score": 0.95, "scr_metric_threshold_2": 0.10,
                                                                           "sae_top_1_test_accuracy": 0.70}),
    "sweep_ortho_desc_x1e-2": (9, ("orthogonality", "as_described", 0.00075, 200),
                               {"mean_absorption_score": 0.020, "mse": 100.0, "kl_score": 0.95,
                                "scr_metric_threshold_2": 0.10, "sae_top_1_test_accuracy": 0.70}),
}
SEEDED = ("topk", "compete_run6", "ortho_run4")
"""Groups written with three seeds (<name>, <name>_s1, <name>_s2)."""


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def write_synthetic_results(results: Path, profile: str = "smoke") -> list[str]:
    """Write a results/ tree like the eval stages do; returns the variant names written."""
    names = []
    for base, (k, pen, vals) in TRUTH.items():
        for s in (range(3) if base in SEEDED else [1]):
            name = base if s == 1 else f"{base}_s{1 if s == 0 else 2}"  # _s1 = base − SD, _s2 = base + SD
            off = {m: (s - 1) * SEED_SD.get(m, 0.0) for m in vals}
            v = {m: x + off[m] for m, x in vals.items()}
            names.append(name)
            pen_cfg = None if pen is None else {"kind": pen[0], "reading": pen[1], "lam": pen[2], "ramp_steps": pen[3],
                                                "tau": 0.6 if pen[0] == "competition" else None}
            _write(results / "core" / f"{name}.json", {
                "variant": name, "profile": profile, "model": "gemma-3-270m", "layer": 8,
                "arch": "relu" if k is None else "topk",
                "sae_cfg": {"d_in": 64, "d_sae": 512, "k": k, "seed": 42 if s == 1 else s},
                "penalty_cfg": pen_cfg, "params_entry": {"arch": "topk"}, "train_tokens": 32768,
                "train_wall_time_s": 10.0 * (1.1 if pen else 1.0), "l0": float(k or 300), "l1": 5.0,
                "mse": v["mse"], "mse_legacy": v["mse"] * 64, "ev": 1 - v["mse"] / 2000, "ev_legacy": 1 - v["mse"] / 1900,
                "cossim": 1 - v["mse"] / 20000, "kl_score": v["kl_score"], "ce_score": v["kl_score"] - 0.01,
                "frac_alive": 0.99, "log_density_hist": [1.0, 2.0]})
            letters = [{"letter": c, "absorption_rate": v["mean_absorption_score"] * (1 + i / 10), "legacy_included": True,
                        "num_split_features": 1} for i, c in enumerate("abc")]
            _write(results / "absorption" / f"{name}.json", {
                "eval_type_id": "absorption_first_letter", "variant": name, "lower_is_better": True, "profile": profile,
                "eval_result_metrics": {"mean": {"mean_absorption_score": v["mean_absorption_score"]}},
                "summary": {"mean_absorption_score": v["mean_absorption_score"],
                            "mean_absorption_fraction_score": 3 * v["mean_absorption_score"],
                            "mean_full_absorption_score": v["mean_absorption_score"], "mean_num_split_features": 1.2,
                            "current_valid": True},
                "eval_result_details": letters})
            scr = {f"scr_{w}_threshold_{n}": v["scr_metric_threshold_2"] * (1 + n / 100)
                   for w in ("metric", "dir1", "dir2") for n in (2, 5, 10, 20, 50, 100, 500)}
            _write(results / "scr" / f"{name}.json", {"eval_type_id": "scr", "variant": name, "profile": profile,
                                                      "eval_result_metrics": {"scr_metrics": scr, "scr_metrics_kept_only": {
                                                          f"{m}_kept_only": x / 2 for m, x in scr.items()}}})
            _write(results / "scr" / f"{name}_tpp.json", {
                "eval_type_id": "tpp", "variant": name, "profile": profile,
                "eval_result_metrics": {"tpp_metrics": {"tpp_threshold_20_total_metric": 0.3}}})
            sae = {f"sae_top_{kk}_test_accuracy": min(0.99, v["sae_top_1_test_accuracy"] + 0.03 * i)
                   for i, kk in enumerate((1, 2, 5, 10, 20, 50))}
            sae["sae_test_accuracy"] = 0.95
            llm = {"llm_top_1_test_accuracy": 0.6, "llm_top_20_test_accuracy": 0.8, "llm_test_accuracy": 0.97}
            _write(results / "probing" / f"{name}.json", {
                "eval_type_id": "sparse_probing", "variant": name, "profile": profile,
                "eval_result_metrics": {"llm": llm, "sae": sae},
                "eval_result_details": [{"dataset_name": "movie_sentiment", "sae_test_accuracy": 0.9 + v["kl_score"] / 100},
                                        {"dataset_name": "bbc_topic", "sae_test_accuracy": 0.5}]})
            _write(results / "sae_probes" / f"{name}.json", {
                "eval_type_id": "sparse_probing_sae_probes", "variant": name, "profile": profile,
                "eval_result_metrics": {"llm": {"llm_test_auc": 0.9},
                                        "sae": {"sae_top_1_test_auc": v["sae_top_1_test_accuracy"] - 0.05,
                                                "sae_top_5_test_auc": v["sae_top_1_test_accuracy"]}},
                "eval_result_details": [{"dataset_name": "5_hist_fig_ismale", "sae_top_1_test_auc": 0.6}]})
            _write(results / "unlearning" / f"{name}.json", {
                "eval_type_id": "unlearning", "variant": name, "metric": "offline", "model": "gemma-3-270m", "layer": 8,
                "eval_result_metrics": {"unlearning": {"unlearning_score": 0.1 if pen else 0.05}}})
    (results / "absorption" / "summary.csv").write_text("x\n1\n")  # other files in the folders are ignored
    return names


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    names = write_synthetic_results(root / "results")
    return root, names, load_results(root / "results")


# ------------------------------------------------------------------------------------------------
# statistics against scipy references
# ------------------------------------------------------------------------------------------------
def test_mean_ci_matches_scipy_t_interval():
    x = [1.0, 2.0, 3.0, 4.0]
    s = mean_ci(x)
    lo, hi = stats.t.interval(0.95, 3, loc=np.mean(x), scale=stats.sem(x))
    assert s["n"] == 4 and s["mean"] == pytest.approx(2.5)
    assert s["mean"] - s["ci"] == pytest.approx(lo) and s["mean"] + s["ci"] == pytest.approx(hi)
    assert math.isnan(mean_ci([3.0])["ci"]) and mean_ci([])["n"] == 0


def test_diff_ci_welch_matches_scipy_and_pooled_fallback():
    a, b = [1.0, 2.0, 3.5], [4.0, 6.0, 8.0, 9.0]
    d = diff_ci(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert d.method == "welch" and d.diff == pytest.approx(np.mean(a) - np.mean(b))
    assert (d.lo, d.hi) == (pytest.approx(ref.low), pytest.approx(ref.high))
    # one single run: the borrowed run-to-run SD gives se = s·sqrt(1/3 + 1/1) with its df
    p = diff_ci([5.0, 6.0, 7.0], [4.0], noise_sd=2.0, noise_df=6)
    half = stats.t.ppf(0.975, 6) * 2.0 * math.sqrt(1 / 3 + 1)
    assert p.method == "pooled seed SD" and (p.lo, p.hi) == (pytest.approx(2 - half), pytest.approx(2 + half))
    assert diff_ci([1.0], [2.0]).method == "none" and not diff_ci([1.0], [2.0]).has_ci


def test_pooled_sd_is_within_group_sd():
    sd, df = pooled_sd([[1.0, 3.0], [10.0, 12.0, 14.0], [7.0]])
    # SS = 2 + 8 = 10 over df = 1 + 2
    assert df == 3 and sd == pytest.approx(math.sqrt(10 / 3))


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------
def test_load_results_reads_every_family(synthetic):
    _, names, r = synthetic
    assert sorted(r.variants) == sorted(names)
    assert r.value("topk", "mean_absorption_score") == pytest.approx(0.020)
    assert r.value("topk_s2", "mean_absorption_score") == pytest.approx(0.021)
    assert r.value("ortho_run4", "scr_metric_threshold_2") == pytest.approx(0.12 * 1.02)
    assert r.value("ortho_run4", "tpp_threshold_20_total_metric") == pytest.approx(0.3)  # _tpp.json read as TPP
    assert "ortho_run4_tpp" not in r.variants
    assert r.value("relu_l1", "unlearning_score") == pytest.approx(0.05)
    assert r.value("topk", "max_letter_absorption_rate") == pytest.approx(0.020 * 1.2)
    assert r.value("topk", "probe_gap_top20_top1") == pytest.approx(0.12)
    # per-task restriction: only tasks whose name matches
    assert r.value("topk", "sae_test_accuracy@sentiment") == pytest.approx(0.9 + 0.95 / 100)
    assert math.isnan(r.value("topk", "sae_test_accuracy@europarl"))


def test_seed_groups_and_stats(synthetic):
    _, _, r = synthetic
    assert sorted(r.group_members("topk")) == ["topk", "topk_s1", "topk_s2"]
    assert r.group_members("topk_k100") == ["topk_k100"]
    assert sorted(r.seed_groups()) == sorted(SEEDED)
    s = r.stat("compete_run6", "mean_absorption_score")
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.050) and s["sd"] == pytest.approx(0.001)
    sd, df = r.noise("mean_absorption_score")
    assert df == 6 and sd == pytest.approx(0.001)
    assert seed_base("compete_run6_s2") == "compete_run6" and seed_base("sweep_ortho_desc_x1e-2") == "sweep_ortho_desc_x1e-2"


def test_profile_filter_skips_other_scales(tmp_path):
    write_synthetic_results(tmp_path / "results", profile="default")
    with pytest.warns(UserWarning, match="skipped"):
        r = load_results(tmp_path / "results", profile="smoke")
    assert r.variants == [] and len(r.skipped) > 0
    only = load_results(tmp_path / "results", variants=["topk", "topk_s2", "relu_l1", "jumprelu"], profile="default")
    assert sorted(only.variants) == ["relu_l1", "topk", "topk_s2"]  # unlisted seeds and stale variants ignored
    assert only.stat("topk", "mse")["n"] == 2
    assert not only.has("ortho_run4")


def test_missing_results_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the eval stages"):
        load_results(tmp_path / "nope")


def test_malformed_file_names_the_missing_key(tmp_path):
    _write(tmp_path / "results" / "unlearning" / "topk.json", {"eval_result_metrics": {}})
    with pytest.raises(ValueError, match="unlearning"):
        load_results(tmp_path / "results")


# ------------------------------------------------------------------------------------------------
# figures and tables
# ------------------------------------------------------------------------------------------------
def _texts(fig) -> str:
    out = [fig._suptitle.get_text() if fig._suptitle else ""]
    for ax in fig.axes:
        out += [ax.get_ylabel(), ax.get_xlabel()] + [ax.get_title(loc=w) for w in ("left", "center", "right")]
        out += [t.get_text() for t in ax.texts]
        out += [t.get_text() for t in ax.get_xticklabels()]
    return "\n".join(out)


FIGURE_EXPECTATIONS = {
    # builder: strings its labels, titles and texts must contain
    "fig_competesae_absorption": ["lower is better", "not\nrun", "TopK k=3\n(no competition)", "L0=300"],
    "fig_competesae_table1": ["KL score", "not\nrun", "Table 1"],
    "fig_ortho_absorption": ["absorption (legacy score", "lower is better", "not\nrun", "Ortho run 4\nλ=0.075"],
    "fig_ortho_scr": ["SCR, n = 2", "SCR, n = 20", "higher is better"],
    "fig_ortho_reconstruction": ["MSE per element", "cosine similarity", "lower is better", "higher is better"],
    "fig_ortho_probing": ["top-1", "top-20", "higher is better"],
    "fig_sae_probes": ["sae-probes AUC, SAE top-1", "sae-probes AUC, SAE top-5", "higher is better", "not\nrun"],
    "fig_lambda_sweep": ["λ ÷ paper's λ (log scale)", "competition penalty", "orthogonality penalty"],
    "fig_headline": ["gemma-3-270m, layer 8", "mean ± 95% CI over seeds"],
    "fig_effects": ["penalty better (lower)", "penalty better (higher)", "+25.0%"],
}


SAVED = {"fig_ortho_absorption"}
"""Builders whose figure the fast test also writes to PNG and PDF."""


@pytest.mark.parametrize("builder", sorted(FIGURE_EXPECTATIONS))
def test_figure_builds_labels_direction_and_marks_missing(builder, synthetic, tmp_path):
    from saelib.plotting import save_figure

    _, _, r = synthetic
    fig = getattr(figures, builder)(r)
    text = _texts(fig)
    if builder in SAVED:  # saving every figure is the slow notebook test's job; one here keeps this file fast
        written = save_figure(fig, tmp_path / builder)
        assert [p.suffix for p in written] == [".png", ".pdf"]
        assert all(p.stat().st_size > 5000 for p in written)
    plt.close(fig)
    for expected in FIGURE_EXPECTATIONS[builder]:
        assert expected in text, (builder, expected)


def test_sae_probes_metrics_are_kept_apart_from_saebench_probing(synthetic):
    _, names, r = synthetic
    wide = r.wide
    assert "sae_probes_sae_top_1_test_auc" in wide and "sae_top_1_test_auc" not in wide
    # SAEBench's own probing numbers are untouched by the second eval's files
    assert wide.loc["ortho_run2", "sae_top_1_test_accuracy"] == pytest.approx(0.73)
    assert wide.loc["ortho_run2", "sae_probes_sae_top_1_test_auc"] == pytest.approx(0.68)
    assert wide.loc["ortho_run2", "sae_probes_llm_test_auc"] == pytest.approx(0.9)


def test_figures_survive_an_empty_results_folder(tmp_path):
    (tmp_path / "results").mkdir()
    r = load_results(tmp_path / "results")
    for builder in FIGURE_EXPECTATIONS:
        plt.close(getattr(figures, builder)(r))
    L = claims.build_ledger(r)
    assert set(L["verdict"]) == {claims.NOT_RUN, claims.NOT_TESTABLE}


def test_every_value_axis_names_metric_and_direction(synthetic):
    _, _, r = synthetic
    for build in (figures.fig_ortho_absorption, figures.fig_ortho_scr, figures.fig_ortho_reconstruction,
                  figures.fig_ortho_probing, figures.fig_headline, figures.fig_competesae_table1,
                  figures.fig_lambda_sweep):
        fig = build(r)
        for ax in fig.axes:
            if ax.get_visible() and ax.get_ylabel():
                assert "is better" in ax.get_ylabel() or "descriptive" in ax.get_ylabel(), (build.__name__,
                                                                                             ax.get_ylabel())
        plt.close(fig)


def test_sweep_groups_by_penalty_settings_except_lambda(synthetic):
    _, _, r = synthetic
    t = figures.sweep_table(r, ["mean_absorption_score"])
    comp = t[(t["penalty"] == "competition") & (t["reading"] == "as_run")]
    # compete_no_warmup differs in ramp_steps, so it is not a sweep point
    assert list(comp["variant"]) == ["compete_run6", "sweep_compete_run_x1e2", "sweep_compete_run_x1e4"]
    assert list(comp["lam_mult"]) == pytest.approx([1.0, 100.0, 10000.0])
    assert set(comp["baseline"]) == {"topk_k100"}
    ortho = t[(t["penalty"] == "orthogonality") & (t["reading"] == "as_run")]
    assert list(ortho["variant"]) == ["ortho_run1", "ortho_run3", "ortho_run4", "ortho_run2"]
    assert t[t["variant"] == "compete_run6"]["n"].item() == 3


def test_effects_table_uses_no_penalty_twin(synthetic):
    _, _, r = synthetic
    e = figures.effects_table(r).set_index(["variant", "metric"])
    row = e.loc[("compete_run6", "mean_absorption_score")]
    assert row["baseline"] == "topk_k100" and row["diff"] == pytest.approx(0.010)
    half = stats.t.ppf(0.975, 6) * 0.001 * math.sqrt(1 / 3 + 1)
    assert (row["diff_lo"], row["diff_hi"]) == (pytest.approx(0.010 - half), pytest.approx(0.010 + half))
    assert row["effect_over_seed_sd"] == pytest.approx(10.0)
    assert e.loc[("ortho_run4", "mean_absorption_score")]["baseline"] == "topk"
    assert e.loc[("ortho_run4", "mean_absorption_score")]["ci_method"] == "welch"


def test_table1_and_headline_tables(synthetic, tmp_path):
    _, _, r = synthetic
    t1 = figures.table1_competesae(r).set_index(["configuration", "metric"])
    assert t1.loc[("Full model", "mean_absorption_score"), "mean"] == pytest.approx(0.050)
    assert t1.loc[("Full model", "kl_score"), "paper_value"] == pytest.approx(0.991)
    assert t1.loc[("Reduced dict size", "kl_score"), "n_seeds"] == 0  # not run
    h = figures.headline_table(r).set_index(["group", "metric"])
    assert h.loc[("topk", "mse"), "n"] == 3 and h.loc[("topk", "mse"), "sd"] == pytest.approx(1.0)
    paths = figures.write_table(h.reset_index(), tmp_path / "headline")
    md = paths[1].read_text()
    assert md.startswith("| group | metric |") and "topk" in md


def test_scr_definitions_table_tests_the_seed_ci_against_zero(synthetic):
    _, _, r = synthetic
    t = figures.scr_definitions_table(r, groups=("topk", "relu_l1"), n=20).set_index(["group", "special_positions"])
    # topk's three seeds: 0.12 − 0.006, 0.12, 0.12 + 0.006 under SAEBench's ablation, half that kept-only
    assert t.loc[("topk", "saebench"), "mean"] == pytest.approx(0.12)
    assert t.loc[("topk", "saebench"), "sd"] == pytest.approx(0.006)
    assert t.loc[("topk", "kept_only"), "mean"] == pytest.approx(0.06)
    assert t.loc[("topk", "saebench"), "excludes_zero"] is True
    assert t.loc[("relu_l1", "saebench"), "n"] == 1 and t.loc[("relu_l1", "saebench"), "excludes_zero"] is None


# ------------------------------------------------------------------------------------------------
# ledger on synthetic results (verdicts checkable by hand from TRUTH)
# ------------------------------------------------------------------------------------------------
def test_ledger_verdicts_on_synthetic_results(synthetic):
    _, _, r = synthetic
    L = claims.build_ledger(r).set_index("claim_id")
    assert len(L) == len(claims.CLAIMS)
    # CompeteSAE absorption 0.050 (3 seeds) vs its twin 0.040: worse, CI excludes 0
    row = L.loc["000-s6.4-competition-absorption"]
    assert row["verdict"] == claims.CONTRADICTED and row["ci_method"] == "pooled seed SD"
    assert row["our_value"] == pytest.approx(0.050) and row["our_baseline"] == pytest.approx(0.040)
    # orthogonality run 4 0.010 vs TopK 0.020, both seeded → Welch → supported
    assert L.loc["004-abstract-absorption", "verdict"] == claims.SUPPORTED
    assert L.loc["004-abstract-absorption", "original_verdict"] == claims.CONTRADICTED
    # absorption over ortho runs 1-4 (λ .01,.05,.075,.1 → .030,.020,.010,.015): ρ = -0.8, lower is better
    assert L.loc["004-fig1-alpha-trend", "our_value"] == pytest.approx(-0.8)
    assert L.loc["004-fig1-alpha-trend", "verdict"] == claims.SUPPORTED
    # ortho_run5 / compete_reduced_dict / jumprelu were not run
    for cid in ("004-s6.2-run5-absorption", "000-table1-reduced-kl", "000-s2-jumprelu-mse"):
        assert L.loc[cid, "verdict"] == claims.NOT_RUN, cid
    # "best of" with ortho_run5 missing: run 4 (0.010) beats runs 1-3 → supported
    assert L.loc["004-fig1-run4-best-absorption", "verdict"] == claims.SUPPORTED
    # all-variants claim with one variant missing still judged on those run: all SCR values beat TopK
    assert L.loc["004-fig2-all-scr", "pairs_run"] == "8/10"
    assert L.loc["000-s3-r082", "verdict"] == claims.NOT_TESTABLE
    # overhead: 10% wall-time overhead ≤ 20% bound
    assert L.loc["000-s6.5-overhead", "our_value"] == pytest.approx(0.10)
    assert L.loc["000-s6.5-overhead", "verdict"] == claims.SUPPORTED
    assert set(L["verdict"]) <= set(claims.VERDICTS)
    # "MSE matches the baseline": ortho_run4 101 vs TopK 100 (3 vs 3 seeds, SD 1). Margin = 2 × seed SD = 2;
    # Welch CI of g = −1 ± 2.27 straddles −2; MDE = (t.975,6 + t.8,6)·1·sqrt(2/3) = (2.446912 + 0.905703) · 0.816497
    # = 2.737 > 2 → underpowered (not "within noise")
    row = L.loc["004-abstract-mse"]
    assert row["margin"] == pytest.approx(2.0) and row["margin_rule"] == "2 × seed SD (1)"
    assert row["mde"] == pytest.approx((2.446912 + 0.905703) * 0.816497, rel=1e-5)
    assert row["verdict"] == claims.UNDERPOWERED
    # a bounded score uses its absolute margin: KL 0.89 vs 0.95 is beyond 0.01 → contradicted
    assert L.loc["000-abstract-kl", "margin"] == pytest.approx(0.01)
    assert L.loc["000-abstract-kl", "verdict"] == claims.CONTRADICTED
    shown = claims.ledger_display(L.reset_index()).set_index("id")
    assert shown.loc["004-abstract-mse", "margin, power"] == "m = 2; MDE 2.74 (3 vs 3 seeds)"


# ------------------------------------------------------------------------------------------------
# README block
# ------------------------------------------------------------------------------------------------
def test_readme_sae_probes_line_reads_the_topk_row():
    m = load_script("update_readme_results")
    summary = pd.DataFrame({"sae_top_1_test_auc": [0.7125, 0.6], "sae_top_2_test_auc": [0.75, 0.61],
                            "sae_top_5_test_auc": [0.8, 0.62]}, index=["topk", "relu_l1"])
    line = m.sae_probes_line(summary)
    assert "k = 1: 0.713" in line and "k = 2: 0.750" in line and "k = 5: 0.800" in line and "0.6" not in line
    assert m.sae_probes_line(summary.drop(index="topk")) == "" and m.sae_probes_line(pd.DataFrame()) == ""


def test_readme_block_replaced_between_markers_only():
    m = load_script("update_readme_results")
    text = f"# T\nintro\n\n## Results\n{m.START}\nold numbers\n{m.END}\n\n## After\nkept\n"
    new = m.replace_block(text, "new numbers\n")
    assert "old numbers" not in new and "new numbers" in new
    assert new.startswith("# T\nintro") and new.endswith("## After\nkept\n")
    assert m.replace_block(new, "new numbers\n") == new  # idempotent
    appended = m.replace_block("# T\n", "x\n")
    assert appended == f"# T\n\n## Results\n\n{m.START}\nx\n{m.END}\n"
    with pytest.raises(ValueError, match="exactly one"):
        m.replace_block(text + m.START, "x")
    with pytest.raises(ValueError, match="before"):
        m.replace_block(f"{m.END}\n{m.START}\n", "x")


def test_effect_sentences_answer_the_question():
    import pandas as pd

    m = load_script("update_readme_results")
    eff = pd.DataFrame([
        {"variant": "a", "baseline": "b", "penalty": "competition", "reading": "as_run", "lam": 0.01,
         "metric": "mean_absorption_score", "baseline_mean": 0.04, "diff": 0.01, "diff_lo": 0.005, "diff_hi": 0.015,
         "seed_sd": 0.001},
        {"variant": "c", "baseline": "d", "penalty": "orthogonality", "reading": "as_run", "lam": 0.075,
         "metric": "mean_absorption_score", "baseline_mean": 0.02, "diff": -0.001, "diff_lo": -0.003, "diff_hi": 0.001,
         "seed_sd": 0.001}])
    s = m.effect_sentences(eff)
    assert "**no** — higher absorption (worse)" in s[0] and "0.0500 vs 0.0400" in s[0]
    assert "**no detectable change**" in s[1]
    # with the comparison kind, seeds and a missing L1 control
    eff["comparison"] = ["vs plain TopK", "vs L1 control"]
    eff["n_variant"], eff["n_baseline"], eff["status"] = [5, 5], [5, 1], ["", ""]
    missing = {"variant": "e", "baseline": "topk_l1", "comparison": "vs L1 control", "metric": "",
               "status": "not run (topk_l1 has no results)"}
    s = m.effect_sentences(pd.concat([eff, pd.DataFrame([missing])], ignore_index=True))
    assert s[0] == "- `e` vs L1 control `topk_l1`: not run (topk_l1 has no results)."
    assert "vs `b` (vs plain TopK): 0.0500 vs 0.0400" in s[1] and "; 5 vs 5 seeds)" in s[1]
    assert "(vs L1 control)" in s[2] and "5 vs 1 seeds" in s[2]
    # what each SAE adds to TopK: a penalty with its λ (and L1 term, if any); an L1 control its L1 coefficient only
    assert s[1].startswith("- `a` (competition, as run, λ = 0.01) vs")
    rows = pd.DataFrame([
        {"variant": "topk_l1_matched", "penalty": "l1 control", "reading": "as_run", "lam": 0.0, "l1_coef": 467.25},
        {"variant": "ortho_described", "penalty": "orthogonality", "reading": "as_described", "lam": 0.075, "l1_coef": 0.04}])
    assert m.penalty_text(rows.iloc[0]) == "L1 control: the L1 term alone, coefficient 467.25"
    assert m.penalty_text(rows.iloc[1]) == "orthogonality, as described, λ = 0.075, L1 coefficient 0.04"


def test_headline_table_and_probing_baseline_lines():
    m = load_script("update_readme_results")
    head = pd.DataFrame([
        {"group": "topk", "metric": "mean_absorption_score", "n": 3, "mean": 0.02, "ci": 0.004},
        {"group": "topk", "metric": "kl_score", "n": 3, "mean": 0.95, "ci": 0.01},
        {"group": "relu_l1", "metric": "mean_absorption_score", "n": 1, "mean": 0.005, "ci": float("nan")},
        {"group": "relu_l1", "metric": "kl_score", "n": 0, "mean": float("nan"), "ci": float("nan")}])
    lines = m.headline_lines(head)
    assert lines[0].startswith("| variant | ") and "↓" in lines[0] and "↑" in lines[0]
    assert lines[2] == "| `topk` | 0.02 ± 0.004 (n = 3) | 0.95 ± 0.01 (n = 3) |"
    assert lines[3] == "| `relu_l1` | 0.005 (1 run) | not run |"
    head["note"] = ["", "", "literal λ=0.04 (dense)", "literal λ=0.04 (dense)"]
    assert m.headline_lines(head)[3] == "| `relu_l1` (literal λ=0.04 (dense)) | 0.005 (1 run) | not run |"
    assert m.headline_lines(pd.DataFrame()) == ["- No headline variant was run at this profile."]
    summary = pd.DataFrame({"llm_top_1_test_accuracy": [0.6, 0.6], "llm_test_accuracy": [0.9, 0.9],
                            "sae_top_1_test_accuracy": [0.61, 0.7], "sae_test_accuracy": [0.85, 0.8]},
                           index=["topk", "relu_l1"])
    line = m.probing_baseline_line(summary)
    assert "single residual dimension 0.600, full residual 0.900" in line and "best single latent 0.610" in line


# ------------------------------------------------------------------------------------------------
# the notebook itself, through papermill, on a synthetic smoke-profile results folder
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_figures_notebook_runs_on_smoke_results(tmp_path, monkeypatch):
    from saelib.runner import run_notebook

    root = tmp_path / "repo"
    names = write_synthetic_results(root / "results" / "smoke", profile="smoke")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"] = "smoke"
    params["run_variants"] = [n for n in dict.fromkeys(seed_base(n) for n in names)] + ["ortho_run5", "jumprelu"]
    params["run_variants"] += [n for n in names if n not in params["run_variants"]]
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "README.md").write_text("# repo\n\n## Results\n<!-- results:start -->\nstale\n<!-- results:end -->\n\n## Tail\n")
    (root / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "update_readme_results.py", root / "scripts")
    monkeypatch.chdir(root)
    monkeypatch.setenv("SAELIB_ROOT", str(root))
    run_notebook(ROOT / "notebooks" / "07_figures.py", {"profile": "smoke"}, out_dir=root / "executed")
    results, figures_dir = root / "results" / "smoke", root / "figures" / "smoke"  # per-profile layout
    for stem in ("effects", "headline_seeds", "competesae_absorption", "competesae_table1", "ortho_fig1_absorption",
                 "ortho_fig2_scr", "ortho_fig3_reconstruction", "ortho_fig4_probing", "lambda_sweep"):
        for ext in ("png", "pdf"):
            assert (figures_dir / f"{stem}.{ext}").stat().st_size > 5000, (stem, ext)
    for stem in ("headline", "effects", "table1_competesae", "lambda_sweep", "all_variants", "claims_ledger"):
        assert (results / "tables" / f"{stem}.csv").exists() and (results / "tables" / f"{stem}.md").exists()
    import pandas as pd

    ledger = pd.read_csv(results / "claims_ledger.csv")
    assert list(ledger["claim_id"]) == claims.claim_ids()
    # a smoke run writes its own block and never touches README.md (only the default profile's run does)
    assert (root / "README.md").read_text() == "# repo\n\n## Results\n<!-- results:start -->\nstale\n<!-- results:end -->\n\n## Tail\n"
    readme = (results / "README_results.md").read_text()
    assert "stale" not in readme
    assert "model **gemma-3-270m**, layer **8**" in readme and "32,768 training tokens per SAE" in readme
    assert "`compete_run6` (competition, as run, λ = 0.01) vs `topk_k100`" in readme
    assert "**no** — higher absorption (worse)" in readme  # compete_run6 0.050 vs twin 0.040
    assert "![Paper 004 Fig. 1" in readme and "profile: paper" in readme
    assert os.path.exists(root / "executed" / "07_figures.ipynb")


def test_ledger_display_survives_a_csv_round_trip(synthetic, tmp_path):
    """The README table is rendered from the CSV, where empty cells come back as NaN."""
    _, _, r = synthetic
    L = claims.build_ledger(r)
    L.to_csv(tmp_path / "ledger.csv", index=False)
    back = pd.read_csv(tmp_path / "ledger.csv", keep_default_na=False, na_values=[""])
    shown = claims.ledger_display(back).set_index("id")
    assert "nan" not in " ".join(shown["compared"])
    single = L.set_index("claim_id").loc["004-abstract-absorption"]
    assert shown.loc["004-abstract-absorption", "compared"] == f"{single['variant']} vs {single['baseline']}"
    multi = L[L["binding_pair"].astype(bool)]
    assert len(multi) > 0 and all("decided by" in shown.loc[c, "compared"] for c in multi["claim_id"])


def test_unlearning_seed_stability_against_hand_worked_values():
    from saelib.results import Results
    rows = {  # variant: (area score, its bootstrap SD, thresholded score, its SD)
        "topk": (0.10, 0.03, 0.0, 0.0), "topk_s1": (0.12, 0.04, 0.0, 0.0), "topk_s2": (0.40, 0.04, 0.0, 0.0),
        "compete_run6": (0.30, 0.06, 0.2, 0.1), "compete_run6_s1": (0.33, 0.08, 0.5, 0.1),
        "relu_l1_matched": (0.14, math.nan, 0.0, math.nan), "ortho_run4": (math.nan,) * 4}
    wide = pd.DataFrame({v: dict(zip(["unlearning_auc", "unlearning_auc_sd", "unlearning_score", "unlearning_score_sd"], x))
                         for v, x in rows.items()}).T
    r = Results(wide=wide, meta=pd.DataFrame(index=wide.index), penalty_cfgs={}, per_task=pd.DataFrame(),
                per_letter=pd.DataFrame())
    t = figures.unlearning_seed_stability(r, groups=("topk", "compete_run6", "relu_l1_matched", "ortho_run4"))
    assert set(t["group"]) == {"topk", "compete_run6", "relu_l1_matched"}  # ortho_run4 has no score: no row
    a = t.set_index(["group", "metric"]).loc[("topk", "unlearning_auc")]
    # pairs: |0.10−0.12|/0.05 = 0.4, |0.10−0.40|/0.05 = 6, |0.12−0.40|/√0.0032 ≈ 4.95
    assert a["max_pair_z"] == pytest.approx(6.0) and a["max_pair"] == "topk vs topk_s2"
    assert a["within_2sd"] is False and bool(a["boot_sd_below_target"]) and a["n"] == 3
    assert a["seed_sd"] == pytest.approx(np.std([0.10, 0.12, 0.40], ddof=1))
    assert a["boot_sd_rms"] == pytest.approx(math.sqrt((0.03 ** 2 + 0.04 ** 2 + 0.04 ** 2) / 3))
    assert a["seed_over_boot"] == pytest.approx(a["seed_sd"] / a["boot_sd_rms"])
    c = t.set_index(["group", "metric"]).loc[("compete_run6", "unlearning_auc")]
    assert c["max_pair_z"] == pytest.approx(0.3) and c["within_2sd"] is True
    assert not c["boot_sd_below_target"] and c["max_boot_sd"] == pytest.approx(0.08)
    z = t.set_index(["group", "metric"]).loc[("topk", "unlearning_score")]  # equal values, zero SDs: z = 0
    assert z["max_pair_z"] == 0.0 and z["within_2sd"] is True
    s = t.set_index(["group", "metric"]).loc[("relu_l1_matched", "unlearning_auc")]  # one seed, no SD
    assert s["n"] == 1 and s["within_2sd"] is None and not s["boot_sd_below_target"]
    assert math.isnan(s["seed_sd"]) and pd.isna(s["max_pair"])


def test_every_as_described_reading_has_an_l1_control_of_the_same_sae():
    """``figures.L1_CONTROLS`` pairs each as-described variant of params.yaml (seeds aside) with a TopK SAE
    of the same k and L1 rule that has the L1 term and no co-activation term; such controls are coloured
    and labelled as L1 controls."""
    import yaml

    variants = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())["sae_variants"]
    described = [v for v, e in variants.items()
                 if (e.get("penalty") or {}).get("reading") == "as_described" and "seed" not in e
                 and not v.startswith("sweep_")]
    assert sorted(described) == sorted(figures.L1_CONTROLS)
    for v, control in figures.L1_CONTROLS.items():
        e, c = variants[v], variants[control]
        assert c["penalty"] == {"kind": "l1"}
        assert (c["arch"], c["k_over_d"], c.get("l1_rule")) == (e["arch"], e["k_over_d"], e.get("l1_rule"))
        assert figures.family(SimpleNamespace(penalty_cfgs={}), control) == "l1 control"


def test_genre_gap_table_known_answer(tmp_path):
    """Two seeds of topk with known per-genre KL scores: gaps 0.05 and 0.01 → mean 0.03 and the t interval
    over two seeds; one seed of topk_k100 with gap 0.02 → "yes (1 run)"; a variant without the block is skipped."""
    def write(v, kl):
        doc = {"per_genre": {g: {"kl_score": x, "ce_score": x, "ev": 0.9, "n_sequences": 8} for g, x in kl.items()}}
        (tmp_path / f"{v}.json").write_text(json.dumps(doc))

    write("topk", {"news": 0.90, "code": 0.95, "forum": 0.93})
    write("topk_s1", {"news": 0.93, "code": 0.94, "forum": 0.935})
    write("topk_k100", {"news": 0.88, "code": 0.90})
    (tmp_path / "relu_l1.json").write_text(json.dumps({"per_genre": None}))
    long = figures.per_genre_long(tmp_path, ["topk", "topk_s1", "topk_k100", "relu_l1", "missing"])
    assert set(long["variant"]) == {"topk", "topk_s1", "topk_k100"}
    g = figures.genre_gap_table(long).set_index("group")
    assert g.loc["topk", "gap_mean"] == pytest.approx(0.03)
    assert g.loc["topk", "gap_ci"] == pytest.approx(stats.t.ppf(0.975, 1) * np.std([0.05, 0.01], ddof=1) / math.sqrt(2))
    assert g.loc["topk", "meets_target"] == "undetermined"
    assert (g.loc["topk", "worst_genre"], g.loc["topk", "best_genre"]) == ("news", "code")
    assert g.loc["topk_k100", "meets_target"] == "yes (1 run)" and g.loc["topk_k100", "n_seeds"] == 1
    t = figures.genre_table(long).set_index(["group", "genre"])
    assert t.loc[("topk", "news"), "kl_score"] == pytest.approx(0.915) and t.loc[("topk", "news"), "n_seeds"] == 2


def test_genre_gap_lines_state_the_target_verdict():
    m = load_script("update_readme_results")
    gaps = pd.DataFrame([
        {"group": "topk", "n_seeds": 5, "gap_mean": 0.0436, "gap_ci": 0.0057, "worst_genre": "news", "best_genre": "code",
         "sequences_per_genre": 8, "target": 0.03, "meets_target": "no"},
        {"group": "topk_k100", "n_seeds": 1, "gap_mean": 0.02, "gap_ci": float("nan"), "worst_genre": "news",
         "best_genre": "code", "sequences_per_genre": 8, "target": 0.03, "meets_target": "yes (1 run)"}])
    lines = m.genre_gap_lines(gaps)
    assert lines[0] == ("Per genre (held-out, 8 sequences each): `topk`'s best-minus-worst KL score gap is 0.044 ± 0.006 "
                        "over 5 seeds (worst news, best code); target < 0.03: **no**.")
    assert "is 0.020 (1 run)" in lines[1] and "**yes (1 run)**" in lines[1]


def test_genre_tables_without_genres_keep_their_columns(tmp_path):
    """A profile whose held-out split has no genres (or no TopK baseline) gives empty tables that still
    have their header, so the README script reads them back and writes no per-genre line."""
    long = figures.per_genre_long(tmp_path, ["topk"])
    gaps = figures.genre_gap_table(long)
    assert gaps.empty and list(gaps.columns) == figures.GENRE_GAP_COLUMNS
    paths = figures.write_table(gaps, tmp_path / "per_genre_gap")
    back = pd.read_csv(paths[0])
    assert back.empty and load_script("update_readme_results").genre_gap_lines(back) == []
    assert figures.genre_table(long).empty


def test_scr_target_lines_read_the_topk_interval():
    m = load_script("update_readme_results")
    defs = pd.DataFrame([
        {"group": "topk", "special_positions": "saebench", "n": 5, "mean": -0.0154, "ci": 0.214, "lo": -0.2294,
         "hi": 0.1986, "excludes_zero": False},
        {"group": "compete_run6", "special_positions": "saebench", "n": 5, "mean": 0.5, "ci": 0.1, "lo": 0.4,
         "hi": 0.6, "excludes_zero": True},
        {"group": "topk", "special_positions": "kept_only", "n": 5, "mean": 0.1384, "ci": 0.1072, "lo": 0.0312,
         "hi": 0.2457, "excludes_zero": True}])
    lines = m.scr_target_lines(defs)
    assert lines == [
        "SCR at n = 20 (SAEBench's ablation, the default): `topk` -0.015 ± 0.214 over 5 seeds (-0.229 to +0.199): "
        "**includes 0**.",
        "SCR at n = 20 (kept tokens only): `topk` +0.138 ± 0.107 over 5 seeds (+0.031 to +0.246): **excludes 0**."]
    one = defs.iloc[:1].assign(n=1, ci=float("nan"), excludes_zero=None)
    assert m.scr_target_lines(one) == ["SCR at n = 20 (SAEBench's ablation, the default): `topk` -0.015 (1 run, no interval)."]


def test_unlearning_target_lines_compare_sd_with_target(tmp_path):
    m = load_script("update_readme_results")
    rows = pd.DataFrame([
        {"group": "topk", "metric": "unlearning_auc", "n": 5, "mean": 0.153, "seed_sd": 0.036, "boot_sd_rms": 0.028,
         "max_boot_sd": 0.033, "boot_sd_below_target": True, "seed_over_boot": 1.29, "max_pair_z": 2.587,
         "max_pair": "topk_s1 vs topk_s2", "within_2sd": False},
        {"group": "compete_run6", "metric": "unlearning_score", "n": 1, "mean": 0.293, "seed_sd": float("nan"),
         "boot_sd_rms": 0.104, "max_boot_sd": 0.104, "boot_sd_below_target": False, "seed_over_boot": float("nan"),
         "max_pair_z": float("nan"), "max_pair": None, "within_2sd": None}])
    # read back through a CSV as the README script does: booleans and empty cells come back as pandas parses them
    rows.to_csv(tmp_path / "unlearning_seed_stability.csv", index=False)
    (tmp_path / "per_genre_gap.csv").write_text("\n")  # an empty frame written without its columns: skipped
    lines = m.target_lines(tmp_path, 0.05)
    assert lines == [
        "- Unlearning, `topk` `unlearning_auc` (mean 0.153 over 5): largest bootstrap SD 0.033, target < 0.05: **yes**; "
        "seeds within 2 bootstrap SDs of each other: **no** (widest pair topk_s1 vs topk_s2, 2.6 SDs apart; seed SD 0.036).",
        "- Unlearning, `compete_run6` `unlearning_score` (mean 0.293 over 1): largest bootstrap SD 0.104, target < 0.05: "
        "**no**; only one seed."]
