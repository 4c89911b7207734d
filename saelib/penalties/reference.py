"""The co-activation penalties exactly as the spec writes them (docs/spec/methods.md), dense F x F.

Readable, slow (F x F float64 matrices) and the oracle the fast :mod:`saelib.penalties.sparse` is
tested against. Notation: B tokens, F latents; an active set ``(idx_BK, val_BK)`` whose index ``F``
marks a padding slot (value 0).

    M_bi = 1[i active in token b]          n_ij = sum_b M_bi M_bj   (n_ii = n_i)
    D_ij = (1/B) sum_b f_bi f_bj           cos_ij = <W_dec_i, W_dec_j> / (|W_dec_i| |W_dec_j|)
    004:  w_ij = n_ij / min(n_i, n_j)
    000:  c_ij = P(f_i | f_j) / (k/F) = (F/k) n_ij / n_j   (as described; as run: / n_i)
          S_ij = max(thr(c_ij), thr(c_ji)),  thr(c) = c 1[c > tau]   (c through an EMA as described)
    P = norm * sum_{i,j} W_ij T_ij^2,  W = w or S,  T = D or cos,  norm = 1/F^2 (as run) or 1 (as described)

Pairs that do not co-fire in the batch (n_ij = 0) contribute nothing (w = S = 0 there; for the EMA
and the decoder target the weight is restricted to co-firing pairs, as in the fast implementation).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "active_mask", "dense_latents", "cofire_counts", "activation_products", "decoder_cosines",
    "orthogonality_weights", "competition_coefficients", "threshold", "max_symmetrise", "ema_step",
    "penalty_sum", "reference_penalty", "reference_penalty_terms", "ReferenceTerms",
]


def active_mask(idx_BK: Tensor, F: int) -> Tensor:
    """``M_BF``: 1 where latent i is in token b's active set (padding index F dropped), float64."""
    B = idx_BK.shape[0]
    return torch.zeros(B, F + 1, dtype=torch.float64, device=idx_BK.device).scatter(1, idx_BK, 1.0)[:, :F]


def dense_latents(idx_BK: Tensor, val_BK: Tensor, F: int) -> Tensor:
    """``f_BF`` from the active set (differentiable in ``val_BK``), float64."""
    B = idx_BK.shape[0]
    zeros = torch.zeros(B, F + 1, dtype=torch.float64, device=idx_BK.device)
    return zeros.scatter(1, idx_BK, val_BK.double())[:, :F]


def cofire_counts(M_BF: Tensor) -> Tensor:
    """``n_ij = sum_b M_bi M_bj``; the diagonal is ``n_i``."""
    return M_BF.T @ M_BF


def activation_products(f_BF: Tensor) -> Tensor:
    """``D_ij = (1/B) sum_b f_bi f_bj``: the batch-mean activation product (what the runs used as <f_i, f_j>)."""
    return f_BF.T @ f_BF / f_BF.shape[0]


def decoder_cosines(W_dec_FD: Tensor) -> Tensor:
    """``cos(W_dec_i, W_dec_j)``: the prose's alternative target (decoder-direction similarity)."""
    W = torch.nn.functional.normalize(W_dec_FD.double(), dim=1)
    return W @ W.T


def _safe_div(a: Tensor, b: Tensor) -> Tensor:
    return torch.where(b > 0, a / b.clamp_min(1e-300), torch.zeros((), dtype=a.dtype, device=a.device))


def orthogonality_weights(n_FF: Tensor) -> Tensor:
    """Paper 004: ``w_ij = n_ij / min(n_i, n_j)`` in [0, 1] (0 where a latent never fired)."""
    n_F = n_FF.diag()
    return _safe_div(n_FF, torch.minimum(n_F[:, None], n_F[None, :]))


def competition_coefficients(n_FF: Tensor, k: int, *, condition_on: str = "j") -> Tensor:
    """Paper 000: ``c_ij = P(f_i | f_j) / (k/F) = (F/k) n_ij / n_j`` (``condition_on="j"``, as described);
    the original code divided by ``n_i`` instead (``condition_on="i"``, as run)."""
    F = n_FF.shape[0]
    n_F = n_FF.diag()
    denom = n_F[None, :] if condition_on == "j" else n_F[:, None]
    return _safe_div(n_FF, denom.expand_as(n_FF)) * (F / k)


