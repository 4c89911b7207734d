"""TPP: targeted probe perturbation (SAEBench).

A multi-class task gets one linear probe per class (class against an equal number of the other
classes, SAEBench's torch probe on mean-pooled residuals). For class c the latents with the
largest positive effect on c's probe — (mean f̄ on c − mean on the rest, clamped at 0) · (w_c ·
W_dec[i]), on c's train set — are zero-ablated (error term kept) in every test text. With
acc⁰ the clean and acc' the ablated accuracy of a probe on its own test set:

- intended_diff(c) = acc⁰_c − acc'_c,
- unintended_diff(c) = mean over c' ≠ c of acc⁰_c' − acc'_c',
- total_metric(c) = intended_diff(c) − unintended_diff(c);

each averaged over classes under SAEBench's keys ``tpp_threshold_{n}_total_metric``,
``tpp_threshold_{n}_intended_diff_only`` and ``tpp_threshold_{n}_unintended_diff_only``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from torch import Tensor

if TYPE_CHECKING:
    from .pooled import SourceData

from .common import saebench_document, write_saebench_json
from .pooled import SpecialPositions, TaskDataConfig, TaskEvalConfig, ablate_pooled
from .probing import LinearProbe, one_vs_rest, train_torch_probe
from .scr import AblationProbeConfig, latent_effects, top_n_latents


@dataclass
class TppConfig(AblationProbeConfig):
    """TPP settings (SAEBench defaults)."""

    seed: int = 42
    """Seed of the negative sampling of each class's binary set."""


@dataclass
class TppModelSide:
    """Per-class binary sets, probes and clean accuracies (independent of the SAE)."""

    classes: list[str]
    sets: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]
    """``sets[cls][split] = (rows, y)``."""
    probes: dict[str, LinearProbe]
    clean: dict[str, float]
    """Test accuracy of each class's probe."""


def tpp_model_side(xbar_ND: Tensor, labels: np.ndarray, splits: np.ndarray, rows: np.ndarray | None = None,
                   cfg: TppConfig | None = None) -> TppModelSide:
    """Train one probe per class. ``labels``/``splits`` describe the task's rows; ``rows`` maps them
    to rows of ``xbar_ND`` (identity when None)."""
    cfg = cfg or TppConfig()
    labels = np.asarray(labels).astype(str)
    rows = np.arange(len(labels)) if rows is None else np.asarray(rows)
    classes = sorted(set(labels.tolist()))
    if len(classes) < 2:
        raise ValueError(f"TPP needs at least two classes, got {classes}")
    sets, probes, clean = {}, {}, {}
    for cls in classes:
        local = one_vs_rest(labels, splits, cls, seed=cfg.seed)
        sets[cls] = {s: (rows[idx], y) for s, (idx, y) in local.items()}
        (tr, ytr), (te, yte) = sets[cls]["train"], sets[cls]["test"]
        probes[cls], _ = train_torch_probe(xbar_ND[tr], ytr, xbar_ND[te], yte, cfg.probe)
        clean[cls] = probes[cls].accuracy(xbar_ND[te], yte)
    return TppModelSide(classes, sets, probes, clean)


def tpp_scores(clean: dict[str, float], ablated: dict[str, dict[int, dict[str, float]]]) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """TPP metrics from accuracies: ``clean[c]`` (class c's probe, clean) and ``ablated[c][n][c']``
    (class c′'s probe after ablating c's top-n latents). Returns ``(means over classes, per class)``."""
    per_class: dict[str, dict[str, float]] = {}
    for cls, by_n in ablated.items():
        out = {}
        for n, accs in by_n.items():
            intended = clean[cls] - accs[cls]
            others = [clean[o] - accs[o] for o in clean if o != cls]
            if not others:
                raise ValueError("TPP needs at least two classes")
            unintended = float(np.mean(others))
            out[f"tpp_threshold_{n}_total_metric"] = intended - unintended
            out[f"tpp_threshold_{n}_intended_diff_only"] = intended
            out[f"tpp_threshold_{n}_unintended_diff_only"] = unintended
        per_class[cls] = out
    keys = next(iter(per_class.values())).keys()
    return {k: float(np.mean([per_class[c][k] for c in per_class])) for k in keys}, per_class


