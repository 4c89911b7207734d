"""The sae-probes sparse-probing eval ("Are Sparse Autoencoders Useful? A Case Study in Sparse Probing",
Kantamneni et al. 2025; SAEBench's ``sparse_probing_sae_probes``), reported beside SAEBench's sparse
probing, never mixed into it.

Protocol of ``sae-probes==0.4.2`` in its ``normal`` setting, as its code does it (our reading of
``generate_model_activations``, ``utils_data``, ``run_sae_evals`` and ``utils_training``):

- **Data**: one binary dataset per task, its first 5,000 rows; targets encoded as sklearn's
  ``LabelEncoder`` does (sorted unique values → 0, 1). Train size ``min(rows − 100, 1024)``, test =
  the remaining rows − 1, positives ``ceil(n / 2)`` of each split, drawn with
  ``numpy.random.RandomState(42)`` (train first, test from what is left): :func:`sae_probes_split`.
- **Activation**: the residual at the hook at the prompt's *last* token (BOS added by the
  tokenizer, left truncation to 1,024 tokens, right padding), one vector per prompt.
- **SAE features**: ``sae.encode`` of that vector. Latents are ranked by |mean on y=1 − mean on y=0|
  over the train split after dividing each latent by its mean |activation| over the train rows where
  it is non-zero (``mean_act_normalization``); the probe sees the top-k latents unnormalised.
- **Probe** (:func:`find_best_reg`): logistic regression, C chosen from ``logspace(5, −5, 10)`` by
  validation ROC AUC (≥ 128 train rows: the last min(20 %, 100) rows of the train split; fewer: a
  shuffled stratified 6-fold, ≤ 12 rows: leave-two-out), refitted on the shuffled train split;
  L1 (saga) for the SAE probes (SAEBench's wrapper default ``reg_type="l1"``), L2 for the residual
  baseline (sae-probes' ``logreg`` baseline). Reported: test accuracy, ROC AUC, weighted F1.
- **k**: SAEBench's wrapper default [1, 2, 5] (sae-probes alone: 1, 2, 4, …, 512).

Departure kept on purpose: for the dataset files the SAE training corpus also reads, only their
``eval``-side rows are used (``SaeProbesConfig.eval_side_only``), so no probe text was trained on.
The CPU profile may cap the train/test sizes and the context (``SaeProbesConfig.n_train`` …); the
JSON records what was used. The model side (last-token residuals and the L2 baseline) is computed
once per model / layer / dataset and cached; each SAE only encodes the cached vectors.
"""
from __future__ import annotations

import hashlib
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..data.sae_probes_data import BinaryDataset, binary_dataset_names, read_binary_dataset
from ..data.task_types import TaskUnavailable
from ..hooks import padded_residual_batches
from ..io import atomic_save_safetensors, atomic_write_json

EVAL_TYPE_ID = "sparse_probing_sae_probes"
C_GRID = tuple(float(c) for c in np.logspace(5, -5, 10))
"""sae-probes' C grid (inverse regularisation strength)."""

DEFAULT_TASKS = (
    "5_hist_fig_ismale", "6_hist_fig_isamerican", "7_hist_fig_ispolitician", "87_glue_cola", "92_glue_sst2",
    "21_headline_istrump", "105_click_bait", "106_hate_hate", "113_movie_sent", "96_spam_is",
    "155_athlete_sport_basketball", "124_world_country_United_States",
)
"""Datasets of the offline default: short prompts (median 12-125 characters), people, places,
grammar, sentiment, news, toxicity and spam; together about 12 k prompts at the default sizes."""


