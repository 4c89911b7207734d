"""JumpReLU SAE (Rajamanoharan et al. 2024) trained with straight-through estimators.

``f_i = pre_i · H(pre_i − θ_i)``. The Heaviside step has no useful gradient, so the threshold
``θ`` learns through the pseudo-derivative with a rectangle kernel of width ``ε`` (bandwidth):
``∂f/∂θ = −(θ/ε)·K((pre − θ)/ε)`` and ``∂H/∂θ = −(1/ε)·K((pre − θ)/ε)``, ``K(u) = 1[|u| < ½]``.

Sparsity term (``sparsity_mode``):
- ``"target"``: ``(L0 / target_l0 − 1)²`` with ``L0`` the batch-mean number of active latents,
  pushing the SAE towards a chosen L0 (comparable with TopK at ``k = target_l0``);
- ``"l0"``: ``L0`` itself (DeepMind's penalty).
Loss ``= mse + u·λ·w(t)·sparsity`` with the warmup ``w(t) = min(1, t / sparsity_warmup_steps)``.

Residual activations are not normalised here, so absolute thresholds depend on the model;
``threshold_init = None`` (default) sets θ from the first batch so that its L0 equals
``target_l0``, and ``bandwidth = None`` then uses ``ε = θ_init``.

Units (``units``, :mod:`saelib.sae.units`). SAEBench's JumpReLU trainer (dictionary_learning) divides every
input by ``s = sqrt(mean_b ‖x_b‖²)`` before training, so its λ, its thresholds and its learning rate are in
units of a unit-mean-squared-norm input. ``units = "normalized"`` (default) reproduces that run on raw
activations: the sparsity term (an L0-type term) is weighted by ``u = s²`` (so it keeps its weight against
the squared error) and the parameters measured in activation units, the biases and θ, learn at ``s·lr``,
with ``s`` taken from the first training batch (``input_scale``). Gradient clipping acts on the whole
gradient's norm, which the ``s²`` changes, so it is the one step that differs from the normalised run.
``units = "raw"`` uses ``u = 1`` and one learning rate: on Gemma-3-270M's
residuals (``s`` ≈ 5,700) θ can then move by only about ``Σ lr`` ≈ 0.17 over the default run, a small
fraction of its starting value, and L0 drifts where the encoder's updates take it (it ended at 26.7 for a
target of 89 in the committed runs before session 18).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .base import BaseSAE, SAEOutput
from .relu import warmup_scale
from .units import NormalizedUnitsMixin, UnitsConfig

_MODES = ("target", "l0")


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class JumpReLUFn(torch.autograd.Function):
    """``pre·H(pre − θ)``; ∂pre = H(pre − θ), ∂θ = −(θ/ε)·K((pre − θ)/ε) summed over the batch."""

    @staticmethod
    def forward(ctx: Any, pre_BF: Tensor, theta_F: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre_BF, theta_F)
        ctx.bandwidth = bandwidth
        return pre_BF * (pre_BF > theta_F)

    @staticmethod
    def backward(ctx: Any, grad_BF: Tensor):
        pre_BF, theta_F = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad_BF * (pre_BF > theta_F)
        grad_theta = (-(theta_F / eps) * _rectangle((pre_BF - theta_F) / eps) * grad_BF).sum(0)
        return grad_pre, grad_theta, None


class StepFn(torch.autograd.Function):
    """``H(pre − θ)``; gradient only to θ: −(1/ε)·K((pre − θ)/ε)."""

    @staticmethod
    def forward(ctx: Any, pre_BF: Tensor, theta_F: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pre_BF, theta_F)
        ctx.bandwidth = bandwidth
        return (pre_BF > theta_F).to(pre_BF.dtype)

    @staticmethod
    def backward(ctx: Any, grad_BF: Tensor):
        pre_BF, theta_F = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_theta = (-(1.0 / eps) * _rectangle((pre_BF - theta_F) / eps) * grad_BF).sum(0)
        return None, grad_theta, None


@dataclass
class JumpReLUConfig(UnitsConfig):
    """JumpReLU SAE with a per-latent learned threshold."""

    target_l0: float | None = 32.0
    """L0 the ``"target"`` penalty pushes towards; also sets the data-dependent threshold init."""
    sparsity_mode: str = "target"
    """``"target"``: (L0/target_l0 − 1)²; ``"l0"``: L0."""
    sparsity_coef: float = 1.0
    """λ, weight of the sparsity term after warmup."""
    sparsity_warmup_steps: int = 0
    """Steps over which λ ramps linearly from 0."""
    threshold_init: float | None = None
    """Initial θ for every latent; ``None``: chosen on the first batch so that its L0 = target_l0."""
    bandwidth: float | None = None
    """STE kernel width ε; ``None``: equal to the initial threshold."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sparsity_mode not in _MODES:
            raise ValueError(f"unknown sparsity_mode {self.sparsity_mode!r}; expected one of {_MODES}")
        if self.target_l0 is not None and not 0 < float(self.target_l0) <= self.d_sae:
            raise ValueError(f"target_l0 must be in (0, d_sae], got {self.target_l0}")
        if self.sparsity_mode == "target" and self.target_l0 is None:
            raise ValueError("sparsity_mode='target' needs target_l0")
        if self.threshold_init is None and self.target_l0 is None:
            raise ValueError("set threshold_init, or target_l0 for the data-dependent threshold init")
        if self.threshold_init is not None and float(self.threshold_init) < 0:
            raise ValueError(f"threshold_init must be >= 0, got {self.threshold_init}")
        if self.bandwidth is not None and float(self.bandwidth) <= 0:
            raise ValueError(f"bandwidth must be > 0, got {self.bandwidth}")