def tpp_for_sae(side: TppModelSide, xbar_ND: Tensor, fbar_NF: Tensor, W_dec_FD: Tensor,
                cfg: TppConfig | None = None, special: SpecialPositions | None = None) -> dict:
    """TPP metrics of one SAE on one task: ``{"metrics": {...}, "per_class": {cls: {...}}}``.
    ``special``: SAEBench's ablation of the zeroed BOS/PAD positions (rows as ``xbar_ND``); None = kept
    tokens only."""
    cfg = cfg or TppConfig()
    ablated: dict[str, dict[int, dict[str, float]]] = {}
    for cls in side.classes:
        tr, ytr = side.sets[cls]["train"]
        effects = latent_effects(fbar_NF[tr], ytr, side.probes[cls].weight_D, W_dec_FD,
                                 absolute=False, clamp_positive=True)
        ablated[cls] = {}
        for n in cfg.n_values:
            idx = top_n_latents(effects, n)
            accs = {}
            for other in side.classes:
                te, yte = side.sets[other]["test"]
                x_abl = ablate_pooled(xbar_ND[te], fbar_NF[te], W_dec_FD, idx,
                                      None if special is None else special.rows(te))
                accs[other] = side.probes[other].accuracy(x_abl, yte)
            ablated[cls][n] = accs
    metrics, per_class = tpp_scores(side.clean, ablated)
    return {"metrics": metrics, "per_class": per_class}


# --------------------------------------------------------------------------------------------
# the eval over tasks and SAEs
# --------------------------------------------------------------------------------------------
EVAL_TYPE_ID = "tpp"
OFFLINE_TPP_TASKS = ("bbc_topic",)
"""Default (offline) TPP tasks."""


@dataclass
class TppEvalConfig(TaskEvalConfig):
    """Tasks, TPP settings and data sizes."""

    tasks: tuple[str, ...] = OFFLINE_TPP_TASKS
    """Multi-class probing task names."""
    tpp: TppConfig = field(default_factory=TppConfig)
    """Probe and ablation settings."""

    @classmethod
    def from_params(cls, run: dict) -> "TppEvalConfig":
        """From ``run["tasks"]`` (data) and ``run["tpp"]`` (``tasks``, ``n_values``, ``seed`` and the
        probe settings of ``ProbeTrainConfig``)."""
        tpp, outer = TppConfig.from_block(run.get("tpp"), what="tpp", outer={"tasks"})
        return cls(**outer, tpp=tpp, data=TaskDataConfig.from_params(run.get("tasks")))


@dataclass
class TppPrep:
    cfg: TppEvalConfig
    tasks: dict[str, tuple["SourceData", TppModelSide]]
    skipped: list[str]
    seconds: dict[str, float]


def prepare_tpp(cfg: TppEvalConfig, *, model, model_name: str, layer: int, cache_dir, progress: bool = False) -> TppPrep:
    """Load every TPP task's source and cache and train the per-class probes."""
    import time

    from ..data.tasks import TaskUnavailable, get_probing_task, probing_view
    from .pooled import load_source_data

    tasks, skipped, seconds = {}, [], {}
    for name in cfg.tasks:
        task = get_probing_task(name)
        start = time.time()
        try:
            src = load_source_data(task.source, cfg.data, model=model, model_name=model_name, layer=layer,
                                   cache_dir=cache_dir, progress=progress)
            rows, labels, splits = probing_view(src.ds, task)
        except TaskUnavailable as exc:
            skipped.append(str(exc))
            print(str(exc))
            continue
        tasks[name] = (src, tpp_model_side(src.pooled.xbar_ND, labels, splits, rows, cfg.tpp))
        seconds[name] = round(time.time() - start, 2)
    return TppPrep(cfg, tasks, skipped, seconds)


