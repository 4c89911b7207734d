"""The two papers' claims as data, the verdict rule, and the claims ledger.

Each :class:`Claim` is one numbered claim of paper 000 (CompeteSAE) or paper 004 (sparsity-guided
orthogonality): what it says, the number the paper printed, which of our SAE variants it compares,
the metric and which way that metric is better, and where ``docs/spec/original_runs.md`` (a copy of ``shared/spec/``) traced it
(``spec_quote`` is a verbatim piece of that spec row; a test checks it).

The verdict is computed, never typed: :func:`verdict` applies one rule to a measured difference,
:func:`build_ledger` applies it to our results (seed means, 95% CIs) and to the original runs'
numbers (``ORIGINAL_RUNS``, transcribed from the spec's tables), so the ledger shows side by side
what the papers claimed, what their own runs showed, and what we measure.

**Absorption is lower-is-better.** Both papers call an increase an improvement; a claim that a method
"improves absorption" is tested as "its absorption score is lower".
"""
from __future__ import annotations

import csv
import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from .results import DiffCI, Results, diff_ci, direction

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
NOISE = "within noise"
NOT_TESTABLE = "not testable offline"
NOT_RUN = "not run"
VERDICTS = (SUPPORTED, CONTRADICTED, NOISE, NOT_TESTABLE, NOT_RUN)
"""Every verdict the ledger can show."""

CLAIMED = ("better", "worse", "not_worse", "equal")
"""What a claim asserts about ``variant`` against ``baseline`` on the metric (in the metric's own
direction of better): strictly better, strictly worse, no worse than (within ``margin``), or equal
(within ``margin``)."""

MARGIN = 0.05
"""Non-inferiority / equality margin, relative to |baseline|: "maintains", "matches" and "consistent"
claims allow a change of up to 5% of the baseline value."""
TIE_TOL = 0.01
"""Without any confidence interval, a change smaller than 1% of |baseline| is called "within noise"."""
TREND_MIN_RHO = 0.5
"""A trend claim needs a Spearman |ρ| of at least 0.5 (with the claimed sign) over ≥ 3 points."""

VERDICT_RULE = f"""\
Verdict rule (``saelib.claims.verdict``). Let g be the *improvement* of the variant over its
comparison, in the metric's own direction of better (g = ours − baseline for higher-is-better
metrics, baseline − ours for lower-is-better ones, e.g. absorption and MSE), and [g_lo, g_hi] its 95%
confidence interval over seeds when one exists. With m = {MARGIN:.0%} of |baseline|:

* claim "better":    supported if g_lo > 0; contradicted if g_hi < 0; otherwise within noise.
* claim "worse":     the same with the sign of g flipped.
* claim "not worse" ("maintains", "matches"): supported if g_lo ≥ −m; contradicted if g_hi < −m;
  otherwise within noise.
* claim "equal":     supported if −m ≤ g_lo and g_hi ≤ m; contradicted if g_lo > m or g_hi < −m;
  otherwise within noise.
* No interval (single runs, no seeded group to borrow a run-to-run SD from): the interval collapses
  to g itself, except that for "better"/"worse" a |g| below {TIE_TOL:.0%} of |baseline| is within noise.
* Claims over several variants or metrics ("all variants improve", "every threshold") are
  contradicted if any pair is, supported only if every pair is, within noise otherwise.
* "best of" claims compare the variant with the best of the others; trend claims ("steadily improves
  with α") use the Spearman ρ between λ and the metric: supported if ρ points the claimed way with
  |ρ| ≥ {TREND_MIN_RHO}, contradicted if it points the other way with |ρ| ≥ {TREND_MIN_RHO}.
* A claim whose variants were not run at this profile is "not run"; a claim that needs something the
  offline setup cannot produce (a Gemma-2-2B-specific number, data nobody recorded) is
  "not testable offline".
"""


def verdict(our_value: float, baseline_value: float, direction: str, claimed_direction: str,
            ci: tuple[float, float] | None = None, *, margin: float = MARGIN, tie_tol: float = TIE_TOL) -> str:
    """Judge one claim on one measured comparison (see ``VERDICT_RULE``).

    ``direction``: "lower" or "higher" (which way the metric is better). ``claimed_direction``: one of
    ``CLAIMED``. ``ci``: (lo, hi) of ``our_value − baseline_value`` or None. ``margin`` and
    ``tie_tol`` are relative to |baseline_value|.
    """
    if direction not in ("lower", "higher"):
        raise ValueError(f"direction must be 'lower' or 'higher', got {direction!r}")
    if claimed_direction not in CLAIMED:
        raise ValueError(f"claimed_direction must be one of {CLAIMED}, got {claimed_direction!r}")
    if our_value is None or baseline_value is None or not (math.isfinite(our_value) and math.isfinite(baseline_value)):
        return NOT_RUN
    sign = 1.0 if direction == "higher" else -1.0
    g = sign * (our_value - baseline_value)
    if ci is not None and all(c is not None and math.isfinite(c) for c in ci):
        lo, hi = sorted((sign * (ci[0]), sign * (ci[1])))
        if not lo <= g <= hi:
            raise ValueError(f"ci {ci} does not contain the difference {our_value - baseline_value}")
        has_ci = True
    else:
        lo = hi = g
        has_ci = False
    m = margin * abs(baseline_value)
    if claimed_direction in ("better", "worse"):
        if claimed_direction == "worse":
            lo, hi, g = -hi, -lo, -g
        if not has_ci and abs(g) < tie_tol * abs(baseline_value):
            return NOISE
        if not has_ci and g == 0:
            return NOISE
        if lo > 0:
            return SUPPORTED
        if hi < 0:
            return CONTRADICTED
        return NOISE
    if claimed_direction == "not_worse":
        if lo >= -m:
            return SUPPORTED
        if hi < -m:
            return CONTRADICTED
        return NOISE
    # equal
    if -m <= lo and hi <= m:
        return SUPPORTED
    if lo > m or hi < -m:
        return CONTRADICTED
    return NOISE


def trend_verdict(rho: float, direction: str, claimed_direction: str = "better", n_points: int = 0,
                  min_rho: float = TREND_MIN_RHO) -> str:
    """A claim that the metric gets ``claimed_direction`` ("better"/"worse") as λ grows, judged on
    the Spearman ρ(λ, metric) over ``n_points`` variants (fewer than 3 → not run)."""
    if n_points < 3 or rho is None or not math.isfinite(rho):
        return NOT_RUN
    want = (1.0 if direction == "higher" else -1.0) * (1.0 if claimed_direction == "better" else -1.0)
    if want * rho >= min_rho:
        return SUPPORTED
    if want * rho <= -min_rho:
        return CONTRADICTED
    return NOISE


def combine_verdicts(verdicts: Iterable[str]) -> str:
    """"All of these hold": contradicted if any is, supported only if every run pair is."""
    run = [v for v in verdicts if v not in (NOT_RUN, NOT_TESTABLE)]
    if not run:
        return NOT_RUN
    if CONTRADICTED in run:
        return CONTRADICTED
    if all(v == SUPPORTED for v in run):
        return SUPPORTED
    return NOISE


# ------------------------------------------------------------------------------------------------
# The original runs (docs/spec/original_runs.md, tables "HO" and "SO"), keyed like our results
# ------------------------------------------------------------------------------------------------
_ORIG_COLS = ("l0", "ev_legacy", "mse_legacy", "cossim", "kl_score", "ce_score", "mean_absorption_score",
              "mean_num_split_features", "scr_dir1_threshold_2", "scr_dir1_threshold_20", "scr_metric_threshold_2",
              "scr_metric_threshold_20", "scr_metric_threshold_100", "sae_top_1_test_accuracy",
              "sae_top_20_test_accuracy", "sae_test_accuracy", "llm_top_1_test_accuracy", "unlearning_score")
