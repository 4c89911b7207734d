"""Co-activation penalties of the two reproduced papers, both readings, from the sparse active set.

Notation (docs/DESIGN.md, /work/shared/spec/methods.md): B tokens, F latents, K active slots per token.
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

EMA of the competition coefficients (as described)
--------------------------------------------------
A correct EMA decays *every* entry every step, ``c_hat <- d c_hat + (1-d) c_batch`` with
``c_batch = 0`` for pairs that did not co-fire (the original code's ``0/(0+eps)`` convention for a
conditioning latent that did not fire). We store ``c_hat / s`` with a global scale ``s = d^t``, so
the decay of un-refreshed entries is exact and free, and only co-firing pairs are touched.
The state is inherently pairwise and, in general, dense: ``sum_i c_ij = F`` for every latent ``j``
that fires (TopK), so in steady state ``sum_ij c_hat_ij ~= F * (#latents firing)``, i.e. the mean
entry is ~1 (> tau); once latents fire broadly, a constant fraction of all F^2 entries is nonzero.
A sorted-key map costs 12 bytes per entry against 4 for a dense fp32 buffer, so dense is the
*smallest exact* representation. Policy (``ema_storage="auto"``): dense fp32 buffer when
``4 F^2`` bytes <= ``ema_dense_max_mb`` (default 1536 MiB: F <= 20066, which covers the paper's
F = 18432 with one 1.27 GiB buffer, against the eight the as-run code allocated per step); above it,
a sparse sorted-key map that is exact until it holds ``ema_sparse_capacity`` entries and then evicts
the smallest values (entries below ``ema_sparse_floor`` are dropped every step). The number of stored
and evicted entries is returned every step so the approximation is visible.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "PenaltyConfig",
    "READING_DEFAULTS",
    "resolve_config",
    "make_penalty",
    "CoactivationPenalty",
    "CoactResult",
    "DenseCoefEMA",
    "SparseCoefEMA",
    "active_set",
    "ramp_alpha",
    "coactivation_penalty",
]

KINDS = ("none", "orthogonality", "competition")
READINGS = ("as_run", "as_described")
TARGETS = ("activations", "decoder")
NORMALISATIONS = ("mean", "sum")
EMA_STORAGES = ("auto", "dense", "sparse")


# --------------------------------------------------------------------------------------- config
@dataclass
class PenaltyConfig:
    """Co-activation penalty settings. Fields left at ``None`` take the reading's default
    (``READING_DEFAULTS[(kind, reading)]``, resolved by :func:`resolve_config`)."""

    kind: str = "none"
    """"none" | "orthogonality" (paper 004, w_ij = n_ij/min(n_i,n_j)) | "competition" (paper 000)."""
    reading: str = "as_run"
    """"as_run" (what the original code computed) | "as_described" (the paper's prose)."""
    target: str = "activations"
    """"activations": T_ij = D_ij, the batch-mean activation product (what ran) |
    "decoder": T_ij = cos(W_dec_i, W_dec_j), restricted to pairs that co-fire in the batch."""
    lam: float | None = None
    """Final penalty weight λ (as run: 004 0.01/0.05/0.075/0.1, CompeteSAE 0.01; as described:
    004 α = 0.075, CompeteSAE λ2 = 0.03)."""
    ramp_steps: int | None = None
    """Steps of the linear weight ramp (004 as described: 1000; CompeteSAE warmup t_w: 2000; 0 = none).
    Scaled profiles shrink this with the run length."""
    ramp_start: float | None = None
    """Absolute weight λ·α at step 0; ramps linearly to λ over ``ramp_steps`` (004 as described: 0.01;
    CompeteSAE warmup min(1, t/t_w): 0.0)."""
    tau: float = 0.6
    """Competition threshold: coefficients c_ij <= tau are zeroed before max-symmetrisation."""
    ema_decay: float | None = None
    """EMA decay of the competition coefficients (as described: 0.99); 0 = per-batch coefficients."""
    l1_coef: float | None = None
    """Weight of an extra L1 term l1_coef * mean_b sum_i |f_bi| (as described: 0.04 in both papers;
    as run: 0). Returned separately as "penalty_l1" and included in "penalty"."""
    include_diagonal: bool | None = None
    """Whether the i = j terms enter P (as run: True, the code summed the full matrix; as described:
    False, "pairs")."""
    normalise: str | None = None
    """"mean": P = (1/F^2) sum_ij (as run) | "sum": P = sum_ij (as described)."""
    ema_storage: str = "auto"
    """EMA state: "dense" fp32 F x F buffer (exact) | "sparse" sorted-key map | "auto" (dense iff
    4 F^2 bytes <= ema_dense_max_mb)."""
    ema_dense_max_mb: float = 1536.0
    """Largest dense EMA buffer "auto" accepts, in MiB (1536 MiB: F <= 20066)."""
    ema_sparse_capacity: int = 16_000_000
    """Sparse EMA: most entries kept (12 bytes each; 16M = 192 MB); beyond it the smallest are evicted."""
    ema_sparse_floor: float = 0.0
    """Sparse EMA: entries whose current value is <= this are dropped every step (0 keeps all)."""
    block_bins: int = 1 << 19
    """Entries of the per-block pair buffers (latents per block <= block_bins // F). 512k (2 MB each,
    both fit in a 4 MB L2) measured fastest on the 2-core box: 49 vs 133 ms at F=5120, k=28 against
    4M, 0.79 vs 1.16 s at F=18432, k=100; 128k-1M were within noise."""
    block_instances: int = 1 << 20
    """Instances (slots x K) per block, about: bounds the block's temporaries (~8 fp32 arrays of this
    size, 32 MB at 1M) even when one latent fires on every token."""
    threads: int | None = 1
    """torch intra-op threads while the penalty runs (restored after). Its work is small memory-bound
    scatters/gathers and sorts: on the 2-core box 2 threads were no faster than 1 when it was idle,
    and 3-100x slower when another process held a core (OpenMP spin barriers; e.g. a 57k-element
    argsort took 200 ms instead of 2 ms). ``None`` leaves torch's setting."""


_BASE_DEFAULTS: dict[str, Any] = dict(
    lam=0.0, ramp_steps=0, ramp_start=0.0, ema_decay=0.0, l1_coef=0.0, include_diagonal=True, normalise="mean"
)

READING_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    # SO run 4 (the paper's chosen configuration): constant λ, mean over F², diagonal included.
    ("orthogonality", "as_run"): dict(lam=0.075, ramp_steps=0, ramp_start=0.0, normalise="mean",
                                      include_diagonal=True, ema_decay=0.0, l1_coef=0.0),
    # Paper 004 §4: α ramps 0.01 -> 0.075 over 1000 steps, Σ over pairs, λ = 0.04 L1 in eq. (2).
    ("orthogonality", "as_described"): dict(lam=0.075, ramp_steps=1000, ramp_start=0.01, normalise="sum",
                                            include_diagonal=False, ema_decay=0.0, l1_coef=0.04),
    # HO runs: effective λ = 0.01, per-batch coefficients, warmup min(1, t/2000), mean over F², diag included.
    ("competition", "as_run"): dict(lam=0.01, ramp_steps=2000, ramp_start=0.0, normalise="mean",
                                    include_diagonal=True, ema_decay=0.0, l1_coef=0.0),
    # Paper 000 §4-5: λ2 = 0.03, t_w = 2000, EMA 0.99, Σ over pairs, λ1 = 0.04 L1.
    ("competition", "as_described"): dict(lam=0.03, ramp_steps=2000, ramp_start=0.0, normalise="sum",
                                          include_diagonal=False, ema_decay=0.99, l1_coef=0.04),
}


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"PenaltyConfig.{name}={value!r} is not one of {choices}")


