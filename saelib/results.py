"""Load every evaluation result under ``results/`` into tidy tables, and aggregate seeds.

Sources (one JSON per SAE variant, written by the eval stages):

| folder | file | metrics taken |
|---|---|---|
| ``core/`` | ``<variant>.json`` | flat numeric keys (``l0``, ``mse``, ``ev``, ``kl_score`` …) |
| ``absorption/`` | ``<variant>.json`` | ``summary`` (``mean_absorption_score`` …) + ``max_letter_absorption_rate`` |
| ``scr/`` | ``<variant>.json`` / ``<variant>_tpp.json`` | ``eval_result_metrics.scr_metrics`` / ``.tpp_metrics`` |
| ``probing/`` | ``<variant>.json`` | ``eval_result_metrics.llm`` and ``.sae``; per-task rows from ``eval_result_details`` |
| ``unlearning/`` | ``<variant>.json`` | ``eval_result_metrics.unlearning.unlearning_score`` |

Seeds: a variant named ``<base>_s<N>`` is seed ``N`` of ``<base>`` (params.yaml's ``topk_s1``,
``compete_run6_s2`` …). Every statistic on a variant uses all of its seeds that were run.

Uncertainty (documented in ``notebooks/07_figures.py``):
* mean ± 95% CI of one group: Student t with n − 1 degrees of freedom;
* difference of two groups: Welch's t interval when both have ≥ 2 seeds; otherwise the metric's
  *pooled seed SD* (within-group SD pooled over every seeded group present) with
  se = s_p·√(1/n_a + 1/n_b) and the pooled degrees of freedom; no interval when no group has seeds.
"""
from __future__ import annotations

import math
import re
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import stats

from .io import read_json

EVALS = ("core", "absorption", "scr", "tpp", "probing", "sae_probes", "unlearning")
"""Result families, in the order their columns appear in the wide table."""

SEED_RE = re.compile(r"^(?P<base>.+)_s(?P<seed>\d+)$")

# ------------------------------------------------------------------------------------------------
# Metric registry: label and direction of "better"
# ------------------------------------------------------------------------------------------------
_LABELS: dict[str, str] = {
    "l0": "L0 (active latents per token)",
    "l1": "L1 (sum of latent activations)",
    "mse": "MSE per element",
    "mse_legacy": "MSE (papers' per-token sum)",
    "ev": "explained variance",
    "ev_legacy": "explained variance (papers')",
    "cossim": "cosine similarity (x, x̂)",
    "l2_ratio": "‖x̂‖ / ‖x‖",
    "kl_score": "KL score",
    "ce_score": "CE score",
    "frac_alive": "fraction of latents alive",
    "train_wall_time_s": "training wall time (s)",
    "mean_absorption_score": "absorption (legacy score, as in the papers)",
    "mean_absorption_fraction_score": "absorption fraction (current score)",
    "mean_full_absorption_score": "full absorption (current score)",
    "mean_num_split_features": "split features per letter",
    "max_letter_absorption_rate": "highest per-letter absorption rate",
    "sae_test_accuracy": "sparse probing, all latents",
    "llm_test_accuracy": "residual probe, all dims",
    "unlearning_score": "unlearning score",
    "probe_gap_top20_top1": "probing gap top-20 − top-1",
    "penalty_over_mse_final": "penalty / MSE at the end of training",
    "sae_probes_llm_test_auc": "sae-probes residual probe AUC, all dims",
    "sae_probes_llm_test_accuracy": "sae-probes residual probe accuracy, all dims",
    "sae_probes_llm_test_f1": "sae-probes residual probe F1, all dims",
}
_LOWER = {"mse", "mse_legacy", "train_wall_time_s", "mean_absorption_score", "mean_absorption_fraction_score",
          "mean_full_absorption_score", "max_letter_absorption_rate", "probe_gap_top20_top1"}
_NO_DIRECTION = {"l0", "l1", "l2_ratio", "mean_num_split_features", "mean_num_split_features_legacy",
                 "penalty_over_mse_final"}