def tpp_sae(prep: TppPrep, sae, *, fbar_cache: dict | None = None) -> dict:
    """TPP of one SAE on every prepared task: ``{"per_task", "per_class", "seconds"}``."""
    import time

    from .pooled import check_affine_decoder, pooled_latents, special_positions

    start = time.time()
    fbar_cache = {} if fbar_cache is None else fbar_cache
    W_dec_FD = sae.W_dec.detach().float()
    per_task, per_class = {}, {}
    for name, (src, side) in prep.tasks.items():
        if src.name not in fbar_cache:
            fbar_cache[src.name] = pooled_latents(sae, src.pooled, cfg=prep.cfg.data.pooled)
        fbar = fbar_cache[src.name]
        check_affine_decoder(sae, fbar[:8])
        special = (special_positions(sae, src.pooled, prep.cfg.data.pooled)
                   if prep.cfg.tpp.special_positions == "saebench" else None)
        res = tpp_for_sae(side, src.pooled.xbar_ND, fbar, W_dec_FD, prep.cfg.tpp, special)
        per_task[name] = res["metrics"]
        per_class[name] = {"per_class": res["per_class"], "clean_probe_accuracy": dict(side.clean)}
    return {"per_task": per_task, "per_class": per_class, "seconds": round(time.time() - start, 2)}


def tpp_output(prep: TppPrep, result: dict, *, variant: str, sae_cfg: dict | None = None, extra: dict | None = None) -> dict:
    """SAEBench-shaped JSON for TPP (``eval_result_metrics = {"tpp_metrics": {...}}``)."""
    from dataclasses import asdict

    from .probing import average_over_tasks

    data = asdict(prep.cfg.data)
    pooled = data.pop("pooled")
    config = {"tasks": list(prep.tasks), "n_values": list(prep.cfg.tpp.n_values), "seed": prep.cfg.tpp.seed,
              "special_positions": prep.cfg.tpp.special_positions,
              **asdict(prep.cfg.tpp.probe), **data, "context_length": pooled["context"]}
    return saebench_document(
        EVAL_TYPE_ID, config, {"tpp_metrics": average_over_tasks(result["per_task"])},
        [{"dataset_name": f"{name}_tpp_results", **m} for name, m in result["per_task"].items()],
        eval_result_unstructured=result["per_class"], sae_cfg_dict=sae_cfg,
        extra={"variant": variant, "skipped_tasks": list(prep.skipped), "eval_seconds": result["seconds"], **(extra or {})})


def save_tpp_results(prep: TppPrep, result: dict, out_dir, variant: str, *, sae_cfg: dict | None = None,
                     extra: dict | None = None):
    """Write ``<out_dir>/<variant>_tpp.json`` (SAEBench-shaped) and ``<out_dir>/<variant>_tpp_per_class.csv``."""
    from pathlib import Path

    import pandas as pd

    from ..io import atomic_write_text

    out_dir = Path(out_dir)
    payload = tpp_output(prep, result, variant=variant, sae_cfg=sae_cfg, extra=extra)
    json_path = write_saebench_json(out_dir / f"{variant}_tpp.json", payload)
    rows = [{"task": task, "class": cls, **vals} for task, d in result["per_class"].items()
            for cls, vals in d["per_class"].items()]
    csv_path = atomic_write_text(out_dir / f"{variant}_tpp_per_class.csv", pd.DataFrame(rows).to_csv(index=False))
    return json_path, csv_path


__all__ = ["save_tpp_results", "TppEvalConfig", "TppPrep", "prepare_tpp", "tpp_sae", "tpp_output", "OFFLINE_TPP_TASKS", "TppConfig", "TppModelSide", "tpp_model_side", "tpp_for_sae", "tpp_scores"]
