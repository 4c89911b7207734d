"""Evaluate any SAELens-format SAE with this repository's evals, outside the DVC pipeline.

    python -m saelib.evaluate SAE_DIR --evals core,absorption,scr,probing,unlearning --out DIR [--profile P]

``SAE_DIR`` holds ``cfg.json`` + ``sae_weights.safetensors`` (saved by ``saelib`` or by SAELens itself).
The model and hook come from its ``cfg.json`` and must match the profile's ``model`` and ``layer``
(``blocks.<layer>.hook_resid_post``); a mismatch is an error that names the file and the fix. Each eval
writes its SAEBench-format JSON to ``DIR/<eval>/<name>.json`` (``<name>``: ``--name``, default the SAE
folder's name, or its parent's when the folder is called ``sae``). The model side of each eval is read
from (or built into) the profile's eval cache, the same one the pipeline's ``<eval>_prep`` stages use.
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .activations import ActivationCache, MissingCacheError
from .config import ConfigError, load_params
from .evals.core import evaluate_core
from .extract import ExtractConfig, corpus_tokens
from .io import atomic_write_json
from .models import LoadedModel, load_model
from .sae import SAEFormatError, load_sae
from .sae.base import read_saelens_folder
from .stages import EVALS, impl, stage_run
from .stages import absorption as _absorption  # noqa: F401 - the per-eval stage modules impl() dispatches to
from .stages import probing as _probing  # noqa: F401
from .stages import sae_probes as _sae_probes  # noqa: F401
from .stages import scr as _scr  # noqa: F401
from .stages import unlearning as _unlearning  # noqa: F401

ALL_EVALS = ("core", *EVALS)
HOOK_RE = re.compile(r"blocks\.(\d+)\.hook_resid_post")


class EvaluateError(ValueError):
    """The SAE, its cfg.json or the command line does not fit the chosen profile."""


def sae_identity(folder: str | Path) -> dict[str, Any]:
    """``model_name``, ``hook_name``, ``layer`` and sizes from a SAELens ``cfg.json`` (v6 keeps the names in ``metadata``)."""
    folder = Path(folder)
    cfg, _ = read_saelens_folder(folder)
    meta = cfg.get("metadata") or {}
    model_name = meta.get("model_name") or cfg.get("model_name")
    hook_name = meta.get("hook_name") or cfg.get("hook_name")
    if not model_name or not hook_name:
        raise EvaluateError(f"{folder / 'cfg.json'} names no model_name/hook_name (SAELens puts them in 'metadata'); "
                            "add them so the SAE can be matched to a model")
    m = HOOK_RE.fullmatch(str(hook_name))
    if m is None:
        raise EvaluateError(f"{folder / 'cfg.json'}: hook {hook_name!r} is not a residual-stream hook "
                            "'blocks.<layer>.hook_resid_post'; only those are supported")
    return {"model_name": model_name, "hook_name": hook_name, "layer": int(m.group(1)),
            "d_in": cfg.get("d_in"), "d_sae": cfg.get("d_sae"), "architecture": cfg.get("architecture")}


def check_against_profile(identity: dict[str, Any], P: dict[str, Any], folder: Path) -> None:
    """The SAE must read the profile's model at the profile's layer."""
    run = P["run"]
    where = f"{folder / 'cfg.json'}"
    if identity["model_name"] != run["model"]:
        raise EvaluateError(f"{where} is an SAE of model {identity['model_name']!r}, but profile {P['profile']!r} runs "
                            f"{run['model']!r}; choose the profile of that model with --profile, or fix model_name in cfg.json")
    if identity["layer"] != int(run["layer"]):
        raise EvaluateError(f"{where} hooks {identity['hook_name']!r} (layer {identity['layer']}), but profile "
                            f"{P['profile']!r} evaluates layer {run['layer']}; use a profile with layer: {identity['layer']}")


def heldout_tokens(P: dict[str, Any], model: LoadedModel, n_sequences: int | None) -> torch.Tensor:
    """The profile's held-out sequences: from its activation cache when built, else tokenized from its corpus."""
    try:
        tokens = ActivationCache(P["paths"]["activations_heldout"], profile=P["profile"]).tokens()
    except MissingCacheError:
        run = dict(P["run"])
        if n_sequences is not None:
            run["heldout_sequences"] = min(int(run["heldout_sequences"]), n_sequences)
        tokens = corpus_tokens(ExtractConfig.from_run(run), model.tokenizer, "heldout")
    return tokens if n_sequences is None else tokens[:n_sequences]


