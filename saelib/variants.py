"""A ``params.yaml`` SAE variant → the configs that train it, scaled to the active profile.

A variant entry (``sae_variants.<name>``) has:

- ``arch``: ``topk`` | ``batchtopk`` | ``relu`` | ``jumprelu``;
- ``k_over_d``: active latents as a fraction of d (TopK-style); k = round(k_over_d · d), so the paper's
  k = 320 and k = 100 at d = 2304 keep their ratio on a narrower model;
- ``width_mult``: F / d (defaults to the profile's ``width_mult``, 8 in the papers);
- ``seed``: parameter and data-order seed (42 in the original runs);
- ``sae``: extra architecture fields (e.g. ``l1_coef`` for ReLU, ``target_l0`` for JumpReLU);
- ``penalty``: ``PenaltyConfig`` fields plus ``lam_mult`` (multiplies λ, for the strength sweep);
- ``l1_rule``: ``literal`` (default: L1 coefficients as written, the papers' 0.04) | ``norm_matched``
  (every L1 coefficient of the entry - ``sae.l1_coef`` of a ReLU SAE, ``penalty.l1_coef`` of a penalty,
  the reading's default included - is converted by :func:`matched_l1_coef` to our loss's units and
  activation scale) | ``l0_calibrated`` (each is ``value / 0.04`` times the coefficient calibrated to the
  papers' L0/d, :mod:`saelib.l1_calibration`; a ReLU SAE then trains in normalised units).

The matched rule (issue 12, deliverable 4; not tuned on any evaluation metric) converts the papers'
λ = 0.04 to our loss in two steps (:func:`matched_l1_coef`):

1. **Units.** Our loss sums the squared error over d (``‖x − x̂‖²``, the original TopK runs' loss), while
   the papers' standard SAE paired λ = 0.04 with a per-element mean, ``(1/d)‖x − x̂‖² + λ‖f‖₁``: only there
   is λ = 0.04 strong enough to give what that SAE recorded, L0/d = 0.021 with EV 0.293. With a summed
   error at the papers' own scale the L1 term is about 1e-3 of the loss and the SAE stays dense (ours:
   L0 ≈ F/2, at λ = 0.04 and at 0.04 rescaled by step 2 alone). Multiplying the per-element loss by the
   papers' width ``PAPER_D_MODEL`` gives the summed form with coefficient ``λ·PAPER_D_MODEL``.
2. **Scale.** With unit-norm decoder rows, scaling the activations by ``s`` scales the optimal code by
   ``s``, the squared error by ``s²`` and the L1 term by ``s``, so ``loss(s·x; λ) = s²·loss(x; λ/s)``: the
   same sparsity trade-off needs ``λ ∝ ‖x − x̄‖``. Step 1's coefficient is multiplied by
   ``activation_rms / PAPER_ACTIVATION_RMS``, the ratio of the per-token centred RMS norms of our training
   activations (:func:`activation_rms` on the cache) and of the original runs' Gemma-2-2B layer-12
   activations (estimated, see the constant).

On Gemma-3-270M layer 8 this gives λ ≈ 1250 for the papers' 0.04. The L0 it reaches is a consequence,
reported after training, not a target the rule aims at: in a probe run at the default profile's budget
(512 steps, 400 of them in the L1 warmup) it fell from F/2 to about 100 (L0/d ≈ 0.16) and was still
falling, against the papers' 0.021 after 4,882 steps; with the biases learning in normalised units (so that
the run converges) it settled at L0 ≈ 3.7 (L0/d ≈ 0.006). The matched rows therefore use ``l0_calibrated``,
which starts from this coefficient and measures the one that gives the papers' L0/d.

Every warmup or ramp measured in steps at paper scale (penalty ramps, the L1 sparsity warmup) is
multiplied by the profile's ``warmup_scale`` so it keeps its fraction of the run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Iterator, Protocol

import torch

from .l1_calibration import L1Calibration
from .penalties import PenaltyConfig, resolve_config
from .sae import config_class
from .sae.base import SAEConfig
from .train import TrainConfig

_VARIANT_KEYS = {"arch", "k_over_d", "width_mult", "seed", "sae", "penalty", "description", "paper_run", "l1_rule"}
_STEP_FIELDS_SAE = ("l1_warmup_steps",)
L1_RULES = ("literal", "norm_matched", "l0_calibrated")

PAPER_ACTIVATION_RMS = math.sqrt(2304 * 4.438 / (1 - 0.293))
"""Per-token centred RMS norm ``sqrt(mean_b ‖x_b − x̄‖²)`` of the original runs' activations (Gemma-2-2B,
layer 12), ≈ 120.3. Estimated, since the runs did not record it: the standard SAE's MSE 4.438 and EV
0.293 (docs/spec/original_runs.md, row "0 standard") give a per-element variance MSE / (1 − EV) = 6.28
(the TopK baseline's 1.414 / (1 − 0.777) = 6.34 agrees), times d = 2304 per token. If the papers' MSE
was SAEBench's legacy per-token normalisation rather than per element, the norm is up to ~1.8x larger
and the matched λ correspondingly smaller."""


PAPER_D_MODEL = 2304
"""Residual width of the original runs (Gemma-2-2B): the factor that turns the papers' per-element-mean
L1 coefficient into one for our summed-over-d squared error (step 1 of the matched rule)."""


class _Batches(Protocol):
    def iter_batches(self, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                     drop_last: bool = True) -> Iterator[torch.Tensor]:
        ...


def activation_rms(cache: _Batches, max_tokens: int = 1 << 16, batch_size: int = 4096, *, centred: bool = True) -> float:
    """``sqrt(mean_b ‖x_b − x̄‖²)`` over the first ``max_tokens`` tokens of ``cache`` in stored order
    (deterministic; float64 sums). The input of :func:`matched_l1_coef`. ``centred=False``:
    ``sqrt(mean_b ‖x_b‖²)``, the scale of SAEBench's normalised units."""
    n, s1, s2 = 0, None, 0.0
    for x_BD in cache.iter_batches(batch_size, seed=0, shuffle=False, drop_last=False):
        x = x_BD[: max_tokens - n].double()
        s1 = x.sum(0) if s1 is None else s1 + x.sum(0)
        s2 += float(x.pow(2).sum())
        n += x.shape[0]
        if n >= max_tokens:
            break
    if n == 0 or s1 is None:
        raise ValueError("activation_rms: the activation cache yielded no tokens")
    mean = s1 / n
    return math.sqrt(max(s2 / n - (float(mean.pow(2).sum()) if centred else 0.0), 0.0))


def needs_activation_rms(entry: dict[str, Any]) -> bool:
    """Whether resolving ``entry`` needs ``activation_rms`` (its ``l1_rule`` is ``norm_matched``)."""
    return entry.get("l1_rule", "literal") == "norm_matched"


def needs_l1_calibration(entry: dict[str, Any]) -> bool:
    """Whether resolving ``entry`` needs the L1 calibration (its ``l1_rule`` is ``l0_calibrated``)."""
    return entry.get("l1_rule", "literal") == "l0_calibrated"


def matched_l1_coef(l1_coef: float, act_rms: float, ref_rms: float = PAPER_ACTIVATION_RMS,
                    ref_d: int = PAPER_D_MODEL) -> float:
    """``l1_coef · ref_d · act_rms / ref_rms``: the coefficient of our summed-squared-error loss that gives
    activations of centred RMS norm ``act_rms`` the trade-off ``l1_coef`` gave the papers' per-element loss
    at width ``ref_d`` and norm ``ref_rms`` (the module docstring: units, then scale)."""
    if not (act_rms > 0 and ref_rms > 0 and ref_d > 0):
        raise ValueError(f"activation norms and the width must be > 0, got act_rms={act_rms}, ref_rms={ref_rms}, "
                         f"ref_d={ref_d}")
    return float(l1_coef) * int(ref_d) * float(act_rms) / float(ref_rms)


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
                    hook_name: str = "", activation_rms: float | None = None,
                    l1_calibration: L1Calibration | None = None) -> ResolvedVariant:
    """Build the SAE, trainer and penalty configs of variant ``name`` for profile block ``run``.

    ``activation_rms``: centred RMS norm of the training activations (:func:`activation_rms`), needed
    only by entries with ``l1_rule: norm_matched``; ``l1_calibration``: the profile's calibration
    (:func:`saelib.l1_calibration.load_calibration`), needed only by entries with ``l1_rule: l0_calibrated``."""
    unknown = sorted(set(entry) - _VARIANT_KEYS)
    if unknown:
        raise ValueError(f"variant {name!r}: unknown keys {unknown}; allowed: {sorted(_VARIANT_KEYS)}")
    if "arch" not in entry:
        raise ValueError(f"variant {name!r} has no 'arch'")
    rule = entry.get("l1_rule", "literal")
    if rule not in L1_RULES:
        raise ValueError(f"variant {name!r}: l1_rule {rule!r} is not one of {L1_RULES}")
    if rule == "norm_matched" and activation_rms is None:
        raise ValueError(f"variant {name!r} uses l1_rule: norm_matched, which needs the activation scale: pass "
                         f"activation_rms=saelib.variants.activation_rms(<training ActivationCache>) to resolve_variant")
    if rule == "l0_calibrated" and l1_calibration is None:
        raise ValueError(f"variant {name!r} uses l1_rule: l0_calibrated, which needs the profile's L1 calibration: "
                         f"pass l1_calibration=saelib.l1_calibration.load_calibration(<results>/calibration/l1.json)")

    def l1(value: float, *, raw: bool) -> float:
        """An L1 coefficient under the entry's rule (``raw``: one acting on raw activations)."""
        if rule == "norm_matched":
            return matched_l1_coef(value, activation_rms)
        if rule == "l0_calibrated":
            return l1_calibration.raw_coef(value) if raw else l1_calibration.sae_coef(value)
        return float(value)
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
    if "l1_coef" in names:
        default = next(f.default for f in fields(cfg_cls) if f.name == "l1_coef")
        if rule == "l0_calibrated":  # the calibrated coefficient is in normalised units (saelib.sae.units)
            if extra.get("units", "normalized") != "normalized":
                raise ValueError(f"variant {name!r}: l1_rule: l0_calibrated calibrates in normalised units; "
                                 f"remove sae.units: {extra['units']!r}")
            extra["units"] = "normalized"
        extra["l1_coef"] = l1(extra.get("l1_coef", default), raw=extra.get("units", "raw") == "raw")
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
            resolved, lam=resolved.lam * lam_mult, ramp_steps=_scaled(resolved.ramp_steps, scale),
            l1_coef=l1(resolved.l1_coef, raw=True),
        )
        if penalty_cfg.kind == "none":
            penalty_cfg = None
    return ResolvedVariant(name, arch, sae_cfg, train_cfg, penalty_cfg, dict(entry))