def direction(metric: str) -> str | None:
    """``"lower"`` or ``"higher"`` (which way is better), ``None`` for descriptive metrics (L0, splits).

    Task-restricted keys ``<metric>@<task pattern>`` take the direction of ``<metric>``.
    """
    base = metric.split("@", 1)[0]
    if base in _LOWER:
        return "lower"
    if base in _NO_DIRECTION:
        return None
    if base in _LABELS or re.fullmatch(r"(sae_probes_)?(sae|llm)_top_\d+_test_(accuracy|auc|f1)|scr_(metric|dir1|dir2)_threshold_\d+(_saebench|_kept_only)?"
                                       r"|tpp_threshold_\d+_(total_metric|intended_diff_only)", base):
        return "higher"
    if re.fullmatch(r"tpp_threshold_\d+_unintended_diff_only", base):
        return "lower"
    raise KeyError(f"no direction known for metric {metric!r}; add it to saelib.results")


def label(metric: str) -> str:
    """Human name of a metric key (``scr_metric_threshold_2`` → ``SCR, n = 2 ablated latents``)."""
    base, _, task = metric.partition("@")
    if base in _LABELS:
        text = _LABELS[base]
    elif m := re.fullmatch(r"(sae|llm)_top_(\d+)_test_accuracy", base):
        text = f"{'sparse probing' if m.group(1) == 'sae' else 'residual probe'}, top-{m.group(2)}"
    elif m := re.fullmatch(r"sae_probes_(sae|llm)_top_(\d+)_test_(accuracy|auc|f1)", base):
        what = {"accuracy": "accuracy", "auc": "AUC", "f1": "F1"}[m.group(3)]
        text = f"sae-probes {what}, {'SAE' if m.group(1) == 'sae' else 'residual'} top-{m.group(2)}"
    elif m := re.fullmatch(r"scr_(metric|dir1|dir2)_threshold_(\d+)(?:_(saebench|kept_only))?", base):
        text = f"SCR{'' if m.group(1) == 'metric' else ' ' + m.group(1)}, n = {m.group(2)} ablated latents"
        if m.group(3):
            text += f" ({m.group(3).replace('_', ' ')} ablation)"
    elif m := re.fullmatch(r"tpp_threshold_(\d+)_(.+)", base):
        text = f"TPP {m.group(2).replace('_', ' ')}, n = {m.group(1)}"
    else:
        text = base.replace("_", " ")
    return f"{text} [{task} tasks]" if task else text


def axis_label(metric: str, *, wrap: int | None = 30) -> str:
    """Axis label: the metric's name (wrapped at ``wrap`` characters) and which way is better,
    e.g. ``absorption (legacy score …)\n↓ lower is better``."""
    d = direction(metric)
    arrow = {"lower": "↓ lower is better", "higher": "↑ higher is better", None: "(descriptive)"}[d]
    if not wrap:
        return f"{label(metric)} {arrow}"
    return "\n".join(textwrap.wrap(label(metric), wrap) + [arrow])


# ------------------------------------------------------------------------------------------------
# Readers: one JSON → flat {metric: float}
# ------------------------------------------------------------------------------------------------
class ResultFormatError(ValueError):
    """A result file does not have the structure its eval writes."""


def _numeric(d: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, (int, float)):
            out[k] = float(v)
    return out


def _dig(doc: Mapping, path: tuple[str, ...], file: Path) -> Any:
    cur: Any = doc
    for key in path:
        if not isinstance(cur, Mapping) or key not in cur:
            raise ResultFormatError(f"{file}: expected key {'.'.join(path)!r} (missing {key!r})")
        cur = cur[key]
    return cur


def read_core(path: str | Path) -> dict[str, float]:
    """Numeric top-level keys of ``results/core/<variant>.json``."""
    path = Path(path)
    doc = read_json(path)
    out = _numeric(doc)
    for key in ("l0", "mse"):
        if key not in out:
            raise ResultFormatError(f"{path}: core result without {key!r}")
    return out


