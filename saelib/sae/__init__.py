"""SAE architectures behind one registry.

``make_sae("topk", TopKConfig(d_in=640, d_sae=5120, k=32))`` builds an SAE;
``load_sae(folder)`` reads a SAELens folder written by ``BaseSAE.save`` (or by SAELens itself,
for the ``topk``, ``standard`` and ``jumprelu`` architectures).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import (
    CFG_FILENAME,
    WEIGHTS_FILENAME,
    BaseSAE,
    SAEConfig,
    SAEFormatError,
    SAEOutput,
    geometric_median,
    read_saelens_folder,
    register_loader,
    retrain_hint,
)
from .batchtopk import BatchTopKConfig, BatchTopKSAE
from .jumprelu import JumpReLUConfig, JumpReLUSAE
from .relu import ReLUConfig, ReLUSAE
from .topk import TopKConfig, TopKSAE

SAE_REGISTRY: dict[str, type[BaseSAE]] = {
    cls.arch: cls for cls in (TopKSAE, BatchTopKSAE, ReLUSAE, JumpReLUSAE)
}
"""Architecture name → SAE class (its ``config_cls`` is the matching config dataclass)."""

_FROM_SAELENS = {"topk": "topk", "standard": "relu", "jumprelu": "jumprelu"}


def _sae_class(arch: str) -> type[BaseSAE]:
    if arch not in SAE_REGISTRY:
        raise ValueError(f"unknown SAE architecture {arch!r}; known: {sorted(SAE_REGISTRY)}")
    return SAE_REGISTRY[arch]


def config_class(arch: str) -> type[SAEConfig]:
    """The config dataclass of an architecture."""
    return _sae_class(arch).config_cls


def make_sae(arch: str, cfg: SAEConfig | dict[str, Any]) -> BaseSAE:
    """Build an SAE of architecture ``arch`` from its config (dataclass or dict of its fields)."""
    cls = _sae_class(arch)
    if isinstance(cfg, dict):
        cfg = cls.config_cls.from_dict(cfg)
    if type(cfg) is not cls.config_cls:
        raise TypeError(f"architecture {arch!r} needs a {cls.config_cls.__name__}, got {type(cfg).__name__}")
    return cls(cfg)


def _config_from_saelens(cfg_json: dict[str, Any], arch: str) -> dict[str, Any]:
    """Our config fields from a plain SAELens cfg.json (no saelib metadata)."""
    meta = cfg_json.get("metadata") or {}
    out: dict[str, Any] = {
        "d_in": int(cfg_json["d_in"]),
        "d_sae": int(cfg_json["d_sae"]),
        "dtype": str(cfg_json.get("dtype", "float32")),
        "hook_name": str(meta.get("hook_name") or cfg_json.get("hook_name") or ""),
        "model_name": str(meta.get("model_name") or cfg_json.get("model_name") or ""),
    }
    if arch == "topk":
        out["k"] = int(cfg_json["k"])
    if arch == "jumprelu":
        out["threshold_init"] = 0.0
        out["target_l0"] = None
        out["sparsity_mode"] = "l0"
        out["units"] = "raw"  # an SAE trained elsewhere: no input scale of ours to express λ in
    return out


def _check_cfg_json_widths(folder: Path, cfg_json: dict[str, Any], cfg: SAEConfig, tensors: dict[str, Any]) -> None:
    """cfg.json's top-level ``d_in``/``d_sae`` must agree with the config we build and the weights."""
    for key in ("d_in", "d_sae"):
        if key in cfg_json and int(cfg_json[key]) != getattr(cfg, key):
            raise SAEFormatError(
                f"{folder / CFG_FILENAME}: {key}={cfg_json[key]} disagrees with metadata.saelib_config "
                f"({key}={getattr(cfg, key)}); an edited cfg.json does not change the weights. "
                f"Restore cfg.json or {retrain_hint(folder)}"
            )
    w = tensors.get("W_enc")
    if w is not None and w.ndim == 2 and {int(w.shape[0]), int(w.shape[1])} != {cfg.d_in, cfg.d_sae}:
        raise SAEFormatError(
            f"{folder / WEIGHTS_FILENAME}: W_enc has shape {tuple(w.shape)}, but {folder / CFG_FILENAME} says "
            f"d_in={cfg.d_in}, d_sae={cfg.d_sae}; restore cfg.json or {retrain_hint(folder)}"
        )