@dataclass
class SaeProbesConfig:
    """Settings of the sae-probes eval (sae-probes' ``normal`` setting unless capped)."""

    tasks: tuple[str, ...] = DEFAULT_TASKS
    """Numbered sae-probes binary datasets; the string ``"all"`` = every binary dataset of the master
    table (113, ``sae_probes_data.binary_dataset_names()``)."""
    ks: tuple[int, ...] = (1, 2, 5)
    """Numbers of top latents given to the SAE probe (SAEBench's wrapper default)."""
    n_train: int | None = None
    """Train prompts per dataset; None = sae-probes' ``min(rows − 100, 1024)``; a number caps that."""
    n_test: int | None = None
    """Test prompts per dataset; None = sae-probes' (all remaining rows − 1); a number caps that."""
    max_rows: int = 5000
    """Rows read from the top of each file (sae-probes: 5,000)."""
    context: int = 1024
    """Tokens per prompt including BOS; longer prompts lose their *beginning* (left truncation)."""
    reg_type: str = "l1"
    """Penalty of the SAE probes: ``l1`` (saga; SAEBench's wrapper) or ``l2``."""
    baseline: bool = True
    """Also fit sae-probes' ``logreg`` baseline (L2, C by validation) on the full residual."""
    normalize_ranking: bool = True
    """Rank latents after sae-probes' ``mean_act_normalization`` (True) or on raw activations."""
    binarize: bool = False
    """Give the probe 0/1 latent indicators instead of activations (sae-probes option)."""
    seed: int = 42
    """Seed of the split, the validation folds and the probe (sae-probes: 42)."""
    max_iter: int = 1000
    """Solver iterations of each logistic regression (sae-probes: 1000)."""
    batch_size: int = 32
    """Prompts per model forward pass."""
    eval_side_only: bool = True
    """For a dataset file the SAE training corpus also reads (SST-2, movie reviews, AG News, ...), use
    only its rows on the ``eval`` side of the document-level split (``saelib.data.split``) — sae-probes'
    split is then drawn from those rows. False reproduces sae-probes on the whole file."""

    def __post_init__(self) -> None:
        self.tasks = ("all",) if self.tasks == "all" else tuple(self.tasks)
        self.ks = tuple(int(k) for k in self.ks)
        if self.reg_type not in ("l1", "l2"):
            raise ValueError(f"reg_type must be 'l1' or 'l2', got {self.reg_type!r}")
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be positive integers, got {self.ks}")
        if self.context < 2:
            raise ValueError(f"context must be >= 2, got {self.context}")

    @classmethod
    def from_params(cls, run: dict) -> "SaeProbesConfig":
        """From the active profile block's ``sae_probes`` entry (keys = this class's fields); unknown
        keys raise, naming the known ones."""
        block = dict(run.get("sae_probes") or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(block) - known)
        if unknown:
            raise ValueError(f"params.yaml sae_probes: unknown setting(s) {unknown}; known: {sorted(known)}")
        return cls(**block)


# --------------------------------------------------------------------------------------------
# split and probe (sae-probes' rules)
# --------------------------------------------------------------------------------------------
def default_sizes(n_rows: int, *, n_train: int | None = None, n_test: int | None = None) -> tuple[int, int]:
    """sae-probes' train/test sizes for a dataset of ``n_rows`` rows, each capped by the given number."""
    train = min(n_rows - 100, 1024)
    test = n_rows - train - 1
    if n_train is not None:
        train = min(train, int(n_train))
        test = n_rows - train - 1
    if n_test is not None:
        test = min(test, int(n_test))
    if train < 2 or test < 2:
        raise ValueError(f"a dataset of {n_rows} rows is too small for sae-probes' split ({train} train, {test} test)")
    return train, test