_N = None
_ORIG_ROWS = {
    # HO = CompeteSAE folder (F = 18,432). Baselines: topk k=320, standard = ReLU + L1.
    "HO/topk": (320, .777, 1.414, .930, .991, .992, .0113, 1.24, .167, .287, .117, .242, .319, .796, .926, .960, .666, .0019),
    "HO/standard": (48.9, .293, 4.438, .762, .720, .714, .0065, 1.04, .025, -.082, .043, .051, .034, .624, .821, .877, .654, .028),
    "HO/run1": (120, .676, 2.062, .898, .978, .977, .0481, 1.21, .155, .223, .099, .217, .272, .781, .920, .958, .656, .060),
    "HO/run2": (120, .680, 2.031, .898, .978, .979, .0462, 1.13, .169, .222, .080, .218, .292, .777, .919, .958, .657, .021),
    "HO/run3": (120, .691, 1.945, .906, .981, .982, .0418, 1.29, .218, .223, .104, .260, .315, .793, .926, .958, .653, .019),
    "HO/run4": (120, .691, 1.961, .902, .981, .980, .0535, 1.26, .191, .231, .089, .247, .328, .783, .926, .958, .657, .067),
    "HO/run5": (100, .680, 2.031, .898, .978, .979, .0385, 1.28, .177, .201, .100, .260, .298, .763, .923, .958, .662, .099),
    "HO/run6": (100, .680, 2.031, .898, .978, .979, .0376, 1.28, .177, .201, .100, .260, .298, .763, .923, .958, .662, .099),
    # SO = orthogonality folder (k = 320). Baselines are 65,536 wide; unlearning was not run.
    "SO/topk": (320, .789, 1.328, .938, .992, .992, .0092, 1.00, .132, .203, .065, .153, .215, .790, .920, .960, .657, _N),
    "SO/standard": (8311, .988, .082, .996, 1.000, 1.000, .0092, 1.00, .028, -.097, .005, .036, .139, .698, .870, .958, .657, _N),
    "SO/run1": (320, .777, 1.414, .930, .991, .992, .0193, 1.32, .196, .262, .120, .222, .285, .798, .922, .961, .645, _N),
    "SO/run2": (320, .777, 1.414, .930, .991, .992, .0115, 1.14, .158, .275, .128, .224, .320, .808, .925, .961, .657, _N),
    "SO/run3": (320, .777, 1.414, .930, .991, .992, .0215, 1.18, .181, .282, .125, .241, .295, .795, .924, .960, .653, _N),
    "SO/run4": (320, .777, 1.414, .934, .991, .992, .0251, 1.14, .172, .289, .126, .235, .290, .804, .925, .961, .650, _N),
    "SO/run5": (320, .777, 1.398, .934, .991, .992, .0171, 1.33, .125, .242, .057, .170, .229, .750, .914, .959, .660, _N),
    "SO/run6": (320, .777, 1.414, .930, .991, .992, .0116, 1.10, .158, .275, .128, .224, .320, .808, .925, .961, .657, _N),
}
ORIGINAL_RUNS: dict[str, dict[str, float]] = {
    run: {k: float(v) for k, v in zip(_ORIG_COLS, row) if v is not None} for run, row in _ORIG_ROWS.items()
}
"""Original run → metric → value (Gemma-2-2B layer 12, one seed each), from the spec's tables."""
for _row in ORIGINAL_RUNS.values():
    if "sae_top_1_test_accuracy" in _row and "sae_top_20_test_accuracy" in _row:
        _row["probe_gap_top20_top1"] = _row["sae_top_20_test_accuracy"] - _row["sae_top_1_test_accuracy"]

ORIG_ALIASES = {"mse": "mse_legacy", "ev": "ev_legacy"}
"""Our metric → the field the original runs recorded (the papers printed the legacy definitions)."""

ORIG_LAMBDA = {"SO/run1": 0.01, "SO/run2": 0.1, "SO/run3": 0.05, "SO/run4": 0.075, "SO/run5": 0.075, "SO/run6": 0.1}
"""Orthogonality weight of each SO run (for trend claims)."""

DEFAULT_ORIG_MAP = {
    "000": {"topk": "HO/topk", "relu_l1": "HO/standard", **{f"compete_run{i}": f"HO/run{i}" for i in range(1, 7)}},
    "004": {"topk": "SO/topk", "relu_l1": "SO/standard", **{f"ortho_run{i}": f"SO/run{i}" for i in range(1, 6)}},
}
"""Our variant → the original run it reproduces, per paper (a claim may override entries)."""


# ------------------------------------------------------------------------------------------------
# Claims
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    """One numbered claim of one paper, and how we test it."""

    id: str
    """Stable id: ``<paper>-<section>-<what>``."""
    paper: str
    """"000" (CompeteSAE) or "004" (sparsity-guided orthogonality)."""
    section: str
    """Where the paper makes it (abstract, §6.1, Table 1, Fig. 2 …)."""
    text: str
    """The claim, short, in our words."""
    paper_value: str
    """The number(s) the paper printed, as printed."""
    metrics: tuple[str, ...]
    """Metric key(s) of our results (``saelib.results``); several = the claim must hold for all."""
    variants: tuple[str, ...]
    """Our variant(s) the claim is about; several = the claim must hold for all."""
    baseline: str | None
    """What they are compared with (None for trend claims and untestable ones)."""
    claimed: str
    """"better" / "worse" / "not_worse" / "equal" (in the metric's direction of better)."""
    comparison: str
    """How the paper stated it: "vs baseline", "relative change", "ratio", "best of", "trend over λ",
    "overhead ≤ bound"."""
    spec_quote: str
    """Verbatim text of the ``original_runs.md`` row that traces this claim (markdown ``*`` removed)."""
    original_source: str
    """Which original run(s) the number came from, per the spec."""
    spec_finding: str
    """What the spec found about the claim."""
    others: tuple[str, ...] = ()
    """For "best of": the variants the claimed best is compared with."""
    bound: float | None = None
    """For "overhead ≤ bound": the largest relative overhead the claim allows."""
    orig_map: Mapping[str, str] = field(default_factory=dict)
    """Overrides of ``DEFAULT_ORIG_MAP`` (our variant → original run) for this claim."""
    testable: bool = True
    """False: "not testable offline" (``reason`` says why)."""
    reason: str = ""
    """Why a claim is not testable, or a caveat on how it is tested."""


def _c(*args, **kw) -> Claim:
    if isinstance(kw.get("metrics"), str):
        kw["metrics"] = (kw["metrics"],)
    if isinstance(kw.get("variants"), str):
        kw["variants"] = (kw["variants"],)
    return Claim(*args, **kw)


_ABS = "mean_absorption_score"
_SCR_ALL = tuple(f"scr_metric_threshold_{n}" for n in (2, 5, 10, 20, 50, 100, 500))
_SP_K = tuple(f"sae_top_{k}_test_accuracy" for k in (1, 2, 5, 10, 20, 50))
_ORTHO_RUNS = tuple(f"ortho_run{i}" for i in range(1, 6))

