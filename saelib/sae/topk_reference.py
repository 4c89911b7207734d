"""The TopK SAE and its AuxK loss as the equations read (Gao et al. 2024; docs/spec/methods.md).

Readable float64 reference of :class:`saelib.sae.topk.TopKSAE` - whose fast path hides these lines
under custom autograd Functions - and the oracle its tests compare values and gradients against:

    pre = (x − b_dec) W_enc + b_enc
    f   = TopK_k(ReLU(pre))                      (the k largest entries kept, the rest 0)
    x̂   = f W_dec + b_dec
    mse = mean_b ‖x_b − x̂_b‖²                    (summed over d)
    ê   = TopK_{k_aux}(ReLU(pre) restricted to dead latents) W_dec,   e = stopgrad(x − x̂)
    AuxK = mean_b ‖e_b − ê_b‖² / mean_b ‖e_b − ē‖²
    loss = mse + aux_coef · AuxK
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["TopKReference", "topk_encode", "topk_decode", "auxk", "topk_reference"]


def topk_encode(x_BD: Tensor, W_enc_DF: Tensor, b_enc_F: Tensor, b_dec_D: Tensor, k: int) -> Tensor:
    """``f = TopK_k(ReLU((x − b_dec) W_enc + b_enc))`` as a dense (B, F) tensor."""
    pre_BF = (x_BD - b_dec_D) @ W_enc_DF + b_enc_F
    val_BK, idx_BK = pre_BF.relu().topk(k, dim=1)
    return torch.zeros_like(pre_BF).scatter(1, idx_BK, val_BK)


def topk_decode(f_BF: Tensor, W_dec_FD: Tensor, b_dec_D: Tensor) -> Tensor:
    """``x̂ = f W_dec + b_dec``."""
    return f_BF @ W_dec_FD + b_dec_D


def auxk(pre_BF: Tensor, x_BD: Tensor, x_hat_BD: Tensor, W_dec_FD: Tensor, dead_F: Tensor, k_aux: int,
         normalize: bool = True) -> Tensor:
    """AuxK: reconstruct the detached residual from the ``k_aux`` largest ReLU pre-activations among the
    dead latents (no bias); divided by the residual's variance when ``normalize``. 0 when none is dead."""
    if dead_F is None or not bool(dead_F.any()):
        return pre_BF.new_zeros(())
    k_aux = min(k_aux, int(dead_F.sum()))
    masked_BF = torch.where(dead_F[None], pre_BF, torch.tensor(-math.inf, dtype=pre_BF.dtype))
    val_BK, idx_BK = masked_BF.topk(k_aux, dim=1)
    e_hat_BD = torch.zeros_like(pre_BF).scatter(1, idx_BK, val_BK.relu()) @ W_dec_FD
    e_BD = (x_BD - x_hat_BD).detach()
    sse = (e_hat_BD - e_BD).pow(2).sum(1).mean()
    return sse / (e_BD - e_BD.mean(0)).pow(2).sum(1).mean() if normalize else sse


class TopKReference(NamedTuple):
    """What :func:`topk_reference` returns (float64)."""

    f_BF: Tensor
    """Latents."""
    x_hat_BD: Tensor
    """Reconstruction."""
    mse: Tensor
    """Mean over tokens of the squared error summed over d."""
    auxk: Tensor
    """AuxK term (0 without dead latents)."""
    loss: Tensor
    """mse + aux_coef · auxk."""


def topk_reference(params: dict[str, Tensor], x_BD: Tensor, k: int, *, dead_F: Tensor | None = None,
                   aux_k: int = 1, aux_coef: float = 1 / 32, normalize: bool = True) -> TopKReference:
    """The whole forward and loss from ``params`` (``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``), differentiable
    in them. Pass float64 leaves to get reference gradients."""
    W_enc, b_enc, W_dec, b_dec = params["W_enc"], params["b_enc"], params["W_dec"], params["b_dec"]
    x = x_BD.to(W_enc.dtype)
    f_BF = topk_encode(x, W_enc, b_enc, b_dec, k)
    x_hat_BD = topk_decode(f_BF, W_dec, b_dec)
    mse = (x_hat_BD - x).pow(2).sum(1).mean()
    pre_BF = (x - b_dec) @ W_enc + b_enc
    aux = auxk(pre_BF, x, x_hat_BD, W_dec, dead_F, aux_k, normalize) if dead_F is not None else mse.new_zeros(())
    return TopKReference(f_BF, x_hat_BD, mse, aux, mse + aux_coef * aux)
