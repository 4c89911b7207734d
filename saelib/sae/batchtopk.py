"""BatchTopK SAE (Bussmann et al. 2024): the top ``k·B`` activations over the whole batch.

Training keeps the ``k·B`` largest ReLU pre-activations of the batch (so ``k`` active latents per
token on average) and tracks a scalar inference threshold by an exponential moving average of the
smallest kept activation. In eval mode ``f = ReLU(pre)·1[pre > threshold]``, which is why a saved
BatchTopK SAE is a SAELens ``jumprelu`` SAE with a constant threshold vector.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import SAEOutput
from .topk import TopKConfig, TopKSAE, auxk_loss


@dataclass
class BatchTopKConfig(TopKConfig):
    """BatchTopK SAE: ``k`` is the average number of active latents per token (``backward_impl``
    is unused: the batch-level code has no fixed k per token, so BatchTopK decodes densely)."""

    threshold_ema: float = 0.01
    """Weight of each batch's smallest kept activation in the threshold's moving average."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < float(self.threshold_ema) <= 1.0:
            raise ValueError(f"threshold_ema must be in (0, 1], got {self.threshold_ema}")


class BatchTopKSAE(TopKSAE):
    """BatchTopK in training mode, JumpReLU with a learned-by-EMA scalar threshold in eval mode."""

    arch = "batchtopk"
    config_cls = BatchTopKConfig
    saelens_architecture = "jumprelu"
    cfg: BatchTopKConfig

    def __init__(self, cfg: BatchTopKConfig):
        super().__init__(cfg)
        self.register_buffer("threshold", torch.zeros((), dtype=self.W_enc.dtype))

    def _encoder_latent_major(self) -> bool:
        return False  # dense backward: the encoder gradient comes out (d_in, d_sae)-major

    def _latents(self, pre_BF: Tensor) -> Tensor:
        if self.training:
            act_BF = pre_BF.relu()
            n_keep = min(int(self.cfg.k) * act_BF.shape[0], act_BF.numel())
            with torch.no_grad():
                _, flat_idx_N = act_BF.detach().flatten().topk(n_keep, sorted=False)
            keep_BF = torch.zeros(act_BF.numel(), dtype=torch.bool, device=act_BF.device).index_put_(
                (flat_idx_N,), torch.tensor(True, device=act_BF.device))
            return act_BF * keep_BF.view_as(act_BF)
        thr = self.threshold.to(pre_BF.dtype)
        return pre_BF.relu() * (pre_BF > thr)

    @torch.no_grad()
    def _update_threshold(self, f_BF: Tensor) -> None:
        pos = f_BF[f_BF > 0]
        if pos.numel() == 0:
            return
        r = float(self.cfg.threshold_ema)
        self.threshold.mul_(1.0 - r).add_(r * pos.min().to(self.threshold.dtype))

    def encode(self, x_BD: Tensor) -> Tensor:
        """Batch top-k latents in training mode, thresholded latents in eval mode."""
        x = self._check_input(x_BD)
        shape = x.shape[:-1]
        f_BF = self._latents(self._pre(x.reshape(-1, self.cfg.d_in)))
        return f_BF.reshape(*shape, self.cfg.d_sae)

    def forward(self, x_BD: Tensor, *, step: int | None = None, dead_mask_F: Tensor | None = None,
                dense_latents: bool = True) -> SAEOutput:
        """Losses ``{"mse", "auxk", "loss"}``; in training mode also updates the threshold EMA."""
        x_BD = self._check_2d(x_BD)
        pre_BF = self._pre(x_BD)
        f_BF = self._latents(pre_BF)
        if self.training:
            self._update_threshold(f_BF.detach())
        x_hat_BD = self.decode(f_BF)
        mse = self.mse_loss(x_hat_BD, x_BD)
        auxk = auxk_loss(self, pre_BF, x_BD, x_hat_BD, dead_mask_F, self.cfg.resolved_aux_k, self.cfg.aux_normalize)
        losses = {"mse": mse, "auxk": auxk, "loss": mse + self.cfg.aux_coef * auxk}
        return SAEOutput(x_hat_BD, f_BF, None, None, losses)

    def _saelens_extra_config(self) -> dict:
        return {}

    def saelens_state_dict(self) -> dict[str, Tensor]:
        tensors = super().saelens_state_dict()
        tensors["threshold"] = tensors.pop("threshold").expand(self.cfg.d_sae).contiguous()
        return tensors

    def load_saelens_state_dict(self, tensors: dict[str, Tensor]) -> None:
        tensors = dict(tensors)
        thr_F = tensors.pop("threshold")
        if thr_F.ndim != 1 or not torch.equal(thr_F, thr_F[:1].expand_as(thr_F)):
            raise ValueError("a BatchTopK SAE needs one threshold shared by all latents")
        tensors["threshold"] = thr_F[0].clone()
        super().load_saelens_state_dict(tensors)
