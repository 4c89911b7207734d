"""Figure and table builders for notebook 07 (results → figures/*.png|pdf, results/tables/*.csv|md).

Every builder takes a :class:`saelib.results.Results` and returns a matplotlib Figure or a DataFrame;
a variant that was not run leaves a "not run" mark in its place, never an exception. Every value axis
names its metric and which way is better (``saelib.results.axis_label``). Bars are seed means with
95% t-intervals; dots are the individual seeds. A horizontal band is a baseline: its mean ± 95% CI
(over its seeds, or from the metric's pooled run-to-run SD when it has a single seed).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable, Sequence

import matplotlib.pyplot as plt
import matplotlib.transforms as mtransforms
import numpy as np
import pandas as pd
import seaborn as sns
from scipy import stats

from .io import atomic_write_text
from .plotting import set_style
from .results import (Results, axis_label, direction, label, matched_baseline, mean_ci, penalty_family, seed_base,
                      seed_table)

# ------------------------------------------------------------------------------------------------
# Variant groups used by the figures (any subset may be present)
# ------------------------------------------------------------------------------------------------
COMPETE_VARIANTS = ("relu_l1_matched", "relu_l1", "topk", "topk_k100", "topk_k100_l1", "compete_run1", "compete_run2",
                    "compete_run3", "compete_run4", "compete_run5", "compete_run6", "compete_no_warmup",
                    "compete_reduced_dict", "compete_described", "compete_described_matched")
"""Paper 000's absorption-by-variant plot, in this order (the standard SAE first: λ calibrated to the papers'
L0/d, then the literal λ = 0.04 one)."""
TABLE1_ROWS = (("Full model", "compete_run6", {"kl_score": .991, "mse_legacy": 1.414, "scr_metric_threshold_2": .167}),
               ("No warmup", "compete_no_warmup", {"kl_score": .981, "mse_legacy": 2.031, "scr_metric_threshold_2": .092}),
               ("No competition", "topk_k100", {"kl_score": .720, "mse_legacy": 4.438, "scr_metric_threshold_2": .043}),
               ("Reduced dict size", "compete_reduced_dict", {"kl_score": .978, "mse_legacy": 2.031, "scr_metric_threshold_2": .117}))
"""Paper 000 Table 1: configuration, our variant, the paper's printed numbers (KL, MSE, SCR t=2)."""
TABLE1_METRICS = ("kl_score", "mse", "mse_legacy", "scr_metric_threshold_2", "mean_absorption_score")
ORTHO_VARIANTS = ("topk", "topk_l1", "ortho_run1", "ortho_run3", "ortho_run4", "ortho_run2", "ortho_run5",
                  "ortho_described", "ortho_described_matched")
"""Paper 004's configurations (baseline and its L1 control, then runs 1–4 by increasing λ, the wider run
5, the prose reading and its L1-matched twin)."""
SWEEP_REFERENCES = {("competition", "as_run"): "compete_run6", ("competition", "as_described"): "compete_described",
                    ("orthogonality", "as_run"): "ortho_run4", ("orthogonality", "as_described"): "ortho_described"}
"""The λ × 1 variant of each (penalty, reading) sweep."""
SWEEP_METRICS = ("mean_absorption_score", "mse", "ev", "kl_score", "scr_metric_threshold_2", "sae_top_1_test_accuracy")
HEADLINE_GROUPS = ("topk", "topk_l1", "ortho_run4", "ortho_described", "topk_k100", "topk_k100_l1", "compete_run6",
                   "compete_described", "relu_l1_matched", "relu_l1")
"""Seeded headline variants: each penalty beside its no-penalty twin and (as-described readings) its L1
control, plus the standard SAE (λ calibrated to the papers' L0/d, and the literal λ = 0.04 one)."""
L1_CONTROLS = {"compete_described": "topk_k100_l1", "ortho_described": "topk_l1",
               "compete_described_matched": "topk_k100_l1_matched", "ortho_described_matched": "topk_l1_matched"}
"""As-described reading → its L1 control: the same TopK SAE with the reading's L1 term (0.04, or for the
``*_matched`` twins the L0-calibrated coefficient) and no co-activation term. The difference between the
two is the co-activation term's own effect."""
VARIANT_NOTES = {"relu_l1": "literal λ=0.04 (dense)",
                 "relu_l1_matched": "standard SAE: ReLU + L1, λ calibrated to the papers' L0/d = 0.021",
                 "topk_l1": "L1 control of ortho_described", "topk_k100_l1": "L1 control of compete_described",
                 "topk_l1_matched": "L1 control of ortho_described_matched",
                 "topk_k100_l1_matched": "L1 control of compete_described_matched",
                 "compete_described_matched": "as described, L1 coefficient calibrated by the same rule",
                 "ortho_described_matched": "as described, L1 coefficient calibrated by the same rule"}
"""What a reader must know about a row that its name does not say (shown in tables)."""
RATIO_METRIC = "penalty_over_mse_final"
"""The penalty's share of the loss at the end of training (penalty / MSE), drawn beside the λ sweep."""
ORIGINAL_RATIO = 1e-3
"""The spec: in the original runs the penalty sat at ≲ 1e-3 of the loss."""
HEADLINE_METRICS = ("mean_absorption_score", "mean_absorption_fraction_score", "mse", "kl_score",
                    "scr_metric_threshold_2", "sae_top_1_test_accuracy", "sae_test_accuracy", "unlearning_score")
EFFECT_METRICS = ("mean_absorption_score", "mean_absorption_fraction_score", "mse", "kl_score",
                  "scr_metric_threshold_2", "sae_top_1_test_accuracy")

