"""SAE activations on the cached residuals, encoded once and kept sparse."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as Fn
from torch import Tensor


@dataclass
class SparseLatents:
    """SAE activations as padded rows of (index, value): ``idx_NM`` uses ``d_sae`` for padding."""

    idx_NM: Tensor
    """Active latent ids per row (int64), padded with ``d_sae``."""
    val_NM: Tensor
    """Their activations (float32), 0 at padding."""
    d_sae: int
    """Number of latents F."""

    @property
    def n(self) -> int:
        return int(self.idx_NM.shape[0])

    def dense(self, rows: Tensor | np.ndarray | None = None) -> Tensor:
        """Dense ``f_NF`` for ``rows`` (all rows if None)."""
        idx, val = (self.idx_NM, self.val_NM) if rows is None else (self.idx_NM[rows], self.val_NM[rows])
        out = torch.zeros(idx.shape[0], self.d_sae + 1, dtype=torch.float32)
        out.scatter_(1, idx, val)
        return out[:, : self.d_sae]

    def columns(self, ids_LK: Tensor) -> Tensor:
        """Activations of a few latents per class: ``(L, N, K)`` with ``[l, n, j] = f[n, ids_LK[l, j]]``."""
        L, K = ids_LK.shape
        out = torch.zeros(L, self.n, K, dtype=torch.float32)
        for l in range(L):
            lookup = torch.full((self.d_sae + 1,), K, dtype=torch.int64)
            lookup[ids_LK[l]] = torch.arange(K)
            pos_NM = lookup[self.idx_NM]
            buf = torch.zeros(self.n, K + 1)
            buf.scatter_add_(1, pos_NM, self.val_NM)
            out[l] = buf[:, :K]
        return out


def _sae_dims(sae) -> tuple[int, int]:
    W = sae.W_dec
    if W.ndim != 2:
        raise ValueError(f"sae.W_dec must be (d_sae, d_in), got shape {tuple(W.shape)}")
    return int(W.shape[0]), int(W.shape[1])


@torch.inference_mode()
def encode_latents(sae, x_ND: Tensor, *, batch_size: int = 2048) -> SparseLatents:
    """Encode residuals once with ``sae.encode`` and keep only the non-zero activations."""
    F, D = _sae_dims(sae)
    if x_ND.ndim != 2 or x_ND.shape[1] != D:
        raise ValueError(f"residuals are {tuple(x_ND.shape)} but the SAE reads d_in={D}")
    device = sae.W_dec.device
    idx_chunks, val_chunks = [], []
    for s in range(0, x_ND.shape[0], batch_size):
        f_BF = sae.encode(x_ND[s : s + batch_size].to(device).float()).float().cpu()
        if f_BF.shape != (min(batch_size, x_ND.shape[0] - s), F):
            raise ValueError(f"sae.encode returned shape {tuple(f_BF.shape)}, expected (batch, {F})")
        if not torch.isfinite(f_BF).all():
            raise ValueError("sae.encode returned NaN or inf")
        m = max(1, int((f_BF != 0).sum(1).max()))
        top = f_BF.abs().topk(m, dim=1).indices
        val = f_BF.gather(1, top)
        top = torch.where(val != 0, top, torch.full_like(top, F))
        idx_chunks.append(top)
        val_chunks.append(val)
    M = max(c.shape[1] for c in idx_chunks)
    idx = torch.cat([Fn.pad(c, (0, M - c.shape[1]), value=F) for c in idx_chunks])
    val = torch.cat([Fn.pad(c, (0, M - c.shape[1]), value=0.0) for c in val_chunks])
    return SparseLatents(idx_NM=idx, val_NM=val, d_sae=F)
