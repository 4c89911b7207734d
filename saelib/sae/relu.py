"""ReLU SAE with an L1 sparsity penalty: the papers' "standard" baseline.

``f = ReLU(pre)``; loss ``= mse + λ·s(t)·L1`` with ``L1 = mean_b Σ_i f_bi`` and the sparsity
warmup ``s(t) = min(1, t / l1_warmup_steps)``. Decoder rows are kept unit-norm by the trainer, so
this equals the decoder-norm-weighted L1 of the April-2024 recipe.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import BaseSAE, SAEConfig, SAEOutput


@dataclass
class ReLUConfig(SAEConfig):
    """ReLU + L1 SAE."""

    l1_coef: float = 0.04
    """λ, the L1 coefficient after warmup (0.04 in the original runs)."""
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


class ReLUSAE(BaseSAE):
    """Standard ReLU SAE (SAELens architecture ``standard``)."""

    arch = "relu"
    config_cls = ReLUConfig
    saelens_architecture = "standard"
    cfg: ReLUConfig

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
        coef = self.cfg.l1_coef * warmup_scale(step, self.cfg.l1_warmup_steps)
        losses = {"mse": mse, "l1": l1, "l1_coef": mse.new_tensor(coef), "loss": mse + coef * l1}
        return SAEOutput(x_hat_BD, f_BF, None, None, losses)