CLAIMS: tuple[Claim, ...] = (
    # ============================== paper 000: CompeteSAE ==============================
    _c("000-abstract-absorption", "000", "abstract, intro, §2", "CompeteSAE reduces feature absorption against a standard SAE",
       "0.0376 vs 0.0065, \"42% reduction\"", metrics=_ABS, variants="compete_run6", baseline="relu_l1",
       claimed="better", comparison="relative change",
       spec_quote='Abstract "absorption 0.0376 vs 0.0065, 42% reduction":',
       original_source="HO run 6 mean_absorption_score vs final_info_standard (ReLU+L1)",
       spec_finding="Lower is better: a 5.8× increase (3.3× the TopK baseline); 42% not derivable."),
    _c("000-abstract-kl", "000", "abstract, intro", "CompeteSAE keeps a strong KL score (no worse than the TopK SAE)",
       "KL 0.978", metrics="kl_score", variants="compete_run6", baseline="topk", claimed="not_worse",
       comparison="vs baseline", spec_quote='"KL 0.978, MSE 2.031":', original_source="HO run 6 (= run 5)",
       spec_finding="The TopK baseline is better (0.991)."),
    _c("000-abstract-mse", "000", "abstract, intro, §2", "CompeteSAE keeps strong reconstruction (MSE no worse than the TopK SAE)",
       "MSE 2.031", metrics="mse", variants="compete_run6", baseline="topk", claimed="not_worse",
       comparison="vs baseline", spec_quote='"KL 0.978, MSE 2.031":', original_source="HO run 6 (= run 5)",
       spec_finding="The TopK baseline is better (MSE 1.414)."),
    _c("000-abstract-probing", "000", "abstract, intro", "CompeteSAE improves sparse probing over a standard SAE",
       "0.958 vs 0.877 (+9.2%)", metrics="sae_test_accuracy", variants="compete_run6", baseline="relu_l1",
       claimed="better", comparison="relative change", spec_quote='"Sparse probing 0.958 vs 0.877 (+9.2%)":',
       original_source="HO run 6 SPall vs the L1 baseline", spec_finding="The TopK baseline scores 0.960."),
    _c("000-abstract-unlearning", "000", "abstract, intro", "CompeteSAE improves unlearning over a standard SAE",
       "0.099 vs 0.028 (3.5×)", metrics="unlearning_score", variants="compete_run6", baseline="relu_l1",
       claimed="better", comparison="ratio", spec_quote='"Unlearning 0.099 vs 0.028 (3.5×)":',
       original_source="HO run 5/6 vs the standard file's block (a 65,536-wide JumpReLU SAE)",
       spec_finding="Baseline from a different SAE and eval config.",
       reason="default profile: offline forget-loss surrogate with SAEBench's selection and clamp, not WMDP"),
    _c("000-s6.1-kl", "000", "§6.1", "The final model's KL score beats the baseline",
       "0.991 vs 0.720", metrics="kl_score", variants="compete_run6", baseline="relu_l1", claimed="better",
       comparison="vs baseline", spec_quote='§6.1 "final model KL 0.991, MSE 1.414, EV 0.777, k=320":',
       original_source="numbers are the TopK baseline and the L1 SAE; CompeteSAE run 6 has 0.978",
       spec_finding="These are the TopK baseline, not CompeteSAE."),
    _c("000-s6.1-mse", "000", "§6.1", "The final model reconstructs better than the baseline",
       "MSE 1.414 vs 4.44", metrics="mse", variants="compete_run6", baseline="relu_l1", claimed="better",
       comparison="vs baseline", spec_quote='§6.1 "final model KL 0.991, MSE 1.414, EV 0.777, k=320":',
       original_source="TopK baseline vs L1; CompeteSAE run 6 has 2.031",
       spec_finding="These are the TopK baseline, not CompeteSAE."),
    _c("000-s6.1-ev", "000", "§6.1", "The final model explains more variance than the baseline",
       "EV 0.777 vs 0.293", metrics="ev", variants="compete_run6", baseline="relu_l1", claimed="better",
       comparison="vs baseline", spec_quote='§6.1 "final model KL 0.991, MSE 1.414, EV 0.777, k=320":',
       original_source="TopK baseline vs L1; CompeteSAE run 6 has 0.680",
       spec_finding="These are the TopK baseline, not CompeteSAE."),
    _c("000-s6.1-l0", "000", "§6.1", "The final model activates k = 320 latents per token (as the TopK k=320 SAE)",
       "k = 320", metrics="l0", variants="compete_run6", baseline="topk", claimed="equal", comparison="vs baseline",
       spec_quote='§6.1 "final model KL 0.991, MSE 1.414, EV 0.777, k=320":',
       original_source="TopK baseline's L0; CompeteSAE ran with k = 100", spec_finding="k = 320 is the TopK baseline."),
    _c("000-s6.2-absorption", "000", "§6.2", "CompeteSAE's absorption score improves on the baseline",
       "0.011 over 21 letters (baseline 0.0065)", metrics=_ABS, variants="compete_run6", baseline="relu_l1",
       claimed="better", comparison="vs baseline", spec_quote="§6.2 \"0.011 over 21 letters, 1.24 split",
       original_source="the TopK baseline's absorption block", spec_finding="0.011 is TopK's score, higher than L1's 0.0065."),
    _c("000-intro-7.18", "000", "intro, §2, §3", "Standard SAEs on Gemma-2-2B absorb up to 7.18% for some letter",
       "up to 7.18% ('t'); 'k' 6.62%, 'o' 6.35%", metrics="max_letter_absorption_rate", variants="topk", baseline=None,
       claimed="equal", comparison="absolute", spec_quote="the intro's \"7.18%\" ('t'): the TopK baseline's absorption block",
       original_source="TopK baseline, per-letter rates", spec_finding="Traced to the TopK baseline.",
       testable=False, reason="a Gemma-2-2B-specific per-letter rate; our highest per-letter rate is shown for reference"),
    _c("000-s6.3-probing", "000", "§6.3", "Sparse probing accuracy beats the baseline",
       "0.960 vs 0.877", metrics="sae_test_accuracy", variants="compete_run6", baseline="relu_l1", claimed="better",
       comparison="vs baseline", spec_quote='"0.960 vs 0.877" is TopK vs L1 SPall.',
       original_source="TopK vs L1 SPall; CompeteSAE run 6 has 0.958", spec_finding="The numbers are TopK's."),
    _c("000-s6.3-probing-all-k", "000", "§6.3", "Probing improves over the baseline at every k (1–50)",
       "\"consistent improvements across all k-values\"", metrics=_SP_K, variants="compete_run6", baseline="relu_l1",
       claimed="better", comparison="vs baseline", spec_quote="§6.3 probing:",
       original_source="HO run 6 vs L1 (SP1, SP20 recorded)", spec_finding="Part of the §6.3 block traced to TopK vs L1."),
    _c("000-s6.3-sentiment", "000", "§6.3", "Largest probing gain on sentiment tasks",
       "0.979 vs 0.899", metrics="sae_test_accuracy@sentiment", variants="compete_run6", baseline="relu_l1",
       claimed="better", comparison="vs baseline", spec_quote='"Sentiment 0.979 vs 0.899" is TopK vs L1 on amazon-sentiment.',
       original_source="TopK vs L1 on amazon-sentiment", spec_finding="The numbers are TopK's, not CompeteSAE's."),
    _c("000-s6.3-langid", "000", "§6.3", "Large probing gain on language identification",
       "0.999 vs 0.981", metrics="sae_test_accuracy@lang|europarl", variants="compete_run6", baseline="relu_l1",
       claimed="better", comparison="vs baseline", spec_quote='"Language ID 0.999 vs 0.981":',
       original_source="0.999 is TopK on europarl; 0.981 unresolved", spec_finding="0.981 is not the L1 SAE (0.919). Unresolved."),
    _c("000-s6.3-scr2", "000", "§6.3", "SCR at threshold 2 beats the baseline",
       "0.167 (baseline 0.043)", metrics="scr_metric_threshold_2", variants="compete_run6", baseline="relu_l1",
       claimed="better", comparison="vs baseline", spec_quote='"Threshold-2 0.167 (baseline 0.043)" compares TopK d1@2 with L1 m@2',
       original_source="TopK d1@2 vs L1 m@2; CompeteSAE run 6 m@2 = 0.100", spec_finding="Two different fields compared."),
    _c("000-s6.3-scr100", "000", "§6.3", "SCR at threshold 100 beats the baseline",
       "0.319 (baseline 0.034)", metrics="scr_metric_threshold_100", variants="compete_run6", baseline="relu_l1",
       claimed="better", comparison="vs baseline", spec_quote='"Threshold-100 0.319 (0.034)" is TopK m@100 vs L1 m@100.',
       original_source="TopK m@100 vs L1; CompeteSAE run 6 m@100 = 0.298", spec_finding="The numbers are TopK's."),
    _c("000-s6.3-scr-all", "000", "§6.3", "SCR improves at every threshold",
       "\"improved concept stability across all thresholds\"", metrics=_SCR_ALL, variants="compete_run6",
       baseline="relu_l1", claimed="better", comparison="vs baseline", spec_quote="SCR:",
       original_source="HO run 6 m@2/m@20/m@100 vs L1", spec_finding="CompeteSAE run 6 scores m@2 0.100, m@100 0.298."),
    _c("000-s6.3-unlearning", "000", "§6.3", "Unlearning improves over the baseline",
       "0.0019 (baseline 0.028), called an improvement", metrics="unlearning_score", variants="compete_run6",
       baseline="relu_l1", claimed="better", comparison="vs baseline", spec_quote='"Unlearning 0.0019 (baseline 0.028)":',
       original_source="TopK file's block (a 4,608-wide ReLU SAE) vs the standard file's block",
       spec_finding="0.0019 < 0.028, and it contradicts the abstract's 0.099.",
       reason="default profile: offline forget-loss surrogate, not WMDP"),
    _c("000-table1-nowarmup-kl", "000", "Table 1", "Removing the warmup lowers the KL score",
       "full 0.991 vs no warmup 0.981", metrics="kl_score", variants="compete_run6", baseline="compete_no_warmup",
       claimed="better", comparison="vs baseline", spec_quote='"No warmup": KL 0.981 is from runs 3/4',
       original_source="real no-warmup run = HO run 1 (0.978)", spec_finding="Table mixes runs; run 1 vs run 6 is 0.978 vs 0.978.",
       orig_map={"compete_no_warmup": "HO/run1"}),
    _c("000-table1-nowarmup-mse", "000", "Table 1", "Removing the warmup worsens MSE",
       "full 1.414 vs no warmup 2.031", metrics="mse", variants="compete_run6", baseline="compete_no_warmup",
       claimed="better", comparison="vs baseline", spec_quote='"No warmup": KL 0.981 is from runs 3/4, MSE 2.031 from runs 2/5/6',
       original_source="real no-warmup run = HO run 1 (2.0625)", spec_finding="Full = TopK baseline; MSE from runs 2/5/6.",
       orig_map={"compete_no_warmup": "HO/run1"}),
    _c("000-table1-nowarmup-scr", "000", "Table 1", "Removing the warmup lowers SCR (t=2)",
       "full 0.167 vs no warmup 0.092", metrics="scr_metric_threshold_2", variants="compete_run6",
       baseline="compete_no_warmup", claimed="better", comparison="vs baseline",
       spec_quote="SCR 0.092 is not found anywhere", original_source="real no-warmup run = HO run 1 (m@2 0.099)",
       spec_finding="0.092 not found in any run.", orig_map={"compete_no_warmup": "HO/run1"}),
    _c("000-s3-warmup-absorption", "000", "§3.1", "Without warmup, absorption is 35% higher",
       "+35% absorption without warmup", metrics=_ABS, variants="compete_run6", baseline="compete_no_warmup",
       claimed="better", comparison="relative change", spec_quote='"35% higher absorption without warmup" (run 1 vs run 2 is +4%)',
       original_source="HO run 1 (no warmup) vs run 2 (warmup), both k = 120",
       spec_finding="No supporting data; run 1 vs run 2 is +4%.",
       orig_map={"compete_run6": "HO/run2", "compete_no_warmup": "HO/run1"}),
    _c("000-table1-nocomp-kl", "000", "Table 1", "Without the competition term the KL score drops",
       "full 0.991 vs no competition 0.720", metrics="kl_score", variants="compete_run6", baseline="topk_k100",
       claimed="better", comparison="vs baseline", spec_quote='"No competition" = the L1 baseline, not an ablation.',
       original_source="none: the row is the L1 SAE", spec_finding="No no-competition run exists."),
    _c("000-table1-nocomp-mse", "000", "Table 1", "Without the competition term MSE worsens",
       "full 1.414 vs no competition 4.438", metrics="mse", variants="compete_run6", baseline="topk_k100",
       claimed="better", comparison="vs baseline", spec_quote='"No competition" = the L1 baseline, not an ablation.',
       original_source="none: the row is the L1 SAE", spec_finding="No no-competition run exists."),
    _c("000-table1-nocomp-scr", "000", "Table 1", "Without the competition term SCR (t=2) drops",
       "full 0.167 vs no competition 0.043", metrics="scr_metric_threshold_2", variants="compete_run6",
       baseline="topk_k100", claimed="better", comparison="vs baseline",
       spec_quote='"No competition" = the L1 baseline, not an ablation.',
       original_source="none: the row is the L1 SAE", spec_finding="No no-competition run exists."),
    _c("000-s6.4-competition-absorption", "000", "§6.4", "The competition mechanism is essential for feature separation (absorption)",
       "\"competition mechanism essential for feature separation\"", metrics=_ABS, variants="compete_run6",
       baseline="topk_k100", claimed="better", comparison="vs baseline",
       spec_quote='"No competition" = the L1 baseline, not an ablation.',
       original_source="none: no run without the penalty at k = 100", spec_finding="No no-competition run exists."),
    _c("000-table1-reduced-kl", "000", "Table 1", "A smaller dictionary lowers the KL score",
       "full 0.991 vs reduced 0.978", metrics="kl_score", variants="compete_run6", baseline="compete_reduced_dict",
       claimed="better", comparison="vs baseline", spec_quote='"Reduced dict size": 0.978 / 2.031 are run 5/6',
       original_source="none: run 5/6 numbers", spec_finding="No reduced-size run exists."),
    _c("000-table1-reduced-mse", "000", "Table 1", "A smaller dictionary worsens MSE",
       "full 1.414 vs reduced 2.031", metrics="mse", variants="compete_run6", baseline="compete_reduced_dict",
       claimed="better", comparison="vs baseline", spec_quote='"Reduced dict size": 0.978 / 2.031 are run 5/6',
       original_source="none: run 5/6 numbers", spec_finding="No reduced-size run exists."),
    _c("000-table1-reduced-scr", "000", "Table 1", "A smaller dictionary lowers SCR (t=2)",
       "full 0.167 vs reduced 0.117", metrics="scr_metric_threshold_2", variants="compete_run6",
       baseline="compete_reduced_dict", claimed="better", comparison="vs baseline",
       spec_quote="and 0.117 is TopK's m@2. No reduced-size run exists.",
       original_source="none: 0.117 is TopK's m@2", spec_finding="No reduced-size run exists."),
    _c("000-s2-jumprelu-mse", "000", "§2", "JumpReLU SAEs reach state-of-the-art MSE",
       "MSE 1.945", metrics="mse", variants="jumprelu", baseline="topk", claimed="better", comparison="vs baseline",
       spec_quote='"JumpReLU MSE 1.945":', original_source="HO run 3's MSE", spec_finding="1.945 is CompeteSAE run 3's MSE."),
    _c("000-s6.5-overhead", "000", "intro, §6.5", "The competition penalty adds at most 20% training time (15% overhead)",
       "+20% training time, 15% overhead", metrics="train_wall_time_s", variants="compete_run6", baseline="topk_k100",
       claimed="not_worse", comparison="overhead ≤ bound", bound=0.20,
       spec_quote='"20%/15% overhead"', original_source="none recorded", spec_finding="No supporting data found.",
       reason="wall time of one training run on a shared CPU: noisy"),
    _c("000-s3-r082", "000", "§3.1, §7", "Competition strength correlates with semantic similarity (r = 0.82)",
       "r = 0.82", metrics=(), variants=(), baseline=None, claimed="equal", comparison="absolute",
       spec_quote="No supporting data found for: r=0.82", original_source="none recorded",
       spec_finding="No supporting data found.", testable=False,
       reason="no semantic-similarity measurement defined in either paper or run; nothing to reproduce"),
    # ============================== paper 004: sparsity-guided orthogonality ==============================
    _c("004-abstract-absorption", "004", "abstract, intro, §6.1, §7", "The orthogonality penalty improves absorption (\"nearly triples disentanglement\")",
       "0.025 vs 0.009", metrics=_ABS, variants="ortho_run4", baseline="topk", claimed="better", comparison="ratio",
       spec_quote='Headline "absorption 0.025 vs 0.009, nearly 3×":', original_source="SO run 4 vs TopK-65,536",
       spec_finding="Lower is better: every orthogonality run is worse, run 4 the worst."),
    _c("004-abstract-scr", "004", "abstract, intro, §6.1, §7", "30% better SCR at k = 2 than the baseline",
       "0.172 vs 0.132", metrics="scr_metric_threshold_2", variants="ortho_run4", baseline="topk",
       claimed="better", comparison="relative change", spec_quote='"SCR 0.172 vs 0.132 (30%)":',
       original_source="SO run 4 d1@2 vs TopK d1@2 (we test scr_metric)", spec_finding="Run 1 has the best d1@2, runs 2/6 the best m@2."),
    _c("004-abstract-probing", "004", "abstract, intro, §2", "Probing accuracy improves over the baseline",
       "0.961 vs 0.951", metrics="sae_test_accuracy", variants="ortho_run4", baseline="topk", claimed="better",
       comparison="vs baseline", spec_quote='"Probing 0.961 vs 0.951":', original_source="SO run 4 SPall; 0.951 = LLM probe",
       spec_finding="0.951 is no SAE baseline; TopK scores 0.960."),
    _c("004-abstract-mse", "004", "abstract, intro, §6.1", "Reconstruction MSE matches the baseline",
       "MSE 1.41, \"matching baseline\"", metrics="mse", variants="ortho_run4", baseline="topk", claimed="not_worse",
       comparison="vs baseline", spec_quote='"MSE 1.41, cos 0.93, matching baseline":',
       original_source="SO runs 1–4 and 6", spec_finding="No SO baseline has MSE 1.41 (TopK-65,536: 1.328)."),
    _c("004-s6.1-cossim", "004", "intro, §6.1", "Cosine similarity matches the baseline",
       "cos 0.93", metrics="cossim", variants="ortho_run4", baseline="topk", claimed="not_worse",
       comparison="vs baseline", spec_quote='"MSE 1.41, cos 0.93, matching baseline":',
       original_source="SO runs 1–4 and 6", spec_finding="TopK-65,536 has 0.938."),
    _c("004-fig1-run4-best-absorption", "004", "Fig. 1, §6.1", "Run 4 (λ = 0.075) has the best absorption of all configurations",
       "run 4 \"highest\" 0.025", metrics=_ABS, variants="ortho_run4", baseline=None, claimed="better",
       comparison="best of", others=tuple(v for v in _ORTHO_RUNS if v != "ortho_run4"),
       spec_quote="every orthogonality run (0.0115–0.0251) is worse, and run 4 is the worst",
       original_source="SO runs 1–5", spec_finding="Run 4 has the worst (highest) absorption."),
    _c("004-fig1-alpha-trend", "004", "Fig. 1, §6.1", "Increasing the orthogonality weight steadily improves absorption",
       "\"steady improvement\" over runs 1–3", metrics=_ABS, variants=("ortho_run1", "ortho_run3", "ortho_run4", "ortho_run2"),
       baseline=None, claimed="better", comparison="trend over λ", spec_quote="Figures 1–4 are empty",
       original_source="SO runs 1–4 (λ 0.01, 0.05, 0.075, 0.1)", spec_finding="Captions unsupported (empty figures)."),
    _c("004-fig2-run4-best-scr", "004", "Fig. 2", "Run 4 achieves the best SCR",
       "0.172 at k=2", metrics="scr_metric_threshold_2", variants="ortho_run4", baseline=None, claimed="better",
       comparison="best of", others=tuple(v for v in _ORTHO_RUNS if v != "ortho_run4"),
       spec_quote='so "run 4 best SCR" is false', original_source="SO runs 1–5 m@2", spec_finding="Run 1 best d1@2, runs 2/6 best m@2."),
    _c("004-fig2-all-scr", "004", "Fig. 2", "Every orthogonal variant improves SCR over the baseline",
       "\"all orthogonal variants showed improved SCR\"", metrics=("scr_metric_threshold_2", "scr_metric_threshold_20"),
       variants=_ORTHO_RUNS, baseline="topk", claimed="better", comparison="vs baseline",
       spec_quote="Figures 1–4 are empty", original_source="SO runs 1–5 vs TopK-65,536", spec_finding="Captions unsupported (empty figures)."),
    _c("004-fig3-recon-stable", "004", "Fig. 3, §6.2", "Reconstruction stays at the baseline's level for every configuration",
       "MSE ≈ 1.41, cos ≈ 0.93", metrics=("mse", "cossim"), variants=_ORTHO_RUNS, baseline="topk", claimed="not_worse",
       comparison="vs baseline", spec_quote='"MSE 1.41, cos 0.93, matching baseline":',
       original_source="SO runs 1–5", spec_finding="No SO baseline has MSE 1.41."),
    _c("004-fig4-all-probing", "004", "Fig. 4", "Every orthogonal variant improves probing (top-1, top-20) over the baseline",
       "\"all orthogonal variants improved\"", metrics=("sae_top_1_test_accuracy", "sae_top_20_test_accuracy"),
       variants=_ORTHO_RUNS, baseline="topk", claimed="better", comparison="vs baseline",
       spec_quote="Figures 1–4 are empty", original_source="SO runs 1–5 vs TopK-65,536", spec_finding="Captions unsupported (empty figures)."),
    _c("004-s6.3-top1", "004", "§6.3", "Top-1 probing accuracy beats the baseline",
       "0.961 (baseline 0.951)", metrics="sae_top_1_test_accuracy", variants="ortho_run4", baseline="topk",
       claimed="better", comparison="vs baseline", spec_quote='§6.3 calls 0.961 "top-1"; run 4\'s SP1 is 0.804.',
       original_source="SO run 4 SP1 = 0.804", spec_finding="0.961 is SPall, not top-1."),
    _c("004-s6.3-top20", "004", "§6.3", "Top-20 probing accuracy beats the baseline",
       "0.959 (baseline 0.878)", metrics="sae_top_20_test_accuracy", variants="ortho_run4", baseline="topk",
       claimed="better", comparison="vs baseline", spec_quote='"Top-20 0.959 (baseline 0.878)": run 4\'s SP20 is 0.925.',
       original_source="SO run 4 SP20 = 0.925; 0.878 = LLM top-20", spec_finding="0.959 not found among run 4's fields."),
    _c("004-s6.3-gap", "004", "§6.3", "A smaller top-1/top-20 probing gap than the baseline (more precise features)",
       "gap 0.002 vs 0.073", metrics="probe_gap_top20_top1", variants="ortho_run4", baseline="topk", claimed="better",
       comparison="vs baseline", spec_quote='The "gap 0.002 vs 0.073" claim rests on these mislabels.',
       original_source="SO run 4 vs TopK SP20 − SP1", spec_finding="Rests on mislabelled fields.",
       reason="'smaller gap is better' is the paper's reading, kept here"),
    _c("004-s6.2-run2-recon", "004", "§6.2", "The strongest weight (λ = 0.1) slightly degrades reconstruction",
       "\"slight reconstruction degradation\"", metrics="mse", variants="ortho_run2", baseline="ortho_run1",
       claimed="worse", comparison="vs baseline", spec_quote='run 2 SCR 0.158 (but its "reconstruction degradation" is false: MSE identical)',
       original_source="SO run 2 vs run 1", spec_finding="False: MSE identical."),
    _c("004-s6.2-run5-absorption", "004", "§6.2, §6.4", "A wider dictionary (run 5) is worse than run 4 on absorption (diminishing returns)",
       "run 5 absorption 0.017", metrics=_ABS, variants="ortho_run4", baseline="ortho_run5", claimed="better",
       comparison="vs baseline", spec_quote="Ablation numbers that match:", original_source="SO run 5 vs run 4",
       spec_finding="Numbers match; run 5's 0.017 is lower (better) than run 4's 0.025."),
    _c("004-s6.2-run5-scr", "004", "§6.2, §6.4", "A wider dictionary (run 5) is worse than run 4 on SCR",
       "run 5 SCR 0.125", metrics="scr_metric_threshold_2", variants="ortho_run4", baseline="ortho_run5",
       claimed="better", comparison="vs baseline", spec_quote="Ablation numbers that match:",
       original_source="SO run 5 vs run 4", spec_finding="Numbers match."),
    _c("004-s6.2-run6-absorption", "004", "§6.2", "Strong orthogonality (λ = 0.1) keeps absorption at the baseline's level",
       "run 6 absorption 0.012, \"good\"", metrics=_ABS, variants="ortho_run2", baseline="topk", claimed="not_worse",
       comparison="vs baseline", spec_quote="Ablation numbers that match:", original_source="SO run 6 (= run 2)",
       spec_finding="Numbers match (0.0116).", orig_map={"ortho_run2": "SO/run6"}),
)
"""Every numbered claim of both papers that the ledger tracks."""