class JumpReLUSAE(NormalizedUnitsMixin, BaseSAE):
    """JumpReLU SAE (SAELens architecture ``jumprelu``; state dict adds ``threshold`` (d_sae,))."""

    arch = "jumprelu"
    config_cls = JumpReLUConfig
    saelens_architecture = "jumprelu"
    cfg: JumpReLUConfig
    activation_unit_params = ("threshold", "b_enc", "b_dec")

    def __init__(self, cfg: JumpReLUConfig):
        super().__init__(cfg)
        init = 0.0 if cfg.threshold_init is None else float(cfg.threshold_init)
        self.threshold = nn.Parameter(torch.full((cfg.d_sae,), init, dtype=self.W_enc.dtype))

    @property
    def threshold_F(self) -> nn.Parameter:
        return self.threshold

    @property
    def eps(self) -> float:
        """The STE bandwidth in use."""
        if self.cfg.bandwidth is not None:
            return float(self.cfg.bandwidth)
        if self.cfg.threshold_init is not None and self.cfg.threshold_init > 0:
            return float(self.cfg.threshold_init)
        raise RuntimeError("JumpReLU bandwidth is unresolved: call init_from_batch_ or set cfg.bandwidth")

    @torch.no_grad()
    def init_from_batch_(self, x_BD: Tensor) -> None:
        """``b_dec`` = geometric median; ``input_scale`` = ``sqrt(mean ‖x‖²)`` of the batch if unset; then,
        if ``threshold_init`` is None, θ = the activation value above which the batch has ``target_l0``
        active latents per token (both written back to cfg)."""
        super().init_from_batch_(x_BD)
        self.init_input_scale_(x_BD)
        if self.cfg.threshold_init is None:
            pre_N = self.pre_activations(x_BD.reshape(-1, self.cfg.d_in)).float().relu().flatten()
            n_keep = max(1, min(pre_N.numel(), int(round(float(self.cfg.target_l0) * x_BD.shape[0]))))
            theta = float(pre_N.topk(n_keep, sorted=False).values.min())
            if theta <= 0:
                theta = float(pre_N[pre_N > 0].min()) if (pre_N > 0).any() else 1e-3
            self.cfg.threshold_init = theta
            self.threshold.fill_(theta)
        if self.cfg.bandwidth is None:
            self.cfg.bandwidth = float(self.cfg.threshold_init) if self.cfg.threshold_init > 0 else 1e-3

    @torch.no_grad()
    def after_step_(self) -> None:
        """Keep θ ≥ 0 (so f is ReLU-like, as SAELens's inference code assumes)."""
        self.threshold.clamp_(min=0.0)

    def encode(self, x_BD: Tensor) -> Tensor:
        """``pre·H(pre − θ)`` (float32); any leading dims."""
        x = self._check_input(x_BD)
        shape = x.shape[:-1]
        pre_BF = self.pre_activations(x.reshape(-1, self.cfg.d_in)).float()
        return self._latents(pre_BF).reshape(*shape, self.cfg.d_sae)

    def _latents(self, pre_BF: Tensor) -> Tensor:
        """``ReLU(pre·H(pre − θ))`` = SAELens's ``ReLU(pre)·1[pre > θ]``; θ-gradient via the STE."""
        theta_F = self.threshold.float()
        if not torch.is_grad_enabled():
            return (pre_BF * (pre_BF > theta_F)).relu()
        return JumpReLUFn.apply(pre_BF, theta_F, self.eps).relu()

    def forward(self, x_BD: Tensor, *, step: int | None = None, dead_mask_F: Tensor | None = None,
                dense_latents: bool = True) -> SAEOutput:
        """Losses ``{"mse", "l0", "sparsity", "sparsity_coef", "loss"}``."""
        x_BD = self._check_input(x_BD)
        if x_BD.ndim != 2:
            raise ValueError(f"forward expects a (batch, {self.cfg.d_in}) tensor, got {tuple(x_BD.shape)}")
        pre_BF = self.pre_activations(x_BD).float()
        theta_F = self.threshold.float()
        eps = self.eps
        f_BF = self._latents(pre_BF)
        x_hat_BD = self.decode(f_BF)
        mse = self.mse_loss(x_hat_BD, x_BD)
        l0 = StepFn.apply(pre_BF, theta_F, eps).sum(-1).mean()
        if self.cfg.sparsity_mode == "target":
            sparsity = (l0 / float(self.cfg.target_l0) - 1.0).pow(2)
        else:
            sparsity = l0
        coef = self.cfg.sparsity_coef * warmup_scale(step, self.cfg.sparsity_warmup_steps)
        coef *= self.unit_scale() ** 2  # u: the squared error's units (module docstring)
        losses = {"mse": mse, "l0": l0, "sparsity": sparsity, "sparsity_coef": mse.new_tensor(coef),
                  "loss": mse + coef * sparsity}
        return SAEOutput(x_hat_BD, f_BF, None, None, losses)


