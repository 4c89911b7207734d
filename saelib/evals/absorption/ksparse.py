"""k-sparse probing (SAEBench's ``train_k_sparse_probes``): latent ranking, k-sparse probes, split features."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as Fn
from torch import Tensor

from .config import AbsorptionConfig
from .latents import SparseLatents
from .probes import _pos_weight, f1_scores


def _activation_scale(lat: SparseLatents, cfg: AbsorptionConfig) -> float:
    """1.0 (SAEBench: raw activations), or with ``ksparse_normalize`` the mean non-zero magnitude."""
    if not cfg.ksparse_normalize:
        return 1.0
    nz = lat.val_NM[lat.val_NM != 0]
    return float(nz.abs().mean()) if nz.numel() else 1.0


def _dataloader_permutation(n: int) -> Tensor:
    """The order in which ``DataLoader(..., shuffle=True)`` visits ``n`` samples in one epoch,
    drawing from torch's global RNG as it does: one draw for the iterator's base seed (unused
    without workers), one that seeds the ``RandomSampler``'s generator."""
    torch.empty((), dtype=torch.int64).random_()
    seed = int(torch.empty((), dtype=torch.int64).random_().item())
    gen = torch.Generator()
    gen.manual_seed(seed)
    return torch.randperm(n, generator=gen)


def rank_latents(lat: SparseLatents, y_N: Tensor, cfg: AbsorptionConfig, n_classes: int = 26) -> Tensor:
    """L1-regularised one-vs-rest logistic probe on all latents; returns its weights ``(L, F)``.

    SAEBench's ``train_k_sparse_probes`` ranking probe (``train_sparse_multi_probe``): a linear
    layer on the **raw** SAE activations with PyTorch's default ``nn.Linear`` initialisation (drawn
    after ``torch.manual_seed(cfg.seed)``), BCE with pos_weight = neg/pos plus
    ``ksparse_l1_decay × mean_L Σ_F |w|``, Adam (weight decay 1e-6) with an exponentially decaying
    learning rate, minibatches in ``DataLoader(shuffle=True)`` order. The global RNG is restored after.
    Named alternative ``ksparse_normalize=True`` (this repo's first ranking): activations divided by
    their mean non-zero magnitude, zero init (ranking independent of the activation scale).
    """
    scale = _activation_scale(lat, cfg)
    val = lat.val_NM / scale
    Y = Fn.one_hot(y_N.long(), n_classes).float()
    pw = _pos_weight(Y)
    F = lat.d_sae
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        init = torch.nn.Linear(F, n_classes)
        w0_LF, b0_L = init.weight.detach(), init.bias.detach()
        if cfg.ksparse_normalize:
            w0_LF, b0_L = torch.zeros_like(w0_LF), torch.zeros_like(b0_L)
        # sparse rows: weight is (F + 1, L) with a zero padding row for embedding_bag
        weight = torch.cat([w0_LF.T, torch.zeros(1, n_classes)]).contiguous().requires_grad_(True)
        bias = b0_L.clone().requires_grad_(True)
        opt = torch.optim.Adam([weight, bias], lr=cfg.ksparse_lr, weight_decay=1e-6)
        gamma = math.exp(math.log(cfg.ksparse_end_lr / cfg.ksparse_lr) / cfg.ksparse_epochs)
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma)
        with torch.enable_grad():
            for _ in range(cfg.ksparse_epochs):
                perm = _dataloader_permutation(lat.n)
                for s in range(0, lat.n, cfg.ksparse_batch_size):
                    b = perm[s : s + cfg.ksparse_batch_size]
                    logits = Fn.embedding_bag(lat.idx_NM[b], weight, per_sample_weights=val[b], mode="sum", padding_idx=F) + bias
                    loss = Fn.binary_cross_entropy_with_logits(logits, Y[b], pos_weight=pw)
                    loss = loss + cfg.ksparse_l1_decay * weight[:F].abs().sum(0).mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                sched.step()
    return weight.detach()[:F].T.contiguous()