# ------------------------------------------------------------------------------------------------
# The data files: docs/spec/claims.yaml and docs/spec/original_runs.csv, validated on load
# ------------------------------------------------------------------------------------------------
SPEC_DIR = Path(__file__).resolve().parents[1] / "docs" / "spec"
"""Where the claims and the original runs live (``docs/spec/`` of the repository)."""
CLAIMS_FILE = SPEC_DIR / "claims.yaml"
ORIGINAL_RUNS_FILE = SPEC_DIR / "original_runs.csv"
PAPERS = ("000", "004")
COMPARISONS = ("vs baseline", "relative change", "ratio", "best of", "trend over λ", "overhead ≤ bound", "absolute")
"""How a paper can state a claim (``Claim.comparison``)."""
ORIGINAL_COLUMNS = ("l0", "ev_legacy", "mse_legacy", "cossim", "kl_score", "ce_score", "mean_absorption_score",
                    "mean_num_split_features", "scr_dir1_threshold_2", "scr_dir1_threshold_20", "scr_metric_threshold_2",
                    "scr_metric_threshold_20", "scr_metric_threshold_100", "sae_top_1_test_accuracy",
                    "sae_top_20_test_accuracy", "sae_test_accuracy", "llm_top_1_test_accuracy", "unlearning_score")