def read_absorption(path: str | Path) -> dict[str, float]:
    """``summary`` of ``results/absorption/<variant>.json`` plus the highest per-letter legacy rate."""
    path = Path(path)
    doc = read_json(path)
    summary = doc.get("summary") or _dig(doc, ("eval_result_metrics", "mean"), path)
    out = _numeric(summary)
    if "mean_absorption_score" not in out:
        raise ResultFormatError(f"{path}: absorption result without 'mean_absorption_score'")
    rates = [r.get("absorption_rate") for r in doc.get("eval_result_details") or []
             if isinstance(r, Mapping) and r.get("legacy_included", True) and r.get("absorption_rate") is not None]
    if rates:
        out["max_letter_absorption_rate"] = float(np.nanmax(np.asarray(rates, dtype=float)))
    return out


def read_scr(path: str | Path) -> dict[str, float]:
    """``eval_result_metrics.scr_metrics`` (SCR) or ``.tpp_metrics`` (TPP; any single sub-dict)."""
    path = Path(path)
    metrics = _dig(read_json(path), ("eval_result_metrics",), path)
    if not isinstance(metrics, Mapping) or not metrics:
        raise ResultFormatError(f"{path}: empty eval_result_metrics")
    out: dict[str, float] = {}
    for sub in metrics.values():
        if isinstance(sub, Mapping):
            out.update(_numeric(sub))
    return out


def scr_ablation_diagnostics(doc: Mapping[str, Any], *, metric_direction_only: bool = True) -> pd.DataFrame:
    """What each ablation did, from an SCR result document (``scr/<variant>.json``): one row per task,
    definition (the chosen ``special_positions`` and the alternative when it was reported), direction
    and n, with the biased probe's accuracy and positive rate on the re-tested set and how many ablated
    latents fire on a zero input (pandas). A positive rate of 0 or 1 means every text landed on one side
    of the probe: the ablation moved all texts alike, rather than removing the spurious attribute.
    ``greedy_S``: S_n of the n latents chosen greedily on the train split (when recorded), the reference
    for what a better ranking of this SAE's latents could reach."""
    chosen = (doc.get("eval_config") or {}).get("special_positions", "saebench")  # SAEBench's own files: its ablation
    rows = []
    for task, det in (doc.get("eval_result_unstructured") or {}).items():
        keep = det.get("metric_direction") if metric_direction_only else None
        blocks = [(chosen, det["ablated"], det.get("greedy_S") or {})]
        if det.get("alternative"):
            alt = det["alternative"]
            blocks.append((alt["special_positions"], alt["ablated"], alt.get("greedy_S") or {}))
        for definition, ablated, greedy in blocks:
            for key, res in ablated.items():
                d, n = map(int, re.fullmatch(r"dir(\d+)_n(\d+)", key).groups())
                if keep is None or d == keep:
                    rows.append({"task": task, "special_positions": definition, "direction": d, "n": n,
                                 "biased_probe_acc": res["biased_probe_acc"],
                                 "biased_probe_positive_rate": res.get("biased_probe_positive_rate"),
                                 "n_fire_on_zero": res.get("n_fire_on_zero"),
                                 "n_latents_firing_on_zero": det.get("n_latents_firing_on_zero"),
                                 "greedy_S": greedy.get(key)})
    return pd.DataFrame(rows, columns=SCR_DIAGNOSTIC_COLUMNS)


SCR_DIAGNOSTIC_COLUMNS = ("task", "special_positions", "direction", "n", "biased_probe_acc", "biased_probe_positive_rate",
                          "n_fire_on_zero", "n_latents_firing_on_zero", "greedy_S")
"""Columns of :func:`scr_ablation_diagnostics` (also when a document has no per-ablation details)."""


def read_probing(path: str | Path) -> tuple[dict[str, float], pd.DataFrame]:
    """Task-averaged ``llm``/``sae`` accuracies and a per-task long table (task, metric, value)."""
    path = Path(path)
    doc = read_json(path)
    metrics = _dig(doc, ("eval_result_metrics",), path)
    out: dict[str, float] = {}
    for side in ("llm", "sae"):
        out.update(_numeric(metrics.get(side, {})))
    if not any(k.startswith("sae_") for k in out):
        raise ResultFormatError(f"{path}: probing result without sae_* accuracies")
    rows = []
    for entry in doc.get("eval_result_details") or []:
        task = entry.get("dataset_name")
        for k, v in _numeric({k: v for k, v in entry.items() if k != "dataset_name"}).items():
            rows.append({"task": task, "metric": k, "value": v})
    return out, pd.DataFrame(rows, columns=["task", "metric", "value"])