def fit_logistic_batched(X_LNK: Tensor, Y_LN: Tensor, *, C: float = 1.0, max_iter: int = 100) -> tuple[Tensor, Tensor]:
    """L independent binary logistic regressions with class-balanced sample weights (sklearn's
    ``LogisticRegression(C=C, class_weight="balanced")`` objective), solved together by L-BFGS.

    Returns weights ``(L, K)`` and biases ``(L,)``.
    """
    L, N, K = X_LNK.shape
    X_LNK = X_LNK.double()  # float64: at raw activation scales float32 stalls short of the optimum
    Yf = Y_LN.double()
    n_pos = Yf.sum(1, keepdim=True)
    w_pos = N / (2 * n_pos.clamp_min(1))
    w_neg = N / (2 * (N - n_pos).clamp_min(1))
    sw = torch.where(Y_LN.bool(), w_pos, w_neg)
    W = torch.zeros(L, K, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(L, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        logits = torch.einsum("lnk,lk->ln", X_LNK, W) + b[:, None]
        loss = (sw * Fn.binary_cross_entropy_with_logits(logits, Yf, reduction="none")).sum() / N
        loss = loss + 0.5 * (W * W).sum() / (C * N)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return W.detach().float(), b.detach().float()


@dataclass
class SplitFeatures:
    """Per-letter k-sparse probing result."""

    ranked_LK: Tensor
    """The ``max_k`` best latents per letter by the ranking probe (best first)."""
    f1_LK: Tensor
    """Test F1 of the k-sparse probe for k = 1..max_k."""
    k_L: Tensor
    """Chosen k per letter (number of split features)."""
    weights: list[Tensor]
    """``weights[k-1]``: (L, k) weights of the k-sparse probes."""
    biases: list[Tensor]
    """``biases[k-1]``: (L,) biases of the k-sparse probes."""
    scale: float
    """Activations were divided by this before the k-sparse probes (1.0 unless ``ksparse_normalize``)."""

    @property
    def split_feats(self) -> list[list[int]]:
        """The chosen latents of each letter."""
        return [self.ranked_LK[l, : int(self.k_L[l])].tolist() for l in range(self.ranked_LK.shape[0])]

    def scores(self, lat: SparseLatents) -> Tensor:
        """Score ``(N, L)`` of each letter's k-sparse probe at its chosen k."""
        X_LNK = lat.columns(self.ranked_LK) / self.scale
        out = torch.empty(lat.n, X_LNK.shape[0])
        for l in range(X_LNK.shape[0]):
            k = int(self.k_L[l])
            out[:, l] = X_LNK[l, :, :k] @ self.weights[k - 1][l] + self.biases[k - 1][l]
        return out


def choose_k(f1_K: list[float] | Tensor, threshold: float) -> int:
    """SAEBench's rule: accept k = 1, then k+1 while its F1 beats the best so far by > ``threshold``."""
    best, chosen = -math.inf, 0
    for k, f1 in enumerate([float(v) for v in f1_K], start=1):
        if f1 > best + threshold:
            best, chosen = f1, k
        else:
            break
    return chosen


def select_split_features(lat_train: SparseLatents, y_train_N: Tensor, lat_test: SparseLatents, y_test_N: Tensor,
                          cfg: AbsorptionConfig, *, ranking_LF: Tensor | None = None, n_classes: int = 26) -> SplitFeatures:
    """k-sparse probing: rank latents per letter, fit k-sparse probes on train, F1 on test, pick k.

    As SAEBench's ``train_k_sparse_probes`` + ``add_feature_splits_to_metrics_df``: the k-sparse
    probes are class-balanced L2 logistic regressions (sklearn's objective, C = ``ksparse_C``) on the
    raw activations of each letter's top-k ranked latents (``ksparse_normalize``: divided by the
    same scale as the ranking)."""
    if ranking_LF is None:
        ranking_LF = rank_latents(lat_train, y_train_N, cfg, n_classes)
    K = min(cfg.max_k, lat_train.d_sae)
    ranked_LK = ranking_LF.topk(K, dim=1).indices
    scale = _activation_scale(lat_train, cfg)
    Xtr = lat_train.columns(ranked_LK) / scale
    Xte = lat_test.columns(ranked_LK) / scale
    Ytr = Fn.one_hot(y_train_N.long(), n_classes).T.contiguous()
    Yte = Fn.one_hot(y_test_N.long(), n_classes).T.contiguous()
    f1s, weights, biases = [], [], []
    for k in range(1, K + 1):
        w, b = fit_logistic_batched(Xtr[:, :, :k], Ytr, C=cfg.ksparse_C, max_iter=cfg.ksparse_max_iter)
        s_LN = torch.einsum("lnk,lk->ln", Xte[:, :, :k], w) + b[:, None]
        f1, _, _ = f1_scores((s_LN > 0).T, Yte.T)
        f1s.append(f1)
        weights.append(w)
        biases.append(b)
    f1_LK = torch.stack(f1s, dim=1)
    k_L = torch.tensor([choose_k(f1_LK[l], cfg.f1_jump_threshold) for l in range(n_classes)])
    return SplitFeatures(ranked_LK=ranked_LK, f1_LK=f1_LK, k_L=k_L, weights=weights, biases=biases, scale=scale)