def core_document(name: str, metrics: dict[str, Any], sae_cfg: dict[str, Any], eval_cfg: dict[str, Any],
                  extra: dict[str, Any]) -> dict[str, Any]:
    """SAEBench's core output layout (``eval_result_metrics`` grouped as SAEBench groups them)."""
    g = metrics.get
    density = metrics.get("feature_density_F")
    misc = {"frac_alive": g("frac_alive"), "n_tokens": g("n_tokens"), "n_sequences": g("n_sequences")}
    if density is not None:
        misc.update({"freq_over_1_percent": float((density > 0.01).float().mean()),
                     "freq_over_10_percent": float((density > 0.1).float().mean())})
    return {
        "eval_type_id": "core",
        "sae_name": name,
        "eval_config": eval_cfg,
        "datetime_epoch_millis": int(time.time() * 1000),
        "eval_result_metrics": {
            "model_behavior_preservation": {"kl_div_score": g("kl_score"), "kl_div_with_ablation": g("kl_zero"),
                                            "kl_div_with_sae": g("kl_sae")},
            "model_performance_preservation": {"ce_loss_score": g("ce_score"), "ce_loss_with_ablation": g("ce_zero"),
                                               "ce_loss_with_sae": g("ce_sae"), "ce_loss_without_sae": g("ce_clean")},
            "reconstruction_quality": {"explained_variance": g("ev"), "explained_variance_legacy": g("ev_legacy"),
                                       "mse": g("mse"), "mse_legacy": g("mse_legacy"), "cossim": g("cossim")},
            "shrinkage": {"l2_ratio": g("l2_ratio"), "relative_reconstruction_bias": g("relative_reconstruction_bias")},
            "sparsity": {"l0": g("l0"), "l1": g("l1")},
            "misc_metrics": misc,
        },
        "eval_result_details": [],
        "sae_cfg_dict": sae_cfg,
        **extra,
    }


def evaluate_sae_dir(sae_dir: str | Path, evals: list[str], out_dir: str | Path, *, profile: str | None = None,
                     params: str | Path | None = None, name: str | None = None, heldout_sequences: int | None = None,
                     progress: bool = False) -> dict[str, Path]:
    """Run ``evals`` on the SAE in ``sae_dir``; returns eval → the JSON written."""
    folder = Path(sae_dir)
    unknown = [e for e in evals if e not in ALL_EVALS]
    if unknown or not evals:
        raise EvaluateError(f"unknown evals {unknown or evals}; choose from: {', '.join(ALL_EVALS)}")
    P = load_params(profile, params)
    identity = sae_identity(folder)
    check_against_profile(identity, P, folder)
    sae = load_sae(folder)
    name = name or (folder.resolve().parent.name if folder.name == "sae" else folder.name)
    out_dir = Path(out_dir)
    run = P["run"]
    model: LoadedModel | None = None

    def get_model() -> LoadedModel:
        nonlocal model
        if model is None:
            model = load_model(run["model"], device=P.get("device", "auto"))
        if model.d_model != sae.cfg.d_in:
            raise EvaluateError(f"{folder / 'cfg.json'}: d_in={sae.cfg.d_in}, but {run['model']} is {model.d_model} wide")
        return model

    extra = {"profile": P["profile"], "model": run["model"], "layer": int(run["layer"]), "hook_name": identity["hook_name"],
             "sae_dir": str(folder)}
    written = {}
    for ev in evals:
        if ev == "core":
            core_cfg = {"batch_size": int(run.get("core", {}).get("batch_size", 16)),
                        "n_kl_sequences": run.get("core", {}).get("n_kl_sequences"), "heldout_sequences": heldout_sequences}
            tokens = heldout_tokens(P, get_model(), heldout_sequences)
            metrics = evaluate_core(sae, get_model(), tokens, int(run["layer"]), batch_size=core_cfg["batch_size"],
                                    n_kl_sequences=core_cfg["n_kl_sequences"], progress=progress)
            doc = core_document(name, metrics, sae.cfg.to_dict(), core_cfg, extra)
            written[ev] = atomic_write_json(out_dir / "core" / f"{name}.json", doc)
            continue
        mod = impl(ev)
        prep = mod.prepare(stage_run(P), P["paths"]["eval_cache"] / mod.NAME, model=get_model, progress=progress)
        mod.evaluate(prep, sae, out_dir / mod.NAME, name, extra=extra, progress=progress)
        written[ev] = out_dir / mod.NAME / f"{name}.json"
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m saelib.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("sae_dir", help="SAELens-format SAE folder (cfg.json + sae_weights.safetensors)")
    parser.add_argument("--evals", default="core", help=f"comma-separated, from: {','.join(ALL_EVALS)} (default: core)")
    parser.add_argument("--out", required=True, help="folder for the results (DIR/<eval>/<name>.json)")
    parser.add_argument("--profile", default=None, help="params.yaml profile (default: the file's `profile`)")
    parser.add_argument("--params", default=None, help="params.yaml to read (default: the repository's)")
    parser.add_argument("--name", default=None, help="name of the SAE in the results (default: from its folder)")
    parser.add_argument("--heldout-sequences", type=int, default=None, help="core: use only the first N held-out sequences")
    args = parser.parse_args(argv)
    try:
        written = evaluate_sae_dir(args.sae_dir, [e.strip() for e in args.evals.split(",") if e.strip()], args.out,
                                   profile=args.profile, params=args.params, name=args.name,
                                   heldout_sequences=args.heldout_sequences, progress=True)
    except (EvaluateError, ConfigError, SAEFormatError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    for ev, path in written.items():
        print(f"{ev}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
