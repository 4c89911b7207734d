"""SCR: spurious correlation removal (SAEBench, "SHIFT" in its first version).

A task has two binary attributes A (SAEBench's column 1, e.g. profession) and B (column 2, e.g.
gender) with four quadrants. Per split, with q = quadrant size:

- biased set: 2q of (A+, B+) against 2q of (A−, B−);
- balanced A set: q of (A+, B+) and q of (A+, B−) against q of (A−, B+) and q of (A−, B−);
- balanced B set: q of (A+, B+) and q of (A−, B+) against q of (A+, B−) and q of (A−, B−).

Model side (once): linear probes on mean-pooled residuals for the three train sets
(:func:`~saelib.evals.probing.train_torch_probe`), and their clean test accuracies, including the
biased probe on the balanced A and B test sets.

Per SAE: the effect of latent i on the probe of attribute K is
|(mean f̄_i on K+ − mean f̄_i on K−) · (w_K · W_dec[i])| on K's balanced train set. Direction 1
ablates the top-n B latents (non-zero effects only) and re-tests the biased probe on the balanced A
test set; direction 2 ablates A latents and tests on B. Ablation keeps the SAE error term, so
x̄' = x̄ − Σ f̄_i W_dec[i]. Score S_n = (acc_ablated − acc_biased) / (acc_oracle − acc_biased)
(0 when the denominator < 0.001), where acc_oracle is the attribute's own probe on its test set.
``scr_metric_threshold_n`` takes the direction whose biased-probe accuracy is lower (ties: dir1).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from .pooled import SourceData

from .common import saebench_document, write_saebench_json
from .pooled import SPECIAL_POSITIONS, SpecialPositions, TaskDataConfig, TaskEvalConfig, ablate_pooled
from .probing import LinearProbe, ProbeTrainConfig, train_torch_probe

N_VALUES = (2, 5, 10, 20, 50, 100, 500)
"""SAEBench's numbers of ablated latents."""


@dataclass
class AblationProbeConfig:
    """What SCR and TPP share: how many latents to ablate, and how their probes are trained."""

    n_values: tuple[int, ...] = N_VALUES
    """Numbers of top latents to ablate."""
    probe: ProbeTrainConfig = field(default_factory=ProbeTrainConfig)
    """Probe training."""
    special_positions: str = "saebench"
    """Ablation at BOS/PAD: ``saebench`` (default: the zeroed special positions of each text padded to
    the context are encoded too and their change is pooled) or ``kept_only`` (named alternative: only
    the kept tokens change). See :class:`saelib.evals.pooled.SpecialPositions`."""

    def __post_init__(self) -> None:
        if self.special_positions not in SPECIAL_POSITIONS:
            raise ValueError(f"special_positions must be one of {SPECIAL_POSITIONS}, got {self.special_positions!r}")

    @classmethod
    def from_block(cls, block: dict | None, *, what: str, outer: set[str] = frozenset()):
        """Split a params block into this config (own fields, and probe fields at the top level) and
        the keys in ``outer`` (returned as a dict for the caller's config). Unknown keys raise."""
        from ..params_block import field_names, split_block

        own = field_names(cls) - {"probe"}
        parts = split_block(block, {"outer": outer, "own": own, "probe": field_names(ProbeTrainConfig)}, what=what)
        if "n_values" in parts["own"]:
            parts["own"]["n_values"] = tuple(int(n) for n in parts["own"]["n_values"])
        return cls(probe=ProbeTrainConfig(**parts["probe"]), **parts["own"]), parts["outer"]


@dataclass
class ScrConfig(AblationProbeConfig):
    """SCR settings (SAEBench defaults)."""

    min_denominator: float = 0.001
    """S_n is 0 when acc_oracle − acc_biased is below this."""
    report_alternative: bool = True
    """Also score the other ``special_positions`` definition and write it beside the chosen one
    (``scr_metrics_<definition>``, keys suffixed ``_<definition>``); ``scr_metrics`` stays the chosen one."""
    greedy_max_n: int = 50
    """Also record, per direction and each n up to this, S_n for the n latents picked greedily on the train
    split (:func:`greedy_latent_scores`; details only, not a metric). 0: off. Each step scores every latent,
    so the cost grows with n (about 0.05 s per step at 400 texts × 5,120 latents on one core)."""


