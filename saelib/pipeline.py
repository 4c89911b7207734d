"""The train stage of the pipeline for one variant: train on the activation cache, evaluate core
metrics on held-out text, write the small committed results and keep the SAE for later stages.

The eval stages' counterpart (``evaluate_variant``) lives in :mod:`saelib.stages`, so that the train
stage does not depend on (and re-run for) the eval modules."""
from __future__ import annotations

import math
from typing import Any

import pandas as pd
import torch

from .activations import ActivationCache
from .evals.core import evaluate_core
from .io import atomic_write_json, atomic_write_text
from .models import LoadedModel, load_model
from .penalties import make_penalty
from .sae import make_sae
from .train import CHECKPOINT_NAME, read_log, train_sae
from .variants import ResolvedVariant, activation_rms, needs_activation_rms, resolve_variant

CURVE_COLUMNS = ("step", "tokens", "lr", "loss", "mse", "auxk", "l1", "penalty", "penalty_coact", "penalty_l1",
                 "penalty_raw", "penalty_over_mse", "coact_stat", "l0", "n_dead")


def resolve(P: dict[str, Any], variant: str, model: LoadedModel | None = None) -> ResolvedVariant:
    """Resolve ``variant`` for the active profile (needs only the model's width and name, and for a
    ``l1_rule: norm_matched`` entry the centred RMS norm of the training activation cache)."""
    if variant not in P["all_variants"]:
        raise KeyError(f"unknown SAE variant {variant!r}; params.yaml defines: {', '.join(P['all_variants'])}")
    run = P["run"]
    entry = P["all_variants"][variant]
    d_model = model.d_model if model is not None else ActivationCache(P["paths"]["activations_train"]).d_model
    hook = model.hook_name(run["layer"]) if model is not None else f"blocks.{run['layer']}.hook_resid_post"
    # matched-L1 variants (l1_rule: norm_matched) rescale λ by the training activations' centred RMS norm
    rms = activation_rms(ActivationCache(P["paths"]["activations_train"])) if needs_activation_rms(entry) else None
    return resolve_variant(variant, entry, run, d_model=d_model, model_name=run["model"], hook_name=hook,
                           activation_rms=rms)


def training_curve(records: list[dict[str, Any]], n_points: int = 200) -> pd.DataFrame:
    """Down-sample the per-step log to about ``n_points`` rows (always keeping the last step)."""
    if not records:
        raise ValueError("empty training log")
    stride = max(1, math.ceil(len(records) / n_points))
    picked = records[::stride]
    if picked[-1] is not records[-1]:
        picked.append(records[-1])
    frame = pd.DataFrame(picked)
    return frame[[c for c in CURVE_COLUMNS if c in frame.columns]]


def train_variant(P: dict[str, Any], variant: str, *, progress: bool = True) -> dict[str, Any]:
    """Train ``variant``; write ``results/<profile>/core/<variant>.json`` and ``results/<profile>/curves/<variant>.csv``."""
    run = P["run"]
    model = load_model(run["model"])
    layer = model.check_layer(int(run["layer"]))
    rv = resolve(P, variant, model)
    cache = ActivationCache(P["paths"]["activations_train"], profile=P["profile"])
    heldout = ActivationCache(P["paths"]["activations_heldout"], profile=P["profile"])
    out_dir = P["paths"]["checkpoints"] / variant
    sae = make_sae(rv.arch, rv.sae_cfg)
    penalty = make_penalty(rv.penalty_cfg, rv.sae_cfg.d_sae, getattr(rv.sae_cfg, "k", 0)) if rv.penalty_cfg else None
    if penalty is not None and rv.arch != "topk":
        penalty.needs_dense_latents = True  # only TopK hands the penalty its (idx_BK, val_BK) active set
    result = train_sae(sae, cache, rv.train_cfg, penalty=penalty, out_dir=out_dir, resume=True, progress=progress)
    records = read_log(out_dir)
    curve = training_curve(records)

    eval_cfg = run.get("core", {})
    tokens = heldout.tokens()
    core = evaluate_core(result.sae, model, tokens, layer, batch_size=int(eval_cfg.get("batch_size", 16)),
                         n_kl_sequences=eval_cfg.get("n_kl_sequences"), progress=progress)
    density = core.pop("feature_density_F")
    summary = {
        "variant": variant,
        "profile": P["profile"],
        "model": run["model"],
        "layer": layer,
        "arch": rv.arch,
        "sae_cfg": rv.sae_cfg.to_dict(),
        "train_cfg": rv.train_cfg.to_dict(),
        "penalty_cfg": None if rv.penalty_cfg is None else {k: v for k, v in vars(rv.penalty_cfg).items()},
        "params_entry": rv.entry,
        "train_tokens": rv.train_cfg.n_steps * rv.train_cfg.batch_size,
        "train_wall_time_s": result.summary.get("wall_time_s", result.wall_time_s),
        "final_train": {k: v for k, v in records[-1].items() if isinstance(v, (int, float))},
        "log_density_hist": torch.histc(torch.log10(density.clamp_min(1e-10)), bins=20, min=-10, max=0).tolist(),
        **{k: (float(v) if isinstance(v, (int, float)) else v) for k, v in core.items()},
    }
    atomic_write_json(P["paths"]["results"] / "core" / f"{variant}.json", summary)
    atomic_write_text(P["paths"]["results"] / "curves" / f"{variant}.csv", curve.to_csv(index=False))
    ckpt = out_dir / CHECKPOINT_NAME
    if ckpt.exists():  # the resumable state is only needed while training
        ckpt.unlink()
    return summary
