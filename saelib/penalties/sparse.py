"""Co-activation penalties of the two reproduced papers, both readings, from the sparse active set.

Notation (docs/DESIGN.md, docs/spec/methods.md): B tokens, F latents, K active slots per token.
``M_bi = 1`` when latent ``i`` is in token ``b``'s active set; ``n_i = sum_b M_bi``;
``n_ij = sum_b M_bi M_bj`` (so ``n_ii = n_i``); ``D_ij = (1/B) sum_b f_bi f_bj``.

* ``orthogonality`` (paper 004): ``w_ij = n_ij / min(n_i, n_j)``.
* ``competition`` (paper 000, CompeteSAE): directional ``c_ij = P(i|j) / (k/F)``, coefficients ``<= tau``
  zeroed, ``S_ij = max(c_ij, c_ji)``; per batch (as run) or through an EMA (as described).

The penalty is ``P = norm * sum_{i,j} W_ij T_ij^2`` with ``W`` = ``w`` or ``S``, target ``T`` = ``D``
(batch-mean activation products, what ran) or ``cos(W_dec_i, W_dec_j)`` (the prose's alternative,
restricted to pairs that co-fire in the batch), ``norm = 1/F^2`` (as run: mean over all F^2 entries)
or ``1`` (as described: a sum). The loss term is ``lam * alpha(t) * P`` (+ an optional L1 term).

How it is computed without an F x F matrix
-----------------------------------------
``W_ij T_ij^2`` is zero unless ``i`` and ``j`` co-fire, and a pair that co-fires ``n_ij`` times appears
``n_ij`` times among the B*K^2 "instances" ``(b, a, c)`` (token ``b``, slots ``a`` and ``c``). Hence
``sum_{i,j} W_ij T_ij^2 = sum_instances (W_ij / n_ij) T_ij^2`` and, for the activation target,
``dP/df_bi = norm * (4/B) * sum_{j in A_b} W_ij D_ij f_bj``: both need ``n_ij`` and ``D_ij`` per
instance. The slots are sorted by latent and cut into blocks of consecutive latents ``[i0, i1)``
(at most ``block_bins`` pair keys ``(i - i0) * F + j`` and about ``block_instances`` instances per
block). Per block, ``n_ij`` and ``B D_ij`` are two scatter-adds into a pair buffer, gathered back per
instance; since rows are sorted by ``i``, consecutive scatters hit one F-long buffer row (cache
resident). The buffer is re-zeroed by scattering zeros on the touched keys (or a memset when that is
cheaper), so the per-step work is O(B*K^2) plus O(F^2 / 8) memset at most, with no F x F work for
large F. The diagonal ``i = j`` is handled separately in O(B*K + F). Memory: O(B*K + F +
block_bins + block_instances) - about 40 MB at the defaults, nothing F x F. The gradient w.r.t.
``val_BK`` (activation target) or the unit decoder rows (decoder target, by per-token K x K Gram
matrices, which needs a (B, K, K) weight tensor) is computed in the same pass and handed to
autograd by :class:`_PrecomputedGrad`; ``W`` is a non-differentiable function of the indices, as in
the original code. Gradients reach the active entries only (TopK/ReLU pass none to the others).
Cost on CPU is memory-bound, ~30-45 ns per instance, single thread (benchmarks/penalty.py, B = 2048,
forward + backward): 0.07 s at F=5120, K=28; 0.37 s at F=5120, K=100; 0.65-0.85 s at F=18432, K=100;
2.7 s at F=18432, K=320 (210M instances) - 20-80% of a TopK training step at F=18432 on the 2-core
box, against ~50 s and ~8 GiB extrapolated for the as-run dense form. Extra peak memory <= 40 MiB.

On CPU with per-batch weights (both as-run readings, the as-described orthogonality) the same sums
run by default in a compiled loop, :mod:`.kernel` (``backend``): one latent row at a time, no blocks,
both cores, 6-9x faster than the torch pass (benchmarks/penalty.py). The torch pass stays for other
devices, the EMA reading, and as the kernel's reference in the tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..threads import limit_threads
from . import kernel
from .config import BACKENDS, NORMALISATIONS, TARGETS, _check_choice
from .ema import DenseCoefEMA, SparseCoefEMA

# ---------------------------------------------------------------------------------- active set
def active_set(out: Any, d_sae: int) -> tuple[Tensor, Tensor, bool]:
    """``(idx_BK, val_BK, padded)`` of an ``SAEOutput``. TopK SAEs: ``out.idx_BK``/``out.val_BK`` as given
    (a top-k slot counts as active even if its ReLU value is 0, as in the original code). Other SAEs:
    the non-zeros of ``f_BF``, padded to the batch's max L0 with index ``d_sae`` (a dummy latent) and
    value 0; ``val_BK`` is gathered from ``f_BF`` so gradients flow."""
    idx, val = getattr(out, "idx_BK", None), getattr(out, "val_BK", None)
    if idx is not None and val is not None:
        if idx.shape != val.shape or idx.ndim != 2:
            raise ValueError(f"idx_BK {tuple(idx.shape)} and val_BK {tuple(val.shape)} must both be (B, K)")
        return idx.long(), val, False
    f = out.f_BF
    if f.ndim != 2 or f.shape[1] != d_sae:
        raise ValueError(f"f_BF must be (B, {d_sae}), got {tuple(f.shape)}")
    nz = f.detach() != 0
    l_max = max(int(nz.sum(1).max()), 1)
    _, idx = torch.topk(nz.to(torch.int8), l_max, dim=1, sorted=False)
    live = nz.gather(1, idx)
    val = f.gather(1, idx) * live
    idx = torch.where(live, idx, torch.full_like(idx, d_sae))
    return idx, val, True


# ------------------------------------------------------------------------------- core algorithm
class _PrecomputedGrad(torch.autograd.Function):
    """Returns ``value``; its gradient w.r.t. ``x`` is ``grad_out * grad`` (computed in the same pass)."""

    @staticmethod
    def forward(ctx, x: Tensor, value: Tensor, grad: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(grad)
        ctx.x_dtype = x.dtype
        return value.clone()

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return (grad_out * grad).to(ctx.x_dtype), None, None


@dataclass
class CoactResult:
    """Output of :func:`coactivation_penalty` (all scalars are 0-d tensors)."""

    value: Tensor
    """P (differentiable w.r.t. val_BK or W_dec when gradients are on)."""
    coact_stat: Tensor
    """sum_{i != j} W_ij T_ij^2 over co-firing pairs, no 1/F^2 (detached): the co-activation part of P."""
    diag: Tensor
    """sum_i W_ii T_ii^2 (detached; enters P only with include_diagonal)."""
    pairs: Tensor
    """Number of distinct ordered pairs i != j that co-fire in the batch (detached)."""
    ema: dict[str, float]
    """EMA diagnostics (entries stored / evicted), empty without EMA."""


class _Layout:
    """Slots (b, a) sorted by latent and cut into blocks of consecutive latents; ``Fw`` = F (+1 with a
    padding latent). A block holds at most ``block_bins // Fw`` latents (its pair buffer has
    ``(i1 - i0) * Fw <= block_bins`` entries) and about ``max_instances`` instances (slots * K), so
    temporaries stay bounded even when one latent fires on every token."""

    def __init__(self, idx_BK: Tensor, F: int, padded: bool, block_bins: int, max_instances: int, plan: bool = True):
        self.B, self.K = idx_BK.shape
        self.F, self.Fw = F, F + int(padded)
        self.idx = idx_BK.contiguous()
        flat = self.idx.view(-1)
        self.n_F = torch.bincount(flat, minlength=self.Fw).to(torch.float32)
        self.dev = dev = idx_BK.device
        self.padded = padded
        if plan:  # the block plan of the torch pass (the compiled kernel sorts on its own)
            self._plan(flat, block_bins, max_instances)

    def _plan(self, flat: Tensor, block_bins: int, max_instances: int) -> None:
        F, dev = self.F, self.dev
        self.idx32 = self.idx.to(torch.int32)  # int32 gathers and keys are ~2x cheaper than int64 on CPU
        self.rn_F = torch.where(self.n_F > 0, self.n_F.reciprocal(), torch.zeros((), device=dev))
        self.rn_BK = self.rn_F.index_select(0, flat).view(self.idx.shape)  # 1/n of each slot
        self.order = torch.argsort(flat, stable=True)
        self.lat = flat.index_select(0, self.order)
        fb = max(1, block_bins // self.Fw)
        max_slots = max(1, max_instances // self.K)
        # cut points: every fb latents, and wherever the running slot count crosses a multiple of max_slots
        cum = torch.cumsum(self.n_F[:F].to(torch.float64), 0)
        before = torch.cat([torch.zeros(1, dtype=torch.float64, device=dev), cum[:-1]])
        slot_cut = torch.nonzero(torch.floor(before / max_slots) != torch.floor(cum / max_slots)).squeeze(1)
        cuts = torch.cat([torch.arange(0, F, fb, device=dev), slot_cut, torch.tensor([F], device=dev)]).unique(sorted=True)
        self.starts = cuts.tolist()
        self.bounds = torch.searchsorted(self.lat, cuts).tolist()
        self.max_bins = max(1, max((b - a) * self.Fw for a, b in zip(self.starts[:-1], self.starts[1:])))
        self.max_inst = max(1, max((b - a) * self.K for a, b in zip(self.bounds[:-1], self.bounds[1:])))

    def blocks(self):
        """Yield ``(i0, nb, sl, rows, acol, i, J, key)`` for every non-empty block: ``sl`` the flat slot ids,
        ``rows``/``acol`` their token and column, ``i`` their latent, ``J = idx[rows]`` (n_s, K) the
        partner latents (int32) and ``key = (i - i0) * Fw + J`` the block-local pair index (int32)."""
        K, Fw = self.K, self.Fw
        for blk in range(len(self.starts) - 1):
            lo, hi = self.bounds[blk], self.bounds[blk + 1]
            if lo == hi:
                continue
            i0 = self.starts[blk]
            nb = (self.starts[blk + 1] - i0) * Fw
            sl = self.order[lo:hi]
            rows = torch.div(sl, K, rounding_mode="floor")
            acol = sl - rows * K
            i = self.lat[lo:hi]
            J = self.idx32.index_select(0, rows)
            key = J + ((i - i0) * Fw).to(torch.int32).unsqueeze(1)
            yield i0, nb, sl, rows, acol, i, J, key


def _threshold(x: Tensor, tau: float) -> Tensor:
    return torch.where(x > tau, x, torch.zeros((), dtype=x.dtype, device=x.device))


def _instance_weights(kind: str, lay: _Layout, k: int, tau: float, n_inst: Tensor, i: Tensor, rows: Tensor) -> Tensor:
    """Per-instance ``W_ij / n_ij`` for the per-batch weights (summing over instances then sums over
    unique pairs). Orthogonality: ``w_ij / n_ij = 1 / min(n_i, n_j)``. Competition (as run):
    ``S_ij = max(thr(c_ij), thr(c_ji))`` with ``c_ij = (F/k) n_ij / n_i`` (the HO code's division) and
    ``thr(x) = x 1[x > tau]``; ``thr`` is non-decreasing, so ``S_ij = thr(max(c_ij, c_ji)) =
    (F/k) w_ij 1[(F/k) w_ij > tau]`` - the spec's identity, which the tests check against the
    directional dense computation - and ``S_ij / n_ij = (F/k) / min(n_i, n_j) * 1[...]``."""
    rn_i = lay.rn_F.index_select(0, i).unsqueeze(1)
    rn_j = lay.rn_BK.index_select(0, rows)  # 1 / n_j, a row copy
    wn = torch.maximum(rn_j, rn_i)  # 1 / min(n_i, n_j)
    if kind == "orthogonality":
        return wn
    r = lay.F / k
    return wn.mul_((n_inst * wn > tau / r).to(wn.dtype).mul_(r))


def _ema_update(lay: _Layout, ema, k: int) -> None:
    """Phase 1 of the EMA reading: ``c_ij = (F/k) n_ij / n_j`` for every co-firing ordered pair (the
    diagonal gets ``c_ii = F/k``) is added to the EMA; un-refreshed entries decay through the global
    scale. Each of the ``n_ij`` instances of a pair carries ``(F/k) / n_j``, so their sum is ``c_ij``."""
    F, Fw = lay.F, lay.Fw
    r = F / k
    ema.begin_step()
    buf = torch.zeros(lay.max_bins, device=lay.dev) if ema.needs_unique else None
    for i0, nb, _, rows, _, i, J, key in lay.blocks():
        inc = lay.rn_BK.index_select(0, rows) * r
        if lay.padded:
            inc.masked_fill_(J == F, 0.0)
        if not ema.needs_unique:
            ema.add((i * F).unsqueeze(1) + J.clamp(max=F - 1).long(), inc)
            continue
        agg = buf[:nb].zero_().index_add_(0, key.view(-1), inc.view(-1))
        loc = torch.nonzero(agg).squeeze(1)  # sorted, so the keys below are sorted and unique
        rr = torch.div(loc, Fw, rounding_mode="floor")
        j = loc - rr * Fw
        ema.add((rr + i0) * F + j, agg.index_select(0, loc))


def coactivation_penalty(
    idx_BK: Tensor,
    val_BK: Tensor,
    d_sae: int,
    *,
    kind: str,
    k: int,
    tau: float = 0.6,
    normalise: str = "mean",
    include_diagonal: bool = True,
    target: str = "activations",
    W_dec_FD: Tensor | None = None,
    ema: DenseCoefEMA | SparseCoefEMA | None = None,
    update_ema: bool = True,
    padded: bool = False,
    block_bins: int = 1 << 19,
    block_instances: int = 1 << 20,
    threads: int | None = None,
    backend: str = "auto",
) -> CoactResult:
    """P = norm * sum_{i,j} W_ij T_ij^2 from the sparse active set (see the module docstring).

    ``kind``: "orthogonality" (W = w) or "competition" (W = S: per batch, or from ``ema``, which this
    call advances by one step unless ``update_ema=False``). ``idx_BK`` may contain ``d_sae`` as a
    padding index (``padded=True``) whose ``val_BK`` is 0. The result's ``value`` carries the gradient w.r.t. ``val_BK`` (activation
    target) or ``W_dec_FD`` (decoder target) when autograd is on. ``threads``: threads of the pair
    pass (see ``PenaltyConfig.threads``). ``backend``: "kernel", "torch" or "auto" (see
    ``PenaltyConfig.backend``).
    """
    kernel_threads = threads if threads is not None else torch.get_num_threads()
    with limit_threads(threads if threads is not None else 1, blas=False):  # the torch ops: see PenaltyConfig
        return _coactivation_penalty(idx_BK, val_BK, d_sae, kind=kind, k=k, tau=tau, normalise=normalise,
                                     include_diagonal=include_diagonal, target=target, W_dec_FD=W_dec_FD, ema=ema,
                                     update_ema=update_ema, padded=padded, block_bins=block_bins,
                                     block_instances=block_instances, backend=backend, kernel_threads=kernel_threads)


def use_kernel(backend: str, device: torch.device, has_ema: bool) -> bool:
    """Whether the compiled kernel runs the pair pass: ``backend`` "kernel" demands it (an error where it
    cannot run), "auto" takes it for CPU tensors and per-batch weights when numba is installed."""
    _check_choice("backend", backend, BACKENDS)
    fits = device.type == "cpu" and not has_ema
    if backend == "kernel":
        if not fits:
            raise ValueError("backend='kernel' runs on CPU tensors with per-batch weights only (no EMA); "
                             f"got device {device}, EMA {has_ema}: use backend='torch' or 'auto'")
        if not kernel.available():
            raise RuntimeError("backend='kernel' needs numba: pip install numba (or use backend='torch')")
        return True
    return backend == "auto" and fits and kernel.available()


def _coactivation_penalty(idx_BK, val_BK, d_sae, *, kind, k, tau, normalise, include_diagonal, target, W_dec_FD,
                          ema, update_ema, padded, block_bins, block_instances, backend,
                          kernel_threads) -> CoactResult:
    _check_choice("kind", kind, ("orthogonality", "competition"))
    _check_choice("normalise", normalise, NORMALISATIONS)
    _check_choice("target", target, TARGETS)
    if idx_BK.ndim != 2 or idx_BK.shape != val_BK.shape:
        raise ValueError(f"idx_BK {tuple(idx_BK.shape)} and val_BK {tuple(val_BK.shape)} must both be (B, K)")
    if idx_BK.numel() == 0:
        raise ValueError("empty active set (B = 0 or K = 0)")
    hi = d_sae + int(padded)
    lo_i, hi_i = int(idx_BK.min()), int(idx_BK.max())
    if lo_i < 0 or hi_i >= hi:
        raise ValueError(f"idx_BK values must lie in [0, {hi}), got [{lo_i}, {hi_i}]")
    if not bool(torch.isfinite(val_BK.detach()).all()):
        raise ValueError("val_BK contains NaN or inf")
    if target == "decoder" and (W_dec_FD is None or W_dec_FD.ndim != 2 or W_dec_FD.shape[0] != d_sae):
        raise ValueError(f"target='decoder' needs W_dec_FD of shape ({d_sae}, D)")
    if ema is not None and kind != "competition":
        raise ValueError("an EMA is only defined for kind='competition'")
    if kind == "competition" and k < 1:
        raise ValueError(f"competition needs k >= 1 (c_ij is normalised by k/F), got {k}")
    if not 1 <= block_bins <= 1 << 30 or block_instances < 1:
        raise ValueError(f"block_bins must be in [1, 2**30] (int32 keys) and block_instances >= 1, "
                         f"got {block_bins}, {block_instances}")
    F = d_sae
    B, K = idx_BK.shape
    norm = 1.0 / (F * F) if normalise == "mean" else 1.0
    compiled = use_kernel(backend, idx_BK.device, ema is not None)
    lay = _Layout(idx_BK.long(), F, padded, block_bins, block_instances, plan=not compiled)
    v = val_BK.detach().to(torch.float32).contiguous()
    v_flat = v.view(-1)
    act = target == "activations"
    want_grad = torch.is_grad_enabled() and (val_BK.requires_grad if act else W_dec_FD.requires_grad)

    if compiled:
        off, inv_n, g_flat, Q = kernel.pair_pass(lay.idx, v, F, padded=padded, kind=kind, k=k, tau=tau,
                                                 want_grad=want_grad and act, want_q=not act,
                                                 threads=kernel_threads)
        ema_info: dict[str, float] = {}
    else:
        off, inv_n, g_flat, Q, ema_info = _block_pass(lay, v, kind, k, tau, act, want_grad, ema, update_ema)

    if act:
        off = off / (B * B)
        if g_flat is not None:
            g_flat.mul_(4.0 * norm / (B * B))
    off = torch.tensor(off, dtype=torch.float64, device=lay.dev)
    pairs = inv_n - float(torch.count_nonzero(lay.n_F[:F]))  # minus the diagonal bins
    if lay.padded:  # pairs (i, dummy) were counted too
        pairs -= float(torch.count_nonzero(_pair_counts_with_dummy(lay)))

    # diagonal terms, O(F)
    active_F = lay.n_F[:F] > 0
    if kind == "orthogonality":
        w_diag = active_F.to(torch.float32)
    elif ema is not None:
        ar = torch.arange(F, device=lay.dev)
        w_diag = _threshold(ema.get(ar * F + ar), tau) * active_F
    else:
        w_diag = torch.full((F,), F / k if F / k > tau else 0.0, device=lay.dev) * active_F

    if act:
        dd = torch.bincount(lay.idx.view(-1), weights=v_flat * v_flat, minlength=lay.Fw)[:F] / B
        diag = (w_diag * dd * dd).sum(dtype=torch.float64)
        if g_flat is not None and include_diagonal:
            wdd = torch.cat([w_diag * dd, torch.zeros(lay.Fw - F, device=lay.dev)])
            g_flat += wdd.index_select(0, lay.idx.view(-1)) * v_flat * (4.0 * norm / B)
        x, grad = val_BK, (g_flat.view(B, K) if g_flat is not None else None)
    else:
        off, dec = _decoder_terms(W_dec_FD, lay, Q.view(B, K, K), norm, want_grad)
        diag = w_diag.sum(dtype=torch.float64)  # cos_ii = 1
        x, grad = dec if dec is not None else (None, None)
    total = (off + (diag if include_diagonal else 0.0)) * norm
    value = total.to(torch.float32)
    if want_grad:
        value = _PrecomputedGrad.apply(x, value, grad)
    return CoactResult(value=value, coact_stat=off.float(), diag=diag.float(),
                       pairs=torch.tensor(round(pairs), dtype=torch.float32, device=lay.dev), ema=ema_info)


def _block_pass(lay: _Layout, v: Tensor, kind: str, k: int, tau: float, act: bool, want_grad: bool, ema,
                update_ema: bool):
    """The O(B*K^2) part: EMA update (phase 1), then per block n_ij (and B*D_ij) by scatter into the
    block's pair buffer, gathered back per instance. Returns the off-diagonal sum, sum of 1/n_ij,
    the gradient w.r.t. val (flat, unscaled) or the decoder-target instance weights Q, EMA diagnostics."""
    F, B, K = lay.F, lay.B, lay.K
    v_flat = v.view(-1)
    ema_info: dict[str, float] = {}
    if ema is not None and update_ema:
        _ema_update(lay, ema, k)
        ema_info = ema.finish_step()
    off = 0.0  # sum over off-diagonal instances of (W/n) T^2 (fp32 per block, float64 across blocks)
    inv_n = 0.0  # sum over instances of 1/n_ij = number of distinct pairs (diagonal included)
    g_flat = torch.zeros(B * K, device=lay.dev) if (want_grad and act) else None
    Q = torch.zeros(B * K, K, device=lay.dev) if not act else None
    # pair buffers, zero between blocks: a block restores the zeros it touched (a scatter of zeros on its
    # keys when that is cheaper than a memset of the block's range, i.e. for large F)
    cbuf = torch.zeros(lay.max_bins, device=lay.dev)
    dbuf = torch.zeros(lay.max_bins, device=lay.dev) if act else None
    ones = torch.ones(1, device=lay.dev).expand(lay.max_inst)
    for i0, nb, sl, rows, acol, i, J, key in lay.blocks():
        kf = key.view(-1)
        cnt = cbuf[:nb].index_add_(0, kf, ones[: kf.numel()])
        n_inst = cnt.index_select(0, kf).view_as(key)
        _reset(cnt, kf)
        inv_n += float(n_inst.reciprocal().sum())
        if ema is None:
            wn = _instance_weights(kind, lay, k, tau, n_inst, i, rows)
        else:
            Jc = J.clamp(max=F - 1).long()
            s_ij = ema.get((i * F).unsqueeze(1) + Jc)
            s_ji = ema.get(Jc * F + i.unsqueeze(1))
            wn = _threshold(torch.maximum(s_ij, s_ji), tau).div_(n_inst)
        wn.scatter_(1, acol.unsqueeze(1), 0.0)  # each slot's own diagonal instance; the diagonal is done below
        if lay.padded:
            wn.masked_fill_(J == F, 0.0)
        if act:
            V = v.index_select(0, rows)
            vi = v_flat.index_select(0, sl)
            dsum = dbuf[:nb].index_add_(0, kf, (V * vi.unsqueeze(1)).view(-1))  # B * D_ij
            Ds = dsum.index_select(0, kf).view_as(key)
            _reset(dsum, kf)
            wd = wn.mul_(Ds)
            off += float(torch.linalg.vecdot(wd, Ds).sum())
            if g_flat is not None:
                g_flat[sl] = torch.linalg.vecdot(wd.mul_(n_inst), V)  # sum_c W_ij (B D_ij) f_bj
        else:
            Q[sl] = wn
    return off, inv_n, g_flat, Q, ema_info


def _reset(buf: Tensor, keys: Tensor) -> None:
    """Zero the entries of ``buf`` that ``keys`` touched (a scatter), or all of it (a memset) when
    that is cheaper: measured on CPU, a scattered int32-indexed write costs ~8x a memset element."""
    if buf.numel() > 8 * keys.numel():
        buf.index_put_((keys,), torch.zeros((), dtype=buf.dtype, device=buf.device))
    else:
        buf.zero_()


def _pair_counts_with_dummy(lay: _Layout) -> Tensor:
    """For padded inputs: per real latent i, how often it fires in a token that has padding (its pair
    with the dummy index was counted by the block pass and is removed from the pair count)."""
    has_pad = (lay.idx == lay.F).any(1)
    lat = lay.idx[has_pad].reshape(-1)
    return torch.bincount(lat[lat < lay.F], minlength=lay.F)


def _decoder_terms(W_dec_FD: Tensor, lay: _Layout, Q_BKK: Tensor, norm: float, want_grad: bool):
    """``sum_{b,a,c} Q_bac cos(W_a, W_c)^2`` by per-token Gram matrices, chunked over tokens. Returns the
    sum and, when ``want_grad``, ``(W_hat, dP/dW_hat)`` with ``W_hat`` the autograd-tracked unit rows
    (autograd then carries the gradient through the normalisation to ``W_dec``)."""
    W_hat = torch.nn.functional.normalize(W_dec_FD.float(), dim=1) if want_grad else None
    Wn = W_hat.detach() if want_grad else torch.nn.functional.normalize(W_dec_FD.detach().float(), dim=1)
    F, D = Wn.shape
    B, K = lay.B, lay.K
    idx = lay.idx.clamp(max=F - 1)  # padding rows have Q = 0
    chunk = max(1, (1 << 22) // max(1, K * D))
    total = torch.zeros((), dtype=torch.float64, device=Wn.device)
    grad = torch.zeros(F, D, device=Wn.device) if want_grad else None
    for b0 in range(0, B, chunk):
        ib = idx[b0:b0 + chunk]
        rows = Wn.index_select(0, ib.reshape(-1)).view(ib.shape[0], K, D)
        G = torch.bmm(rows, rows.transpose(1, 2))
        qg = Q_BKK[b0:b0 + chunk] * G
        total += (qg * G).sum(dtype=torch.float64)
        if grad is not None:
            R = torch.bmm(qg, rows).mul_(4.0 * norm)  # Q symmetric in (a, c)
            grad.index_add_(0, ib.reshape(-1), R.view(-1, D))
    return total, ((W_hat, grad) if want_grad else None)