def threshold(c: Tensor, tau: float) -> Tensor:
    """``c 1[c > tau]``: coefficients at or below tau are zeroed."""
    return torch.where(c > tau, c, torch.zeros((), dtype=c.dtype, device=c.device))


def max_symmetrise(c: Tensor) -> Tensor:
    """``S_ij = max(c_ij, c_ji)``."""
    return torch.maximum(c, c.T)


def ema_step(prev: Tensor | None, c: Tensor, decay: float) -> Tensor:
    """``c_hat <- decay * c_hat + (1 - decay) * c`` (``prev=None``: a zero state)."""
    prev = torch.zeros_like(c) if prev is None else prev.to(c.dtype)
    return decay * prev + (1.0 - decay) * c


def penalty_sum(W_FF: Tensor, T_FF: Tensor, *, normalise: str = "mean", include_diagonal: bool = True) -> Tensor:
    """``P = norm * sum_{i,j} W_ij T_ij^2`` with ``norm = 1/F^2`` ("mean", as run) or 1 ("sum", as described);
    ``include_diagonal=False`` drops the ``i = j`` terms."""
    terms = W_FF * T_FF**2
    if not include_diagonal:
        terms = terms - torch.diag(terms.diag())
    F = W_FF.shape[0]
    return terms.sum() * (1.0 / F**2 if normalise == "mean" else 1.0)


class ReferenceTerms(NamedTuple):
    """Everything :func:`reference_penalty_terms` computed (float64)."""

    value: Tensor
    """P."""
    ema: Tensor | None
    """The updated EMA state of c (as described, ``ema_prev`` given), else None."""
    weights: Tensor
    """W_ij (w or S)."""
    counts: Tensor
    """n_ij."""
    target: Tensor
    """T_ij (D, or cos restricted to co-firing pairs)."""


def reference_penalty_terms(idx_BK: Tensor, val_BK: Tensor, F: int, *, kind: str, k: int, tau: float = 0.6,
                            normalise: str = "mean", include_diagonal: bool = True, target: str = "activations",
                            W_dec_FD: Tensor | None = None, ema_prev: Tensor | None = None,
                            decay: float = 0.99) -> ReferenceTerms:
    """The penalty of one batch by the equations above. ``kind``: "orthogonality" (W = w) or
    "competition" (W = S; per batch with the as-run ``/ n_i`` unless ``ema_prev`` is given, then the
    as-described ``P(i|j)`` coefficients through one EMA step of ``decay``)."""
    M = active_mask(idx_BK, F)
    n = cofire_counts(M)
    ema = None
    if kind == "orthogonality":
        W = orthogonality_weights(n)
    elif kind == "competition" and ema_prev is None:
        W = max_symmetrise(threshold(competition_coefficients(n, k, condition_on="i"), tau))
    elif kind == "competition":
        ema = ema_step(ema_prev, competition_coefficients(n, k, condition_on="j"), decay)
        W = max_symmetrise(threshold(ema, tau)) * (n > 0)
    else:
        raise ValueError(f"kind must be 'orthogonality' or 'competition', got {kind!r}")
    if target == "activations":
        T = activation_products(dense_latents(idx_BK, val_BK, F))
    elif target == "decoder":
        if W_dec_FD is None:
            raise ValueError("target='decoder' needs W_dec_FD")
        T = decoder_cosines(W_dec_FD) * (n > 0)
    else:
        raise ValueError(f"target must be 'activations' or 'decoder', got {target!r}")
    value = penalty_sum(W, T, normalise=normalise, include_diagonal=include_diagonal)
    return ReferenceTerms(value, ema, W, n, T)


def reference_penalty(idx_BK: Tensor, val_BK: Tensor, F: int, **kw) -> Tensor:
    """P only (differentiable in ``val_BK`` and ``W_dec_FD``); see :func:`reference_penalty_terms`."""
    return reference_penalty_terms(idx_BK, val_BK, F, **kw).value