UNLEARNING_OPTIONAL = ("unlearning_score_sd", "unlearning_auc", "unlearning_auc_sd")
"""Unlearning metrics written by the current eval (bootstrap SDs, the area score); older files lack them."""


SAE_PROBES_PREFIX = "sae_probes_"
"""The sae-probes benchmark's metrics share SAEBench probing's names; in the results table they carry this prefix."""


def read_sae_probes(path: str | Path) -> dict[str, float]:
    """Dataset-averaged metrics of ``results/<profile>/sae_probes/<variant>.json``, prefixed ``sae_probes_``
    (the second probing eval, kept apart from SAEBench's sparse probing)."""
    vals, _ = read_probing(path)
    return {SAE_PROBES_PREFIX + k: v for k, v in vals.items()}


def read_unlearning(path: str | Path) -> dict[str, float]:
    """``unlearning_score`` of ``results/<profile>/unlearning/<variant>.json``, with its bootstrap SD and the
    continuous area score (and its SD) when the file has them."""
    path = Path(path)
    doc = read_json(path)
    score = _dig(doc, ("eval_result_metrics", "unlearning", "unlearning_score"), path)
    out = {"unlearning_score": float(score)}
    block = doc.get("eval_result_metrics", {}).get("unlearning", {})
    out.update({k: float(block[k]) for k in UNLEARNING_OPTIONAL if isinstance(block.get(k), (int, float))})
    return out


# ------------------------------------------------------------------------------------------------
# Seed statistics (pure)
# ------------------------------------------------------------------------------------------------
def seed_base(name: str) -> str:
    """``compete_run6_s2`` → ``compete_run6``; names without a ``_s<N>`` suffix are their own base."""
    m = SEED_RE.match(name)
    return m.group("base") if m else name