_PALETTE = sns.color_palette("colorblind", 10)
FAMILY_COLORS = {"baseline": _PALETTE[7], "relu": _PALETTE[5], "competition": _PALETTE[1],
                 "orthogonality": _PALETTE[0], "l1 control": _PALETTE[8], "other": _PALETTE[4]}
READING_STYLE = {"as_run": dict(ls="-", marker="o"), "as_described": dict(ls="--", marker="s")}


def family(results: Results, variant: str) -> str:
    """Colour family of a variant: baseline (unpenalised TopK), relu, competition, orthogonality,
    l1 control, other."""
    if seed_base(variant) in L1_CONTROLS.values():
        return "l1 control"
    cfg = results.penalty_cfgs.get(variant) or results.penalty_cfgs.get(seed_base(variant))
    if cfg:
        kind = cfg.get("kind", "other")
        return kind if kind in FAMILY_COLORS else "other"
    if variant.startswith("relu"):
        return "relu"
    if variant.startswith("compete"):
        return "competition"
    if variant.startswith("ortho"):
        return "orthogonality"
    return "baseline" if variant.startswith("topk") else "other"


def variant_label(results: Results, variant: str) -> str:
    """Short display name, with the scale-dependent k or λ read from the results."""
    meta = results.meta.loc[variant] if variant in results.meta.index else {}
    k = meta.get("k") if len(meta) else None
    ktxt = f" k={int(k)}" if k is not None and not pd.isna(k) else ""
    lam = results.penalty_lam(variant)
    if m := re.fullmatch(r"compete_run(\d)", variant):
        return f"Compete run {m.group(1)}"
    if m := re.fullmatch(r"ortho_run(\d)", variant):
        return f"Ortho run {m.group(1)}" + (f"\nλ={lam:g}" if math.isfinite(lam) else "")
    if m := re.fullmatch(r"sweep_(compete|ortho)_(run|desc)_x(.+)", variant):
        return f"{m.group(1)} {'as run' if m.group(2) == 'run' else 'as described'} λ×{m.group(3)}"
    names = {"relu_l1": "ReLU+L1 literal\nλ=0.04 (dense)", "relu_l1_matched": "ReLU+L1\nλ L0-calibrated",
             "jumprelu": "JumpReLU", "topk": f"TopK{ktxt}", "topk_k100": f"TopK{ktxt}\n(no competition)",
             "topk_l1": f"TopK{ktxt} + L1\n(L1 control)", "topk_k100_l1": f"TopK{ktxt} + L1\n(L1 control)",
             "batchtopk": f"BatchTopK{ktxt}", "compete_no_warmup": "Compete\nno warmup",
             "compete_reduced_dict": "Compete\nreduced dict", "compete_described": "Compete\nas described",
             "compete_described_matched": "Compete as\ndescribed, L1 m.", "ortho_described": "Ortho\nas described",
             "ortho_described_matched": "Ortho as\ndescribed, L1 m."}
    return names.get(variant, variant)


