"""The train stage of the pipeline for one variant: train on the activation cache, evaluate core
metrics on held-out text, write the small committed results and keep the SAE for later stages; and the
stage before it that calibrates the matched standard SAE's L1 coefficient (:func:`calibrate_l1`).

The eval stages' counterpart (``evaluate_variant``) lives in :mod:`saelib.stages`, so that the train
stage does not depend on (and re-run for) the eval modules."""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .activations import ActivationCache
from .evals.core import evaluate_core
from .heldout import SEQUENCE_LABELS, build_core_baseline, cache_expectation, load_profile_baseline, read_sequence_genres  # noqa: F401
from .io import atomic_write_json, atomic_write_text, read_json
from .l1_calibration import (L1Calibration, L1CalibrationConfig, PAPER_L1_COEF, calibration_path, final_l0,
                             load_calibration, next_coef, save_calibration)
from .models import LoadedModel, load_model
from .penalties import make_penalty
from .sae import make_sae
from .train import CHECKPOINT_NAME, FINAL_FRAC, NonFiniteLossError, read_log, train_sae
from .variants import (ResolvedVariant, activation_rms, matched_l1_coef, needs_activation_rms, needs_l1_calibration,
                       resolve_variant)

PER_GENRE_KEYS = ("ev", "kl_score", "ce_score", "n_sequences")
"""Core metrics stored per genre of the held-out text."""

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
    # matched-L1 variants (l1_rule: norm_matched) convert λ to our loss's units and the training activations'
    # centred RMS norm (saelib.variants.matched_l1_coef)
    rms = activation_rms(ActivationCache(P["paths"]["activations_train"])) if needs_activation_rms(entry) else None
    # l0_calibrated variants scale the coefficient the calibrate_l1 stage measured (saelib.l1_calibration)
    cal = load_calibration(calibration_path(P["paths"]["results"])) if needs_l1_calibration(entry) else None
    return resolve_variant(variant, entry, run, d_model=d_model, model_name=run["model"], hook_name=hook,
                           activation_rms=rms, l1_calibration=cal)


def calibrate_l1(P: dict[str, Any], *, progress: bool = True) -> dict[str, Any]:
    """The ``calibrate_l1`` stage: measure the L1 coefficient that stands for the papers' 0.04
    (:mod:`saelib.l1_calibration`) with ``l1_calibration.trials`` full-length runs of its ReLU variant, and
    write ``results/<profile>/calibration/l1.json`` (whatever ``run_variants`` holds, so that the file, a
    dependency of every train stage, does not change with the list)."""
    cfg = L1CalibrationConfig.from_params(P.get("l1_calibration"))
    out = calibration_path(P["paths"]["results"])
    entry = P["all_variants"].get(cfg.variant)
    if entry is None or entry.get("arch") != "relu" or not needs_l1_calibration(entry):
        raise ValueError(f"params.yaml l1_calibration.variant {cfg.variant!r} must name a sae_variants entry with "
                         f"arch: relu and l1_rule: l0_calibrated")
    cache = ActivationCache(P["paths"]["activations_train"], profile=P["profile"], expect=cache_expectation(P))
    cal = run_l1_calibration(cfg, entry, P["run"], cache, device=P.get("device", "auto"), progress=progress)
    save_calibration(out, cal, cfg)
    return {"calibration": cal.to_dict()}


def run_l1_calibration(cfg: L1CalibrationConfig, entry: dict[str, Any], run: dict[str, Any], cache: Any, *,
                       device: str = "cpu", progress: bool = False) -> L1Calibration:
    """The trials of :mod:`saelib.l1_calibration` on ``cache`` (anything with ``d_model`` and ``iter_batches``):
    variant ``entry`` trained at profile block ``run``'s scale, each run in a temporary folder."""
    d_model = int(cache.d_model)
    target = float(cfg.target_l0_over_d) * d_model
    # trial 1: the norm_matched coefficient (saelib.variants) in normalised units (divided by the input scale)
    scale = activation_rms(cache, centred=False)
    coef = matched_l1_coef(PAPER_L1_COEF, activation_rms(cache)) / scale
    trials: list[dict[str, float]] = []
    input_scale = 0.0
    for i in range(int(cfg.trials)):
        if i > 0:
            coef = next_coef(trials, target, cfg)
        rv = resolve_variant(cfg.variant, entry, run, d_model=d_model, model_name=str(run.get("model", "")),
                             hook_name=f"blocks.{run.get('layer', 0)}.hook_resid_post",
                             l1_calibration=L1Calibration(coef_normalized=coef, input_scale=scale))
        rv = replace(rv, train_cfg=replace(rv.train_cfg, device=device))
        sae = make_sae(rv.arch, rv.sae_cfg)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="l1_calibration_") as tmp:
            result = train_sae(sae, cache, rv.train_cfg, out_dir=tmp, resume=False, progress=progress)
            l0 = final_l0(read_log(tmp), result.n_steps, FINAL_FRAC)
        input_scale = float(result.sae.cfg.input_scale)
        trials.append({"coef": float(coef), "l0": float(l0), "mse": float(result.final.get("mse", float("nan"))),
                       "wall_time_s": round(time.perf_counter() - t0, 1)})
        if progress:
            print(f"l1 calibration trial {i + 1}/{cfg.trials}: coef {coef:.4g} -> L0 {l0:.2f} (target {target:.2f})")
    return L1Calibration(coef_normalized=next_coef(trials, target, cfg), input_scale=input_scale, target_l0=target,
                         trials=trials)


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