"""Metric columns of ``original_runs.csv`` (besides ``run`` and ``lam``), named like our results."""


class DataFileError(ValueError):
    """A claims or original-runs data file does not have the documented structure."""


def _claim_field_types() -> dict[str, tuple[str, bool]]:
    """Claim field → (kind, required). Kinds: str, str?, strs, num?, bool, map."""
    kinds = {"baseline": "str?", "metrics": "strs", "variants": "strs", "others": "strs", "bound": "num?",
             "orig_map": "map", "testable": "bool"}
    out = {}
    for f in dataclasses.fields(Claim):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out[f.name] = (kinds.get(f.name, "str"), required)
    return out


def _check_type(value: Any, kind: str) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind == "str?":
        return value is None or isinstance(value, str)
    if kind == "strs":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "num?":
        return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "map":
        return isinstance(value, Mapping) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    raise AssertionError(kind)


_KIND_TEXT = {"str": "a string", "str?": "a string or null", "strs": "a list of strings", "num?": "a number or null",
              "bool": "true or false", "map": "a mapping of strings to strings"}


def parse_claims(doc: Any, source: str | Path = "<claims>", runs: Mapping[str, Any] | None = None
                 ) -> tuple[tuple[Claim, ...], dict[str, dict[str, str]]]:
    """Validate the parsed ``claims.yaml`` document and build the claims and the default original-run
    map. ``runs``: the original runs (for checking that every mapped run exists). Any problem raises
    :class:`DataFileError` naming ``source``, the claim (position and id) and what to fix."""
    where = str(source)
    if not isinstance(doc, Mapping):
        raise DataFileError(f"{where}: expected a mapping with keys 'original_map' and 'claims', got {type(doc).__name__}")
    unknown = set(doc) - {"original_map", "claims"}
    missing = {"original_map", "claims"} - set(doc)
    if unknown or missing:
        raise DataFileError(f"{where}: top-level keys must be 'original_map' and 'claims' "
                            f"(unknown: {sorted(unknown)}, missing: {sorted(missing)})")
    omap = doc["original_map"]
    if not isinstance(omap, Mapping) or not all(
            str(p) in PAPERS and isinstance(m, Mapping) and all(isinstance(k, str) and isinstance(v, str)
                                                                for k, v in m.items()) for p, m in omap.items()):
        raise DataFileError(f"{where}: 'original_map' must map a paper ({', '.join(PAPERS)}, quoted) to "
                            "{our variant: original run}")
    original_map = {str(p): dict(m) for p, m in omap.items()}
    rows = doc["claims"]
    if not isinstance(rows, list) or not rows:
        raise DataFileError(f"{where}: 'claims' must be a non-empty list of claim mappings")
    types = _claim_field_types()
    out, seen = [], set()
    for i, row in enumerate(rows, start=1):
        name = f"{where}: claim #{i}" + (f" ({row.get('id')!r})" if isinstance(row, Mapping) and row.get("id") else "")
        if not isinstance(row, Mapping):
            raise DataFileError(f"{name}: expected a mapping of claim fields, got {type(row).__name__}")
        unknown = sorted(set(row) - set(types))
        if unknown:
            raise DataFileError(f"{name}: unknown key(s) {unknown}; allowed keys: {sorted(types)}")
        absent = sorted(k for k, (_, req) in types.items() if req and k not in row)
        if absent:
            raise DataFileError(f"{name}: missing required field(s) {absent}")
        for key, value in row.items():
            kind = types[key][0]
            if not _check_type(value, kind):
                raise DataFileError(f"{name}: field {key!r} must be {_KIND_TEXT[kind]}, got {value!r}")
        if row["paper"] not in PAPERS:
            raise DataFileError(f"{name}: paper must be one of {PAPERS} (quoted in YAML), got {row['paper']!r}")
        if row["claimed"] not in CLAIMED:
            raise DataFileError(f"{name}: claimed must be one of {CLAIMED}, got {row['claimed']!r}")
        if row["comparison"] not in COMPARISONS:
            raise DataFileError(f"{name}: comparison must be one of {COMPARISONS}, got {row['comparison']!r}")
        if row["id"] in seen:
            raise DataFileError(f"{name}: duplicate id {row['id']!r}")
        seen.add(row["id"])
        if runs is not None:
            bad = [r for r in row.get("orig_map", {}).values() if r not in runs]
            if bad:
                raise DataFileError(f"{name}: orig_map names original run(s) {bad} that are not rows of original_runs.csv")
        kw = {k: (tuple(v) if isinstance(v, list) else dict(v) if isinstance(v, Mapping) else v) for k, v in row.items()}
        out.append(Claim(**kw))
    if runs is not None:
        bad = sorted({r for m in original_map.values() for r in m.values() if r not in runs})
        if bad:
            raise DataFileError(f"{where}: original_map names original run(s) {bad} that are not rows of original_runs.csv")
    return tuple(out), original_map