def _band(results: Results, variant: str, metric: str, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi) of a baseline: seed CI, or the pooled run-to-run SD when it has one seed."""
    vals = results.values(variant, metric)
    if not vals:
        return math.nan, math.nan, math.nan
    s = results.stat(variant, metric, level)
    if s["n"] >= 2:
        return s["mean"], s["mean"] - s["ci"], s["mean"] + s["ci"]
    sd, df = results.noise(metric)
    if df >= 1 and math.isfinite(sd):
        half = float(stats.t.ppf(0.5 + level / 2, df) * sd)
        return s["mean"], s["mean"] - half, s["mean"] + half
    return s["mean"], s["mean"], s["mean"]


def _not_run(ax, text: str = "not run") -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.45", fontsize=10)


ZERO_BASED = re.compile(r"absorption|mse|^scr_|unlearning|^tpp_|^l0$|^l1$|gap|wall_time")
"""Metrics drawn as bars from zero; the others (accuracies, KL/CE scores, EV, cosine) sit near 1, so
they are drawn as points with an auto-scaled axis where their differences are visible."""


def bar_panel(ax, results: Results, variants: Sequence[str], metric: str, *, baseline: str | None = None,
              title: str | None = None, reference_line: tuple[str, str] | None = None,
              show_l0: bool = False, tick_rotation: float = 0) -> pd.DataFrame:
    """``metric`` for ``variants``: seed mean (bar from zero, or a point for near-1 metrics, see
    ``ZERO_BASED``) ± 95% CI, dots = seeds, "not run" where missing.

    ``baseline``: drawn as a horizontal band (mean ± CI) across the panel. ``reference_line``: an
    extra (metric, label) drawn as a dotted line from ``baseline`` (e.g. the residual-stream probe).
    Returns the plotted numbers.
    """
    bars = bool(ZERO_BASED.search(metric.split("@")[0]))
    below = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
    rows = []
    for i, v in enumerate(variants):
        vals = results.values(v, metric)
        s = results.stat(v, metric)
        rows.append({"variant": v, "metric": metric, "n": s["n"], "mean": s["mean"], "ci95": s["ci"], "values": vals})
        if not vals:
            ax.text(i, 0.03, "not\nrun", transform=below, ha="center", va="bottom", color="0.45", fontsize=8)
            continue
        color = FAMILY_COLORS.get(family(results, v), FAMILY_COLORS["other"])
        if bars:
            ax.bar(i, s["mean"], color=color, alpha=0.85, width=0.7)
        else:
            ax.plot(i, s["mean"], "o", color=color, ms=9, zorder=3)
        if s["n"] >= 2:
            ax.errorbar(i, s["mean"], yerr=s["ci"], color="black", capsize=4, lw=1.2, zorder=4)
            ax.scatter(np.full(len(vals), i) + np.linspace(-0.15, 0.15, len(vals)), vals, s=12, color="black", zorder=5)
    if baseline is not None and results.values(baseline, metric):
        mean, lo, hi = _band(results, baseline, metric)
        ax.axhline(mean, color="0.3", ls="--", lw=1)
        if hi > lo:
            ax.axhspan(lo, hi, color="0.5", alpha=0.18, lw=0)
    if reference_line is not None and baseline is not None:
        ref_metric, ref_label = reference_line
        ref = results.values(baseline, ref_metric)
        if ref:
            ax.axhline(float(np.mean(ref)), color="0.2", ls=":", lw=1.2, label=ref_label)
            ax.legend(loc="best", fontsize=8, frameon=True)
    ticks = [variant_label(results, v) for v in variants]
    if show_l0:  # sparsity explains much of absorption: the L1 SAE's L0 is not comparable with TopK's k
        l0 = [results.values(v, "l0") for v in variants]
        ticks = [f"{t}\nL0={np.mean(x):.0f}" if x else t for t, x in zip(ticks, l0)]
    if tick_rotation:
        ticks = [t.replace("\n", " ") for t in ticks]
    ax.set_xticks(range(len(variants)), ticks, rotation=tick_rotation, ha="right" if tick_rotation else "center",
                  fontsize=8)
    ax.set_xlim(-0.6, len(variants) - 0.4)
    ax.grid(axis="x", visible=False)
    ax.set_ylabel(axis_label(metric))
    if title:
        ax.set_title(title, fontsize=10)
    finite = [r["mean"] for r in rows if r["n"]]
    if bars and finite and all(f >= 0 for f in finite):
        ax.set_ylim(bottom=0)
    elif not finite:
        ax.set_yticks([])
    return pd.DataFrame(rows)


def _scale_note(results: Results) -> str:
    s = results.scale()
    tok = s.get("train_tokens")
    tok_txt = f"{int(tok):,} training tokens/SAE" if isinstance(tok, (int, float, np.integer, np.floating)) else ""
    parts = [str(s.get("model") or "?"), f"layer {s.get('layer')}", f"F = {s.get('d_sae')}" if s.get("d_sae") else "",
             tok_txt, f"profile {s.get('profile')}" if s.get("profile") else ""]
    return ", ".join(p for p in parts if p)


def _finish(fig, title: str, results: Results) -> plt.Figure:
    title_artist = fig.suptitle(f"{title}\n{_scale_note(results)}", fontsize=11)
    fig.tight_layout()
    # tight_layout does not always leave room for the two-line title: move the panels down until the
    # top row (titles included) clears it
    renderer = fig.canvas.get_renderer()
    title_bottom = title_artist.get_window_extent(renderer).y0
    panel_top = max((ax.get_tightbbox(renderer).y1 for ax in fig.axes if ax.get_visible()), default=0.0)
    overlap = (panel_top - title_bottom) / fig.bbox.height
    if overlap > -0.002:
        fig.subplots_adjust(top=fig.subplotpars.top - overlap - 0.004)
    return fig


# ------------------------------------------------------------------------------------------------
# Paper 000 (CompeteSAE)
# ------------------------------------------------------------------------------------------------
def fig_competesae_absorption(results: Results) -> plt.Figure:
    """Absorption (legacy and current scores) for every CompeteSAE variant and the baselines."""
    set_style()
    fig, axes = plt.subplots(2, 1, figsize=(15, 7.5), sharex=True)
    for ax, metric in zip(axes, ("mean_absorption_score", "mean_absorption_fraction_score")):
        bar_panel(ax, results, COMPETE_VARIANTS, metric, baseline="topk_k100", show_l0=True)
    axes[0].set_title("dashed line/band: TopK at CompeteSAE's k without the penalty (the 'no competition' twin)", fontsize=9)
    return _finish(fig, "Paper 000 (CompeteSAE): absorption by variant — lower is better", results)


def table1_competesae(results: Results) -> pd.DataFrame:
    """Paper 000's Table 1 at our scale: seed mean ± 95% CI beside the paper's printed numbers."""
    rows = []
    for config, variant, paper in TABLE1_ROWS:
        for metric in TABLE1_METRICS:
            s = results.stat(variant, metric)
            rows.append({"configuration": config, "variant": variant, "metric": metric,
                         "better": direction(metric), "n_seeds": s["n"], "mean": s["mean"], "ci95": s["ci"],
                         "paper_value": paper.get(metric, math.nan)})
    return pd.DataFrame(rows)


def fig_competesae_table1(results: Results) -> plt.Figure:
    """Table 1's four configurations on KL score, MSE, SCR (t=2) and absorption."""
    set_style()
    metrics = ("kl_score", "mse", "scr_metric_threshold_2", "mean_absorption_score")
    variants = [v for _, v, _ in TABLE1_ROWS]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 4))
    for ax, metric in zip(axes, metrics):
        bar_panel(ax, results, variants, metric)
        ax.set_xticks(range(len(variants)), [c for c, _, _ in TABLE1_ROWS], rotation=20, ha="right", fontsize=8)
    return _finish(fig, "Paper 000 Table 1 ablations at our scale (full = CompeteSAE run 6)", results)


