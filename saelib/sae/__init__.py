"""SAE architectures behind one registry.

``make_sae("topk", TopKConfig(d_in=640, d_sae=5120, k=32))`` builds an SAE;
``load_sae(folder)`` reads a SAELens folder written by ``BaseSAE.save`` (or by SAELens itself,
for the ``topk``, ``standard`` and ``jumprelu`` architectures).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import BaseSAE, SAEConfig, SAEFormatError, SAEOutput, geometric_median, read_saelens_folder
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
    return out


def load_sae(folder: str | Path) -> BaseSAE:
    """Load an SAE saved by ``BaseSAE.save`` bit-identically (or a supported plain SAELens SAE), in eval mode."""
    cfg_json, tensors = read_saelens_folder(folder)
    meta = cfg_json.get("metadata") or {}
    if "saelib_architecture" in meta:
        arch = meta["saelib_architecture"]
        cls = _sae_class(arch)
        cfg = cls.config_cls.from_dict(meta["saelib_config"])
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
    sae = cls(cfg)
    try:
        sae.load_saelens_state_dict(tensors)
    except (RuntimeError, ValueError) as err:
        raise SAEFormatError(f"{folder}: weights do not match a {arch!r} SAE with d_in={cfg.d_in}, d_sae={cfg.d_sae}: {err}") from err
    return sae.eval()


__all__ = [
    "SAE_REGISTRY", "make_sae", "load_sae", "config_class", "BaseSAE", "SAEConfig", "SAEOutput", "SAEFormatError",
    "geometric_median", "TopKSAE", "TopKConfig", "BatchTopKSAE", "BatchTopKConfig", "ReLUSAE", "ReLUConfig",
    "JumpReLUSAE", "JumpReLUConfig",
]