def resolve_config(cfg: PenaltyConfig) -> PenaltyConfig:
    """Fill ``None`` fields with the reading's defaults and validate every field."""
    _check_choice("kind", cfg.kind, KINDS)
    _check_choice("reading", cfg.reading, READINGS)
    _check_choice("target", cfg.target, TARGETS)
    _check_choice("ema_storage", cfg.ema_storage, EMA_STORAGES)
    defaults = READING_DEFAULTS.get((cfg.kind, cfg.reading), _BASE_DEFAULTS)
    filled = {f.name: defaults[f.name] for f in fields(cfg) if getattr(cfg, f.name) is None}
    out = replace(cfg, **filled)
    _check_choice("normalise", out.normalise, NORMALISATIONS)
    if out.lam < 0 or out.l1_coef < 0 or out.ramp_start < 0:
        raise ValueError(f"lam, l1_coef and ramp_start must be >= 0 (got {out.lam}, {out.l1_coef}, {out.ramp_start})")
    if out.ramp_steps < 0:
        raise ValueError(f"ramp_steps must be >= 0, got {out.ramp_steps}")
    if not 0.0 <= out.ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {out.ema_decay}")
    if out.ema_decay > 0 and out.kind != "competition":
        raise ValueError("ema_decay > 0 is only defined for kind='competition' (the EMA tracks c_ij)")
    if out.threads is not None and out.threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {out.threads}")
    if not 1 <= out.block_bins <= 1 << 30 or out.ema_sparse_capacity < 1 or out.block_instances < 1:
        raise ValueError("block_bins must be in [1, 2**30] (int32 keys); ema_sparse_capacity and "
                         "block_instances >= 1")
    return out


