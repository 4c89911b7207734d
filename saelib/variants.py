"""A ``params.yaml`` SAE variant → the configs that train it, scaled to the active profile.

A variant entry (``sae_variants.<name>``) has:

- ``arch``: ``topk`` | ``batchtopk`` | ``relu`` | ``jumprelu``;
- ``k_over_d``: active latents as a fraction of d (TopK-style); k = round(k_over_d · d), so the paper's
  k = 320 and k = 100 at d = 2304 keep their ratio on a narrower model;
- ``width_mult``: F / d (defaults to the profile's ``width_mult``, 8 in the papers);
- ``seed``: parameter and data-order seed (42 in the original runs);
- ``sae``: extra architecture fields (e.g. ``l1_coef`` for ReLU, ``target_l0`` for JumpReLU);
- ``penalty``: ``PenaltyConfig`` fields plus ``lam_mult`` (multiplies λ, for the strength sweep).

Every warmup or ramp measured in steps at paper scale (penalty ramps, the L1 sparsity warmup) is
multiplied by the profile's ``warmup_scale`` so it keeps its fraction of the run.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from .penalties import PenaltyConfig, resolve_config
from .sae import config_class
from .sae.base import SAEConfig
from .train import TrainConfig

_VARIANT_KEYS = {"arch", "k_over_d", "width_mult", "seed", "sae", "penalty", "description", "paper_run"}
_STEP_FIELDS_SAE = ("l1_warmup_steps",)


@dataclass
class ResolvedVariant:
    """Everything needed to train one variant at the active profile's scale."""

    name: str
    """Variant name (``sae_variants`` key)."""
    arch: str
    """Architecture registry name."""
    sae_cfg: SAEConfig
    """Architecture config (d_in, d_sae, k, ...)."""
    train_cfg: TrainConfig
    """Trainer config (tokens, batch, seed, ...)."""
    penalty_cfg: PenaltyConfig | None
    """Resolved penalty config, or None for no penalty."""
    entry: dict[str, Any]
    """The raw ``params.yaml`` entry (for the results file)."""


def _scaled(steps: int, scale: float) -> int:
    return int(round(steps * scale))


def resolve_variant(name: str, entry: dict[str, Any], run: dict[str, Any], *, d_model: int, model_name: str = "",
                    hook_name: str = "") -> ResolvedVariant:
    """Build the SAE, trainer and penalty configs of variant ``name`` for profile block ``run``."""
    unknown = sorted(set(entry) - _VARIANT_KEYS)
    if unknown:
        raise ValueError(f"variant {name!r}: unknown keys {unknown}; allowed: {sorted(_VARIANT_KEYS)}")
    if "arch" not in entry:
        raise ValueError(f"variant {name!r} has no 'arch'")
    arch = entry["arch"]
    cfg_cls = config_class(arch)  # raises for an unknown architecture
    scale = float(run.get("warmup_scale", 1.0))
    width_mult = float(entry.get("width_mult", run.get("width_mult", 8)))
    seed = int(entry.get("seed", 42))
    sae_fields: dict[str, Any] = dict(
        d_in=d_model,
        d_sae=int(round(width_mult * d_model)),
        seed=seed,
        model_name=model_name,
        hook_name=hook_name,
    )
    names = {f.name for f in fields(cfg_cls)}
    if "k" in names:
        if "k_over_d" not in entry:
            raise ValueError(f"variant {name!r}: arch {arch!r} needs 'k_over_d'")
        sae_fields["k"] = max(1, int(round(float(entry["k_over_d"]) * d_model)))
    extra = dict(entry.get("sae", {}))
    for key in _STEP_FIELDS_SAE:
        if key in names:
            default = next(f.default for f in fields(cfg_cls) if f.name == key)
            extra[key] = _scaled(int(extra.get(key, default)), scale)
    sae_fields.update(extra)
    sae_cfg = cfg_cls.from_dict(sae_fields)

    train_cfg = TrainConfig(
        total_tokens=int(run["sae_tokens"]),
        batch_size=int(run["batch_size"]),
        seed=seed,
        checkpoint_every=int(run.get("checkpoint_every", 200)),
    )

    penalty_cfg = None
    if entry.get("penalty"):
        pen = dict(entry["penalty"])
        lam_mult = float(pen.pop("lam_mult", 1.0))
        valid = {f.name for f in fields(PenaltyConfig)}
        bad = sorted(set(pen) - valid)
        if bad:
            raise ValueError(f"variant {name!r}: unknown penalty fields {bad}; known: {sorted(valid)}")
        resolved = resolve_config(PenaltyConfig(**pen))
        penalty_cfg = replace(
            resolved, lam=resolved.lam * lam_mult, ramp_steps=_scaled(resolved.ramp_steps, scale)
        )
        if penalty_cfg.kind == "none":
            penalty_cfg = None
    return ResolvedVariant(name, arch, sae_cfg, train_cfg, penalty_cfg, dict(entry))