def load_claims(path: str | Path = CLAIMS_FILE, runs: Mapping[str, Any] | None = None
                ) -> tuple[tuple[Claim, ...], dict[str, dict[str, str]]]:
    """Read and validate ``claims.yaml`` (see :func:`parse_claims`)."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataFileError(f"{path} does not exist; it ships with the repository (docs/spec/claims.yaml)") from None
    except yaml.YAMLError as exc:
        raise DataFileError(f"{path}: not valid YAML ({exc})") from None
    return parse_claims(doc, path, runs)


def load_original_runs(path: str | Path = ORIGINAL_RUNS_FILE) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Read and validate ``original_runs.csv``: (run → metric → value, run → λ).

    Columns: ``run`` (``HO/<name>`` or ``SO/<name>``), ``lam`` (orthogonality weight, empty when not a
    sweep point) and exactly the metric columns of ``ORIGINAL_COLUMNS``; empty cells = not recorded.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"{path} does not exist; it ships with the repository (docs/spec/original_runs.csv)")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        expected = ["run", "lam", *ORIGINAL_COLUMNS]
        if header != expected:
            got = header or []
            raise DataFileError(f"{path}: header must be {','.join(expected)}; unknown column(s) "
                                f"{sorted(set(got) - set(expected))}, missing {sorted(set(expected) - set(got))}"
                                + ("" if set(got) != set(expected) else " (same columns, wrong order)"))
        values: dict[str, dict[str, float]] = {}
        lams: dict[str, float] = {}
        for line, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(expected):
                raise DataFileError(f"{path}, line {line}: {len(row)} cells, expected {len(expected)}")
            run = row[0].strip()
            if not re.fullmatch(r"(HO|SO)/\w+", run):
                raise DataFileError(f"{path}, line {line}: run must look like HO/<name> or SO/<name>, got {run!r}")
            if run in values:
                raise DataFileError(f"{path}, line {line}: duplicate run {run!r}")
            parsed: dict[str, float] = {}
            for col, cell in zip(expected[1:], row[1:]):
                cell = cell.strip()
                if not cell:
                    continue
                try:
                    parsed[col] = float(cell)
                except ValueError:
                    raise DataFileError(f"{path}, line {line} ({run}): column {col!r} must be a number or empty, "
                                        f"got {cell!r}") from None
            lam = parsed.pop("lam", None)
            if lam is not None:
                lams[run] = lam
            values[run] = parsed
    if not values:
        raise DataFileError(f"{path}: no runs")
    return values, lams


def claim_ids() -> list[str]:
    return [c.id for c in CLAIMS]


# ------------------------------------------------------------------------------------------------
# Evaluating claims on a value source (our results, or the original runs)
# ------------------------------------------------------------------------------------------------
class _Source:
    """``values(variant, metric)`` (seed values), ``compare``, ``noise``: our results or the originals."""

    def values(self, variant: str, metric: str) -> list[float]:  # pragma: no cover - interface
        raise NotImplementedError

    def noise(self, metric: str) -> tuple[float, int]:
        return math.nan, 0

    def compare(self, variant: str, baseline: str, metric: str) -> DiffCI:
        sd, df = self.noise(metric)
        return diff_ci(self.values(variant, metric), self.values(baseline, metric), noise_sd=sd, noise_df=df)

    def lam(self, variant: str) -> float:
        return math.nan


class _Ours(_Source):
    def __init__(self, results: Results):
        self.r = results

    def values(self, variant, metric):
        return self.r.values(variant, metric)

    def noise(self, metric):
        return self.r.noise(metric)

    def lam(self, variant):
        return self.r.penalty_lam(variant)


class _Original(_Source):
    def __init__(self, claim: Claim):
        self.map = {**DEFAULT_ORIG_MAP.get(claim.paper, {}), **claim.orig_map}

    def values(self, variant, metric):
        run = self.map.get(variant)
        if run is None:
            return []
        v = ORIGINAL_RUNS[run].get(ORIG_ALIASES.get(metric, metric), ORIGINAL_RUNS[run].get(metric))
        return [] if v is None else [v]

    def lam(self, variant):
        return ORIG_LAMBDA.get(self.map.get(variant, ""), math.nan)


@dataclass
class Evaluation:
    """The outcome of one claim on one source."""

    verdict: str
    """One of ``VERDICTS``."""
    value: float = math.nan
    """The variant's value (seed mean) on the binding pair, or ρ for trend claims, or the overhead."""
    baseline_value: float = math.nan
    """The comparison's value (seed mean) on the binding pair."""
    diff: DiffCI | None = None
    """variant − baseline with its CI, on the binding pair."""
    value_ci: float = math.nan
    """95% CI half-width of ``value`` over seeds."""
    baseline_ci: float = math.nan
    """95% CI half-width of ``baseline_value`` over seeds."""
    noise_sd: float = math.nan
    """Pooled run-to-run SD of the binding metric."""
    binding: str = ""
    """Which (variant vs baseline, metric) pair decided a multi-pair claim; "" for a single pair."""
    pairs_run: int = 0
    """How many (variant, metric) pairs could be evaluated."""
    pairs_total: int = 0
    """How many pairs the claim has."""


