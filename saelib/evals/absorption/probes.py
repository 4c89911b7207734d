"""Ground-truth letter probes on the residual and their per-letter metrics."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as Fn
from torch import Tensor

from .config import LETTERS


@dataclass
class LetterProbes:
    """26 one-vs-rest linear probes on the raw residual: ``score = x · W[L] + b[L]``."""

    W_LD: Tensor
    """Probe weights in residual space (float32)."""
    b_L: Tensor
    """Probe biases."""

    def scores(self, x_ND: Tensor) -> Tensor:
        """Logits ``(N, 26)``; positive = the probe says "starts with L"."""
        return x_ND.float() @ self.W_LD.T + self.b_L

    @property
    def directions_LD(self) -> Tensor:
        """Unit-norm probe directions."""
        return self.W_LD / self.W_LD.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _pos_weight(Y_NL: Tensor) -> Tensor:
    pos = Y_NL.sum(0)
    return (Y_NL.shape[0] - pos) / pos.clamp_min(1.0)


def train_letter_probes(x_ND: Tensor, y_N: Tensor, *, l2: float = 1e-4, max_iter: int = 150, n_classes: int = 26) -> LetterProbes:
    """One-vs-rest logistic probes (BCE with pos_weight = neg/pos), full-batch L-BFGS.

    Trained on centred residuals divided by one global scale (the direction in residual space is
    unchanged); the returned weights and biases act on the raw residual.
    """
    if x_ND.ndim != 2 or y_N.ndim != 1 or x_ND.shape[0] != y_N.shape[0]:
        raise ValueError(f"need x (N, D) and y (N,), got {tuple(x_ND.shape)} and {tuple(y_N.shape)}")
    x = x_ND.float()
    if not torch.isfinite(x).all():
        raise ValueError("residuals contain NaN or inf")
    mu_D = x.mean(0)
    z = x - mu_D
    scale = float(z.norm(dim=1).mean()) / math.sqrt(x.shape[1]) or 1.0
    z = z / scale
    Y = Fn.one_hot(y_N.long(), n_classes).float()
    pw = _pos_weight(Y)
    W = torch.zeros(n_classes, x.shape[1], requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        logits = z @ W.T + b
        loss = Fn.binary_cross_entropy_with_logits(logits, Y, pos_weight=pw, reduction="none").mean(0).sum()
        loss = loss + 0.5 * l2 * (W * W).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    W_raw = W.detach() / scale
    b_raw = b.detach() - W_raw @ mu_D
    return LetterProbes(W_LD=W_raw, b_L=b_raw)


def f1_scores(pred_NL: Tensor, true_NL: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-column F1, precision, recall of boolean predictions (0 where undefined)."""
    pred, true = pred_NL.bool(), true_NL.bool()
    tp = (pred & true).sum(0).float()
    n_pred, n_true = pred.sum(0).float(), true.sum(0).float()
    precision = torch.where(n_pred > 0, tp / n_pred.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(n_true > 0, tp / n_true.clamp_min(1), torch.zeros_like(tp))
    f1 = torch.where(tp > 0, 2 * tp / (n_pred + n_true).clamp_min(1), torch.zeros_like(tp))
    return f1, precision, recall


def probe_metrics(scores_NL: Tensor, y_N: Tensor, y_train_N: Tensor | None = None) -> pd.DataFrame:
    """Per-letter test metrics of the probes (prediction = score > 0)."""
    true = Fn.one_hot(y_N.long(), scores_NL.shape[1]).bool()
    f1, precision, recall = f1_scores(scores_NL > 0, true)
    df = pd.DataFrame({
        "letter": list(LETTERS[: scores_NL.shape[1]]),
        "n_test": true.sum(0).numpy(),
        "probe_f1": f1.numpy(),
        "probe_precision": precision.numpy(),
        "probe_recall": recall.numpy(),
    })
    if y_train_N is not None:
        df.insert(1, "n_train", np.bincount(y_train_N.numpy(), minlength=scores_NL.shape[1]))
    return df