def mean_ci(values: Iterable[float], level: float = 0.95) -> dict[str, float]:
    """Mean, sample SD and the half-width of the t confidence interval (NaN for fewer than 2 values)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": math.nan, "sd": math.nan, "ci": math.nan}
    if n == 1:
        return {"n": 1, "mean": float(x[0]), "sd": math.nan, "ci": math.nan}
    sd = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n))
    return {"n": n, "mean": float(x.mean()), "sd": sd, "ci": half}


def pooled_sd(groups: Iterable[Iterable[float]]) -> tuple[float, int]:
    """Within-group SD pooled over groups with ≥ 2 values: √(Σ(n_g − 1)s_g² / Σ(n_g − 1)), and its df."""
    ss, df = 0.0, 0
    for g in groups:
        x = np.asarray([v for v in g if v is not None and np.isfinite(v)], dtype=float)
        if len(x) >= 2:
            ss += float(((x - x.mean()) ** 2).sum())
            df += len(x) - 1
    return (math.sqrt(ss / df), df) if df else (math.nan, 0)


@dataclass
class DiffCI:
    """Difference of group means ``a − b`` with its confidence interval."""

    diff: float
    """mean(a) − mean(b)."""
    lo: float
    """Lower end of the interval (NaN when no interval can be formed)."""
    hi: float
    """Upper end of the interval."""
    method: str
    """How the interval was formed: "welch", "pooled seed SD", or "none"."""
    n_a: int
    """Values in a."""
    n_b: int
    """Values in b."""

    @property
    def has_ci(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)


def diff_ci(a: Iterable[float], b: Iterable[float], *, noise_sd: float = math.nan, noise_df: int = 0,
            level: float = 0.95) -> DiffCI:
    """Interval for mean(a) − mean(b): Welch when both have ≥ 2 values, else the pooled seed SD."""
    a = np.asarray([v for v in a if v is not None and np.isfinite(v)], dtype=float)
    b = np.asarray([v for v in b if v is not None and np.isfinite(v)], dtype=float)
    if len(a) == 0 or len(b) == 0:
        return DiffCI(math.nan, math.nan, math.nan, "none", len(a), len(b))
    d = float(a.mean() - b.mean())
    q = 0.5 + level / 2
    if len(a) >= 2 and len(b) >= 2:
        va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
        se = math.sqrt(va + vb)
        if se == 0:
            return DiffCI(d, d, d, "welch", len(a), len(b))
        dof = (va + vb) ** 2 / ((va ** 2) / (len(a) - 1) + (vb ** 2) / (len(b) - 1))
        half = float(stats.t.ppf(q, dof) * se)
        return DiffCI(d, d - half, d + half, "welch", len(a), len(b))
    if noise_df >= 1 and math.isfinite(noise_sd):
        half = float(stats.t.ppf(q, noise_df) * noise_sd * math.sqrt(1 / len(a) + 1 / len(b)))
        return DiffCI(d, d - half, d + half, "pooled seed SD", len(a), len(b))
    return DiffCI(d, math.nan, math.nan, "none", len(a), len(b))


POWER = 0.8
"""Power at which the minimum detectable effect is stated."""
ALPHA = 0.05
"""Two-sided significance level of the minimum detectable effect (and of every 95% interval)."""


def mde(noise_sd: float, noise_df: int, n_a: int, n_b: int, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable effect of a two-sample comparison of group means (two-sided ``alpha``,
    ``power``), from the metric's pooled seed SD ``s`` with ``noise_df`` degrees of freedom ν:

        MDE = (t_{1−α/2, ν} + t_{power, ν}) · s · √(1/n_a + 1/n_b)

    (the usual normal-theory formula with Student-t quantiles for an SD estimated from ν seeds-minus-one;
    α = 0.05, power 0.8, ν = ∞ gives the familiar 2.80 · s · √(1/n_a + 1/n_b)). An effect smaller than
    this would be missed more than 20% of the time by the 95% interval. NaN without a seed SD
    (``noise_df < 1``) or without values in a group.
    """
    if n_a < 1 or n_b < 1 or noise_df < 1 or noise_sd is None or not math.isfinite(noise_sd):
        return math.nan
    q = float(stats.t.ppf(1 - alpha / 2, noise_df) + stats.t.ppf(power, noise_df))
    return q * float(noise_sd) * math.sqrt(1 / n_a + 1 / n_b)