@dataclass
class ScrSets:
    """Row indices (into the pooled cache) and labels of the three SCR sets in each split."""

    rows: dict[str, dict[str, np.ndarray]]
    """``rows[split][key]`` for key in ("biased", "a", "b")."""
    labels: dict[str, dict[str, np.ndarray]]
    """``labels[split][key]``: 1 for the positive side."""
    q: dict[str, int]
    """Quadrant size per split."""


_SET_IDS = {"biased": 0, "a": 1, "b": 2}


def make_scr_sets(quadrants: dict[str, dict[str, np.ndarray]], *, seed: int = 0) -> ScrSets:
    """Build the biased and balanced sets from ``quadrants[split][{"pp","pn","np","nn"}]`` row indices
    (first letter A, second B; p = positive). q = the largest size all sets allow."""
    rows: dict[str, dict[str, np.ndarray]] = {}
    labels: dict[str, dict[str, np.ndarray]] = {}
    qs = {}
    for split, quad in quadrants.items():
        missing = {"pp", "pn", "np", "nn"} - set(quad)
        if missing:
            raise ValueError(f"{split}: quadrants {sorted(missing)} missing")
        q = min(len(quad["pn"]), len(quad["np"]), len(quad["pp"]) // 2, len(quad["nn"]) // 2)
        if q < 1:
            raise ValueError(f"{split}: quadrants too small for SCR: { {k: len(v) for k, v in quad.items()} }")
        pp, pn, np_, nn = (np.asarray(quad[k]) for k in ("pp", "pn", "np", "nn"))
        sets = {
            "biased": (pp[: 2 * q], nn[: 2 * q]),
            "a": (np.concatenate([pp[:q], pn[:q]]), np.concatenate([np_[:q], nn[:q]])),
            "b": (np.concatenate([pp[:q], np_[:q]]), np.concatenate([pn[:q], nn[:q]])),
        }
        rows[split], labels[split] = {}, {}
        for key, (pos, neg) in sets.items():
            idx = np.concatenate([pos, neg])
            y = np.concatenate([np.ones(len(pos), np.int64), np.zeros(len(neg), np.int64)])
            perm = np.random.default_rng([seed, len(idx), _SET_IDS[key]]).permutation(len(idx))
            rows[split][key], labels[split][key] = idx[perm], y[perm]
        qs[split] = q
    return ScrSets(rows, labels, qs)


@dataclass
class ScrModelSide:
    """Probes and clean accuracies of one SCR task (independent of the SAE)."""

    sets: ScrSets
    probes: dict[str, LinearProbe]
    """``"biased"``, ``"a"``, ``"b"``."""
    clean: dict[str, float]
    """Test accuracies: ``"biased"``, ``"a"``, ``"b"`` (each probe on its own set),
    ``"biased_on_a"``, ``"biased_on_b"``."""


def scr_model_side(xbar_ND: Tensor, sets: ScrSets, cfg: ScrConfig | None = None) -> ScrModelSide:
    """Train the three probes on the mean-pooled residuals and record clean test accuracies."""
    cfg = cfg or ScrConfig()
    probes, clean = {}, {}
    for key in ("biased", "a", "b"):
        tr, te = sets.rows["train"][key], sets.rows["test"][key]
        probe, _ = train_torch_probe(xbar_ND[tr], sets.labels["train"][key], xbar_ND[te], sets.labels["test"][key], cfg.probe)
        probes[key] = probe
        clean[key] = probe.accuracy(xbar_ND[te], sets.labels["test"][key])
    for key in ("a", "b"):
        te = sets.rows["test"][key]
        clean[f"biased_on_{key}"] = probes["biased"].accuracy(xbar_ND[te], sets.labels["test"][key])
    return ScrModelSide(sets, probes, clean)


def latent_effects(fbar_NF: Tensor, y_N: np.ndarray, probe_weight_D: Tensor, W_dec_FD: Tensor, *,
                   absolute: bool = True, clamp_positive: bool = False) -> Tensor:
    """Effect of each latent on a probe: (mean f̄ on y=1 − mean on y=0) · (w · W_dec[i]).

    SCR takes the absolute value; TPP clamps the mean difference at 0 and keeps the sign."""
    y = torch.as_tensor(np.asarray(y_N))
    if fbar_NF.shape[0] != y.shape[0]:
        raise ValueError(f"{fbar_NF.shape[0]} latent rows but {y.shape[0]} labels")
    diff_F = fbar_NF[y == 1].float().mean(0) - fbar_NF[y == 0].float().mean(0)
    if clamp_positive:
        diff_F = diff_F.clamp_min(0.0)
    effect_F = diff_F * (W_dec_FD.float() @ probe_weight_D.float())
    return effect_F.abs() if absolute else effect_F


def top_n_latents(effects_F: Tensor, n: int) -> Tensor:
    """Indices of the ``n`` largest effects among the non-zero ones (fewer when fewer are non-zero)."""
    if n > effects_F.numel():
        raise ValueError(f"cannot ablate {n} latents of an SAE with {effects_F.numel()}")
    nonzero = int((effects_F != 0).sum())
    k = min(n, nonzero)
    if k == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.topk(effects_F, k).indices


def scr_score(acc_ablated: float, acc_biased: float, acc_oracle: float, *, min_denominator: float = 0.001) -> float:
    """Normalised SCR score (acc_ablated − acc_biased) / (acc_oracle − acc_biased); 0 when the
    denominator is below ``min_denominator``."""
    denom = acc_oracle - acc_biased
    if denom < min_denominator:
        return 0.0
    return (acc_ablated - acc_biased) / denom


DIRECTIONS = {1: ("b", "a"), 2: ("a", "b")}
"""Direction → (attribute whose latents are ablated, attribute whose test set is evaluated)."""


def ablation_accuracies(side: ScrModelSide, xbar_ND: Tensor, fbar_NF: Tensor, W_dec_FD: Tensor,
                        latents: Tensor | Sequence[int], *, direction: int,
                        special: SpecialPositions | None = None) -> dict[str, float]:
    """Accuracies after ablating ``latents`` in direction 1 (B latents, A test set) or 2: the biased
    probe on the evaluated set, that attribute's own probe on it, and the ablated attribute's probe
    on its own test set. ``special`` (rows as ``xbar_ND``): SAEBench's ablation of the zeroed
    BOS/PAD positions; None: kept tokens only."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 1 or 2, got {direction}")
    ablate_key, eval_key = DIRECTIONS[direction]
    sets = side.sets
    te, y_te = sets.rows["test"][eval_key], sets.labels["test"][eval_key]
    other, y_other = sets.rows["test"][ablate_key], sets.labels["test"][ablate_key]
    x_abl = ablate_pooled(xbar_ND[te], fbar_NF[te], W_dec_FD, latents, None if special is None else special.rows(te))
    x_other = ablate_pooled(xbar_ND[other], fbar_NF[other], W_dec_FD, latents,
                            None if special is None else special.rows(other))
    return {"biased_probe_acc": side.probes["biased"].accuracy(x_abl, y_te),
            "biased_probe_positive_rate": float((side.probes["biased"].logits(x_abl) > 0).float().mean()),
            f"{eval_key}_probe_acc": side.probes[eval_key].accuracy(x_abl, y_te),
            f"{ablate_key}_probe_acc": side.probes[ablate_key].accuracy(x_other, y_other)}


def scr_for_sae(side: ScrModelSide, xbar_ND: Tensor, fbar_NF: Tensor, W_dec_FD: Tensor,
                cfg: ScrConfig | None = None, special: SpecialPositions | None = None) -> dict:
    """SCR metrics of one SAE on one task.

    ``xbar_ND`` / ``fbar_NF`` (and ``special``, SAEBench's special-position ablation; None = kept
    tokens only) are indexed by the rows in ``side.sets`` (mean-pooled residuals and latents of the
    same texts). Returns ``{"metrics": {scr_dir1_threshold_n, scr_dir2_threshold_n,
    scr_metric_threshold_n}, "details": {...}}``."""
    cfg = cfg or ScrConfig()
    sets = side.sets
    eff = {key: latent_effects(fbar_NF[sets.rows["train"][key]], sets.labels["train"][key],
                               side.probes[key].weight_D, W_dec_FD) for key in ("a", "b")}
    details: dict[str, dict] = {"clean": dict(side.clean), "ablated": {}, "latents": {}}
    # dir1: ablate B latents, biased probe on A data; dir2: ablate A latents, biased probe on B data
    ablated: dict[int, dict[int, float]] = {}
    for d, (ablate_key, _) in DIRECTIONS.items():
        ablated[d] = {}
        for n in cfg.n_values:
            idx = top_n_latents(eff[ablate_key], n)
            res = ablation_accuracies(side, xbar_ND, fbar_NF, W_dec_FD, idx, direction=d, special=special)
            ablated[d][n] = res["biased_probe_acc"]
            details["ablated"][f"dir{d}_n{n}"] = {**res, "n_ablated": int(idx.numel()),
                                                  "n_fire_on_zero": n_fire_on_zero(special, idx)}
            details["latents"][f"dir{d}_n{n}"] = idx.tolist()[:20]
    details["metric_direction"] = metric_direction(side.clean)
    return {"metrics": scr_metrics(side.clean, ablated, min_denominator=cfg.min_denominator), "details": details}


def n_fire_on_zero(special: SpecialPositions | None, latents: Tensor) -> int | None:
    """How many of ``latents`` fire on a zero input, i.e. move the zeroed BOS/PAD positions when
    SAEBench's ablation encodes them (None when the special positions are left out)."""
    if special is None:
        return None
    return int((special.f0_F[torch.as_tensor(latents, dtype=torch.long)] > 0).sum())


@torch.no_grad()
def greedy_latent_scores(side: ScrModelSide, xbar_ND: Tensor, fbar_NF: Tensor, W_dec_FD: Tensor, *, direction: int,
                         n_values: tuple[int, ...], special=None, min_denominator: float = 0.001) -> dict[int, float]:
    """S_n for a free choice of the n latents to ablate, picked greedily on the **train** split and scored on
    the test split: how far SCR could move with the best latents of this SAE, whatever its ranking rule.

    Each step adds the latent whose ablation (as :func:`saelib.evals.pooled.ablate_pooled` does it; with
    ``special``, SAEBench's zero-input term at BOS/PAD too) most raises the biased probe's mean log-likelihood
    of the evaluated attribute's labels on its balanced train set. Ablation is linear in the probe's logit
    (Δlogit_n = −c_ni · (W_dec[i] · w)), so every candidate is scored at once. Not a strict bound (greedy,
    selected on train), but a ranking-free reference for the SAE's own S_n: a small value means no choice
    of n of its latents carries the attribute the biased probe needs removed. Returns ``{n: S_n}``."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 1 or 2, got {direction}")
    _, eval_key = DIRECTIONS[direction]
    probe = side.probes["biased"]
    proj_F = W_dec_FD.float() @ probe.weight_D.float()

    def split(name: str):
        rows = side.sets.rows[name][eval_key]
        c_NF = fbar_NF[rows].float()
        if special is not None:
            sub = special.rows(rows)
            c_NF = c_NF + sub.weight_N[:, None].float() * sub.f0_F[None, :].float()
        sign_N = torch.as_tensor(side.sets.labels[name][eval_key]).float() * 2 - 1
        return probe.logits(torch.as_tensor(xbar_ND)[rows]), c_NF * proj_F[None, :], sign_N

    logit_tr, delta_tr, sign_tr = split("train")
    logit_te, delta_te, sign_te = split("test")
    n_max = min(max(n_values), delta_tr.shape[1])
    taken = torch.zeros(delta_tr.shape[1], dtype=torch.bool)
    base, oracle = side.clean[f"biased_on_{eval_key}"], side.clean[eval_key]
    out: dict[int, float] = {}
    for step in range(1, n_max + 1):
        gain_F = torch.nn.functional.logsigmoid(sign_tr[:, None] * (logit_tr[:, None] - delta_tr)).mean(0)
        gain_F[taken] = -float("inf")
        i = int(gain_F.argmax())
        taken[i] = True
        logit_tr = logit_tr - delta_tr[:, i]
        logit_te = logit_te - delta_te[:, i]
        if step in n_values:
            acc = float(((logit_te > 0).float() * 2 - 1 == sign_te).float().mean())
            out[step] = scr_score(acc, base, oracle, min_denominator=min_denominator)
    return out


def metric_direction(clean: dict[str, float]) -> int:
    """The direction ``scr_metric`` reports: the one whose biased-probe clean accuracy is lower (ties: 1;
    SAEBench reports no ``scr_metric`` on an exact tie)."""
    return 1 if clean["biased_on_a"] <= clean["biased_on_b"] else 2


def scr_metrics(clean: dict[str, float], ablated: dict[int, dict[int, float]], *,
                min_denominator: float = 0.001) -> dict[str, float]:
    """SCR scores from accuracies: ``clean`` (``a``, ``b``: each attribute's own probe; ``biased_on_a``,
    ``biased_on_b``: the biased probe) and ``ablated[d][n]`` (the biased probe after ablating the top n
    latents in direction d, on the re-tested attribute). Keys ``scr_dir{d}_threshold_{n}`` and
    ``scr_metric_threshold_{n}`` (:func:`metric_direction`)."""
    metrics: dict[str, float] = {}
    lower = metric_direction(clean)
    for d, by_n in ablated.items():
        eval_key = DIRECTIONS[d][1]
        for n, acc in by_n.items():
            score = scr_score(acc, clean[f"biased_on_{eval_key}"], clean[eval_key], min_denominator=min_denominator)
            metrics[f"scr_dir{d}_threshold_{n}"] = score
            if d == lower:
                metrics[f"scr_metric_threshold_{n}"] = score
    return dict(sorted(metrics.items(), key=lambda kv: _key_order(kv[0])))


def _key_order(key: str) -> tuple:
    kind, _, n = key.rpartition("_")
    return (kind, int(n))


def scr_all_rows(sets: ScrSets) -> np.ndarray:
    """Every row index the SCR sets use (train and test), sorted and unique."""
    return np.unique(np.concatenate([r for split in sets.rows.values() for r in split.values()]))


# --------------------------------------------------------------------------------------------
# the eval over tasks and SAEs
# --------------------------------------------------------------------------------------------
EVAL_TYPE_ID = "scr"
OFFLINE_SCR_TASKS = ("reviews_domain_sentiment", "news_exam_genre_topic")
"""Default (offline) SCR tasks."""


@dataclass
class ScrEvalConfig(TaskEvalConfig):
    """Tasks, SCR settings and data sizes of the SCR eval."""

    tasks: tuple[str, ...] = OFFLINE_SCR_TASKS
    """SCR task names (``saelib.data.tasks.SCR_TASKS`` / ``hub_tasks.HUB_SCR_TASKS``)."""
    scr: ScrConfig = field(default_factory=ScrConfig)
    """Probe and ablation settings."""
    q_train: int | None = None
    """Quadrant size in the train split (None: ``data.n_train // 2``, so offline sources share the probing cache)."""
    q_test: int | None = None
    """Quadrant size in the test split (None: ``data.n_test // 2``)."""

    @classmethod
    def from_params(cls, run: dict) -> "ScrEvalConfig":
        """From ``run["tasks"]`` (data) and ``run["scr"]`` (``tasks``, ``n_values``, ``q_train``,
        ``q_test``, ``min_denominator`` and probe settings ``epochs``, ``lr``, ``batch_size``,
        ``l1_penalty``, ``min_steps``, ``select_on_test``, ``normalize_inputs``, ``seed``)."""
        scr, outer = ScrConfig.from_block(run.get("scr"), what="scr", outer={"tasks", "q_train", "q_test"})
        return cls(**outer, scr=scr, data=TaskDataConfig.from_params(run.get("tasks")))


@dataclass
class ScrTaskData:
    """One SCR task: its source data and model side."""

    source: "SourceData"
    side: ScrModelSide
    quadrant_counts: dict[str, dict[str, int]]
    """Rows per split and quadrant in the source (before cutting to q)."""


@dataclass
class ScrPrep:
    cfg: ScrEvalConfig
    tasks: dict[str, ScrTaskData]
    skipped: list[str]
    seconds: dict[str, float]


def prepare_scr(cfg: ScrEvalConfig, *, model, model_name: str, layer: int, cache_dir, progress: bool = False) -> ScrPrep:
    """Load every SCR task's source and cache, build the sets and train the probes."""
    import time

    from ..data.tasks import TaskUnavailable, get_scr_task, scr_quadrants
    from .pooled import load_source_data

    tasks: dict[str, ScrTaskData] = {}
    skipped: list[str] = []
    seconds: dict[str, float] = {}
    for name in cfg.tasks:
        task = get_scr_task(name)
        start = time.time()
        try:
            src = load_source_data(task.source, cfg.data, model=model, model_name=model_name, layer=layer,
                                   cache_dir=cache_dir, scr_task=task, q_train=cfg.q_train, q_test=cfg.q_test,
                                   progress=progress)
            quads = scr_quadrants(src.ds, task)
        except TaskUnavailable as exc:
            skipped.append(str(exc))
            print(str(exc))
            continue
        counts = {s: {k: int(len(v)) for k, v in qd.items()} for s, qd in quads.items()}
        sets = make_scr_sets(quads, seed=cfg.data.seed)
        side = scr_model_side(src.pooled.xbar_ND, sets, cfg.scr)
        tasks[name] = ScrTaskData(src, side, counts)
        seconds[name] = round(time.time() - start, 2)
    return ScrPrep(cfg, tasks, skipped, seconds)


def scr_sae(prep: ScrPrep, sae, *, fbar_cache: dict | None = None) -> dict:
    """SCR of one SAE on every prepared task: ``{"per_task": {task: metrics}, "details": {...}, "seconds"}``.

    ``fbar_cache`` (source name → mean-pooled latents) lets TPP reuse latents of shared sources."""
    import time

    from .pooled import check_affine_decoder, pooled_latents, special_positions

    start = time.time()
    fbar_cache = {} if fbar_cache is None else fbar_cache
    W_dec_FD = sae.W_dec.detach().float()
    chosen = prep.cfg.scr.special_positions
    alt = alternative_definition(chosen) if prep.cfg.scr.report_alternative else None
    per_task, per_task_alt, details = {}, {}, {}
    for name, td in prep.tasks.items():
        if td.source.name not in fbar_cache:
            fbar_cache[td.source.name] = pooled_latents(sae, td.source.pooled, cfg=prep.cfg.data.pooled)
        fbar = fbar_cache[td.source.name]
        check_affine_decoder(sae, fbar[:8])
        special = special_positions(sae, td.source.pooled, prep.cfg.data.pooled)

        def run(definition: str) -> dict:
            return scr_for_sae(td.side, td.source.pooled.xbar_ND, fbar, W_dec_FD, prep.cfg.scr,
                               special if definition == "saebench" else None)

        def greedy(definition: str) -> dict[str, float]:
            return {f"dir{d}_n{n}": s for d in DIRECTIONS for n, s in greedy_latent_scores(
                td.side, td.source.pooled.xbar_ND, fbar, W_dec_FD, direction=d, n_values=greedy_n,
                special=special if definition == "saebench" else None,
                min_denominator=prep.cfg.scr.min_denominator).items()}

        greedy_n = tuple(n for n in prep.cfg.scr.n_values if n <= prep.cfg.scr.greedy_max_n)
        res = run(chosen)
        per_task[name] = res["metrics"]
        details[name] = {**res["details"], "quadrant_counts": td.quadrant_counts, "q": td.side.sets.q,
                         "n_latents_firing_on_zero": int((special.f0_F > 0).sum())}
        if greedy_n:
            details[name]["greedy_S"] = greedy(chosen)
        if alt is not None:
            res_alt = run(alt)
            per_task_alt[name] = {f"{k}_{alt}": v for k, v in res_alt["metrics"].items()}
            details[name]["alternative"] = {"special_positions": alt, "ablated": res_alt["details"]["ablated"]}
            if greedy_n:
                details[name]["alternative"]["greedy_S"] = greedy(alt)
    out = {"per_task": per_task, "details": details, "seconds": round(time.time() - start, 2)}
    if alt is not None:
        out["alternative"] = {"special_positions": alt, "per_task": per_task_alt}
    return out


def alternative_definition(definition: str) -> str:
    """The other entry of ``SPECIAL_POSITIONS`` (``saebench`` ↔ ``kept_only``)."""
    if definition not in SPECIAL_POSITIONS:
        raise ValueError(f"special_positions must be one of {SPECIAL_POSITIONS}, got {definition!r}")
    return next(d for d in SPECIAL_POSITIONS if d != definition)


def with_alternative(result: dict) -> dict[str, dict[str, float]]:
    """Per task, the chosen definition's metrics and the alternative's (suffixed keys) in one dict."""
    alt = (result.get("alternative") or {}).get("per_task", {})
    return {name: {**m, **alt.get(name, {})} for name, m in result["per_task"].items()}


def scr_output(prep: ScrPrep, result: dict, *, variant: str, sae_cfg: dict | None = None, extra: dict | None = None) -> dict:
    """SAEBench-shaped JSON for SCR (``eval_result_metrics = {"scr_metrics": {...}}``, averaged over tasks)."""
    from dataclasses import asdict

    from .probing import average_over_tasks

    data = asdict(prep.cfg.data)
    pooled = data.pop("pooled")
    config = {"tasks": list(prep.tasks), "n_values": list(prep.cfg.scr.n_values),
              "min_denominator": prep.cfg.scr.min_denominator, "special_positions": prep.cfg.scr.special_positions,
              "report_alternative": prep.cfg.scr.report_alternative,
              "greedy_max_n": prep.cfg.scr.greedy_max_n, **asdict(prep.cfg.scr.probe),
              "q_train": prep.cfg.q_train, "q_test": prep.cfg.q_test, **data, "context_length": pooled["context"]}
    metrics = {"scr_metrics": average_over_tasks(result["per_task"])}
    if result.get("alternative"):
        alt = result["alternative"]
        metrics[f"scr_metrics_{alt['special_positions']}"] = average_over_tasks(alt["per_task"])
    return saebench_document(
        EVAL_TYPE_ID, config, metrics,
        [{"dataset_name": f"{name}_results", **m} for name, m in with_alternative(result).items()],
        eval_result_unstructured=result["details"], sae_cfg_dict=sae_cfg,
        extra={"variant": variant, "skipped_tasks": list(prep.skipped), "eval_seconds": result["seconds"], **(extra or {})})


def clean_table(prep: ScrPrep):
    """Per task: q, quadrant counts and the clean probe accuracies (pandas)."""
    import pandas as pd

    rows = []
    for name, td in prep.tasks.items():
        quads = {f"{s}_{q}": n for s, d in td.quadrant_counts.items() for q, n in d.items()}
        rows.append({"task": name, "q_train": td.side.sets.q["train"], "q_test": td.side.sets.q["test"],
                     **quads, **{f"acc_{k}": round(v, 4) for k, v in td.side.clean.items()}})
    return pd.DataFrame(rows)


def headroom_table(prep: ScrPrep):
    """Per task and direction, what S_n can move between: the biased probe's clean accuracy on the
    re-tested attribute (S = 0) and the oracle probe's (S = 1), their gap (S_n's denominator), and
    which direction ``scr_metric`` reports. A gap near 0, or an oracle near chance, leaves S_n no room
    for any SAE; a biased probe at chance on the other attribute has learnt nothing of it to remove."""
    import pandas as pd

    rows = []
    for name, td in prep.tasks.items():
        clean = td.side.clean
        metric_dir = metric_direction(clean)
        for d, (ablate_key, eval_key) in DIRECTIONS.items():
            rows.append({"task": name, "direction": f"dir{d}", "ablates": f"{ablate_key.upper()} latents",
                         "tested_on": eval_key.upper(), "acc_biased (S=0)": clean[f"biased_on_{eval_key}"],
                         "acc_oracle (S=1)": clean[eval_key],
                         "gap": clean[eval_key] - clean[f"biased_on_{eval_key}"],
                         "is_scr_metric": d == metric_dir})
    return pd.DataFrame(rows)


def save_scr_results(prep: ScrPrep, result: dict, out_dir, variant: str, *, sae_cfg: dict | None = None,
                     extra: dict | None = None):
    """Write ``<out_dir>/<variant>.json`` (SAEBench-shaped) and ``<out_dir>/<variant>_per_task.csv``."""
    from pathlib import Path

    import pandas as pd

    from ..io import atomic_write_text

    out_dir = Path(out_dir)
    payload = scr_output(prep, result, variant=variant, sae_cfg=sae_cfg, extra=extra)
    json_path = write_saebench_json(out_dir / f"{variant}.json", payload)
    table = pd.DataFrame(with_alternative(result)).T.rename_axis("task").reset_index()
    csv_path = atomic_write_text(out_dir / f"{variant}_per_task.csv", table.to_csv(index=False))
    return json_path, csv_path


def n_curve(per_task: dict[str, dict[str, float]]):
    """Long table (pandas) of every ``<name>_threshold_<n>[_<suffix>]`` metric averaged over tasks:
    columns ``metric`` (e.g. ``scr_dir1``, ``scr_metric``, ``tpp_total_metric``), ``n``, ``value``."""
    import re

    import pandas as pd

    from .probing import average_over_tasks

    rows = []
    for key, value in average_over_tasks(per_task).items():
        m = re.fullmatch(r"(.+)_threshold_(\d+)(?:_(.+))?", key)
        if m:
            rows.append({"metric": m.group(1) + (f"_{m.group(3)}" if m.group(3) else ""), "n": int(m.group(2)),
                         "value": value})
    return pd.DataFrame(rows).sort_values(["metric", "n"]).reset_index(drop=True)


__all__ = ["n_curve", "greedy_latent_scores", "alternative_definition", "with_alternative", "n_fire_on_zero", "clean_table", "headroom_table", "save_scr_results", "ablation_accuracies", "DIRECTIONS", "ScrEvalConfig", "ScrPrep", "prepare_scr", "scr_sae", "scr_output", "OFFLINE_SCR_TASKS", "ScrConfig", "ScrSets", "ScrModelSide", "N_VALUES", "make_scr_sets", "scr_model_side", "latent_effects",
           "top_n_latents", "scr_score", "scr_metrics", "metric_direction", "scr_for_sae", "scr_all_rows"]