# ------------------------------------------------------------------------------------------------
# Paper 004 (orthogonality): Figures 1–4
# ------------------------------------------------------------------------------------------------
def _ortho_fig(results: Results, metrics: Sequence[str], title: str, reference: dict[str, tuple[str, str]] | None = None,
              show_l0: bool = False):
    set_style()
    width = max(6.5, 1.35 * len(ORTHO_VARIANTS) + 1)
    fig, axes = plt.subplots(1, len(metrics), figsize=(width * len(metrics), 4.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        bar_panel(ax, results, ORTHO_VARIANTS, metric, baseline="topk",
                  reference_line=(reference or {}).get(metric), show_l0=show_l0)
    return _finish(fig, title, results)


def fig_ortho_absorption(results: Results) -> plt.Figure:
    """Paper 004 Figure 1: absorption by configuration."""
    return _ortho_fig(results, ["mean_absorption_score"],
                      "Paper 004 Fig. 1: absorption by configuration — lower is better (band: TopK baseline)",
                      show_l0=True)


def fig_ortho_scr(results: Results) -> plt.Figure:
    """Paper 004 Figure 2: SCR with 2 and 20 ablated latents."""
    return _ortho_fig(results, ["scr_metric_threshold_2", "scr_metric_threshold_20"],
                      "Paper 004 Fig. 2: SCR at n = 2 and n = 20 — higher is better (band: TopK baseline)")


def fig_ortho_reconstruction(results: Results) -> plt.Figure:
    """Paper 004 Figure 3: MSE and cosine similarity."""
    return _ortho_fig(results, ["mse", "cossim"],
                      "Paper 004 Fig. 3: reconstruction by configuration (band: TopK baseline)")


def fig_ortho_probing(results: Results) -> plt.Figure:
    """Paper 004 Figure 4: sparse probing top-1 and top-20 (dotted: the residual-stream probe)."""
    return _ortho_fig(results, ["sae_top_1_test_accuracy", "sae_top_20_test_accuracy"],
                      "Paper 004 Fig. 4: sparse probing — higher is better (band: TopK baseline)",
                      reference={"sae_top_1_test_accuracy": ("llm_top_1_test_accuracy", "residual top-1"),
                                 "sae_top_20_test_accuracy": ("llm_top_20_test_accuracy", "residual top-20")})


# ------------------------------------------------------------------------------------------------
# λ sweep
# ------------------------------------------------------------------------------------------------
SAE_PROBES_METRICS = ("sae_probes_sae_top_1_test_auc", "sae_probes_sae_top_5_test_auc")
"""The second probing eval (the sae-probes benchmark's protocol), drawn apart from SAEBench's sparse probing."""


def fig_sae_probes(results: Results, variants: Sequence[str] = HEADLINE_GROUPS) -> plt.Figure:
    """The sae-probes benchmark: test AUC of the top-1 and top-5 latent probes for the headline variants
    (dotted: the residual-stream L2 probe on all dimensions; band: the TopK baseline)."""
    set_style()
    fig, axes = plt.subplots(1, len(SAE_PROBES_METRICS), figsize=(7.5 * len(SAE_PROBES_METRICS), 4.8))
    for ax, metric in zip(axes, SAE_PROBES_METRICS):
        bar_panel(ax, results, list(variants), metric, baseline="topk",
                  reference_line=("sae_probes_llm_test_auc", "residual probe, all dims"), tick_rotation=35)
    return _finish(fig, "sae-probes benchmark: SAE latent probes, test AUC — higher is better (band: TopK baseline)",
                   results)


def sweep_table(results: Results, metrics: Sequence[str] = SWEEP_METRICS + (RATIO_METRIC,)) -> pd.DataFrame:
    """One row per (penalty, reading, variant, metric): λ, λ / λ_reference, seed mean ± CI (the
    penalty / MSE ratio at the end of training included by default)."""
    rows = []
    for (kind, reading), ref in SWEEP_REFERENCES.items():
        members = penalty_family(results, ref)
        lam_ref = results.penalty_lam(ref)
        base = matched_baseline(results, ref)
        for v in members:
            for metric in metrics:
                s = results.stat(v, metric)
                rows.append({"penalty": kind, "reading": reading, "variant": v, "reference": ref, "baseline": base,
                             "lam": results.penalty_lam(v), "lam_mult": results.penalty_lam(v) / lam_ref,
                             "metric": metric, "n": s["n"], "mean": s["mean"], "ci95": s["ci"]})
    return pd.DataFrame(rows, columns=["penalty", "reading", "variant", "reference", "baseline", "lam", "lam_mult",
                                       "metric", "n", "mean", "ci95"])


def _ratio_panel(ax, results: Results, table: pd.DataFrame, kind: str) -> None:
    """penalty / MSE at the end of training against λ ÷ paper's λ (log–log), with the original runs'
    level (≲ ``ORIGINAL_RATIO``) as a dotted line; "not recorded" when no result has the ratio."""
    sub = table[(table["penalty"] == kind) & (table["metric"] == RATIO_METRIC) & (table["n"] > 0)
                & (table["mean"] > 0)]
    ax.set_xscale("log")
    ax.set_xlabel("λ ÷ paper's λ (log scale)")
    ax.set_ylabel("penalty / MSE at end of training\n(log; descriptive)", fontsize=8)
    if sub.empty:
        _not_run(ax, "penalty / MSE not recorded\n(results predate it, or not run)")
        ax.set_yticks([])
        return
    for reading, grp in sub.groupby("reading"):
        grp = grp.sort_values("lam_mult")
        style = READING_STYLE[reading]
        ax.plot(grp["lam_mult"], grp["mean"], color=FAMILY_COLORS[kind], ls=style["ls"], marker=style["marker"],
                ms=5, lw=1.4, label=reading.replace("_", " "))
    ax.set_yscale("log")
    ax.axhline(ORIGINAL_RATIO, color="0.2", ls=":", lw=1.2, label=f"original runs ≲ {ORIGINAL_RATIO:g}")
    ax.axvline(1.0, color="0.6", lw=0.8)
    ax.legend(fontsize=7, loc="best")


def fig_lambda_sweep(results: Results, metrics: Sequence[str] = SWEEP_METRICS, ratio: bool = True) -> plt.Figure:
    """Each metric against λ ÷ the paper's λ (log), per penalty (rows) and reading (line style); the
    grey band is the no-penalty TopK SAE with the same k (mean ± 95% CI). ``ratio``: a last column
    with the penalty's share of the loss (penalty / MSE at the end of training), so a reader can place
    the original runs (≲ 1e-3 of the loss)."""
    set_style()
    table = sweep_table(results, tuple(metrics) + ((RATIO_METRIC,) if ratio else ()))
    kinds = ("competition", "orthogonality")
    ncol = len(metrics) + int(ratio)
    fig, axes = plt.subplots(len(kinds), ncol, figsize=(3.3 * ncol, 3.4 * len(kinds)), squeeze=False)
    for r, kind in enumerate(kinds):
        legend_done = False  # one legend per row, on its first panel with data
        for c, metric in enumerate(metrics):
            ax = axes[r, c]
            sub = table[(table["penalty"] == kind) & (table["metric"] == metric) & (table["n"] > 0)]
            if sub.empty:
                _not_run(ax, f"{kind}: not run")
                ax.set_yticks([])
            for reading, grp in sub.groupby("reading"):
                grp = grp.sort_values("lam_mult")
                style = READING_STYLE[reading]
                ax.errorbar(grp["lam_mult"], grp["mean"], yerr=grp["ci95"].fillna(0), color=FAMILY_COLORS[kind],
                            ls=style["ls"], marker=style["marker"], capsize=3, ms=5, lw=1.4,
                            label=f"{reading.replace('_', ' ')} (λ×1 = {results.penalty_lam(SWEEP_REFERENCES[(kind, reading)]):g})")
            bases = {b for b in sub["baseline"].dropna()}
            for b in bases:
                mean, lo, hi = _band(results, b, metric)
                if math.isfinite(mean):
                    ax.axhline(mean, color="0.3", ls=":", lw=1)
                    if hi > lo:
                        ax.axhspan(lo, hi, color="0.5", alpha=0.2, lw=0)
            ax.set_xscale("log")
            ax.axvline(1.0, color="0.6", lw=0.8)
            ax.set_xlabel("λ ÷ paper's λ (log scale)")
            ax.set_ylabel(axis_label(metric), fontsize=8)
            if c == 0:
                ax.set_title(f"{kind} penalty", fontsize=10, loc="left")
            if not sub.empty and not legend_done:
                ax.legend(fontsize=7, loc="best")
                legend_done = True
        if ratio:
            _ratio_panel(axes[r, ncol - 1], results, table, kind)
    return _finish(fig, "Penalty strength sweep: does a stronger penalty change anything? "
                        "(band = TopK with the same k, no penalty; last column: the penalty's share of the loss)",
                   results)


# ------------------------------------------------------------------------------------------------
# Headline rows (seeds) and penalty effects vs the no-penalty twin
# ------------------------------------------------------------------------------------------------
def headline_table(results: Results, groups: Sequence[str] = HEADLINE_GROUPS,
                   metrics: Sequence[str] = HEADLINE_METRICS) -> pd.DataFrame:
    """Seed mean ± 95% CI (t) and SD for the headline variants."""
    t = seed_table(results, metrics, groups)
    t.insert(1, "note", [VARIANT_NOTES.get(g, "") for g in t["group"]])
    t.insert(3, "better", [direction(m) for m in t["metric"]])
    return t


def scr_definitions_table(results: Results, groups: Sequence[str] = HEADLINE_GROUPS, n: int = 20) -> pd.DataFrame:
    """``scr_metric_threshold_<n>`` under both ablation definitions (SAEBench's, which also moves the zeroed
    BOS/PAD positions, and the kept-tokens-only alternative): seed mean ± 95% CI per group, and
    ``excludes_zero`` (True/False; None with fewer than two seeds)."""
    rows = []
    for definition, suffix in (("saebench", ""), ("kept_only", "_kept_only")):
        t = seed_table(results, [f"scr_metric_threshold_{n}{suffix}"], groups)
        t.insert(1, "special_positions", definition)
        rows.append(t)
    out = pd.concat(rows, ignore_index=True)
    out["excludes_zero"] = [None if not (c == c) else bool(lo > 0 or hi < 0)
                            for c, lo, hi in zip(out["ci"], out["lo"], out["hi"])]
    return out


GENRE_GROUPS = ("topk", "topk_k100")
"""The seeded TopK baselines whose per-genre held-out metrics are summarised (``genre_gap_table``)."""
GENRE_GAP_TARGET = 0.03
"""Issue #12's target: the TopK baseline's worst genre within this much KL score of its best."""
GENRE_METRICS = ("kl_score", "ce_score", "ev")
"""Per-genre metrics kept in ``results/<p>/core/<variant>.json`` → ``per_genre``."""


GENRE_GAP_COLUMNS = ["group", "metric", "n_seeds", "gap_mean", "gap_ci", "gap_min", "gap_max", "worst_genre",
                     "best_genre", "sequences_per_genre", "target", "meets_target"]


def per_genre_long(core_dir: str | Path, variants: Iterable[str]) -> pd.DataFrame:
    """One row per (variant, genre, metric) from the ``per_genre`` block of each core result: columns
    variant, group (seed base), genre, metric, value, n_sequences. Variants without the block are left out."""
    from .io import read_json

    rows = []
    for v in variants:
        path = Path(core_dir) / f"{v}.json"
        if not path.exists():
            continue
        for genre, m in (read_json(path).get("per_genre") or {}).items():
            for metric in GENRE_METRICS:
                if m.get(metric) is not None:
                    rows.append({"variant": v, "group": seed_base(v), "genre": genre, "metric": metric,
                                 "value": float(m[metric]), "n_sequences": int(m.get("n_sequences", 0))})
    return pd.DataFrame(rows, columns=["variant", "group", "genre", "metric", "value", "n_sequences"])


def genre_table(long: pd.DataFrame, groups: Sequence[str] = GENRE_GROUPS) -> pd.DataFrame:
    """Seed mean of each per-genre metric: rows (group, genre), columns the metrics, plus the seeds and
    held-out sequences behind each genre."""
    sub = long[long["group"].isin(groups)]
    if sub.empty:
        return pd.DataFrame(columns=["group", "genre", *GENRE_METRICS, "n_seeds", "n_sequences"])
    wide = sub.pivot_table(index=["group", "genre"], columns="metric", values="value", aggfunc="mean")
    counts = sub[sub["metric"] == "kl_score"].groupby(["group", "genre"]).agg(
        n_seeds=("variant", "nunique"), n_sequences=("n_sequences", "first"))
    return wide.join(counts).reset_index()


def genre_gap_table(long: pd.DataFrame, groups: Sequence[str] = GENRE_GROUPS, metric: str = "kl_score",
                    target: float = GENRE_GAP_TARGET) -> pd.DataFrame:
    """Per group: the best-minus-worst genre gap of ``metric`` in each seed, its mean and 95% t interval
    over seeds, the genres that were worst and best most often, and whether the gap meets ``target``:
    "yes" (the interval lies below it), "no" (above it), "undetermined" (it straddles it), or, for a
    single seed, "yes (1 run)"/"no (1 run)"."""
    rows = []
    for g in groups:
        sub = long[(long["group"] == g) & (long["metric"] == metric)]
        if sub.empty:
            continue
        per_seed = sub.pivot_table(index="variant", columns="genre", values="value")
        gaps = (per_seed.max(axis=1) - per_seed.min(axis=1)).to_numpy()
        spread = mean_ci(gaps)
        n, mean, half = spread["n"], spread["mean"], spread["ci"]
        if n > 1:
            meets = "yes" if mean + half < target else "no" if mean - half > target else "undetermined"
        else:
            meets = ("yes" if mean < target else "no") + " (1 run)"
        rows.append({"group": g, "metric": metric, "n_seeds": n, "gap_mean": mean, "gap_ci": half,
                     "gap_min": float(gaps.min()), "gap_max": float(gaps.max()),
                     "worst_genre": per_seed.idxmin(axis=1).mode().iloc[0],
                     "best_genre": per_seed.idxmax(axis=1).mode().iloc[0],
                     "sequences_per_genre": int(sub["n_sequences"].min()), "target": target, "meets_target": meets})
    return pd.DataFrame(rows, columns=GENRE_GAP_COLUMNS)


UNLEARNING_SEED_GROUPS = ("topk", "compete_run6", "relu_l1_matched")
"""The seeded rows the unlearning eval scores (``unlearning_variants.yaml``)."""
UNLEARNING_SD_TARGET = 0.05
"""Issue #13's target for a single score's bootstrap SD."""


def unlearning_seed_stability(results: Results, groups: Sequence[str] = UNLEARNING_SEED_GROUPS,
                              metrics: Sequence[str] = ("unlearning_auc", "unlearning_score"),
                              target_sd: float = UNLEARNING_SD_TARGET) -> pd.DataFrame:
    """How the bootstrap SD of an unlearning score (over eval sequences, within one SAE) compares with the
    spread between seeds (SAEs trained alike). One row per (group, metric) with at least one scored seed:

    - ``n``, ``mean``, ``seed_sd``: over the group's seeds;
    - ``boot_sd_rms``: the root mean square of the seeds' bootstrap SDs, ``max_boot_sd`` the largest, and
      ``boot_sd_below_target`` whether every one is below ``target_sd``;
    - ``seed_over_boot``: ``seed_sd / boot_sd_rms`` (≈ 1 when the bootstrap accounts for the seed spread,
      ≫ 1 when SAEs trained alike differ by more than the eval sequences explain);
    - ``max_pair_z``: the largest |a − b| / √(sd_a² + sd_b²) over pairs of seeds (bootstrap SDs), the pair
      in ``max_pair``, and ``within_2sd`` = ``max_pair_z ≤ 2`` (None without a pair of seeds that both carry a
      bootstrap SD; a pair whose two SDs are both 0 counts as infinitely far apart unless equal).
    """
    rows = []
    for g in groups:
        members = results.group_members(g)
        for m in metrics:
            pts = [(v, results.value(v, m), results.value(v, f"{m}_sd")) for v in members]
            pts = [(v, x, s) for v, x, s in pts if math.isfinite(x)]
            if not pts:
                continue
            xs = np.array([x for _, x, _ in pts])
            sds = np.array([s for _, _, s in pts])
            best, pair = (math.nan, None)
            for i in range(len(pts)):
                for j in range(i + 1, len(pts)):
                    diff, se = abs(xs[i] - xs[j]), math.hypot(sds[i], sds[j])
                    if not math.isfinite(se):  # a seed without a bootstrap SD (an older result file)
                        continue
                    z = diff / se if se > 0 else (0.0 if diff == 0 else math.inf)
                    if pair is None or z > best:
                        best, pair = z, f"{pts[i][0]} vs {pts[j][0]}"
            boot_rms = float(np.sqrt(np.nanmean(sds ** 2))) if np.isfinite(sds).any() else math.nan
            seed_sd = float(xs.std(ddof=1)) if len(xs) > 1 else math.nan
            rows.append({"group": g, "metric": m, "n": len(pts), "mean": float(xs.mean()), "seed_sd": seed_sd,
                         "boot_sd_rms": boot_rms, "max_boot_sd": float(np.nanmax(sds)) if np.isfinite(sds).any() else math.nan,
                         "boot_sd_below_target": bool(np.isfinite(sds).all() and (sds < target_sd).all()),
                         "seed_over_boot": seed_sd / boot_rms if boot_rms > 0 else math.nan,
                         "max_pair_z": best, "max_pair": pair,
                         "within_2sd": None if pair is None else bool(best <= 2.0)})
    return pd.DataFrame(rows, columns=["group", "metric", "n", "mean", "seed_sd", "boot_sd_rms", "max_boot_sd",
                                       "boot_sd_below_target", "seed_over_boot", "max_pair_z", "max_pair", "within_2sd"])


def fig_headline(results: Results, groups: Sequence[str] = HEADLINE_GROUPS,
                 metrics: Sequence[str] = HEADLINE_METRICS) -> plt.Figure:
    """Headline variants, mean ± 95% CI over seeds (dots = seeds), one panel per metric."""
    set_style()
    ncol = 4
    nrow = math.ceil(len(metrics) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.3 * ncol, 3.8 * nrow), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        bar_panel(ax, results, groups, metric, tick_rotation=30)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    return _finish(fig, "Headline variants: mean ± 95% CI over seeds (dots: individual seeds)", results)


COMPARISON_TWIN = "vs plain TopK"
"""Effect of a penalty against the same TopK SAE (same k and width) without it."""
COMPARISON_L1 = "vs L1 control"
"""Effect of an as-described reading against the same TopK SAE with only its L1 term."""
EFFECT_COLUMNS = ["variant", "baseline", "comparison", "penalty", "reading", "lam", "l1_coef", "metric", "better",
                  "baseline_mean", "diff", "diff_lo", "diff_hi", "ci_method", "n_variant", "n_baseline",
                  "rel_change_pct", "seed_sd", "effect_over_seed_sd", "status"]


def effect_comparisons(results: Results) -> list[tuple[str, str, str]]:
    """(variant, baseline, comparison) for every penalised variant present: against its no-penalty twin
    (``matched_baseline``), and for an as-described reading also against its L1 control
    (``L1_CONTROLS``), listed even when the control was not run so that the gap shows."""
    out = []
    for v in results.variants:
        if seed_base(v) != v and seed_base(v) in results.variants:
            continue
        if not results.penalty_cfgs.get(v):
            continue
        base = matched_baseline(results, v)
        if base is not None:
            out.append((v, base, COMPARISON_TWIN))
        if v in L1_CONTROLS:
            out.append((v, L1_CONTROLS[v], COMPARISON_L1))
    return out


def effects_table(results: Results, metrics: Sequence[str] = EFFECT_METRICS) -> pd.DataFrame:
    """Every penalised variant against its no-penalty twin (same k and width) and, for the as-described
    readings, against their L1 controls: Δ with its 95% CI, the metric's run-to-run SD, and Δ / SD (how
    many seed-SDs the effect is). Seeds are pooled (5 where run). A comparison whose baseline has no
    result gets one row with ``status`` "not run" and empty numbers."""
    rows = []
    for v, base, kind in effect_comparisons(results):
        cfg = results.penalty_cfgs.get(v) or {}
        common = {"variant": v, "baseline": base, "comparison": kind, "penalty": family(results, v),
                  "reading": cfg.get("reading"), "lam": results.penalty_lam(v), "l1_coef": float(cfg.get("l1_coef") or 0.0)}
        if not results.has(base):
            rows.append({**common, "metric": "", "status": f"not run ({base} has no results)"})
            continue
        for metric in metrics:
            d = results.compare(v, base, metric)
            if d.n_a == 0 or d.n_b == 0:
                continue
            b = float(np.mean(results.values(base, metric)))
            sd, _ = results.noise(metric)
            rows.append({**common, "metric": metric, "better": direction(metric), "baseline_mean": b, "diff": d.diff,
                         "diff_lo": d.lo, "diff_hi": d.hi, "ci_method": d.method, "n_variant": d.n_a,
                         "n_baseline": d.n_b, "rel_change_pct": 100 * d.diff / abs(b) if b else math.nan,
                         "seed_sd": sd, "effect_over_seed_sd": d.diff / sd if sd and math.isfinite(sd) else math.nan,
                         "status": ""})
    return pd.DataFrame(rows, columns=EFFECT_COLUMNS)


def _effect_row_label(results: Results, variant: str, comparison: str) -> str:
    name = variant_label(results, variant).replace("\n", " ")
    return f"{name} {comparison}" if comparison == COMPARISON_L1 or variant in L1_CONTROLS else name


def fig_effects(results: Results, metrics: Sequence[str] = EFFECT_METRICS) -> plt.Figure:
    """Forest plot: change of each metric caused by each penalty, relative to the no-penalty twin (%) and,
    for the as-described readings, relative to their L1 controls, with 95% CIs; the grey band is ± the
    metric's 95% run-to-run spread; the green half is "better"; "not run" marks a missing comparison."""
    set_style()
    t = effects_table(results, metrics)
    ncol = 3
    nrow = math.ceil(len(metrics) / ncol)
    keys = list(dict.fromkeys(zip(t["variant"], t["comparison"]))) if len(t) else []
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.0 * ncol, max(2.4, 0.5 * len(keys) + 1.6) * nrow),
                             squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        better = direction(metric)
        sub = t[t["metric"] == metric].set_index(["variant", "comparison"])
        ax.axvline(0, color="0.3", lw=1)
        ax.set_title(label(metric), fontsize=9)
        ax.set_xlabel("change vs the comparison SAE (%)\n" +
                      ("← penalty better (lower)" if better == "lower" else "penalty better (higher) →"), fontsize=8)
        if sub["diff"].notna().sum() == 0:
            _not_run(ax)
            ax.set_yticks([])
            continue
        extent = 1e-9
        for y, key in enumerate(keys):
            if key not in sub.index or pd.isna(sub.loc[key, "diff"]):
                ax.text(0, y, "not run", ha="center", va="center", color="0.45", fontsize=8)
                continue
            r = sub.loc[key]
            scale = 100 / abs(r["baseline_mean"]) if r["baseline_mean"] else 1.0
            x = r["diff"] * scale
            err, lo, hi = None, x, x
            if math.isfinite(r["diff_lo"]):
                lo, hi = r["diff_lo"] * scale, r["diff_hi"] * scale
                err = [[x - lo], [hi - x]]
            ax.errorbar(x, y, xerr=err, fmt="o" if key[1] == COMPARISON_TWIN else "D",
                        color=FAMILY_COLORS.get(r["penalty"], FAMILY_COLORS["other"]), capsize=3, ms=6, zorder=3)
            note = f"{x:+.1f}%" + ("" if err is not None else " (no CI)") + f" n={int(r['n_variant'])}v{int(r['n_baseline'])}"
            ax.annotate(note, (x, y), xytext=(0, 7), textcoords="offset points", ha="center", fontsize=7)
            extent = max(extent, abs(lo), abs(hi))
            if math.isfinite(r["seed_sd"]):
                half = 1.96 * r["seed_sd"] * scale
                ax.fill_betweenx([y - 0.3, y + 0.3], -half, half, color="0.5", alpha=0.2, lw=0)
                extent = max(extent, half)
        lim = 1.25 * extent
        ax.set_xlim(-lim, lim)
        if better == "lower":
            ax.axvspan(-lim, 0, color=sns.color_palette("colorblind")[2], alpha=0.07, lw=0)
        else:
            ax.axvspan(0, lim, color=sns.color_palette("colorblind")[2], alpha=0.07, lw=0)
        ax.set_yticks(range(len(keys)), [_effect_row_label(results, v, c) for v, c in keys], fontsize=8)
        ax.set_ylim(len(keys) - 0.4, -0.6)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    return _finish(fig, "Did the penalty help? Each penalised SAE vs the same TopK SAE without it (dots) and, "
                        "as described, vs its L1 control (diamonds)\n(whiskers: 95% CI; grey: ±1.96 run-to-run SD; "
                        "green side: better)", results)


def md_table(df: pd.DataFrame, floatfmt: str = ".4g") -> str:
    """A GitHub markdown table (pipes escaped, NaN empty, floats with ``floatfmt``)."""
    def cell(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, (float, np.floating)):
            return format(float(v), floatfmt)
        return str(v).replace("|", "\\|").replace("\n", " ")

    cols = list(df.columns)
    lines = ["| " + " | ".join(cell(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, path_stem) -> list:
    """Write ``df`` as ``<stem>.csv`` and ``<stem>.md`` (atomic); list columns are joined with spaces."""
    out = df.copy()
    for col in out.columns:
        if out[col].map(lambda v: isinstance(v, (list, tuple))).any():
            out[col] = out[col].map(lambda v: " ".join(f"{x:.6g}" for x in v) if isinstance(v, (list, tuple)) else v)
    stem = Path(path_stem)
    return [atomic_write_text(stem.with_suffix(".csv"), out.to_csv(index=False)),
            atomic_write_text(stem.with_suffix(".md"), md_table(out))]


def key_metrics_table(results: Results, metrics: Iterable[str] = HEADLINE_METRICS) -> pd.DataFrame:
    """Every variant (seeds pooled) × key metric: mean and CI half-width, plus its description."""
    groups = sorted({seed_base(v) if seed_base(v) in results.variants else v for v in results.variants})
    t = seed_table(results, metrics, groups)
    wide = t.pivot(index="group", columns="metric", values="mean")
    ci = t.pivot(index="group", columns="metric", values="ci").add_suffix("_ci95")
    n = t.groupby("group")["n"].max().rename("n_seeds")
    out = pd.concat([n, wide, ci], axis=1).reset_index()
    out.insert(1, "note", [VARIANT_NOTES.get(g, "") for g in out["group"]])
    return out


__all__ = ["bar_panel", "variant_label", "family", "fig_competesae_absorption", "table1_competesae",
           "fig_competesae_table1", "fig_ortho_absorption", "fig_ortho_scr", "fig_ortho_reconstruction",
           "fig_ortho_probing", "fig_sae_probes", "sweep_table", "fig_lambda_sweep", "headline_table", "fig_headline", "effects_table",
           "fig_effects", "key_metrics_table", "md_table", "write_table", "COMPETE_VARIANTS", "ORTHO_VARIANTS", "TABLE1_ROWS",
           "SWEEP_REFERENCES", "HEADLINE_GROUPS", "HEADLINE_METRICS", "L1_CONTROLS", "VARIANT_NOTES", "RATIO_METRIC",
           "effect_comparisons", "COMPARISON_TWIN", "COMPARISON_L1", "per_genre_long", "genre_table", "genre_gap_table",
           "GENRE_GROUPS", "GENRE_GAP_TARGET"]