# ------------------------------------------------------------------------------------------------
# The loaded results
# ------------------------------------------------------------------------------------------------
@dataclass
class Results:
    """Every result of one profile. ``wide``: one row per variant (index), one column per metric."""

    wide: pd.DataFrame
    """Index = variant name; numeric metric columns; NaN where an eval did not run."""
    meta: pd.DataFrame
    """Index = variant; columns: group, seed, arch, k, d_sae, d_in, penalty_kind, penalty_reading,
    penalty_lam, l1_coef (an L1 term's coefficient, if any), profile, model, layer, train_tokens, evals
    (which result families exist)."""
    penalty_cfgs: dict[str, dict | None]
    """Variant → its ``penalty_cfg`` from the core result (None for unpenalised SAEs)."""
    per_task: pd.DataFrame
    """Probing per task: variant, task, metric, value."""
    per_letter: pd.DataFrame
    """Absorption per letter: variant, letter, absorption_rate, mean_absorption_fraction, …"""
    skipped: list[str] = field(default_factory=list)
    """Files ignored (other profile, unreadable), with the reason."""

    # -- lookup ---------------------------------------------------------------------------------
    @property
    def variants(self) -> list[str]:
        return list(self.wide.index)

    def has(self, variant: str, metric: str | None = None) -> bool:
        """True when ``variant`` (or one of its seeds) has a finite value of ``metric``."""
        return len(self.values(variant, metric)) > 0 if metric else any(
            v == variant or seed_base(v) == variant for v in self.wide.index)

    def group_members(self, variant: str) -> list[str]:
        """``variant`` and its seed replicates present in the results (``topk`` → topk, topk_s1, topk_s2)."""
        return [v for v in self.wide.index if v == variant or (seed_base(v) == variant and v != variant)]

    def value(self, variant: str, metric: str) -> float:
        """The single run's value (NaN when missing); no seed pooling."""
        vals = self._raw(variant, metric)
        return float(vals) if vals is not None else math.nan

    def _raw(self, variant: str, metric: str) -> float | None:
        if variant not in self.wide.index:
            return None
        base, _, pattern = metric.partition("@")
        if pattern:
            t = self.per_task
            sel = t[(t["variant"] == variant) & (t["metric"] == base) & t["task"].str.contains(pattern, case=False, regex=True)]
            return float(sel["value"].mean()) if len(sel) else None
        if base not in self.wide.columns:
            return None
        v = self.wide.at[variant, base]
        return float(v) if pd.notna(v) else None

    def values(self, variant: str, metric: str) -> list[float]:
        """Finite values of ``metric`` over ``variant``'s seeds (empty when not run)."""
        out = []
        for member in self.group_members(variant):
            v = self._raw(member, metric)
            if v is not None and math.isfinite(v):
                out.append(v)
        return out

    def seed_groups(self) -> dict[str, list[str]]:
        """Group name → members, for groups with more than one member present."""
        groups: dict[str, list[str]] = {}
        for v in self.wide.index:
            groups.setdefault(seed_base(v) if seed_base(v) in self.wide.index else v, []).append(v)
        return {g: m for g, m in groups.items() if len(m) > 1}

    def noise(self, metric: str) -> tuple[float, int]:
        """Pooled run-to-run (seed) SD of ``metric`` over every seeded group present, and its df."""
        return pooled_sd([self.values(g, metric) for g in self.seed_groups()])

    def stat(self, variant: str, metric: str, level: float = 0.95) -> dict[str, float]:
        """Mean ± CI half-width over ``variant``'s seeds (``n``, ``mean``, ``sd``, ``ci``)."""
        return mean_ci(self.values(variant, metric), level)

    def compare(self, variant: str, baseline: str, metric: str, level: float = 0.95) -> DiffCI:
        """``variant − baseline`` on ``metric`` (seed means) with the interval rule of this module."""
        sd, df = self.noise(metric)
        return diff_ci(self.values(variant, metric), self.values(baseline, metric), noise_sd=sd, noise_df=df,
                       level=level)

    def penalty_lam(self, variant: str) -> float:
        cfg = self.penalty_cfgs.get(variant)
        return float(cfg["lam"]) if cfg and cfg.get("lam") is not None else math.nan

    def scale(self) -> dict[str, Any]:
        """The scale the results come from: profile, model, layer, d_in, F and training tokens per SAE
        (the most common value over variants; e.g. a half-width ablation does not change F)."""
        m = self.meta

        def mode(col):
            vals = m[col].dropna() if col in m else pd.Series(dtype=object)
            return vals.mode().iloc[0] if len(vals) else None

        return {c: mode(c) for c in ("profile", "model", "layer", "d_in", "d_sae", "train_tokens")}