def sae_probes_split(y: np.ndarray, num_train: int, num_test: int, *, pos_ratio: float = 0.5,
                     seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices as sae-probes' ``get_train_test_indices`` draws them."""
    y = np.asarray(y)
    rng = np.random.RandomState(seed)
    pos, neg = np.where(y == 1)[0], np.where(y == 0)[0]
    pos_train = int(np.ceil(pos_ratio * num_train))
    pos_test = int(np.ceil(pos_ratio * num_test))
    need = {"positives": (pos_train + pos_test, len(pos)), "negatives": (num_train - pos_train + num_test - pos_test, len(neg))}
    for what, (n, have) in need.items():
        if n > have:
            raise ValueError(f"split needs {n} {what} but the dataset has {have}; lower n_train / n_test")
    train_pos = rng.choice(pos, size=pos_train, replace=False)
    train_neg = rng.choice(neg, size=num_train - pos_train, replace=False)
    test_pos = rng.choice(np.setdiff1d(pos, train_pos), size=pos_test, replace=False)
    test_neg = rng.choice(np.setdiff1d(neg, train_neg), size=num_test - pos_test, replace=False)
    train = rng.permutation(np.concatenate([train_pos, train_neg]))
    test = rng.permutation(np.concatenate([test_pos, test_neg]))
    return train, test


def validation_splits(n: int, y: np.ndarray, *, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """sae-probes' validation folds (``get_cv`` + ``get_splits``): only folds whose validation part
    holds both classes."""
    from sklearn.model_selection import LeavePOut, StratifiedKFold

    y = np.asarray(y)
    if n >= 128:
        val = min(int(0.2 * n), 100)
        return [(np.arange(n - val), np.arange(n - val, n))]
    cv = LeavePOut(2) if n <= 12 else StratifiedKFold(n_splits=6, shuffle=True, random_state=seed)
    return [(tr, va) for tr, va in cv.split(np.zeros((n, 1)), y) if len(np.unique(y[va])) == 2]


def _logreg(C: float, penalty: str, seed: int, max_iter: int):
    from sklearn.linear_model import LogisticRegression

    if penalty == "l1":
        return LogisticRegression(C=C, l1_ratio=1.0, solver="saga", random_state=seed, max_iter=max_iter)
    return LogisticRegression(C=C, random_state=seed, max_iter=max_iter)


def find_best_reg(X_train, y_train, X_test, y_test, *, penalty: str = "l2", seed: int = 42,
                  max_iter: int = 1000, Cs: Sequence[float] = C_GRID) -> dict[str, float]:
    """sae-probes' probe: C by mean validation ROC AUC over :func:`validation_splits` (first best on
    ties), refit on the train split shuffled with ``RandomState(seed)``. Returns ``test_acc``,
    ``test_auc``, ``test_f1`` (weighted), ``val_auc`` and the chosen ``C``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    X_train, X_test = np.asarray(X_train, dtype=np.float64), np.asarray(X_test, dtype=np.float64)
    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    if not (np.isfinite(X_train).all() and np.isfinite(X_test).all()):
        raise ValueError("probe features contain NaN or inf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        best_C, val_auc = None, None
        if X_train.shape[0] > 3:
            splits = validation_splits(X_train.shape[0], y_train, seed=seed)
            scores = []
            for C in Cs:
                fold = []
                for tr, va in splits:
                    if len(np.unique(y_train[tr])) < 2:
                        fold.append(0.5)
                        continue
                    model = _logreg(C, penalty, seed, max_iter).fit(X_train[tr], y_train[tr])
                    fold.append(roc_auc_score(y_train[va], model.predict_proba(X_train[va])[:, 1]))
                scores.append(float(np.mean(fold)) if fold else float("nan"))
            best = int(np.nanargmax(scores))
            best_C, val_auc = float(Cs[best]), scores[best]
        shuffle = np.random.RandomState(seed).permutation(len(X_train))
        final = _logreg(1.0 if best_C is None else best_C, penalty, seed, max_iter)
        final.fit(X_train[shuffle], y_train[shuffle])
    pred = final.predict(X_test)
    proba = final.predict_proba(X_test)[:, 1]
    if val_auc is None:
        val_auc = float(roc_auc_score(y_train, final.predict_proba(X_train)[:, 1]))
    return {"test_acc": float(accuracy_score(y_test, pred)), "test_auc": float(roc_auc_score(y_test, proba)),
            "test_f1": float(f1_score(y_test, pred, average="weighted")), "val_auc": float(val_auc),
            "C": 1.0 if best_C is None else best_C}


def mean_act_normalization(X_NF: Tensor) -> Tensor:
    """Each latent divided by its mean |activation| over the rows where it is non-zero (sae-probes)."""
    X = torch.as_tensor(X_NF).float()
    col_means = X.abs().sum(0) / ((X != 0).sum(0) + 1e-6)
    return X / (col_means + 1e-6)


def rank_latents(X_train_NF: Tensor, y_train: np.ndarray, *, normalize: bool = True) -> Tensor:
    """Latent indices by decreasing |mean on y=1 − mean on y=0| (after :func:`mean_act_normalization`)."""
    X = mean_act_normalization(X_train_NF) if normalize else torch.as_tensor(X_train_NF).float()
    y = torch.as_tensor(np.asarray(y_train))
    if not ((y == 1).any() and (y == 0).any()):
        raise ValueError("ranking latents needs both classes in the train split")
    diff = X[y == 1].mean(0) - X[y == 0].mean(0)
    return torch.argsort(diff.abs(), descending=True, stable=True)


def sae_probe_metrics(F_train: Tensor, y_train, F_test: Tensor, y_test, cfg: SaeProbesConfig) -> dict[int, dict]:
    """Per k: the probe metrics on the top-k latents and the latents' indices."""
    order = rank_latents(F_train, y_train, normalize=cfg.normalize_ranking)
    out = {}
    for k in cfg.ks:
        idx = order[: min(k, order.numel())]
        Xtr, Xte = F_train[:, idx].float(), F_test[:, idx].float()
        if cfg.binarize:
            Xtr, Xte = (Xtr != 0).float(), (Xte != 0).float()
        res = find_best_reg(Xtr.numpy(), y_train, Xte.numpy(), y_test, penalty=cfg.reg_type, seed=cfg.seed,
                            max_iter=cfg.max_iter)
        out[k] = {**res, "indices": idx.tolist()}
    return out


# --------------------------------------------------------------------------------------------
# model side: last-token residuals, cached
# --------------------------------------------------------------------------------------------
def last_token_ids(tokenizer, texts: Sequence[str], context: int) -> list[list[int]]:
    """Token ids with the tokenizer's special tokens (BOS), keeping the *last* ``context`` − (specials)
    tokens of a long prompt, as sae-probes' left truncation does."""
    saved = getattr(tokenizer, "truncation_side", "right")
    tokenizer.truncation_side = "left"
    try:
        enc = tokenizer(list(texts), truncation=True, max_length=context, add_special_tokens=True)["input_ids"]
    finally:
        tokenizer.truncation_side = saved
    return [list(ids) for ids in enc]


@torch.inference_mode()
def last_token_residuals(model, texts: Sequence[str], layer: int, *, context: int = 1024, batch_size: int = 32) -> Tensor:
    """``(N, D)`` float32 residual at ``layer`` at each prompt's last token (right padding; causal
    attention keeps the last real token's residual independent of the padding)."""
    if not texts:
        raise ValueError("no texts to encode")
    model.check_layer(layer)
    ids = last_token_ids(model.tokenizer, texts, context)
    out: list[Tensor | None] = [None] * len(ids)
    for rows, _, _, x_NSD in padded_residual_batches(model, ids, layer, batch_size):
        for row, i in enumerate(rows):
            out[i] = x_NSD[row, len(ids[i]) - 1].float().cpu().clone()
    return torch.stack(out)


def _fingerprint(texts: Sequence[str], *, model: str, layer: int, context: int) -> str:
    h = hashlib.sha256(f"sae_probes\0{model}\0{layer}\0{context}\0".encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0\1")
    return h.hexdigest()


def cached_last_token_residuals(model, texts: Sequence[str], *, model_name: str, layer: int, context: int,
                                cache_dir: str | Path, name: str, batch_size: int = 32) -> tuple[Tensor, bool]:
    """:func:`last_token_residuals` through a content-hashed cache file
    ``<cache_dir>/sae_probes/<model>-L<layer>-ctx<context>/<name>-<hash16>.safetensors``; ``model``
    may be a zero-argument function, called only on a miss. Returns ``(x_ND, cache_hit)``."""
    from safetensors.torch import load_file

    fp = _fingerprint(texts, model=model_name, layer=layer, context=context)
    path = Path(cache_dir) / "sae_probes" / f"{model_name}-L{layer}-ctx{context}" / f"{name}-{fp[:16]}.safetensors"
    if path.exists():
        x = load_file(str(path))["x_ND"]
        if x.shape[0] == len(texts):
            return x, True
    loaded = model() if callable(model) else model
    if loaded.name != model_name:
        raise ValueError(f"cache for {model_name!r} requested but the model is {loaded.name!r}")
    x = last_token_residuals(loaded, texts, layer, context=context, batch_size=batch_size)
    atomic_save_safetensors(path, {"x_ND": x.contiguous()}, metadata={"fingerprint": fp, "name": name})
    return x, False


# --------------------------------------------------------------------------------------------
# the eval over datasets and SAEs
# --------------------------------------------------------------------------------------------
@dataclass
class SaeProbesTask:
    """One dataset's split and model side."""

    name: str
    """Numbered dataset name."""
    x_train_ND: Tensor
    """Last-token residuals of the train prompts."""
    y_train: np.ndarray
    """Train labels (0/1)."""
    x_test_ND: Tensor
    """Last-token residuals of the test prompts."""
    y_test: np.ndarray
    """Test labels."""
    classes: tuple[str, ...]
    """Target values of labels 0 and 1."""
    llm: dict[str, float] | None
    """The L2 residual baseline's metrics (None when ``cfg.baseline`` is off)."""
    cache_hit: bool
    """Whether the residuals came from the cache."""


@dataclass
class SaeProbesPrep:
    """Model side of every dataset, and the datasets skipped."""

    cfg: SaeProbesConfig
    tasks: dict[str, SaeProbesTask]
    skipped: list[str] = field(default_factory=list)
    """One line per skipped dataset."""
    seconds: dict[str, float] = field(default_factory=dict)


def prepare_task(ds: BinaryDataset, x_ND: Tensor, train: np.ndarray, test: np.ndarray, cfg: SaeProbesConfig,
                 *, cache_hit: bool = False) -> SaeProbesTask:
    """A :class:`SaeProbesTask` from residuals ``x_ND`` of the rows ``concat(train, test)`` (in that
    order), fitting the residual baseline when configured."""
    n_tr = len(train)
    x_train, x_test = x_ND[:n_tr].float(), x_ND[n_tr:].float()
    y_train, y_test = ds.y[train], ds.y[test]
    llm = None
    if cfg.baseline:
        llm = find_best_reg(x_train.numpy(), y_train, x_test.numpy(), y_test, penalty="l2", seed=cfg.seed,
                            max_iter=cfg.max_iter)
    return SaeProbesTask(ds.name, x_train, y_train, x_test, y_test, ds.classes, llm, cache_hit)


def prepare_sae_probes(cfg: SaeProbesConfig, *, model, model_name: str, layer: int, cache_dir,
                       data_dir: str | Path | None = None) -> SaeProbesPrep:
    """Read, split and encode every dataset (``model`` may be a function loading the model; it is
    called only when a cache is missing) and fit the residual baselines. A dataset that is missing
    or too small for the split is skipped with a one-line note."""
    prep = SaeProbesPrep(cfg, {})
    names = binary_dataset_names(data_dir=data_dir) if cfg.tasks == ("all",) else cfg.tasks
    for name in names:
        start = time.time()
        try:
            ds = read_binary_dataset(name, data_dir=data_dir, max_rows=cfg.max_rows, eval_side_only=cfg.eval_side_only)
            n_train, n_test = default_sizes(len(ds.y), n_train=cfg.n_train, n_test=cfg.n_test)
            train, test = sae_probes_split(ds.y, n_train, n_test, seed=cfg.seed)
        except (TaskUnavailable, ValueError) as exc:
            line = f"sae_probes {name} skipped: {str(exc).splitlines()[0]}"
            prep.skipped.append(line)
            print(line)
            continue
        rows = np.concatenate([train, test])
        texts = [ds.texts[i] for i in rows]
        x, hit = cached_last_token_residuals(model, texts, model_name=model_name, layer=layer, context=cfg.context,
                                             cache_dir=cache_dir, name=name, batch_size=cfg.batch_size)
        prep.tasks[name] = prepare_task(ds, x, train, test, cfg, cache_hit=hit)
        prep.seconds[name] = round(time.time() - start, 2)
    return prep


@torch.no_grad()
def encode_rows(sae, x_ND: Tensor, *, batch: int = 1024) -> Tensor:
    """``sae.encode`` of each row, float32 ``(N, F)``."""
    return torch.cat([sae.encode(x_ND[s:s + batch].float()).float() for s in range(0, x_ND.shape[0], batch)])


def sae_probes_sae(prep: SaeProbesPrep, sae) -> dict:
    """The eval for one SAE: ``{"per_task": {name: {k: metrics}}, "seconds": float}``."""
    start = time.time()
    per_task = {}
    for name, td in prep.tasks.items():
        per_task[name] = sae_probe_metrics(encode_rows(sae, td.x_train_ND), td.y_train, encode_rows(sae, td.x_test_ND),
                                           td.y_test, prep.cfg)
    return {"per_task": per_task, "seconds": round(time.time() - start, 2)}


_METRICS = {"test_accuracy": "test_acc", "test_auc": "test_auc", "test_f1": "test_f1"}


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def sae_probes_output(prep: SaeProbesPrep, result: dict, *, variant: str, sae_cfg: dict | None = None,
                      extra: dict | None = None) -> dict:
    """SAEBench-shaped JSON (``SparseProbingSaeProbesEvalOutput``'s fields): ``eval_result_metrics``
    = {``llm``: mean ``llm_test_{accuracy,auc,f1}``, ``sae``: mean ``sae_top_{k}_test_{...}``},
    ``sae_metrics_by_k``, one ``eval_result_details`` entry per dataset, and the chosen latents / C
    per dataset and k under ``eval_result_unstructured``."""
    cfg = prep.cfg
    details, unstructured = [], {}
    for name, td in prep.tasks.items():
        by_k = result["per_task"][name]
        row: dict = {"dataset_name": name}
        if td.llm is not None:
            row.update({f"llm_{key}": td.llm[src] for key, src in _METRICS.items()})
        for k, m in by_k.items():
            row.update({f"sae_top_{k}_{key}": m[src] for key, src in _METRICS.items()})
        row["sae_metrics_by_k"] = {str(k): {key: m[src] for key, src in _METRICS.items()} for k, m in by_k.items()}
        details.append(row)
        unstructured[name] = {"classes": list(td.classes), "n_train": int(len(td.y_train)), "n_test": int(len(td.y_test)),
                              "llm_C": None if td.llm is None else td.llm["C"],
                              "sae": {str(k): {"indices": m["indices"], "C": m["C"], "val_auc": m["val_auc"]}
                                      for k, m in by_k.items()}}
    llm = {f"llm_{key}": _mean([d[f"llm_{key}"] for d in details if f"llm_{key}" in d]) for key in _METRICS}
    sae = {f"sae_top_{k}_{key}": _mean([d[f"sae_top_{k}_{key}"] for d in details]) for k in cfg.ks for key in _METRICS}
    by_k = {str(k): {key: sae[f"sae_top_{k}_{key}"] for key in _METRICS} for k in cfg.ks}
    return {
        "eval_type_id": EVAL_TYPE_ID,
        "variant": variant,
        "eval_config": {**asdict(cfg), "dataset_names": list(prep.tasks), "setting": "normal",
                        "baseline_method": "logreg" if cfg.baseline else None, "sae_probes_version": "0.4.2"},
        "eval_result_metrics": {"llm": llm, "sae": sae},
        "sae_metrics_by_k": by_k,
        "eval_result_details": details,
        "eval_result_unstructured": unstructured,
        "skipped_tasks": list(prep.skipped),
        "eval_seconds": result["seconds"],
        "sae_cfg_dict": sae_cfg or {},
        **(extra or {}),
    }


def save_sae_probes_results(prep: SaeProbesPrep, result: dict, out_dir, variant: str, *, sae_cfg: dict | None = None,
                            extra: dict | None = None) -> Path:
    """Write ``<out_dir>/<variant>.json`` (atomic)."""
    payload = sae_probes_output(prep, result, variant=variant, sae_cfg=sae_cfg, extra=extra)
    return atomic_write_json(Path(out_dir) / f"{variant}.json", payload)


def per_task_table(output: dict):
    """One row per dataset of an output JSON, columns = its metric keys (pandas), for notebooks and figures."""
    import pandas as pd

    rows = [{k: v for k, v in d.items() if k != "sae_metrics_by_k"} for d in output["eval_result_details"]]
    return pd.DataFrame(rows).set_index("dataset_name")


__all__ = ["EVAL_TYPE_ID", "C_GRID", "DEFAULT_TASKS", "SaeProbesConfig", "default_sizes", "sae_probes_split",
           "validation_splits", "find_best_reg", "mean_act_normalization", "rank_latents", "sae_probe_metrics",
           "last_token_ids", "last_token_residuals", "cached_last_token_residuals", "SaeProbesTask", "SaeProbesPrep",
           "prepare_task", "prepare_sae_probes", "encode_rows", "sae_probes_sae", "sae_probes_output",
           "save_sae_probes_results", "per_task_table"]