def _ci_half(vals: Sequence[float]) -> float:
    from .results import mean_ci

    return mean_ci(vals)["ci"]


def evaluate_claim(claim: Claim, source: _Source) -> Evaluation:
    """Apply the verdict rule to ``claim`` on ``source`` (our results or the original runs)."""
    if not claim.testable:  # still show our value for reference where the claim names one
        vals = source.values(claim.variants[0], claim.metrics[0]) if claim.variants and claim.metrics else []
        return Evaluation(NOT_TESTABLE, value=float(np.mean(vals)) if vals else math.nan, value_ci=_ci_half(vals))
    if claim.comparison == "trend over λ":
        metric = claim.metrics[0]
        pts = [(source.lam(v), float(np.mean(source.values(v, metric)))) for v in claim.variants
               if source.values(v, metric) and math.isfinite(source.lam(v))]
        n = len(pts)
        rho = float(stats.spearmanr([p[0] for p in pts], [p[1] for p in pts])[0]) if n >= 3 else math.nan
        return Evaluation(trend_verdict(rho, direction(metric), claim.claimed, n), value=rho, pairs_run=n,
                          pairs_total=len(claim.variants))
    pairs = []
    for metric in claim.metrics:
        d = direction(metric)
        if d is None:  # descriptive metric (L0): only an "equal" claim makes sense, either sign works
            if claim.claimed != "equal":
                raise ValueError(f"claim {claim.id}: {metric} has no direction of better; only 'equal' claims apply")
            d = "higher"
        for variant in claim.variants:
            if claim.comparison == "best of":
                cands = [(o, np.mean(source.values(o, metric))) for o in claim.others if source.values(o, metric)]
                if not cands or not source.values(variant, metric):
                    pairs.append((variant, None, metric, NOT_RUN, None, math.nan))
                    continue
                best = max(cands, key=lambda c: c[1]) if d == "higher" else min(cands, key=lambda c: c[1])
                baseline = best[0]
            else:
                baseline = claim.baseline
            diff = source.compare(variant, baseline, metric)
            if diff.n_a == 0 or diff.n_b == 0:
                pairs.append((variant, baseline, metric, NOT_RUN, diff, math.nan))
                continue
            a = float(np.mean(source.values(variant, metric)))
            b = float(np.mean(source.values(baseline, metric)))
            if claim.comparison == "overhead ≤ bound":
                over = a / b - 1.0
                v = verdict(over, claim.bound, "lower", "not_worse", None, margin=0.0)
                pairs.append((variant, baseline, metric, v, diff, over))
                continue
            ci = (diff.lo, diff.hi) if diff.has_ci else None
            v = verdict(a, b, d, claim.claimed, ci)
            sign = 1.0 if d == "higher" else -1.0
            rel = sign * (a - b) / abs(b) if b else sign * (a - b)
            pairs.append((variant, baseline, metric, v, diff, rel))
    run = [p for p in pairs if p[3] != NOT_RUN]
    overall = combine_verdicts(p[3] for p in pairs)
    if not run:
        return Evaluation(NOT_RUN, pairs_total=len(pairs))
    # the binding pair: a contradicting one if any, else the least favourable relative improvement
    contra = [p for p in run if p[3] == overall] if overall == CONTRADICTED else run
    if claim.comparison == "overhead ≤ bound":
        bind = max(contra, key=lambda p: p[5])
    else:
        bind = min(contra, key=lambda p: p[5] if claim.claimed != "worse" else -p[5])
    variant, baseline, metric, _, diff, rel = bind
    a_vals, b_vals = source.values(variant, metric), source.values(baseline, metric)
    if claim.comparison == "overhead ≤ bound":  # value = relative overhead, compared with the bound
        value, base, value_ci, base_ci = rel, float(claim.bound), math.nan, math.nan
    else:
        value, base = float(np.mean(a_vals)), float(np.mean(b_vals))
        value_ci, base_ci = _ci_half(a_vals), _ci_half(b_vals)
    return Evaluation(
        overall, value=value, baseline_value=base, diff=diff, value_ci=value_ci,
        baseline_ci=base_ci, noise_sd=source.noise(metric)[0],
        binding="" if len(pairs) == 1 else f"{variant} vs {baseline}, {metric}", pairs_run=len(run),
        pairs_total=len(pairs))