def check_sae_input(sae: BaseSAE, d_in: int, *, folder: str | Path = "", what: str = "the activations") -> None:
    """Raise ``SAEFormatError`` when ``sae`` cannot read ``d_in``-wide inputs, naming the SAE folder,
    the model/hook it was trained on and both widths."""
    if sae.cfg.d_in == int(d_in):
        return
    where = f"SAE at {folder}" if folder else "the SAE"
    trained = f"{sae.cfg.model_name or 'unknown model'}, {sae.cfg.hook_name or 'unknown hook'}"
    raise SAEFormatError(
        f"{where} reads d_in={sae.cfg.d_in}-wide activations ({trained}), but {what} are {int(d_in)}-wide. "
        "Use an SAE trained on this model and layer, or switch the profile's model/layer to the SAE's."
    )


def load_sae(folder: str | Path, *, expect_d_in: int | None = None, what: str = "the activations") -> BaseSAE:
    """Load an SAE saved by ``BaseSAE.save`` bit-identically (or a supported plain SAELens SAE), in eval mode.

    Every failure is an ``SAEFormatError`` naming the file and the fix (a corrupt weights file, a
    ``cfg.json`` whose ``d_in``/``d_sae`` disagree with the weights). ``expect_d_in``: the width of
    the activations the caller will feed it (``what`` describes them, e.g. ``"variant topk's
    gemma-3-270m layer-8 activations"``); a mismatch is an error naming both widths.
    """
    folder = Path(folder)
    cfg_json, tensors = read_saelens_folder(folder)
    meta = cfg_json.get("metadata") or {}
    if "saelib_architecture" in meta:
        arch = meta["saelib_architecture"]
        cls = _sae_class(arch)
        cfg = cls.config_cls.from_saved(meta["saelib_config"])
    else:
        sl_arch = cfg_json.get("architecture", "standard")
        if sl_arch not in _FROM_SAELENS:
            raise SAEFormatError(f"{folder}: SAELens architecture {sl_arch!r} is not supported; supported: {sorted(_FROM_SAELENS)}")
        for key, ok in (("apply_b_dec_to_input", True), ("normalize_activations", "none"), ("rescale_acts_by_decoder_norm", False)):
            if key in cfg_json and cfg_json[key] != ok:
                raise SAEFormatError(f"{folder}: {key}={cfg_json[key]!r} is not supported (need {ok!r})")
        arch = _FROM_SAELENS[sl_arch]
        cls = _sae_class(arch)
        cfg = cls.config_cls.from_dict(_config_from_saelens(cfg_json, arch))
    _check_cfg_json_widths(folder, cfg_json, cfg, tensors)
    sae = cls(cfg)
    try:
        sae.load_saelens_state_dict(tensors)
    except (RuntimeError, ValueError) as err:
        raise SAEFormatError(
            f"{folder}: weights do not match a {arch!r} SAE with d_in={cfg.d_in}, d_sae={cfg.d_sae}: {err}; {retrain_hint(folder)}"
        ) from err
    if expect_d_in is not None:
        check_sae_input(sae, expect_d_in, folder=folder, what=what)
    return sae.eval()


register_loader(load_sae)  # BaseSAE.load dispatches through the registry without importing this package

__all__ = [
    "SAE_REGISTRY", "make_sae", "load_sae", "check_sae_input", "config_class", "BaseSAE", "SAEConfig", "SAEOutput", "SAEFormatError",
    "geometric_median", "TopKSAE", "TopKConfig", "BatchTopKSAE", "BatchTopKConfig", "ReLUSAE", "ReLUConfig",
    "JumpReLUSAE", "JumpReLUConfig",
]