def per_genre_core(sae, model: LoadedModel, tokens_NS: torch.Tensor, genres: list[str], layer: int, *,
                   batch_size: int = 16, n_kl_sequences: int | None = None, progress: bool = False) -> dict[str, dict]:
    """``{genre: {ev, kl_score, ce_score, n_sequences}}``: the core metrics of each genre's rows of
    ``tokens_NS`` (genres in first-seen order), from one :func:`evaluate_core` pass with ``groups``.
    With ``n_kl_sequences``, a genre's splice metrics use its rows among the first ``n_kl_sequences``
    (at least one: :func:`~saelib.evals.core.splice_rows`), the sequences the all-genre KL/CE used."""
    if len(genres) != tokens_NS.shape[0]:
        raise ValueError(f"{len(genres)} genre labels for {tokens_NS.shape[0]} sequences")
    core = evaluate_core(sae, model, tokens_NS, layer, batch_size=batch_size, n_kl_sequences=n_kl_sequences,
                         groups=genres, progress=progress)
    return core["per_group"]


def train_variant(P: dict[str, Any], variant: str, *, progress: bool = True) -> dict[str, Any]:
    """Train ``variant``; write ``results/<profile>/core/<variant>.json`` and ``results/<profile>/curves/<variant>.csv``.

    Runs on ``P["device"]`` (model and trainer); both activation caches must match the profile's model,
    layer and context. When the held-out cache has ``sequence_labels.json``, the core JSON also holds
    ``per_genre`` (:func:`per_genre_core`), else ``per_genre: null``."""
    run = P["run"]
    device = P.get("device", "auto")
    model = load_model(run["model"], device=device)
    layer = model.check_layer(int(run["layer"]))
    expect = cache_expectation(P)  # a cache extracted for other settings is refused, naming the fix
    cache = ActivationCache(P["paths"]["activations_train"], profile=P["profile"], expect=expect)
    heldout = ActivationCache(P["paths"]["activations_heldout"], profile=P["profile"], expect=expect)
    baseline = load_profile_baseline(P)  # checked before training, used after it
    eval_cfg = run.get("core", {})
    rv = resolve(P, variant, model)
    rv = replace(rv, train_cfg=replace(rv.train_cfg, device=device))
    out_dir = P["paths"]["checkpoints"] / variant
    sae = make_sae(rv.arch, rv.sae_cfg)
    penalty = make_penalty(rv.penalty_cfg, rv.sae_cfg.d_sae, getattr(rv.sae_cfg, "k", 0)) if rv.penalty_cfg else None
    if penalty is not None and rv.arch != "topk":
        penalty.needs_dense_latents = True  # only TopK hands the penalty its (idx_BK, val_BK) active set
    try:
        result = train_sae(sae, cache, rv.train_cfg, penalty=penalty, out_dir=out_dir, resume=True, progress=progress)
    except NonFiniteLossError as err:  # name the variant (and its params.yaml entry) in the message
        raise err.for_variant(variant) from err
    records = read_log(out_dir)
    curve = training_curve(records)

    tokens = heldout.tokens()
    genres = read_sequence_genres(P["paths"]["activations_heldout"], tokens.shape[0])
    core = evaluate_core(result.sae, model, tokens, layer, batch_size=int(eval_cfg.get("batch_size", 16)),
                         n_kl_sequences=eval_cfg.get("n_kl_sequences"), groups=genres, baseline=baseline,
                         progress=progress)
    density = core.pop("feature_density_F")
    per_genre = core.pop("per_group", None)
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
        "per_genre": per_genre,
    }
    atomic_write_json(P["paths"]["results"] / "core" / f"{variant}.json", summary)
    atomic_write_text(P["paths"]["results"] / "curves" / f"{variant}.csv", curve.to_csv(index=False))
    ckpt = out_dir / CHECKPOINT_NAME
    if ckpt.exists():  # the resumable state is only needed while training
        ckpt.unlink()
    return summary