# ----------------------------------------------------------------------------------- schedules
def ramp_alpha(step: int, ramp_steps: int, start_frac: float = 0.0) -> float:
    """Dimensionless weight schedule α(t) ∈ [start_frac, 1]: linear from ``start_frac`` at t = 0 to 1 at
    t = ``ramp_steps``, then constant. ``start_frac = 0`` is CompeteSAE's min(1, t/t_w); 004's ramp
    0.01 -> λ is ``start_frac = 0.01/λ``. ``ramp_steps = 0`` means α = 1 from the start."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if ramp_steps <= 0:
        return 1.0
    frac = min(1.0, step / ramp_steps)
    return start_frac + (1.0 - start_frac) * frac


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


# ---------------------------------------------------------------------------------------- EMA
class DenseCoefEMA:
    """Exact EMA of the F x F directional coefficients, fp32 buffer of ``c_hat / scale`` (see module doc)."""

    needs_unique = False

    def __init__(self, n_latents: int, decay: float):
        self.F, self.decay = n_latents, decay
        self.E = torch.zeros(n_latents * n_latents)
        self.scale = 1.0
        self.updates = 0

    def begin_step(self) -> None:
        """Decay every entry by ``decay`` (a scalar multiply; rescales the buffer when it underflows)."""
        self.scale *= self.decay
        self.updates += 1
        if self.scale < 1e-30:
            self.E.mul_(self.scale)
            self.scale = 1.0

    def add(self, keys: Tensor, c: Tensor) -> None:
        """Add ``(1 - decay) * c`` to the entries ``keys = i * F + j`` (repeated keys accumulate)."""
        self.E.index_add_(0, keys.reshape(-1), c.reshape(-1).float() * ((1.0 - self.decay) / self.scale))

    def finish_step(self) -> dict[str, float]:
        return {}

    def get(self, keys: Tensor) -> Tensor:
        """Current values at ``keys`` (any shape)."""
        return self.E.index_select(0, keys.reshape(-1)).view(keys.shape) * self.scale

    def dense(self) -> Tensor:
        return (self.E * self.scale).view(self.F, self.F)

    def state(self) -> dict[str, Any]:
        return {"storage": "dense", "E": self.E, "scale": self.scale, "updates": self.updates}

    def load(self, st: dict[str, Any]) -> None:
        if st["storage"] != "dense" or st["E"].numel() != self.E.numel():
            raise ValueError("EMA state does not match a dense buffer of this width")
        self.E, self.scale, self.updates = st["E"].float().clone(), float(st["scale"]), int(st["updates"])


class SparseCoefEMA:
    """EMA of the directional coefficients as a sorted-key map (``keys = i*F + j`` int64, values
    ``c_hat / scale`` fp32). Exact while it holds at most ``capacity`` entries and ``floor = 0``;
    otherwise the smallest entries are dropped (counted in ``evicted``). Updates of one step are
    buffered by :meth:`add` and merged in :meth:`finish_step` (keys must arrive sorted and unique)."""

    needs_unique = True

    def __init__(self, n_latents: int, decay: float, capacity: int, floor: float):
        self.F, self.decay, self.capacity, self.floor = n_latents, decay, capacity, floor
        self.keys = torch.zeros(0, dtype=torch.long)
        self.vals = torch.zeros(0)
        self.scale = 1.0
        self.updates = 0
        self.evicted = 0
        self._pending: list[tuple[Tensor, Tensor]] = []

    def begin_step(self) -> None:
        self.scale *= self.decay
        self.updates += 1
        if self.scale < 1e-30:
            self.vals.mul_(self.scale)
            self.scale = 1.0

    def add(self, keys: Tensor, c: Tensor) -> None:
        self._pending.append((keys, c.float() * ((1.0 - self.decay) / self.scale)))

    def finish_step(self) -> dict[str, float]:
        """Merge the buffered updates (two sorted runs, via searchsorted), then prune."""
        if self._pending:
            new_k = torch.cat([k for k, _ in self._pending])
            new_v = torch.cat([v for _, v in self._pending])
            self._pending = []
            if new_k.numel() > 1 and not bool((new_k[1:] > new_k[:-1]).all()):
                raise ValueError("SparseCoefEMA.add keys must be sorted and unique within a step")
            self.keys, self.vals = _merge_sorted(self.keys, self.vals, new_k, new_v)
        evicted = 0
        if self.floor > 0 and self.keys.numel():
            keep = self.vals * self.scale > self.floor
            evicted += int((~keep).sum())
            self.keys, self.vals = self.keys[keep], self.vals[keep]
        if self.keys.numel() > self.capacity:
            over = self.keys.numel() - self.capacity
            cut = torch.kthvalue(self.vals, over).values
            keep = self.vals > cut
            # ties at the cut: keep the earliest ones up to capacity
            ties = torch.nonzero(self.vals == cut).squeeze(1)
            n_tie_keep = self.capacity - int(keep.sum())
            if n_tie_keep > 0:
                keep[ties[:n_tie_keep]] = True
            evicted += int((~keep).sum())
            self.keys, self.vals = self.keys[keep], self.vals[keep]
        self.evicted += evicted
        return {"ema_entries": float(self.keys.numel()), "ema_evicted": float(evicted)}

    def get(self, keys: Tensor) -> Tensor:
        if self.keys.numel() == 0:
            return torch.zeros(keys.shape, dtype=torch.float32)
        flat = keys.reshape(-1)
        pos = torch.searchsorted(self.keys, flat).clamp_(max=self.keys.numel() - 1)
        found = self.keys.index_select(0, pos) == flat
        out = torch.where(found, self.vals.index_select(0, pos) * self.scale, torch.zeros((), dtype=torch.float32))
        return out.view(keys.shape)

    def dense(self) -> Tensor:
        out = torch.zeros(self.F * self.F)
        out[self.keys] = self.vals * self.scale
        return out.view(self.F, self.F)

    def state(self) -> dict[str, Any]:
        return {"storage": "sparse", "keys": self.keys, "vals": self.vals, "scale": self.scale,
                "updates": self.updates, "evicted": self.evicted}

    def load(self, st: dict[str, Any]) -> None:
        if st["storage"] != "sparse":
            raise ValueError("EMA state is not a sparse map")
        self.keys, self.vals = st["keys"].long().clone(), st["vals"].float().clone()
        self.scale, self.updates, self.evicted = float(st["scale"]), int(st["updates"]), int(st["evicted"])


def _merge_sorted(k1: Tensor, v1: Tensor, k2: Tensor, v2: Tensor) -> tuple[Tensor, Tensor]:
    """Union of two sorted unique key runs; values of equal keys are added."""
    if k1.numel() == 0:
        return k2.clone(), v2.clone()
    pos = torch.searchsorted(k1, k2)
    hit = pos < k1.numel()
    hit[hit.clone()] = k1.index_select(0, pos[hit]) == k2[hit]
    v1 = v1.clone()
    v1.index_add_(0, pos[hit], v2[hit])
    k_new, v_new = k2[~hit], v2[~hit]
    if k_new.numel() == 0:
        return k1, v1
    n = k1.numel() + k_new.numel()
    keys = torch.empty(n, dtype=k1.dtype)
    vals = torch.empty(n, dtype=v1.dtype)
    at_new = torch.searchsorted(k1, k_new) + torch.arange(k_new.numel())
    at_old = torch.arange(k1.numel()) + torch.searchsorted(k_new, k1)
    keys[at_new], vals[at_new] = k_new, v_new
    keys[at_old], vals[at_old] = k1, v1
    return keys, vals


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

    def __init__(self, idx_BK: Tensor, F: int, padded: bool, block_bins: int, max_instances: int):
        self.B, self.K = idx_BK.shape
        self.F, self.Fw = F, F + int(padded)
        self.idx = idx_BK.contiguous()
        self.idx32 = self.idx.to(torch.int32)  # int32 gathers and keys are ~2x cheaper than int64 on CPU
        flat = self.idx.view(-1)
        self.n_F = torch.bincount(flat, minlength=self.Fw).to(torch.float32)
        self.rn_F = torch.where(self.n_F > 0, self.n_F.reciprocal(), torch.zeros(()))
        self.rn_BK = self.rn_F.index_select(0, idx_BK.reshape(-1)).view(idx_BK.shape)  # 1/n of each slot
        self.order = torch.argsort(flat, stable=True)
        self.lat = flat.index_select(0, self.order)
        self.padded = padded
        fb = max(1, block_bins // self.Fw)
        max_slots = max(1, max_instances // self.K)
        # cut points: every fb latents, and wherever the running slot count crosses a multiple of max_slots
        cum = torch.cumsum(self.n_F[:F].to(torch.float64), 0)
        before = torch.cat([torch.zeros(1, dtype=torch.float64), cum[:-1]])
        slot_cut = torch.nonzero(torch.floor(before / max_slots) != torch.floor(cum / max_slots)).squeeze(1)
        cuts = torch.cat([torch.arange(0, F, fb), slot_cut, torch.tensor([F])]).unique(sorted=True)
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
    return torch.where(x > tau, x, torch.zeros((), dtype=x.dtype))


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
    buf = torch.zeros(lay.max_bins) if ema.needs_unique else None
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
    threads: int | None = 1,
) -> CoactResult:
    """P = norm * sum_{i,j} W_ij T_ij^2 from the sparse active set (see the module docstring).

    ``kind``: "orthogonality" (W = w) or "competition" (W = S: per batch, or from ``ema``, which this
    call advances by one step unless ``update_ema=False``). ``idx_BK`` may contain ``d_sae`` as a
    padding index (``padded=True``) whose ``val_BK`` is 0. The result's ``value`` carries the gradient w.r.t. ``val_BK`` (activation
    target) or ``W_dec_FD`` (decoder target) when autograd is on. ``threads``: torch threads used
    meanwhile (see ``PenaltyConfig.threads``).
    """
    with _limit_threads(threads):
        return _coactivation_penalty(idx_BK, val_BK, d_sae, kind=kind, k=k, tau=tau, normalise=normalise,
                                     include_diagonal=include_diagonal, target=target, W_dec_FD=W_dec_FD, ema=ema,
                                     update_ema=update_ema, padded=padded, block_bins=block_bins,
                                     block_instances=block_instances)


@contextlib.contextmanager
def _limit_threads(n: int | None):
    """Run the penalty with ``n`` torch threads (restored afterwards)."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _coactivation_penalty(idx_BK, val_BK, d_sae, *, kind, k, tau, normalise, include_diagonal, target, W_dec_FD,
                          ema, update_ema, padded, block_bins, block_instances) -> CoactResult:
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
    lay = _Layout(idx_BK.long(), F, padded, block_bins, block_instances)
    v = val_BK.detach().to(torch.float32).contiguous()
    v_flat = v.view(-1)
    act = target == "activations"
    want_grad = torch.is_grad_enabled() and (val_BK.requires_grad if act else W_dec_FD.requires_grad)

    off, inv_n, g_flat, Q, ema_info = _block_pass(lay, v, kind, k, tau, act, want_grad, ema, update_ema)

    if act:
        off = off / (B * B)
        if g_flat is not None:
            g_flat.mul_(4.0 * norm / (B * B))
    off = torch.tensor(off, dtype=torch.float64)
    pairs = inv_n - float(torch.count_nonzero(lay.n_F[:F]))  # minus the diagonal bins
    if lay.padded:  # pairs (i, dummy) were counted too
        pairs -= float(torch.count_nonzero(_pair_counts_with_dummy(lay)))

    # diagonal terms, O(F)
    active_F = lay.n_F[:F] > 0
    if kind == "orthogonality":
        w_diag = active_F.to(torch.float32)
    elif ema is not None:
        ar = torch.arange(F)
        w_diag = _threshold(ema.get(ar * F + ar), tau) * active_F
    else:
        w_diag = torch.full((F,), F / k if F / k > tau else 0.0) * active_F

    if act:
        dd = torch.bincount(lay.idx.view(-1), weights=v_flat * v_flat, minlength=lay.Fw)[:F] / B
        diag = (w_diag * dd * dd).sum(dtype=torch.float64)
        if g_flat is not None and include_diagonal:
            wdd = torch.cat([w_diag * dd, torch.zeros(lay.Fw - F)])
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
                       pairs=torch.tensor(round(pairs), dtype=torch.float32), ema=ema_info)


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
    g_flat = torch.zeros(B * K) if (want_grad and act) else None
    Q = torch.zeros(B * K, K) if not act else None
    # pair buffers, zero between blocks: a block restores the zeros it touched (a scatter of zeros on its
    # keys when that is cheaper than a memset of the block's range, i.e. for large F)
    cbuf = torch.zeros(lay.max_bins)
    dbuf = torch.zeros(lay.max_bins) if act else None
    ones = torch.ones(1).expand(lay.max_inst)
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
        buf.index_put_((keys,), torch.zeros((), dtype=buf.dtype))
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
    total = torch.zeros((), dtype=torch.float64)
    grad = torch.zeros(F, D) if want_grad else None
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


