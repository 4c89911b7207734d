"""The verdict rule and the claims ledger for the two papers' claims (the claims themselves are data).

Each :class:`Claim` is one numbered claim of paper 000 (CompeteSAE) or paper 004 (sparsity-guided
orthogonality): what it says, the number the paper printed, which of our SAE variants it compares,
the metric and which way that metric is better, and where ``docs/spec/original_runs.md`` traced it
(``spec_quote`` is a verbatim piece of that spec row; a test checks it). The claims live in
``docs/spec/claims.yaml`` and the original runs' numbers in ``docs/spec/original_runs.csv`` (named
columns); both are validated when this module is imported (:class:`DataFileError` names the file,
the row and the fix).

The verdict is computed, never typed: :func:`verdict` applies one rule to a measured difference,
:func:`build_ledger` applies it to our results (seed means, 95% CIs) and to the original runs'
numbers (``ORIGINAL_RUNS``), so the ledger shows side by side what the papers claimed, what their
own runs showed, and what we measure.

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

from .results import DiffCI, Results, diff_ci, direction, mde, mean_ci

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
NOISE = "within noise"
UNDERPOWERED = "underpowered"
NOT_TESTABLE = "not testable offline"
NOT_RUN = "not run"
VERDICTS = (SUPPORTED, CONTRADICTED, NOISE, UNDERPOWERED, NOT_TESTABLE, NOT_RUN)
"""Every verdict the ledger can show."""

CLAIMED = ("better", "worse", "not_worse", "equal")
"""What a claim asserts about ``variant`` against ``baseline`` on the metric (in the metric's own
direction of better): strictly better, strictly worse, no worse than (within the metric's margin), or
equal (within the margin)."""

MARGIN = 0.05
"""Fallback margin, relative to |baseline|: used only where a metric's margin rule needs a seed SD and
no seeded group was run (the original runs, a profile without seeds), or when :func:`verdict` is
called without a margin."""
TIE_TOL = 0.01
"""Without any confidence interval, a change smaller than 1% of |baseline| is called "within noise"."""
TREND_MIN_RHO = 0.5
"""A trend claim needs a Spearman |ρ| of at least 0.5 (with the claimed sign) over ≥ 3 points."""
MARGIN_KINDS = ("absolute", "seed_sd", "relative")
"""How a metric's margin is set: a fixed amount in the metric's units (bounded scores), a multiple of
the measured pooled seed SD, or a fraction of |baseline| (descriptive quantities such as L0)."""


@dataclass(frozen=True)
class MarginRule:
    """The non-inferiority / equality margin of the metrics matching ``metrics``."""

    metrics: str
    """Regular expression, matched in full against the metric key (without an ``@task`` suffix)."""
    kind: str
    """One of ``MARGIN_KINDS``."""
    value: float
    """The amount (absolute), the multiple of the seed SD (seed_sd), or the fraction of |baseline| (relative)."""
    why: str
    """One sentence: why this margin for these metrics."""

    def matches(self, metric: str) -> bool:
        return re.fullmatch(self.metrics, metric.split("@", 1)[0]) is not None


def margin_for(metric: str, rules: Sequence[MarginRule], noise_sd: float = math.nan,
               baseline_value: float = math.nan) -> tuple[float, str]:
    """The margin of ``metric`` in its own units, and how it was set (first matching rule wins).

    A ``seed_sd`` rule without a measured seed SD falls back to ``MARGIN`` × |baseline| (and says so).
    """
    rule = next((r for r in rules if r.matches(metric)), None)
    if rule is None:
        raise KeyError(f"no margin rule matches metric {metric!r}; add one to docs/spec/claims.yaml (margins)")
    if rule.kind == "absolute":
        return float(rule.value), f"{rule.value:g} absolute"
    if rule.kind == "seed_sd":
        if noise_sd is not None and math.isfinite(noise_sd) and noise_sd > 0:
            return float(rule.value * noise_sd), f"{rule.value:g} × seed SD ({noise_sd:.3g})"
        return MARGIN * abs(baseline_value), f"{MARGIN:.0%} of |baseline| (no seed SD measured)"
    return float(rule.value * abs(baseline_value)), f"{rule.value:.0%} of |baseline|"


def verdict(our_value: float, baseline_value: float, direction: str, claimed_direction: str,
            ci: tuple[float, float] | None = None, *, margin: float | None = None, tie_tol: float = TIE_TOL,
            mde: float = math.nan, effect: float = math.nan) -> str:
    """Judge one claim on one measured comparison (see ``VERDICT_RULE``).

    ``direction``: "lower" or "higher" (which way the metric is better). ``claimed_direction``: one of
    ``CLAIMED``. ``ci``: (lo, hi) of ``our_value − baseline_value`` or None. ``margin``: the
    non-inferiority / equality margin in the metric's units (None: ``MARGIN`` × |baseline|).
    ``tie_tol`` is relative to |baseline_value|. ``mde``: the minimum detectable effect of this
    comparison; ``effect``: the effect the claim is about (both in the metric's units). A result that
    would be "within noise" is "underpowered" when ``mde > effect``: the experiment could not have
    seen the claimed effect, so its silence says nothing.
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
    m = MARGIN * abs(baseline_value) if margin is None else float(margin)
    if m < 0 or not math.isfinite(m):
        raise ValueError(f"margin must be a finite number ≥ 0, got {margin!r}")
    unresolved = UNDERPOWERED if (math.isfinite(mde) and math.isfinite(effect) and mde > effect) else NOISE
    if claimed_direction in ("better", "worse"):
        if claimed_direction == "worse":
            lo, hi, g = -hi, -lo, -g
        if not has_ci and (abs(g) < tie_tol * abs(baseline_value) or g == 0):
            return NOISE
        if lo > 0:
            return SUPPORTED
        if hi < 0:
            return CONTRADICTED
        return unresolved
    if claimed_direction == "not_worse":
        if lo >= -m:
            return SUPPORTED
        if hi < -m:
            return CONTRADICTED
        return unresolved
    # equal
    if -m <= lo and hi <= m:
        return SUPPORTED
    if lo > m or hi < -m:
        return CONTRADICTED
    return unresolved


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
    """"All of these hold": contradicted if any is, supported only if every run pair is; otherwise
    within noise if any adequately powered pair is, underpowered if every unresolved pair is."""
    run = [v for v in verdicts if v not in (NOT_RUN, NOT_TESTABLE)]
    if not run:
        return NOT_RUN
    if CONTRADICTED in run:
        return CONTRADICTED
    if all(v == SUPPORTED for v in run):
        return SUPPORTED
    return NOISE if NOISE in run else UNDERPOWERED


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
    claimed_effect_rel: float | None = None
    """The size of the effect the paper claims, as a fraction of the baseline ("42% reduction" → 0.42),
    where the paper states one; None: the claim is about any effect of at least the metric's margin."""
    orig_map: Mapping[str, str] = field(default_factory=dict)
    """Overrides of ``DEFAULT_ORIG_MAP`` (our variant → original run) for this claim."""
    testable: bool = True
    """False: "not testable offline" (``reason`` says why)."""
    reason: str = ""
    """Why a claim is not testable, or a caveat on how it is tested."""


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
             "orig_map": "map", "testable": "bool", "claimed_effect_rel": "num?"}
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


@dataclass(frozen=True)
class ClaimsData:
    """The content of ``claims.yaml``."""

    claims: tuple[Claim, ...]
    """Every claim, in file order."""
    original_map: dict[str, dict[str, str]]
    """Paper → our variant → the original run it reproduces (a claim may override entries)."""
    margins: tuple[MarginRule, ...]
    """Margin rules, first match wins."""


def _parse_margins(rows: Any, where: str) -> tuple[MarginRule, ...]:
    fields_ = {f.name for f in dataclasses.fields(MarginRule)}
    if not isinstance(rows, list) or not rows:
        raise DataFileError(f"{where}: 'margins' must be a non-empty list of {{{', '.join(sorted(fields_))}}} mappings")
    out = []
    for i, row in enumerate(rows, start=1):
        name = f"{where}: margin rule #{i}"
        if not isinstance(row, Mapping):
            raise DataFileError(f"{name}: expected a mapping, got {type(row).__name__}")
        if set(row) != fields_:
            raise DataFileError(f"{name}: keys must be {sorted(fields_)} (unknown: {sorted(set(row) - fields_)}, "
                                f"missing: {sorted(fields_ - set(row))})")
        if not isinstance(row["metrics"], str) or not isinstance(row["why"], str) or not row["why"].strip():
            raise DataFileError(f"{name}: 'metrics' (a regular expression) and 'why' must be non-empty strings")
        try:
            re.compile(row["metrics"])
        except re.error as exc:
            raise DataFileError(f"{name}: 'metrics' is not a valid regular expression ({exc})") from None
        if row["kind"] not in MARGIN_KINDS:
            raise DataFileError(f"{name}: kind must be one of {MARGIN_KINDS}, got {row['kind']!r}")
        value = row["value"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise DataFileError(f"{name}: value must be a number ≥ 0, got {value!r}")
        out.append(MarginRule(row["metrics"], row["kind"], float(value), row["why"].strip()))
    if not any(r.matches("any_unlisted_metric") for r in out):
        raise DataFileError(f"{where}: the last margin rule must match every metric (metrics: '.*')")
    return tuple(out)


def parse_claims(doc: Any, source: str | Path = "<claims>", runs: Mapping[str, Any] | None = None) -> ClaimsData:
    """Validate the parsed ``claims.yaml`` document and build the claims, the default original-run
    map and the margin rules. ``runs``: the original runs (for checking that every mapped run exists). Any problem raises
    :class:`DataFileError` naming ``source``, the claim (position and id) and what to fix."""
    where = str(source)
    top = {"margins", "original_map", "claims"}
    if not isinstance(doc, Mapping):
        raise DataFileError(f"{where}: expected a mapping with keys {sorted(top)}, got {type(doc).__name__}")
    unknown, missing = set(doc) - top, top - set(doc)
    if unknown or missing:
        raise DataFileError(f"{where}: top-level keys must be {sorted(top)} "
                            f"(unknown: {sorted(unknown)}, missing: {sorted(missing)})")
    margins = _parse_margins(doc["margins"], where)
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
        for metric in row["metrics"]:
            try:
                d = direction(metric)
            except KeyError:
                raise DataFileError(f"{name}: metric {metric!r} is not a metric saelib.results knows "
                                    "(add its label and direction there, or fix the name)") from None
            if d is None and row["claimed"] != "equal" and row.get("testable", True):
                raise DataFileError(f"{name}: {metric!r} has no direction of better, so only claimed: equal applies")
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
    return ClaimsData(tuple(out), original_map, margins)


def load_claims(path: str | Path = CLAIMS_FILE, runs: Mapping[str, Any] | None = None) -> ClaimsData:
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


# ------------------------------------------------------------------------------------------------
# The loaded data
# ------------------------------------------------------------------------------------------------
ORIGINAL_RUNS, ORIG_LAMBDA = load_original_runs()
"""``ORIGINAL_RUNS``: original run → metric → value (Gemma-2-2B layer 12, one seed each), from
``docs/spec/original_runs.csv`` (the spec's tables). ``ORIG_LAMBDA``: orthogonality weight of each SO
run (for trend claims)."""
for _row in ORIGINAL_RUNS.values():
    if "sae_top_1_test_accuracy" in _row and "sae_top_20_test_accuracy" in _row:
        _row["probe_gap_top20_top1"] = _row["sae_top_20_test_accuracy"] - _row["sae_top_1_test_accuracy"]

ORIG_ALIASES = {"mse": "mse_legacy", "ev": "ev_legacy"}
"""Our metric → the field the original runs recorded (the papers printed the legacy definitions)."""

_DATA = load_claims(runs=ORIGINAL_RUNS)
CLAIMS: tuple[Claim, ...] = _DATA.claims
"""Every numbered claim of both papers that the ledger tracks (``docs/spec/claims.yaml``)."""
DEFAULT_ORIG_MAP: dict[str, dict[str, str]] = _DATA.original_map
"""Our variant → the original run it reproduces, per paper (a claim may override entries with ``orig_map``)."""
MARGINS: tuple[MarginRule, ...] = _DATA.margins
"""Per-metric margin rules (``docs/spec/claims.yaml``, ``margins``), first match wins."""


def verdict_rule_text(margins: Sequence[MarginRule] = ()) -> str:
    """The verdict rule in words, with the margin table (printed by notebook 07, quoted in the README)."""
    table = "\n".join(
        f"  - {r.metrics}: " + {"absolute": f"{r.value:g} (absolute)", "seed_sd": f"{r.value:g} × the pooled seed SD",
                                "relative": f"{r.value:.0%} of |baseline|"}[r.kind] + f". {r.why}"
        for r in margins)
    return f"""\
Verdict rule (``saelib.claims.verdict``). Let g be the *improvement* of the variant over its
comparison, in the metric's own direction of better (g = ours − baseline for higher-is-better
metrics, baseline − ours for lower-is-better ones, e.g. absorption and MSE), and [g_lo, g_hi] its 95%
confidence interval over seeds when one exists. m is the metric's margin (table below):

* claim "better":    supported if g_lo > 0; contradicted if g_hi < 0; otherwise unresolved.
* claim "worse":     the same with the sign of g flipped.
* claim "not worse" ("maintains", "matches"): supported if g_lo ≥ −m; contradicted if g_hi < −m;
  otherwise unresolved.
* claim "equal":     supported if −m ≤ g_lo and g_hi ≤ m; contradicted if g_lo > m or g_hi < −m;
  otherwise unresolved.
* Power. Each comparison has a minimum detectable effect at the seeds it has (two-sample, two-sided
  α = 0.05, power 0.8, from the metric's pooled seed SD s with ν degrees of freedom):
  MDE = (t_(0.975, ν) + t_(0.8, ν)) · s · √(1/n_a + 1/n_b)  (≈ 2.8 · s · √(1/n_a + 1/n_b) for large ν).
  The effect the claim is about is the paper's stated size where it gives one (a fraction of our
  baseline, e.g. "42% reduction"), otherwise m. An unresolved claim is "underpowered" when
  MDE > that effect (the experiment could not have seen it: its silence says nothing), and
  "within noise" when MDE ≤ that effect (it could have, and did not).
* No interval (single runs, no seeded group to borrow a run-to-run SD from): the interval collapses
  to g itself, except that for "better"/"worse" a |g| below {TIE_TOL:.0%} of |baseline| is within noise;
  no MDE can be stated.
* Claims over several variants or metrics ("all variants improve", "every threshold") are
  contradicted if any pair is, supported only if every pair is, within noise if any pair is, and
  underpowered otherwise.
* "best of" claims compare the variant with the best of the others; trend claims ("steadily improves
  with α") use the Spearman ρ between λ and the metric: supported if ρ points the claimed way with
  |ρ| ≥ {TREND_MIN_RHO}, contradicted if it points the other way with |ρ| ≥ {TREND_MIN_RHO}.
* A claim whose variants were not run at this profile is "not run"; a claim that needs something the
  offline setup cannot produce (a Gemma-2-2B-specific number, data nobody recorded) is
  "not testable offline".

Margins m per metric (``docs/spec/claims.yaml``, first match wins; a seed-SD rule without any seeded
group falls back to {MARGIN:.0%} of |baseline|):
{table}
"""


VERDICT_RULE = verdict_rule_text(MARGINS)
"""The verdict rule with this repository's margin table."""



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
    margin: float = math.nan
    """The binding metric's margin m, in its units."""
    margin_rule: str = ""
    """How m was set (absolute, × seed SD, % of baseline, fallback)."""
    effect: float = math.nan
    """The effect the claim is about on the binding pair (paper's stated size, else m), in metric units."""
    mde: float = math.nan
    """Minimum detectable effect of the binding pair at its seeds (NaN without a seed SD)."""
    binding: str = ""
    """Which (variant vs baseline, metric) pair decided a multi-pair claim; "" for a single pair."""
    pairs_run: int = 0
    """How many (variant, metric) pairs could be evaluated."""
    pairs_total: int = 0
    """How many pairs the claim has."""


@dataclass
class _Pair:
    """One (variant, baseline, metric) comparison of a claim."""

    variant: str
    baseline: str | None
    metric: str
    verdict: str
    diff: DiffCI | None = None
    rel: float = math.nan
    margin: float = math.nan
    margin_rule: str = ""
    effect: float = math.nan
    mde: float = math.nan


def _ci_half(vals: Sequence[float]) -> float:
    return mean_ci(vals)["ci"]


def effect_of_interest(claim: Claim, margin: float, baseline_value: float) -> float:
    """The effect the claim is about, in the metric's units: the paper's stated relative size times
    |baseline| for a "better"/"worse" claim that states one, otherwise the margin."""
    if claim.claimed in ("better", "worse") and claim.claimed_effect_rel is not None:
        return abs(claim.claimed_effect_rel * baseline_value)
    return margin


def _judge_pair(claim: Claim, source: _Source, variant: str, baseline: str, metric: str, d: str,
                margins: Sequence[MarginRule]) -> _Pair:
    diff = source.compare(variant, baseline, metric)
    if diff.n_a == 0 or diff.n_b == 0:
        return _Pair(variant, baseline, metric, NOT_RUN, diff)
    a = float(np.mean(source.values(variant, metric)))
    b = float(np.mean(source.values(baseline, metric)))
    if claim.comparison == "overhead ≤ bound":
        over = a / b - 1.0
        return _Pair(variant, baseline, metric, verdict(over, claim.bound, "lower", "not_worse", None, margin=0.0),
                     diff, over)
    sd, df = source.noise(metric)
    m, rule = margin_for(metric, margins, sd, b)
    effect = effect_of_interest(claim, m, b)
    power_mde = mde(sd, df, diff.n_a, diff.n_b)
    ci = (diff.lo, diff.hi) if diff.has_ci else None
    v = verdict(a, b, d, claim.claimed, ci, margin=m, mde=power_mde, effect=effect)
    sign = 1.0 if d == "higher" else -1.0
    rel = sign * (a - b) / abs(b) if b else sign * (a - b)
    return _Pair(variant, baseline, metric, v, diff, rel, m, rule, effect, power_mde)


def evaluate_claim(claim: Claim, source: _Source, margins: Sequence[MarginRule] | None = None) -> Evaluation:
    """Apply the verdict rule to ``claim`` on ``source`` (our results or the original runs), with the
    per-metric ``margins`` (default: ``MARGINS`` from claims.yaml)."""
    margins = MARGINS if margins is None else margins
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
    pairs: list[_Pair] = []
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
                    pairs.append(_Pair(variant, None, metric, NOT_RUN))
                    continue
                best = max(cands, key=lambda c: c[1]) if d == "higher" else min(cands, key=lambda c: c[1])
                baseline = best[0]
            else:
                baseline = claim.baseline
            pairs.append(_judge_pair(claim, source, variant, baseline, metric, d, margins))
    run = [p for p in pairs if p.verdict != NOT_RUN]
    overall = combine_verdicts(p.verdict for p in pairs)
    if not run:
        return Evaluation(NOT_RUN, pairs_total=len(pairs))
    # the binding pair: one with the overall verdict if any pair has it (a contradicting one for a
    # contradicted claim), and among those the least favourable relative improvement
    cands = [p for p in run if p.verdict == overall] or run
    if claim.comparison == "overhead ≤ bound":
        bind = max(cands, key=lambda p: p.rel)
    else:
        bind = min(cands, key=lambda p: p.rel if claim.claimed != "worse" else -p.rel)
    a_vals, b_vals = source.values(bind.variant, bind.metric), source.values(bind.baseline, bind.metric)
    if claim.comparison == "overhead ≤ bound":  # value = relative overhead, compared with the bound
        value, base, value_ci, base_ci = bind.rel, float(claim.bound), math.nan, math.nan
    else:
        value, base = float(np.mean(a_vals)), float(np.mean(b_vals))
        value_ci, base_ci = _ci_half(a_vals), _ci_half(b_vals)
    return Evaluation(
        overall, value=value, baseline_value=base, diff=bind.diff, value_ci=value_ci,
        baseline_ci=base_ci, noise_sd=source.noise(bind.metric)[0], margin=bind.margin,
        margin_rule=bind.margin_rule, effect=bind.effect, mde=bind.mde,
        binding="" if len(pairs) == 1 else f"{bind.variant} vs {bind.baseline}, {bind.metric}", pairs_run=len(run),
        pairs_total=len(pairs))


def _text(value) -> str:
    """A ledger cell as text: "" for missing values (None, NaN from a CSV round trip)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _finite(x) -> bool:
    """True for a finite number (False for None, NaN, "" from a CSV round trip)."""
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


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


STANDARD_SAE = "relu_l1_matched"
"""The "standard SAE" of every "vs standard SAE" claim: ReLU + L1 whose coefficient stands for the papers'
λ = 0.04 by ``l1_rule: l0_calibrated`` (:mod:`saelib.l1_calibration`): the coefficient at which it reaches
the original standard SAE's sparsity, L0/d ≈ 0.021, on the training L0 (not on any evaluation metric)."""
LITERAL_STANDARD = "relu_l1"
"""ReLU + L1 at the papers' literal λ = 0.04, which at our activation scale is dense (L0 > d); kept
beside every standard-SAE comparison, labelled ``LITERAL_LABEL``."""
LITERAL_LABEL = "literal λ=0.04 (dense)"


def build_ledger(results: Results, claims: Sequence[Claim] = CLAIMS,
                 margins: Sequence[MarginRule] | None = None) -> pd.DataFrame:
    """One row per claim: the paper's statement, the original runs' verdict, our value with its CI, the
    margin, the minimum detectable effect, and our verdict. Every verdict comes from :func:`verdict` /
    :func:`trend_verdict`. A claim against ``STANDARD_SAE`` is also judged against ``LITERAL_STANDARD``
    (columns ``literal_*``)."""
    ours = _Ours(results)
    rows = []
    for c in claims:
        e = evaluate_claim(c, ours, margins)
        o = evaluate_claim(c, _Original(c), margins)
        lit = (evaluate_claim(dataclasses.replace(c, baseline=LITERAL_STANDARD), ours, margins)
               if c.baseline == STANDARD_SAE else None)
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
            "margin": e.margin,
            "margin_rule": e.margin_rule,
            "effect_of_interest": e.effect,
            "mde": e.mde,
            "literal_baseline": f"{LITERAL_STANDARD} ({LITERAL_LABEL})" if lit else "",
            "literal_value": lit.baseline_value if lit else math.nan,
            "literal_verdict": lit.verdict if lit else "",
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
        power = ""
        if _finite(r.get("margin")) and r["comparison"] not in ("trend over λ", "overhead ≤ bound"):
            power = f"m = {r['margin']:.3g}" + (" (5% fallback)" if "no seed SD" in _text(r.get("margin_rule")) else "")
            if _finite(r.get("effect_of_interest")) and r["effect_of_interest"] != r["margin"]:
                power += f"; claimed effect {r['effect_of_interest']:.3g}"
            power += f"; MDE {r['mde']:.3g} ({_text(r['n_seeds'])} seeds)" if _finite(r.get("mde")) else "; MDE: no seed SD"
        literal = ""
        if _text(r.get("literal_verdict")):
            lv = r["literal_value"]
            literal = (f"vs {LITERAL_STANDARD} {lv:.4g}: " if _finite(lv) else "") + r["literal_verdict"]
        out.append({
            "id": r["claim_id"], "claim": r["claim"], "paper says": r["paper_value"],
            "metric (better)": f"{r['metric']} ({r['better']})",
            "compared": (f"{r['variant']} vs {r['baseline']}" if _text(r["baseline"]) else _text(r["variant"]))
            + (f"; decided by {r['binding_pair']}" if _text(r["binding_pair"]) else ""),
            "original runs": f"{orig} → {r['original_verdict']}" if orig else r["original_verdict"],
            "ours": ours, "margin, power": power,
            "verdict": r["verdict"] + (" (no CI)" if r["evidence"] == "single run, no CI" else ""),
            LITERAL_LABEL: literal,
        })
    return pd.DataFrame(out)


__all__ = ["Claim", "CLAIMS", "CLAIMED", "VERDICTS", "VERDICT_RULE", "SUPPORTED", "CONTRADICTED", "NOISE",
           "UNDERPOWERED", "NOT_TESTABLE", "NOT_RUN", "MARGIN", "MARGINS", "MarginRule", "TIE_TOL", "ORIGINAL_RUNS",
           "verdict", "trend_verdict", "combine_verdicts", "evaluate_claim", "effect_of_interest", "margin_for",
           "verdict_rule_text", "build_ledger", "ledger_display", "claim_ids", "Evaluation", "ClaimsData",
           "DataFileError", "load_claims", "load_original_runs", "parse_claims", "STANDARD_SAE", "LITERAL_STANDARD",
           "LITERAL_LABEL"]