def _text(value) -> str:
    """A ledger cell as text: "" for missing values (None, NaN from a CSV round trip)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _fmt(x: float, ci: float = math.nan, digits: int = 4) -> str:
    if x is None or not math.isfinite(x):
        return ""
    s = f"{x:.{digits}g}"
    return f"{s} ± {ci:.2g}" if math.isfinite(ci) else s


def _evidence(claim: Claim, e: Evaluation) -> str:
    """How strong the basis of a verdict is: seeds and interval, or a single run without one."""
    if e.verdict in (NOT_RUN, NOT_TESTABLE):
        return ""
    if claim.comparison == "trend over λ":
        return f"Spearman ρ over {e.pairs_run} single runs"
    if claim.comparison == "overhead ≤ bound":
        return "single timing"
    d = e.diff
    if d is None or not d.has_ci:
        return "single run, no CI"
    return f"95% CI ({d.method}; {d.n_a} vs {d.n_b} seeds)"


def build_ledger(results: Results, claims: Sequence[Claim] = CLAIMS) -> pd.DataFrame:
    """One row per claim: the paper's statement, the original runs' verdict, our value with its CI, and
    our verdict. Every verdict comes from :func:`verdict` / :func:`trend_verdict`."""
    ours = _Ours(results)
    rows = []
    for c in claims:
        e = evaluate_claim(c, ours)
        o = evaluate_claim(c, _Original(c))
        dirs = list(dict.fromkeys(direction(m) or "none (descriptive)" for m in c.metrics))
        ratio = e.value / e.baseline_value if e.baseline_value and math.isfinite(e.baseline_value) else math.nan
        diff = e.diff
        rows.append({
            "claim_id": c.id,
            "paper": {"000": "000 CompeteSAE", "004": "004 orthogonality"}[c.paper],
            "section": c.section,
            "claim": c.text,
            "paper_value": c.paper_value,
            "metric": (" / ".join(c.metrics) if len(c.metrics) <= 2 else f"{c.metrics[0]} … ({len(c.metrics)} metrics)")
            if c.metrics else "none",
            "better": " / ".join(dirs),
            "variant": " / ".join(c.variants) if len(c.variants) <= 2 else f"{c.variants[0]} … ({len(c.variants)} variants)",
            "baseline": c.baseline if c.baseline else ("best of " + ", ".join(c.others) if c.others else ""),
            "claimed": c.claimed.replace("_", " "),
            "comparison": c.comparison,
            "original_source": c.original_source,
            "spec_finding": c.spec_finding,
            "original_value": o.value,
            "original_baseline": o.baseline_value,
            "original_verdict": {NOT_RUN: "no original run", NOT_TESTABLE: "none recorded"}.get(o.verdict, o.verdict),
            "our_value": e.value,
            "our_value_ci95": e.value_ci,
            "our_baseline": e.baseline_value,
            "our_baseline_ci95": e.baseline_ci,
            "our_diff": diff.diff if diff else math.nan,
            "our_diff_lo": diff.lo if diff else math.nan,
            "our_diff_hi": diff.hi if diff else math.nan,
            "ci_method": diff.method if diff else "",
            "n_seeds": f"{diff.n_a} vs {diff.n_b}" if diff else "",
            "our_ratio": ratio if c.comparison != "overhead ≤ bound" else math.nan,
            "seed_sd": e.noise_sd,
            "effect_over_seed_sd": (diff.diff / e.noise_sd) if diff and e.noise_sd and math.isfinite(e.noise_sd) else math.nan,
            "binding_pair": e.binding,
            "pairs_run": f"{e.pairs_run}/{e.pairs_total}",
            "evidence": _evidence(c, e),
            "verdict": e.verdict,
            "note": c.reason,
        })
    return pd.DataFrame(rows)


def ledger_display(ledger: pd.DataFrame) -> pd.DataFrame:
    """Compact, human-readable columns of the ledger (for the README and the notebook)."""
    out = []
    for _, r in ledger.iterrows():
        if r["comparison"] == "trend over λ":
            ours = f"ρ = {r['our_value']:.2f}" if math.isfinite(r["our_value"]) else ""
            orig = f"ρ = {r['original_value']:.2f}" if math.isfinite(r["original_value"]) else ""
        elif r["comparison"] == "overhead ≤ bound":
            ours = f"{100 * r['our_value']:+.0f}%" if math.isfinite(r["our_value"]) else ""
            orig = ""
        else:
            ours = _fmt(r["our_value"], r["our_value_ci95"])
            if ours and math.isfinite(r["our_baseline"]):
                ours += f" vs {_fmt(r['our_baseline'], r['our_baseline_ci95'])}"
            if math.isfinite(r["our_diff_lo"]):
                ours += f" (Δ {r['our_diff']:+.3g}, CI [{r['our_diff_lo']:+.3g}, {r['our_diff_hi']:+.3g}]"
                sd = r["effect_over_seed_sd"]
                ours += f", {sd:+.1f} run-to-run SD)" if math.isfinite(sd) else ")"
            orig = _fmt(r["original_value"])
            if orig and math.isfinite(r["original_baseline"]):
                orig += f" vs {_fmt(r['original_baseline'])}"
        out.append({
            "id": r["claim_id"], "claim": r["claim"], "paper says": r["paper_value"],
            "metric (better)": f"{r['metric']} ({r['better']})",
            "compared": (f"{r['variant']} vs {r['baseline']}" if _text(r["baseline"]) else _text(r["variant"]))
            + (f"; decided by {r['binding_pair']}" if _text(r["binding_pair"]) else ""),
            "original runs": f"{orig} → {r['original_verdict']}" if orig else r["original_verdict"],
            "ours": ours, "verdict": r["verdict"] + (" (no CI)" if r["evidence"] == "single run, no CI" else ""),
        })
    return pd.DataFrame(out)


__all__ = ["Claim", "CLAIMS", "CLAIMED", "VERDICTS", "VERDICT_RULE", "SUPPORTED", "CONTRADICTED", "NOISE",
           "NOT_TESTABLE", "NOT_RUN", "MARGIN", "TIE_TOL", "ORIGINAL_RUNS", "verdict", "trend_verdict",
           "combine_verdicts", "evaluate_claim", "build_ledger", "ledger_display", "claim_ids", "Evaluation"]