def threshold_report(sae: JumpReLUSAE, l0: float, travel: float) -> dict[str, Any]:
    """How far the thresholds moved against how far Adam could move them (``travel``, the run's
    :func:`saelib.train.lr_travel`, times θ's :meth:`~JumpReLUSAE.lr_multiplier`) and the L0 reached
    against the target, with the ``units`` θ learned in and the ``input_scale`` they used.

    The target-L0 term reaches the SAE only through θ (the step function's pseudo-derivative has no
    ``pre`` part), so when θ's travel is small next to ``threshold_init`` the term cannot pull L0 back
    to its target once the encoder's own updates move the pre-activations."""
    travel = float(travel) * sae.lr_multiplier("threshold")
    theta_F = sae.threshold.detach().float()
    init = float(sae.cfg.threshold_init or 0.0)
    moved_F = (theta_F - init).abs()
    return {"target_l0": float(sae.cfg.target_l0 or float("nan")), "l0": float(l0), "threshold_init": init,
            "threshold_median": float(theta_F.median()), "threshold_moved_median": float(moved_F.median()),
            "threshold_moved_max": float(moved_F.max()), "adam_travel_bound": float(travel),
            "travel_over_init": float(travel / init) if init > 0 else float("inf"),
            "units": sae.cfg.units, "input_scale": sae.cfg.input_scale}