# ------------------------------------------------------------------------------------- module
class CoactivationPenalty(nn.Module):
    """``forward(out, sae, step) -> dict`` with "penalty" (added to the loss: λ·α(t)·P + L1 term),
    "penalty_coact" (λ·α(t)·P), "penalty_raw" (P), "penalty_alpha" (α(t)), "penalty_lambda" (λ),
    "penalty_l1" (the L1 term), "coact_stat" (off-diagonal Σ W T², detached), "coact_pairs" and, with an
    EMA, "ema_entries"/"ema_evicted". The EMA advances once per call in training mode only."""

    def __init__(self, cfg: PenaltyConfig, d_sae: int, k: int):
        super().__init__()
        self.cfg = resolve_config(cfg)
        if self.cfg.kind == "none":
            raise ValueError("kind='none' has no penalty module (make_penalty returns None)")
        if d_sae < 1:
            raise ValueError(f"d_sae must be >= 1, got {d_sae}")
        if self.cfg.kind == "competition" and k < 1:
            raise ValueError(f"competition needs the SAE's k (c_ij is normalised by k/F); got k={k}. "
                             "For non-TopK SAEs pass the nominal L0.")
        self.d_sae, self.k = d_sae, k
        # set True for SAEs without idx_BK (ReLU, JumpReLU, BatchTopK): the trainer then builds f_BF
        self.needs_dense_latents = False
        self.ema: DenseCoefEMA | SparseCoefEMA | None = None
        c = self.cfg
        if c.ema_decay > 0:
            dense_mb = 4.0 * d_sae * d_sae / 2**20
            storage = c.ema_storage
            if storage == "auto":
                storage = "dense" if dense_mb <= c.ema_dense_max_mb else "sparse"
            self.ema = (DenseCoefEMA(d_sae, c.ema_decay) if storage == "dense"
                        else SparseCoefEMA(d_sae, c.ema_decay, c.ema_sparse_capacity, c.ema_sparse_floor))
        self._alpha0 = (c.ramp_start / c.lam) if c.lam > 0 else 0.0

    def alpha(self, step: int) -> float:
        """α(t): λ·α(t) ramps from ``ramp_start`` to λ over ``ramp_steps``."""
        return ramp_alpha(step, self.cfg.ramp_steps, min(1.0, self._alpha0))

    def forward(self, out: Any, sae: Any, step: int) -> dict[str, Tensor]:
        c = self.cfg
        if getattr(out, "idx_BK", None) is None and getattr(out, "f_BF", None) is None:
            raise ValueError("the SAE output has neither idx_BK nor f_BF: for non-TopK SAEs set "
                             "penalty.needs_dense_latents = True so the trainer asks for f_BF")
        W_dec = None
        if c.target == "decoder":
            W_dec = getattr(sae, "W_dec", None)
            if W_dec is None:
                W_dec = getattr(sae, "W_dec_FD")
        alpha = self.alpha(step)
        weight = c.lam * alpha
        with torch.autocast(device_type="cpu", enabled=False):  # the Gram matmuls stay fp32
            idx, val, padded = active_set(out, self.d_sae)
            # with zero weight (λ = 0, or α(0) = 0 in a warmup) only the statistics are needed
            with torch.set_grad_enabled(torch.is_grad_enabled() and weight > 0):
                res = coactivation_penalty(
                    idx, val, self.d_sae, kind=c.kind, k=self.k, tau=c.tau, normalise=c.normalise,
                    include_diagonal=c.include_diagonal, target=c.target, W_dec_FD=W_dec,
                    ema=self.ema, update_ema=self.training, padded=padded, block_bins=c.block_bins,
                    block_instances=c.block_instances, threads=c.threads,
                )
        coact = res.value * weight
        l1 = val.float().abs().sum(-1).mean() * c.l1_coef if c.l1_coef > 0 else torch.zeros(())
        logs = {
            "penalty": coact + l1,
            "penalty_coact": coact.detach(),
            "penalty_raw": res.value.detach(),
            "penalty_alpha": torch.tensor(alpha),
            "penalty_lambda": torch.tensor(c.lam),
            "penalty_l1": l1.detach(),
            "coact_stat": res.coact_stat,
            "coact_pairs": res.pairs,
        }
        for name, value in res.ema.items():
            logs[name] = torch.tensor(value)
        return logs

    def get_extra_state(self) -> dict[str, Any]:
        return {"ema": self.ema.state() if self.ema is not None else None}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("ema") is not None:
            if self.ema is None:
                raise ValueError("checkpoint has an EMA state but this penalty has ema_decay = 0")
            self.ema.load(state["ema"])


def make_penalty(cfg: PenaltyConfig, d_sae: int, k: int) -> CoactivationPenalty | None:
    """The penalty module for ``cfg`` (``None`` for kind "none"). ``k`` is the SAE's top-k (the
    competition normalisation k/F; unused by orthogonality); for non-TopK SAEs pass the nominal L0
    and set ``penalty.needs_dense_latents = True`` so the trainer hands over ``f_BF``."""
    cfg = resolve_config(cfg)
    if cfg.kind == "none":
        return None
    return CoactivationPenalty(cfg, d_sae, k)
