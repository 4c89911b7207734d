"""ReLU SAE with an L1 sparsity penalty: the papers' "standard" baseline.

``f = ReLU(pre)``; loss ``= mse + u·λ·w(t)·L1`` with ``L1 = mean_b Σ_i f_bi`` and the sparsity
warmup ``w(t) = min(1, t / l1_warmup_steps)``. Decoder rows are kept unit-norm by the trainer, so
this equals the decoder-norm-weighted L1 of the April-2024 recipe.

Units (``units``, :mod:`saelib.sae.units`). ``"raw"`` (default: the literal rows, λ as written on the raw
activations) has ``u = 1`` and one learning rate. ``"normalized"`` is SAEBench's ReLU trainer, which divides
the inputs by ``s = sqrt(mean_b ‖x_b‖²)``: the latents of ``x/s`` are ``f/s``, so the L1 term is weighted by
``u = s`` (then the loss is ``s²`` times the normalised one) and the biases learn at ``s·lr``. Without
that, the encoder bias (about ``s`` times too slow) cannot keep up with the L1 term on Gemma-3-270M's
residuals (``s`` ≈ 5,700), and L0 is still falling when the run ends.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

import torch

from .base import BaseSAE, SAEOutput
from .units import NormalizedUnitsMixin, UnitsConfig


@dataclass
class ReLUConfig(UnitsConfig):
    """ReLU + L1 SAE."""

    units: str = "raw"
    """``"raw"``: λ as given on the raw activations; ``"normalized"``: λ in SAEBench's units, the biases
    at ``s·lr`` (module docstring)."""
    l1_coef: float = 0.04
    """λ, the L1 coefficient after warmup (0.04 in the original runs), in the units ``units`` says."""
    l1_warmup_steps: int = 2000
    """Steps over which λ ramps linearly from 0 (dictionary_learning's default sparsity warmup)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if float(self.l1_coef) < 0 or int(self.l1_warmup_steps) < 0:
            raise ValueError(f"l1_coef and l1_warmup_steps must be >= 0, got {self.l1_coef}, {self.l1_warmup_steps}")


def warmup_scale(step: int | None, warmup_steps: int) -> float:
    """``min(1, step / warmup_steps)``; 1 when ``step`` is None (inference) or there is no warmup."""
    if step is None or warmup_steps <= 0:
        return 1.0
    return min(1.0, max(0, step) / warmup_steps)


class ReLUSAE(NormalizedUnitsMixin, BaseSAE):
    """Standard ReLU SAE (SAELens architecture ``standard``)."""

    arch = "relu"
    config_cls = ReLUConfig
    saelens_architecture = "standard"
    cfg: ReLUConfig

    @torch.no_grad()
    def init_from_batch_(self, x_BD: Tensor) -> None:
        """``b_dec`` = geometric median; ``input_scale`` = ``sqrt(mean ‖x‖²)`` of the batch if unset."""
        super().init_from_batch_(x_BD)
        self.init_input_scale_(x_BD)

    def encode(self, x_BD: Tensor) -> Tensor:
        """``ReLU(pre)``; any leading dims."""
        x = self._check_input(x_BD)
        shape = x.shape[:-1]
        return self.pre_activations(x.reshape(-1, self.cfg.d_in)).relu().reshape(*shape, self.cfg.d_sae)

    def forward(self, x_BD: Tensor, *, step: int | None = None, dead_mask_F: Tensor | None = None,
                dense_latents: bool = True) -> SAEOutput:
        """Losses ``{"mse", "l1", "l1_coef", "loss"}`` (``l1_coef`` = the warmed-up λ at this step)."""
        x_BD = self._check_input(x_BD)
        if x_BD.ndim != 2:
            raise ValueError(f"forward expects a (batch, {self.cfg.d_in}) tensor, got {tuple(x_BD.shape)}")
        f_BF = self.encode(x_BD)
        x_hat_BD = self.decode(f_BF)
        mse = self.mse_loss(x_hat_BD, x_BD)
        l1 = f_BF.float().sum(-1).mean()
        coef = self.cfg.l1_coef * warmup_scale(step, self.cfg.l1_warmup_steps) * self.unit_scale()  # u
        losses = {"mse": mse, "l1": l1, "l1_coef": mse.new_tensor(coef), "loss": mse + coef * l1}
        return SAEOutput(x_hat_BD, f_BF, None, None, losses)
