"""Sparse probing (SAEBench) and the linear probes that SCR and TPP share.

For every task and class a binary dataset is built: the class's examples against as many examples
of the other classes (drawn evenly across them, seeded), in the task's own train/test split.
Features are mean-pooled SAE latents (or residual dimensions for the ``llm_*`` baselines). The top-k
features by |mean_pos − mean_neg| on the train set feed an L2 logistic regression (C = 1); k runs
over ``k_values`` plus "all" (every feature). Keys follow SAEBench: ``sae_top_{k}_test_accuracy``,
``sae_test_accuracy`` (all latents), ``llm_top_{k}_test_accuracy``, ``llm_test_accuracy``.

The top-k probes are sklearn's ``LogisticRegression`` (L2, C = 1, max_iter 1000; newton-cholesky up
to 64 features, lbfgs above — the same objective as SAEBench's lbfgs), on raw features as in SAEBench.
The all-features probe follows SAEBench (``all_probe="torch"``): its torch probe (AdamW, BCE, batch 250,
lr 1e-2, up to 100 epochs with patience 10, the first best-test epoch); ``all_probe="sklearn"`` is the
named alternative (the L2 regression above, which scored higher on the review's inputs: 0.925 vs 0.845).
SCR and TPP use the same trainer, :func:`train_torch_probe`, with SAEBench's SCR settings (batch 16, lr
1e-3, 20 epochs, L1 1e-3 on the weights), whose small batch shapes how much of a spurious attribute the
probe picks up.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import Tensor

from .common import limit_threads, saebench_document, write_saebench_json
from .pooled import TaskDataConfig, TaskEvalConfig

if TYPE_CHECKING:
    from .pooled import SourceData


@dataclass
class ProbingConfig:
    """Sparse-probing settings (SAEBench defaults)."""

    k_values: tuple[int, ...] = (1, 2, 5, 10, 20, 50)
    """Numbers of top features by |mean difference| given to the probe."""
    include_all: bool = True
    """Also fit a probe on every feature (``sae_test_accuracy`` / ``llm_test_accuracy``)."""
    all_probe: str = "torch"
    """Probe on every feature: ``torch`` (SAEBench: :func:`train_torch_probe` with :data:`SPALL_PROBE`,
    AdamW, batch 250, lr 1e-2, up to 100 epochs, best test epoch, patience 10) or the named alternative
    ``sklearn`` (the same L2 logistic regression as the top-k probes)."""
    C: float = 1.0
    """Inverse L2 strength of the logistic regression."""
    max_iter: int = 1000
    """lbfgs iterations (SAEBench raised sklearn's default for convergence)."""
    seed: int = 42
    """Seed of the negative sampling."""
    normalize: bool = False
    """Multiply a task's features by one constant, √F / (mean row norm over its train rows), before
    fitting (changes the effective L2 strength only). Off by default: SAEBench fits raw features.
    Gemma-3-270M's pooled residual has a few huge dimensions, so this scalar over-regularises the
    ordinary ones (lower accuracy); it is kept for experiments."""


ALL_PROBES = ("torch", "sklearn")
"""Probes for the all-features accuracy: SAEBench's torch probe, or the sklearn L2 alternative."""


def _stable_int(*parts: object) -> int:
    return int(hashlib.sha1("\0".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def one_vs_rest(labels: np.ndarray, splits: np.ndarray, cls: str, *, seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Balanced binary task for class ``cls``: ``{"train": (idx, y), "test": (idx, y)}``.

    Positives are all rows of ``cls`` in the split (y = 1); negatives take ``ceil(n_pos / n_other)``
    random rows from each other class, then ``n_pos`` of those at random (y = 0), as in SAEBench.
    Indices point into ``labels``."""
    labels = np.asarray(labels).astype(str)
    splits = np.asarray(splits).astype(str)
    others = sorted(set(labels.tolist()) - {cls})
    if cls not in set(labels.tolist()) or not others:
        raise ValueError(f"one-vs-rest needs class {cls!r} and at least one other class; classes: {sorted(set(labels))}")
    out = {}
    for split in ("train", "test"):
        rng = np.random.default_rng(_stable_int(seed, cls, split))
        pos = np.nonzero((labels == cls) & (splits == split))[0]
        if len(pos) == 0:
            raise ValueError(f"class {cls!r} has no {split} rows")
        per_other = math.ceil(len(pos) / len(others))
        neg = []
        for other in others:
            pool = np.nonzero((labels == other) & (splits == split))[0]
            neg.append(rng.permutation(pool)[:per_other])
        neg = rng.permutation(np.concatenate(neg))[: len(pos)]
        if len(neg) < len(pos):
            raise ValueError(f"class {cls!r}: only {len(neg)} {split} negatives for {len(pos)} positives")
        idx = np.concatenate([pos, neg])
        y = np.concatenate([np.ones(len(pos), dtype=np.int64), np.zeros(len(neg), dtype=np.int64)])
        perm = rng.permutation(len(idx))
        out[split] = (idx[perm], y[perm])
    return out


def top_k_mean_diff(X_NF: np.ndarray | Tensor, y_N: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` features with the largest |mean over y=1 − mean over y=0| (ties: lower index)."""
    X = np.asarray(X_NF, dtype=np.float64)
    y = np.asarray(y_N)
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ValueError(f"X must be (N, F) matching y (N,), got {X.shape} and {y.shape}")
    if not ((y == 1).any() and (y == 0).any()):
        raise ValueError("top-k selection needs both classes in y")
    diff = np.abs(X[y == 1].mean(0) - X[y == 0].mean(0))
    k = min(int(k), X.shape[1])
    return np.argsort(-diff, kind="stable")[:k]


NEWTON_MAX_FEATURES = 64
"""Probes on at most this many features use sklearn's newton-cholesky solver, wider ones lbfgs."""


def logistic_accuracy(X_train, y_train, X_test, y_test, *, C: float = 1.0, max_iter: int = 1000) -> float:
    """Test accuracy of an L2 logistic regression (sklearn lbfgs) fitted on the train set."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    X_train = np.asarray(X_train, dtype=np.float64)
    X_test = np.asarray(X_test, dtype=np.float64)
    if not (np.isfinite(X_train).all() and np.isfinite(X_test).all()):
        raise ValueError("probe features contain NaN or inf")
    # same objective for both solvers (L2 on the weights, free intercept); Newton steps converge in a few
    # iterations on the badly scaled raw residual features where lbfgs needs hundreds
    solver = "newton-cholesky" if X_train.shape[1] <= NEWTON_MAX_FEATURES else "lbfgs"
    clf = LogisticRegression(C=C, max_iter=max_iter, solver=solver)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X_train, np.asarray(y_train))
    return float((clf.predict(X_test) == np.asarray(y_test)).mean())


def sparse_probe(X_NF, labels, splits, *, cfg: ProbingConfig | None = None, prefix: str = "sae") -> dict[str, dict[str, float]]:
    """Per-class accuracies of one task: ``{f"{prefix}_top_{k}_test_accuracy": {cls: acc}, f"{prefix}_test_accuracy": {...}}``."""
    cfg = cfg or ProbingConfig()
    if cfg.all_probe not in ALL_PROBES:
        raise ValueError(f"probing.all_probe must be one of {ALL_PROBES}, got {cfg.all_probe!r}")
    X = X_NF.float().numpy() if isinstance(X_NF, Tensor) else np.asarray(X_NF, dtype=np.float32)
    labels = np.asarray(labels).astype(str)
    if X.shape[0] != labels.shape[0]:
        raise ValueError(f"{X.shape[0]} feature rows but {labels.shape[0]} labels")
    if cfg.normalize:
        X = X * feature_scale(X[np.asarray(splits).astype(str) == "train"])
    out: dict[str, dict[str, float]] = {}
    with limit_threads(1):
        for cls in sorted(set(labels.tolist())):
            _probe_class(out, X, labels, splits, cls, cfg, prefix)
    return out


def _probe_class(out: dict, X: np.ndarray, labels: np.ndarray, splits, cls: str, cfg: ProbingConfig, prefix: str) -> None:
    """Fit every probe of class ``cls`` (one-vs-rest) and store the test accuracies in ``out``."""
    sets = one_vs_rest(labels, splits, cls, seed=cfg.seed)
    (itr, ytr), (ite, yte) = sets["train"], sets["test"]
    Xtr, Xte = X[itr], X[ite]
    if cfg.include_all:
        if cfg.all_probe == "torch":
            probe_cfg = dataclasses.replace(SPALL_PROBE, seed=_stable_int(cfg.seed, cls, "all") % (2 ** 31))
            _, acc = train_torch_probe(torch.from_numpy(Xtr), ytr, torch.from_numpy(Xte), yte, probe_cfg)
        else:
            acc = logistic_accuracy(Xtr, ytr, Xte, yte, C=cfg.C, max_iter=cfg.max_iter)
        out.setdefault(f"{prefix}_test_accuracy", {})[cls] = acc
    for k in cfg.k_values:
        feats = top_k_mean_diff(Xtr, ytr, k)
        out.setdefault(f"{prefix}_top_{k}_test_accuracy", {})[cls] = logistic_accuracy(
            Xtr[:, feats], ytr, Xte[:, feats], yte, C=cfg.C, max_iter=cfg.max_iter)


def feature_scale(X_NF: np.ndarray) -> float:
    """√F / mean row norm of ``X_NF`` (1 when every row is zero)."""
    X = np.asarray(X_NF, dtype=np.float64)
    norm = float(np.linalg.norm(X, axis=1).mean()) if X.size else 0.0
    return float(np.sqrt(X.shape[1]) / norm) if norm > 0 else 1.0


def mean_over_classes(per_class: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{key: mean over classes}`` of :func:`sparse_probe`'s output."""
    return {key: float(np.mean(list(v.values()))) for key, v in per_class.items()}


def average_over_tasks(per_task: dict[str, dict[str, float]]) -> dict[str, float]:
    """Mean of every key over tasks (keys missing in a task are averaged over the others)."""
    keys = sorted({k for d in per_task.values() for k in d})
    return {k: float(np.mean([d[k] for d in per_task.values() if k in d])) for k in keys}


# --------------------------------------------------------------------------------------------
# SAEBench's torch probe (SCR / TPP)
# --------------------------------------------------------------------------------------------
@dataclass
class ProbeTrainConfig:
    """The one torch linear-probe trainer (SAEBench's ``train_probe_gpu``). Defaults: SAEBench's SCR/TPP
    probe (``ScrAndTppEvalConfig``); :data:`SPALL_PROBE` is its sparse-probing "all latents" probe."""

    epochs: int = 20
    """Passes over the train set."""
    lr: float = 1e-3
    """AdamW learning rate."""
    batch_size: int = 16
    """Train batch (SAEBench: do not change, it sets how much spurious signal the probe learns)."""
    l1_penalty: float = 1e-3
    """Coefficient of Σ|w| added to the BCE loss (0: none)."""
    early_stopping_patience: int = 20
    """With ``select_on_test``: stop after this many epochs without a new best test accuracy (SAEBench:
    20 = epochs for SCR/TPP, i.e. never; 10 for the all-latents probe)."""
    select_on_test: bool = True
    """Keep the first epoch with the best test accuracy, as SAEBench does (default). Named alternative
    ``False``: the last epoch. On a biased set that is separable after one epoch, SAEBench's choice is a
    barely trained probe whose weight on the other attribute is still its random initialisation."""
    min_steps: int = 0
    """Named alternative (0 = SAEBench): train for more epochs when ``epochs`` would give fewer optimiser
    steps than this. SAEBench's 20 epochs over 4000 examples are 5000 steps; over the few hundred examples
    of the CPU profiles they are ~200 and leave the probe near its random initialisation."""
    normalize_inputs: bool = False
    """Named alternative (False = SAEBench, raw activations): train on (x − μ)·s, μ the train mean and
    s = √D / mean ‖x − μ‖ (one scalar). Gemma-3-270M's pooled residual sits far from the origin (norm
    ~5800, a few huge dimensions), where AdamW at lr 1e-3 for 20 epochs barely moves the bias. The probe
    stays linear in x: ``LinearProbe`` keeps μ and s."""
    seed: int = 42
    """Seed of the initialisation and batch order (``torch.manual_seed`` inside a forked RNG, so
    SAEBench's trainer after ``torch.manual_seed(seed)`` sees the same numbers)."""


SPALL_PROBE = ProbeTrainConfig(epochs=100, lr=1e-2, batch_size=250, l1_penalty=0.0, early_stopping_patience=10)
"""SAEBench's sparse-probing probe on all features (``sae_test_accuracy`` / ``llm_test_accuracy``)."""


@dataclass
class LinearProbe:
    """``logit = s · (x − μ) · w + b``; ``weight_D`` (= s · w) is the weight on raw inputs."""

    w_D: Tensor
    """Weights on normalised inputs."""
    b: float
    """Bias on normalised inputs."""
    scale: float = 1.0
    """Input scale s."""
    center_D: Tensor | None = None
    """Input centre μ (None: 0)."""

    @property
    def weight_D(self) -> Tensor:
        return self.w_D * self.scale

    @property
    def bias(self) -> float:
        """Bias on raw inputs: b − s · μ · w."""
        if self.center_D is None:
            return self.b
        return float(self.b - self.scale * (self.center_D @ self.w_D))

    def logits(self, X_ND: Tensor) -> Tensor:
        X = X_ND.float()
        if self.center_D is not None:
            X = X - self.center_D
        return (X * self.scale) @ self.w_D + self.b

    def accuracy(self, X_ND: Tensor, y_N: Tensor | np.ndarray) -> float:
        y = torch.as_tensor(np.asarray(y_N))
        return float(((self.logits(X_ND) > 0).long() == y).float().mean())


def train_torch_probe(X_train: Tensor, y_train, X_test: Tensor, y_test, cfg: ProbeTrainConfig | None = None) -> tuple[LinearProbe, float]:
    """SAEBench's linear probe: AdamW on BCE (+ l1·Σ|w|), minibatches in a fresh random order each epoch,
    up to ``epochs`` passes; returns the probe (first best-test epoch when ``select_on_test``, else the
    last) and its test accuracy. The global torch RNG is left as it was."""
    cfg = cfg or ProbeTrainConfig()
    X_train = torch.as_tensor(X_train).float()
    X_test = torch.as_tensor(X_test).float()
    ytr = torch.as_tensor(np.asarray(y_train)).float()
    yte = torch.as_tensor(np.asarray(y_test)).long()
    if X_train.ndim != 2 or X_train.shape[0] != ytr.shape[0]:
        raise ValueError(f"X_train must be (N, D) matching y, got {tuple(X_train.shape)} and {tuple(ytr.shape)}")
    if X_test.ndim != 2 or X_test.shape[1] != X_train.shape[1] or X_test.shape[0] != yte.shape[0]:
        raise ValueError(f"X_test must be (M, {X_train.shape[1]}) matching y_test, got {tuple(X_test.shape)}")
    if not (torch.isfinite(X_train).all() and torch.isfinite(X_test).all()):
        raise ValueError("probe inputs contain NaN or inf")
    scale, center = 1.0, None
    if cfg.normalize_inputs:
        center = X_train.mean(0)
        scale = float(math.sqrt(X_train.shape[1]) / (X_train - center).norm(dim=1).mean().clamp_min(1e-12))
    Xs = X_train if center is None else (X_train - center) * scale
    Xs_test = X_test if center is None else (X_test - center) * scale
    # tiny ops: thread hand-offs cost 10x the maths on a busy 2-core machine
    with limit_threads(1, blas=False), torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(cfg.seed)
        net = torch.nn.Linear(X_train.shape[1], 1, bias=True)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
        w, b, acc = _train_loop(net, opt, Xs, ytr, Xs_test, yte, cfg)
    return LinearProbe(w, b, scale, center), acc


def _net_accuracy(net: torch.nn.Linear, X: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float(((net(X).squeeze(-1) > 0.0).long() == y).float().mean())


def _train_loop(net: torch.nn.Linear, opt, Xs: Tensor, ytr: Tensor, Xs_test: Tensor, yte: Tensor,
                cfg: ProbeTrainConfig) -> tuple[Tensor, float, float]:
    """Minibatch AdamW epochs (SAEBench's order of random draws); returns (weight, bias, test accuracy)
    of the kept epoch."""
    loss_fn = torch.nn.BCEWithLogitsLoss()
    steps_per_epoch = math.ceil(Xs.shape[0] / cfg.batch_size)
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch))
    best: tuple[Tensor, float, float] | None = None
    best_acc, stale = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(Xs.shape[0])
        for s in range(0, Xs.shape[0], cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            loss = loss_fn(net(Xs[idx]).squeeze(-1), ytr[idx])
            if cfg.l1_penalty:
                loss = loss + cfg.l1_penalty * net.weight.abs().sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        acc = _net_accuracy(net, Xs_test, yte)
        current = (net.weight.detach().reshape(-1).clone(), float(net.bias.detach()), acc)
        if not cfg.select_on_test:
            best = current
            continue
        if acc > best_acc:
            best, best_acc, stale = current, acc, 0
        else:
            stale += 1
            if stale >= cfg.early_stopping_patience:
                break
    return best if best is not None else current


# --------------------------------------------------------------------------------------------
# the eval over tasks and SAEs
# --------------------------------------------------------------------------------------------
OFFLINE_PROBING_TASKS = ("bbc_topic", "movie_sentiment", "food_sentiment", "code_language", "mmlu_subject", "lang_id")
"""Default (offline) sparse-probing tasks."""
EVAL_TYPE_ID = "sparse_probing"


@dataclass
class ProbingEvalConfig(TaskEvalConfig):
    """Tasks, probing settings and data sizes of the sparse-probing eval."""

    tasks: tuple[str, ...] = OFFLINE_PROBING_TASKS
    """Probing task names (``saelib.data.tasks.PROBING_TASKS`` / ``hub_tasks.HUB_PROBING_TASKS``)."""
    probing: ProbingConfig = field(default_factory=ProbingConfig)
    """Probe settings."""

    @classmethod
    def from_params(cls, run: dict) -> "ProbingEvalConfig":
        """From the active profile block: ``run["tasks"]`` (data) and ``run["probing"]`` (``tasks``,
        ``k_values``, ``include_all``, ``C``, ``max_iter``, ``seed``, ``normalize``)."""
        from ..params_block import field_names, split_block

        parts = split_block(run.get("probing"), {"eval": {"tasks"}, "probing": field_names(ProbingConfig)}, what="probing")
        return cls(**parts["eval"], probing=ProbingConfig(**parts["probing"]),
                   data=TaskDataConfig.from_params(run.get("tasks")))


@dataclass
class ProbingTaskData:
    """One task's rows in its source, with labels and splits."""

    source: "SourceData"
    rows: np.ndarray
    labels: np.ndarray
    splits: np.ndarray


@dataclass
class ProbingPrep:
    """Everything the per-SAE step needs: task data, model-side (``llm_*``) results, skip notes."""

    cfg: ProbingEvalConfig
    tasks: dict[str, ProbingTaskData]
    llm: dict[str, dict[str, dict[str, float]]]
    """Per task, per key, per class accuracy of the residual-stream probes."""
    skipped: list[str]
    """One line per skipped task."""
    seconds: dict[str, float]


def prepare_probing(cfg: ProbingEvalConfig, *, model, model_name: str, layer: int, cache_dir,
                    progress: bool = False) -> ProbingPrep:
    """Load every task's source and cache (``model`` may be a function that loads the model; it is
    only called when a cache is missing) and fit the residual baselines."""
    import time

    from ..data.tasks import TaskUnavailable, get_probing_task, probing_view
    from .pooled import load_source_data

    sources: dict[str, SourceData] = {}
    tasks: dict[str, ProbingTaskData] = {}
    skipped: list[str] = []
    seconds: dict[str, float] = {}
    for name in cfg.tasks:
        task = get_probing_task(name)
        start = time.time()
        try:
            if task.source not in sources:
                sources[task.source] = load_source_data(task.source, cfg.data, model=model, model_name=model_name,
                                                        layer=layer, cache_dir=cache_dir, progress=progress)
            rows, labels, splits = probing_view(sources[task.source].ds, task)
        except TaskUnavailable as exc:
            skipped.append(str(exc))
            print(str(exc))
            continue
        tasks[name] = ProbingTaskData(sources[task.source], rows, labels, splits)
        seconds[f"data_{name}"] = round(time.time() - start, 2)
    llm = {}
    for name, td in tasks.items():
        start = time.time()
        llm[name] = sparse_probe(td.source.pooled.xbar_ND[td.rows], td.labels, td.splits, cfg=cfg.probing, prefix="llm")
        seconds[f"llm_{name}"] = round(time.time() - start, 2)
    return ProbingPrep(cfg, tasks, llm, skipped, seconds)


def probe_sae(prep: ProbingPrep, sae) -> dict:
    """Sparse probing of one SAE on every prepared task.

    Returns ``{"per_task": {task: {key: mean over classes}}, "per_class": {task: {key: {cls: acc}}},
    "seconds": float}`` with both the ``sae_*`` and the ``llm_*`` keys."""
    import time

    from .pooled import pooled_latents

    start = time.time()
    fbar: dict[str, Tensor] = {}
    per_class: dict[str, dict[str, dict[str, float]]] = {}
    for name, td in prep.tasks.items():
        src = td.source
        if src.name not in fbar:
            fbar[src.name] = pooled_latents(sae, src.pooled, cfg=prep.cfg.data.pooled)
        sae_res = sparse_probe(fbar[src.name][td.rows], td.labels, td.splits, cfg=prep.cfg.probing, prefix="sae")
        per_class[name] = {**prep.llm[name], **sae_res}
    per_task = {name: mean_over_classes(pc) for name, pc in per_class.items()}
    return {"per_task": per_task, "per_class": per_class, "seconds": round(time.time() - start, 2)}


def probing_output(prep: ProbingPrep, result: dict, *, variant: str, sae_cfg: dict | None = None,
                   extra: dict | None = None) -> dict:
    """SAEBench-shaped JSON: ``eval_result_metrics = {"llm": {...}, "sae": {...}}`` averaged over
    tasks, one ``eval_result_details`` entry per task, per-class accuracies unstructured."""
    from dataclasses import asdict

    overall = average_over_tasks(result["per_task"])
    metrics = {"llm": {k: v for k, v in overall.items() if k.startswith("llm_")},
               "sae": {k: v for k, v in overall.items() if k.startswith("sae_")}}
    return saebench_document(
        EVAL_TYPE_ID, {"tasks": list(prep.tasks), **asdict(prep.cfg.probing), **_data_settings(prep.cfg.data)},
        metrics, [{"dataset_name": name, **vals} for name, vals in result["per_task"].items()],
        eval_result_unstructured=result["per_class"], sae_cfg_dict=sae_cfg,
        extra={"variant": variant, "skipped_tasks": list(prep.skipped), "eval_seconds": result["seconds"], **(extra or {})})


def per_task_table(result: dict):
    """One row per task, columns = metric keys (pandas)."""
    import pandas as pd

    return pd.DataFrame(result["per_task"]).T.rename_axis("task").reset_index()


def tasks_summary(prep: ProbingPrep):
    """Per task: classes, train/test examples per class and kept tokens (pandas). Run facts (cache hit,
    build time) stay out so the saved table is the same on every rebuild."""
    import pandas as pd

    rows = []
    for name, td in prep.tasks.items():
        counts = pd.crosstab(td.labels, td.splits)
        toks = td.source.pooled.counts()[torch.as_tensor(td.rows)]
        rows.append({"task": name, "source": td.source.name, "classes": len(counts),
                     "train_per_class": int(counts["train"].min()), "test_per_class": int(counts["test"].min()),
                     "examples": len(td.rows), "mean_tokens": round(float(toks.float().mean()), 1),
                     "truncated_share": round(float((toks >= prep.cfg.data.pooled.context - 1).float().mean()), 3)})
    return pd.DataFrame(rows)


def llm_table(prep: ProbingPrep):
    """Residual-stream baselines: one row per task, mean over classes (pandas)."""
    import pandas as pd

    return pd.DataFrame({name: mean_over_classes(per) for name, per in prep.llm.items()}).T.rename_axis("task")


def save_probing_results(prep: ProbingPrep, result: dict, out_dir, variant: str, *, sae_cfg: dict | None = None,
                         extra: dict | None = None):
    """Write ``<out_dir>/<variant>.json`` (SAEBench-shaped) and ``<out_dir>/<variant>_per_task.csv``."""
    from pathlib import Path

    from ..io import atomic_write_text

    out_dir = Path(out_dir)
    payload = probing_output(prep, result, variant=variant, sae_cfg=sae_cfg, extra=extra)
    json_path = write_saebench_json(out_dir / f"{variant}.json", payload)
    csv_path = atomic_write_text(out_dir / f"{variant}_per_task.csv", per_task_table(result).to_csv(index=False))
    return json_path, csv_path


def k_curve(result: dict):
    """Long table (pandas) of accuracy against k, averaged over tasks: columns ``features``
    (``sae``/``llm``), ``k`` (``all`` → the feature count is not fixed, plotted last) and ``accuracy``."""
    import pandas as pd

    overall = average_over_tasks(result["per_task"])
    rows = []
    for key, acc in overall.items():
        kind = key.split("_", 1)[0]
        k = key.split("_top_")[1].split("_")[0] if "_top_" in key else "all"
        rows.append({"features": kind, "k": k, "accuracy": acc})
    order = {k: i for i, k in enumerate(sorted({r["k"] for r in rows if r["k"] != "all"}, key=int) + ["all"])}
    return pd.DataFrame(rows).sort_values(["features", "k"], key=lambda c: c.map(order) if c.name == "k" else c)


def _data_settings(data) -> dict:
    from dataclasses import asdict

    d = asdict(data)
    pooled = d.pop("pooled")
    return {**d, "context_length": pooled["context"]}


__all__ = ["k_curve", "tasks_summary", "llm_table", "save_probing_results", "ProbingEvalConfig", "ProbingPrep", "prepare_probing", "probe_sae", "probing_output", "per_task_table", "OFFLINE_PROBING_TASKS", "ProbingConfig", "ProbeTrainConfig", "SPALL_PROBE", "ALL_PROBES", "LinearProbe", "one_vs_rest", "top_k_mean_diff", "logistic_accuracy",
           "sparse_probe", "mean_over_classes", "average_over_tasks", "train_torch_probe"]