def _meta_from_core(variant: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    sae = doc.get("sae_cfg") or {}
    pen = doc.get("penalty_cfg") or None
    m = SEED_RE.match(variant)
    return {
        "group": m.group("base") if m else variant,
        "seed": sae.get("seed"),
        "arch": doc.get("arch"),
        "k": sae.get("k"),
        "d_sae": sae.get("d_sae"),
        "d_in": sae.get("d_in"),
        "penalty_kind": pen.get("kind") if pen else None,
        "penalty_reading": pen.get("reading") if pen else None,
        "penalty_lam": pen.get("lam") if pen else None,
        "l1_coef": sae.get("l1_coef") or (pen.get("l1_coef") if pen else None) or (pen.get("lam_l1") if pen else None),
        "profile": doc.get("profile"),
        "model": doc.get("model"),
        "layer": doc.get("layer"),
        "train_tokens": doc.get("train_tokens"),
        "description": (doc.get("params_entry") or {}).get("description") or (doc.get("params_entry") or {}).get("paper_run"),
    }


def _variant_files(folder: Path, suffix: str = "") -> dict[str, Path]:
    """``<variant><suffix>.json`` files of ``folder`` (TPP files excluded from the SCR listing)."""
    if not folder.is_dir():
        return {}
    out = {}
    for p in sorted(folder.glob(f"*{suffix}.json")):
        name = p.name[: -len(f"{suffix}.json")]
        if not suffix and name.endswith("_tpp"):
            continue
        out[name] = p
    return out


def load_results(results_dir: str | Path, *, variants: Iterable[str] | None = None,
                 profile: str | None = None) -> Results:
    """Read ``results_dir/{core,absorption,scr,probing,sae_probes,unlearning}``.

    ``variants``: only these names are loaded (seed replicates ``<name>_s<N>`` must be listed too, as
    ``run_variants`` lists them); ``None`` = everything found.
    ``profile``: files that record a different profile are skipped (listed in ``Results.skipped``), so
    figures never mix scales. A missing folder or variant is simply absent (its cells are NaN).
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"results folder {root} does not exist; run the eval stages first (dvc repro)")
    wanted = None if variants is None else set(variants)

    def keep(name: str) -> bool:  # seeds are variants of their own: list them to load them
        return wanted is None or name in wanted

    skipped: list[str] = []
    rows: dict[str, dict[str, float]] = {}
    meta: dict[str, dict[str, Any]] = {}
    penalty: dict[str, dict | None] = {}
    per_task, per_letter = [], []

    rejected: set[str] = set()  # variants with any file of another profile: all their files are dropped

    def profile_ok(path: Path, doc_profile: Any, name: str) -> bool:
        if profile is not None and doc_profile is not None and doc_profile != profile:
            skipped.append(f"{path}: profile {doc_profile!r}, not {profile!r}")
            rejected.add(name)
            return False
        return True

    readers = {"absorption": read_absorption, "unlearning": read_unlearning, "sae_probes": read_sae_probes}
    for name, path in _variant_files(root / "core").items():
        if not keep(name):
            continue
        doc = read_json(path)
        if not profile_ok(path, doc.get("profile"), name):
            continue
        rows.setdefault(name, {}).update(read_core(path))
        meta[name] = {**_meta_from_core(name, doc), "evals": "core"}
        penalty[name] = doc.get("penalty_cfg") or None
    for family in ("absorption", "scr", "tpp", "probing", "sae_probes", "unlearning"):
        folder = root / ("scr" if family == "tpp" else family)
        for name, path in _variant_files(folder, "_tpp" if family == "tpp" else "").items():
            if not keep(name):
                continue
            try:
                doc = read_json(path)
            except Exception as exc:  # unreadable JSON: report, do not crash the figures
                skipped.append(f"{path}: {exc}")
                continue
            if not profile_ok(path, doc.get("profile"), name):
                continue
            if family == "probing":
                vals, tasks = read_probing(path)
                per_task.append(tasks.assign(variant=name))
            elif family in ("scr", "tpp"):
                vals = read_scr(path)
            else:
                vals = readers[family](path)
                if family == "absorption":
                    details = pd.DataFrame([r for r in doc.get("eval_result_details") or [] if isinstance(r, Mapping)])
                    if len(details):
                        per_letter.append(details.assign(variant=name))
            rows.setdefault(name, {}).update(vals)
            entry = meta.setdefault(name, {**_meta_from_core(name, {}), "evals": ""})
            entry["evals"] = ",".join(filter(None, [entry["evals"], family]))
            for key in ("model", "layer", "profile"):
                if entry.get(key) is None and doc.get(key) is not None:
                    entry[key] = doc.get(key)
    for name in rejected:  # e.g. unlearning files record no profile: drop them with the variant's core
        rows.pop(name, None)
        meta.pop(name, None)
        penalty.pop(name, None)
    per_task = [t for t in per_task if not len(t) or t["variant"].iloc[0] not in rejected]
    per_letter = [t for t in per_letter if not len(t) or t["variant"].iloc[0] not in rejected]
    wide = pd.DataFrame.from_dict(rows, orient="index").sort_index()
    if "sae_top_1_test_accuracy" in wide and "sae_top_20_test_accuracy" in wide:
        wide["probe_gap_top20_top1"] = wide["sae_top_20_test_accuracy"] - wide["sae_top_1_test_accuracy"]
    meta_df = pd.DataFrame.from_dict(meta, orient="index").reindex(wide.index)
    tasks_df = (pd.concat(per_task, ignore_index=True) if per_task
                else pd.DataFrame(columns=["task", "metric", "value", "variant"]))
    letters_df = pd.concat(per_letter, ignore_index=True) if per_letter else pd.DataFrame(columns=["variant", "letter"])
    if skipped:
        warnings.warn(f"{len(skipped)} result files skipped: " + "; ".join(skipped[:5]), stacklevel=2)
    return Results(wide=wide, meta=meta_df, penalty_cfgs=penalty, per_task=tasks_df, per_letter=letters_df,
                   skipped=skipped)


def seed_table(results: Results, metrics: Iterable[str], groups: Iterable[str] | None = None,
               level: float = 0.95) -> pd.DataFrame:
    """Mean ± CI over seeds: one row per (group, metric) with n, mean, sd, ci, lo, hi and the values."""
    groups = list(groups) if groups is not None else sorted({seed_base(v) if seed_base(v) in results.wide.index
                                                              else v for v in results.wide.index})
    rows = []
    for g in groups:
        for m in metrics:
            vals = results.values(g, m)
            s = mean_ci(vals, level)
            rows.append({"group": g, "metric": m, **s, "lo": s["mean"] - s["ci"], "hi": s["mean"] + s["ci"],
                         "values": vals})
    return pd.DataFrame(rows)


def matched_baseline(results: Results, variant: str) -> str | None:
    """The plain TopK variant with the same k and width as ``variant`` (its "no penalty" twin): no
    penalty, no L1 term (L1 controls such as ``topk_l1`` are not twins). Among several, the shortest
    name wins (``topk`` before ``topk_copy``)."""
    if variant not in results.meta.index:
        return None
    me = results.meta.loc[variant]
    if pd.isna(me.get("k")) or pd.isna(me.get("d_sae")):
        return None
    found = []
    for other, row in results.meta.iterrows():
        if other == variant or seed_base(other) != other or results.penalty_cfgs.get(other):
            continue
        l1 = row.get("l1_coef")
        if (l1 is not None and not pd.isna(l1) and float(l1) > 0) or other.endswith("_l1"):
            continue
        if row.get("arch") == "topk" and row.get("k") == me["k"] and row.get("d_sae") == me["d_sae"]:
            found.append(other)
    return min(found, key=lambda v: (len(v), v)) if found else None


def penalty_family(results: Results, reference: str) -> list[str]:
    """Variants whose penalty equals ``reference``'s in everything but λ (same k, width, kind, reading,
    ramp, τ …): the points of a λ sweep through ``reference``. Seed replicates and λ = 0 are left out."""
    ref = results.penalty_cfgs.get(reference)
    if not ref or reference not in results.meta.index:
        return []
    ref_key = {k: v for k, v in ref.items() if k != "lam"}
    me = results.meta.loc[reference]
    out = []
    for v, cfg in results.penalty_cfgs.items():
        if not cfg or seed_base(v) != v or v not in results.meta.index:
            continue
        row = results.meta.loc[v]
        if not results.penalty_lam(v) > 0:  # λ = 0 (e.g. an L1 control with the same settings): not a sweep point
            continue
        if {k: x for k, x in cfg.items() if k != "lam"} == ref_key and row.get("k") == me.get("k") \
                and row.get("d_sae") == me.get("d_sae"):
            out.append(v)
    return sorted(out, key=lambda v: results.penalty_lam(v))


__all__ = ["EVALS", "Results", "DiffCI", "ResultFormatError", "load_results", "read_core", "read_absorption",
           "read_scr", "read_probing", "read_unlearning", "seed_base", "mean_ci", "pooled_sd", "diff_ci",
           "seed_table", "mde", "ALPHA", "POWER", "matched_baseline", "penalty_family", "direction", "label", "axis_label"]
