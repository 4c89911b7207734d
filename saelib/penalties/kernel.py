"""Compiled CPU kernel for the O(B*K^2) pair pass of :mod:`saelib.penalties.sparse` (per-batch weights).

The torch block pass costs ~30-65 ns per instance ``(b, a, c)``: every scatter and gather is a separate
op over the whole block. Here one loop per latent ``i`` does all of it while ``i``'s pair row is hot:

1. over the tokens where ``i`` fires and their ``K`` partners ``j``: ``n_ij += 1`` and
   ``B D_ij += f_bi f_bj`` in a per-thread row buffer that packs ``[n_ij, B D_ij, 1/n_j, h_ij]`` per
   partner (one cache line per partner), listing each distinct partner once;
2. over the distinct partners only: the weight ``W_ij`` from ``n_i``, ``n_j``, ``n_ij``; the row's share
   of the penalty, ``sum_j W_ij (B D_ij)^2`` (the instance sum ``sum (W/n) (B D)^2`` collapsed per
   pair); and ``h_ij = W_ij B D_ij`` (``W_ij / n_ij`` for the decoder target), 0 at ``j = i`` (the
   diagonal is added by the caller);
3. only when a gradient (or the decoder's instance weights) is wanted, over the instances again: slot
   ``(b, a)``'s gradient ``sum_c h_ij f_bj`` (or ``Q[(b, a), c] = h_ij``);
4. over the listed partners: re-zero the row (their number is the ``pairs`` diagnostic).

The row buffers and per-slot sums are fp32, as in the torch pass; per-latent totals are float64.
Measured with ``benchmarks/penalty.py`` (B = 2048, d = 640, F = 5120, an idle 2-core AVX2 EPYC, both
threads): the penalty's forward + backward takes 12 ms at K = 28 and 83-86 ms at K = 89, against
68-103 ms and 525-579 ms for the torch pass (6-9x); pass 1 is most of it.
Latents are split into contiguous ranges of about equal instance counts, one per thread (numba
``prange``). Every output is per latent or per slot and each is written by one thread; the totals are
summed afterwards in latent order, so results do not depend on the thread count.
The kernel is compiled on first use (a few seconds) and cached in numba's cache folder: the user's
``NUMBA_CACHE_DIR``, else ``~/.cache/saelib-numba`` (the temp dir's ``saelib-numba`` where home is not
writable), never next to the sources.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def _default_cache_dir() -> str:
    """``~/.cache/saelib-numba``, or a folder under the temp dir where home is missing or read-only (numba
    refuses to define a cached function when its cache folder cannot be created)."""
    for base in (lambda: Path.home() / ".cache", lambda: Path(tempfile.gettempdir())):
        try:
            path = base() / "saelib-numba"
            path.mkdir(parents=True, exist_ok=True)
            if os.access(path, os.W_OK):
                return str(path)
        except (OSError, RuntimeError):  # RuntimeError: Path.home() without HOME or a passwd entry
            continue
    return str(Path(tempfile.gettempdir()) / "saelib-numba")


try:  # numba is a declared dependency; without it (or on a GPU) the torch block pass runs instead
    import numba
    from numba import njit, prange
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None
if numba is not None and not numba.config.CACHE_DIR:  # the user's NUMBA_CACHE_DIR wins; else not beside
    numba.config.CACHE_DIR = _default_cache_dir()  # the sources (inside a stage's dependency folder)


def available() -> bool:
    """Whether the compiled kernel can run (numba importable)."""
    return numba is not None


if numba is not None:

    @njit(cache=True)
    def _csr(idx_flat: np.ndarray, Fw: int, K: int):
        """Counting sort of the slots by latent (stable): ``order`` (slot ids), ``rows`` (their tokens)
        and ``ptr`` (Fw + 1 offsets)."""
        counts = np.zeros(Fw + 1, np.int64)
        for s in range(idx_flat.shape[0]):
            counts[idx_flat[s] + 1] += 1
        ptr = np.cumsum(counts)
        fill = ptr[:-1].copy()
        order = np.empty(idx_flat.shape[0], np.int32)  # int32: half the index traffic of the row loops
        rows = np.empty(idx_flat.shape[0], np.int32)
        for s in range(idx_flat.shape[0]):
            j = idx_flat[s]
            order[fill[j]] = s
            rows[fill[j]] = s // K
            fill[j] += 1
        return order, rows, ptr

    @njit(inline="always")
    def _scatter_row(idx_f, v_f, order, rows, lo, hi, K, row, touched):
        """Pass 1: ``n_ij += 1`` and ``B D_ij += f_bi f_bj`` over latent i's instances; lists each distinct
        partner j once in ``touched`` (branch-free: the slot is always written, the count moves on only
        for a new j) and returns their number."""
        m = 0
        for p in range(lo, hi):
            s = np.uint64(order[p])
            base = np.uint64(rows[p]) * np.uint64(K)
            vi = v_f[s]
            for c in range(K):
                q = base + np.uint64(c)
                j = np.uint64(idx_f[q])
                touched[m] = j
                m += row[j, 0] == np.float32(0.0)
                row[j, 0] += np.float32(1.0)
                row[j, 1] += vi * v_f[q]
        return m

    @njit(inline="always")
    def _clear_row(touched, m, row):
        """Re-zero the partners' counts and sums (only the ``m`` touched entries)."""
        for u in range(m):
            j = np.uint64(touched[u])
            row[j, 0] = np.float32(0.0)
            row[j, 1] = np.float32(0.0)
            row[j, 3] = np.float32(0.0)

    @njit(inline="always")
    def _row_buffer(rn):
        """Per-thread pair row: ``[n_ij, B D_ij, 1/n_j, W_ij x (B D_ij or 1/n_ij)]`` per partner j, packed
        so that one cache line serves every read of a partner."""
        row = np.zeros((rn.shape[0], 4), np.float32)
        for j in range(rn.shape[0]):
            row[j, 2] = rn[j]
        return row

    @njit(inline="always")
    def _pair_row(touched, m, row, i, rn_i, r, thr, scale):
        """Per distinct partner j of latent i: ``row[j, 3] = W_ij * scale`` (``scale``: ``B D_ij`` for the
        activation target, ``1 / n_ij`` for the decoder's instance weights; 0 for ``j = i``, the diagonal
        being handled elsewhere). Returns ``sum_j W_ij (B D_ij)^2``, the row's off-diagonal sum."""
        off = 0.0
        for u in range(m):
            j = np.uint64(touched[u])
            n = row[j, 0]
            wn = max(rn_i, row[j, 2])  # W_ij / n_ij = 1 / min(n_i, n_j) (orthogonality)
            # competition: (F/k) w_ij 1[(F/k) w_ij > tau] / n_ij (orthogonality: r = 1, thr = -1)
            wn = wn * r * np.float32((n * wn > thr) & (j != np.uint64(i)))
            bd = row[j, 1]
            off += np.float64(wn * n * bd * bd)
            row[j, 3] = wn * n * bd if scale else wn
        return off

    @njit(parallel=True, cache=True, boundscheck=False)
    def _pair_pass(idx, v, rn, order, rows, ptr, cuts, r, thr, mode, off_F, pairs_F, g, Q, dup_F):
        """Per latent: the off-diagonal sum (``off_F``), distinct partners (``pairs_F``) and a repeated-latent
        flag (``dup_F``); then per slot, by ``mode``: 0 nothing more, 1 the activation target's gradient
        ``g``, 2 the decoder target's instance weights ``Q[(b, a), c] = W_ij / n_ij`` (0 for c == a; pass
        ``v`` = 1, and ``off_F`` is then not the penalty's)."""
        K = idx.shape[1]
        idx_f = idx.ravel()
        v_f = v.ravel()
        for t in prange(cuts.shape[0] - 1):
            row = _row_buffer(rn)
            touched = np.empty(rn.shape[0], np.int32)
            for i in range(cuts[t], cuts[t + 1]):
                lo, hi = ptr[i], ptr[i + 1]
                if lo == hi:
                    continue
                m = _scatter_row(idx_f, v_f, order, rows, lo, hi, K, row, touched)
                dup_F[i] = row[np.uint64(i), 0] != np.float32(hi - lo)  # i twice in one token's set
                off_F[i] = _pair_row(touched, m, row, i, rn[i], r, thr, mode != 2)
                if mode != 0:  # pass 2, per slot (b, a); row[i, 3] = 0 drops c == a
                    for p in range(lo, hi):
                        s = np.uint64(order[p])
                        base = np.uint64(rows[p]) * np.uint64(K)
                        if mode == 1:  # sum_c W_ij (B D_ij) f_bj
                            gs = np.float32(0.0)
                            for c in range(K):
                                q = base + np.uint64(c)
                                gs += row[np.uint64(idx_f[q]), 3] * v_f[q]
                            g[s] = gs
                        else:
                            for c in range(K):
                                Q[s, c] = row[np.uint64(idx_f[base + np.uint64(c)]), 3]
                _clear_row(touched, m, row)
                pairs_F[i] = m


def _cuts(ptr: np.ndarray, F: int, parts: int) -> np.ndarray:
    """Latent range boundaries ``[0, ..., F]`` splitting the instances (slots * K) into ``parts`` near-equal
    shares (latent ``F``, the padding dummy, is never a row)."""
    per_latent = np.diff(ptr[: F + 1]).astype(np.float64)  # a latent's cost ~ n_i * K instances
    cum = np.cumsum(per_latent)
    if parts <= 1 or cum[-1] == 0:
        return np.array([0, F], np.int64)
    inner = np.searchsorted(cum, cum[-1] * np.arange(1, parts) / parts) + 1
    return np.unique(np.concatenate([[0], np.minimum(inner, F), [F]])).astype(np.int64)


def pair_pass(idx_BK: Tensor, val_BK: Tensor, F: int, *, padded: bool, kind: str, k: int, tau: float,
              want_grad: bool, want_q: bool, threads: int) -> tuple[float, float, Tensor | None, Tensor | None]:
    """The pair pass on CPU tensors: ``(off, inv_n, g_flat, Q)`` exactly as the torch block pass defines
    them (``off`` = sum over off-diagonal instances of ``(W/n) (B D)^2`` (activation target), ``inv_n`` =
    sum over all instances of ``1/n_ij``, i.e. the number of distinct co-firing pairs, the diagonal and
    padding pairs included, ``g_flat`` the unscaled gradient per slot, ``Q`` (B*K, K)
    the decoder target's instance weights). Each token's real latents must be distinct (a ValueError
    names any latent listed twice); only the padding index ``F`` may repeat."""
    if numba is None:
        raise RuntimeError("the compiled penalty kernel needs numba (pip install numba)")
    if idx_BK.device.type != "cpu":
        raise ValueError(f"the compiled penalty kernel runs on CPU tensors, got {idx_BK.device}")
    B, K = idx_BK.shape
    Fw = F + int(padded)
    if idx_BK.numel() and (int(idx_BK.min()) < 0 or int(idx_BK.max()) >= Fw):  # the loops skip bounds checks
        raise ValueError(f"idx_BK values must lie in [0, {Fw}), got [{int(idx_BK.min())}, {int(idx_BK.max())}]")
    idx = idx_BK.to(torch.int32).contiguous()
    want_grad = want_grad and not want_q
    v = val_BK.detach().to(torch.float32)
    if padded:  # padding slots carry no activation (then their pairs add nothing to the sum or gradient)
        v = v.masked_fill(idx == F, 0.0)
    v = v.contiguous().numpy()
    order, rows, ptr = _csr(idx.view(-1).numpy(), Fw, K)
    counts = np.diff(ptr).astype(np.float32)
    rn = np.where(counts > 0, 1.0 / np.maximum(counts, 1.0), 0.0).astype(np.float32)
    threads = max(1, int(threads))
    cuts = _cuts(ptr, F, threads)
    off_F = np.zeros(F, np.float64)
    pairs_F = np.zeros(F, np.int64)
    dup_F = np.zeros(F, np.bool_)
    g = np.zeros(B * K if want_grad else 0, np.float32)
    if kind not in ("orthogonality", "competition"):
        raise ValueError(f"kind must be 'orthogonality' or 'competition', got {kind!r}")
    comp = kind == "competition"
    r = np.float32(F / max(k, 1) if comp else 1.0)
    thr = np.float32(tau / (F / max(k, 1)) if comp else -1.0)
    mode = 2 if want_q else int(bool(want_grad))
    Q = np.zeros((B * K if want_q else 0, K), np.float32)
    vin = np.ones_like(v) if want_q else v  # the weights do not depend on the activations
    prev = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        _pair_pass(idx.numpy(), vin, rn, order, rows, ptr, cuts, r, thr, mode, off_F, pairs_F, g, Q, dup_F)
    finally:
        numba.set_num_threads(prev)
    if dup_F.any():
        bad = np.flatnonzero(dup_F)[:5].tolist()
        raise ValueError(f"idx_BK lists latent(s) {bad} twice in one token's active set: the penalty needs each "
                         f"token's real latents distinct (TopK indices, or ReLU's nonzero positions; only the "
                         f"padding index {F} may repeat)")
    Q_t = None
    if want_q:
        Q_t = torch.from_numpy(Q)
        if padded:  # pairs with the padding latent carry no weight
            Q_t.view(B, K, K).masked_fill_((idx == F).unsqueeze(1), 0.0)
    return float(off_F.sum()), float(pairs_F.sum()), (torch.from_numpy(g) if want_grad else None), Q_t


__all__ = ["available", "pair_pass"]
