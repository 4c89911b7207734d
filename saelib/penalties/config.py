"""Penalty settings: :class:`PenaltyConfig`, each reading's defaults, validation, the weight schedule.

The equations themselves are in :mod:`saelib.penalties.reference` (readable, dense F x F) and
:mod:`saelib.penalties.sparse` (the fast O(B*K^2) implementation); docs/spec/methods.md says what each
paper and each original run computed.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

KINDS = ("none", "orthogonality", "competition", "l1")
READINGS = ("as_run", "as_described")
TARGETS = ("activations", "decoder")
NORMALISATIONS = ("mean", "sum")
EMA_STORAGES = ("auto", "dense", "sparse")
BACKENDS = ("auto", "kernel", "torch")


# --------------------------------------------------------------------------------------- config
@dataclass
class PenaltyConfig:
    """Co-activation penalty settings. Fields left at ``None`` take the reading's default
    (``READING_DEFAULTS[(kind, reading)]``, resolved by :func:`resolve_config`)."""

    kind: str = "none"
    """"none" | "orthogonality" (paper 004, w_ij = n_ij/min(n_i,n_j)) | "competition" (paper 000) |
    "l1" (only the L1 term ``l1_coef``, no co-activation term: the as-described readings' L1 control)."""
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
    ramp_start_frac: float | None = None
    """α(0) as a fraction of the final weight: λ·α(t) ramps linearly from ``ramp_start_frac·λ`` at step 0
    to λ at ``ramp_steps``, so a λ sweep scales the ramp with λ (004 as described: α 0.01 → 0.075, i.e.
    0.01/0.075 = 0.1333; CompeteSAE warmup min(1, t/t_w): 0.0). Must lie in [0, 1]."""
    tau: float = 0.6
    """Competition threshold: coefficients c_ij <= tau are zeroed before max-symmetrisation."""
    ema_decay: float | None = None
    """EMA decay of the competition coefficients (as described: 0.99); 0 = per-batch coefficients."""
    l1_coef: float | None = None
    """Weight of an extra L1 term l1_coef * mean_b sum_i |f_bi| (as described: 0.04 in both papers;
    as run: 0). Returned separately as "penalty_l1" and included in "penalty"."""
    include_diagonal: bool | None = None
    """Whether the i = j terms enter P. Default True for every reading: the runs summed the full matrix,
    and both papers write the sum as Σ_{i,j} with no i ≠ j (004 eq. 2, 000 eq. 5), so the as-described
    readings include the diagonal too. False drops it (the "pairs" reading of the prose)."""
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
    threads: int | None = None
    """Threads for the penalty. The compiled kernel splits the latents into this many ranges (its results
    do not depend on the count); the torch ops around it and the torch block pass run with this many
    intra-op threads (restored after). ``None``: the kernel takes torch's current thread count and the
    torch ops run on 1 thread: the block pass's small memory-bound scatters were no faster on 2 threads
    than on 1 and 3-100x slower when another process held a core (OpenMP spin barriers), and 1 is what
    trained the committed SAEs."""
    backend: str = "auto"
    """Pair-pass implementation: "kernel" (compiled numba loop, :mod:`saelib.penalties.kernel`; CPU
    tensors, per-batch weights) | "torch" (the block pass of torch ops; any device, the EMA reading) |
    "auto" (the kernel where it applies and numba is installed, else torch). Both compute the same sums
    (tests: agreement to float rounding); the kernel is 6-9x faster on CPU (``benchmarks/penalty.py``)."""


_BASE_DEFAULTS: dict[str, Any] = dict(
    lam=0.0, ramp_steps=0, ramp_start_frac=0.0, ema_decay=0.0, l1_coef=0.0, include_diagonal=True, normalise="mean"
)

READING_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    # SO run 4 (the paper's chosen configuration): constant λ, mean over F², diagonal included.
    ("orthogonality", "as_run"): dict(lam=0.075, ramp_steps=0, ramp_start_frac=0.0, normalise="mean",
                                      include_diagonal=True, ema_decay=0.0, l1_coef=0.0),
    # Paper 004 §4.1-4.2: α ramps 0.01 -> 0.075 over 1000 steps, eq. (2) Σ_{i,j} (a sum, diagonal
    # included as written), λ = 0.04 L1 in eq. (2).
    ("orthogonality", "as_described"): dict(lam=0.075, ramp_steps=1000, ramp_start_frac=0.01 / 0.075,
                                            normalise="sum", include_diagonal=True, ema_decay=0.0, l1_coef=0.04),
    # HO runs: effective λ = 0.01, per-batch coefficients, warmup min(1, t/2000), mean over F², diag included.
    ("competition", "as_run"): dict(lam=0.01, ramp_steps=2000, ramp_start_frac=0.0, normalise="mean",
                                    include_diagonal=True, ema_decay=0.0, l1_coef=0.0),
    # The L1 control: the as-described readings' L1 term (λ = 0.04 in both papers) alone.
    ("l1", "as_run"): dict(lam=0.0, ramp_steps=0, ramp_start_frac=0.0, normalise="mean", include_diagonal=True,
                           ema_decay=0.0, l1_coef=0.04),
    ("l1", "as_described"): dict(lam=0.0, ramp_steps=0, ramp_start_frac=0.0, normalise="mean",
                                 include_diagonal=True, ema_decay=0.0, l1_coef=0.04),
    # Paper 000 §4-5: λ2 = 0.03, t_w = 2000, EMA 0.99, eq. (5) Σ_{i,j} (diagonal included as written),
    # λ1 = 0.04 L1.
    ("competition", "as_described"): dict(lam=0.03, ramp_steps=2000, ramp_start_frac=0.0, normalise="sum",
                                          include_diagonal=True, ema_decay=0.99, l1_coef=0.04),
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
    filled = {f.name: defaults[f.name] for f in fields(cfg) if getattr(cfg, f.name) is None and f.name in defaults}
    out = replace(cfg, **filled)
    _check_choice("normalise", out.normalise, NORMALISATIONS)
    if out.lam < 0 or out.l1_coef < 0:
        raise ValueError(f"lam and l1_coef must be >= 0 (got {out.lam}, {out.l1_coef})")
    if not 0.0 <= out.ramp_start_frac <= 1.0:
        raise ValueError(f"ramp_start_frac (alpha at step 0 as a fraction of lam) must be in [0, 1], "
                         f"got {out.ramp_start_frac}")
    if out.ramp_steps < 0:
        raise ValueError(f"ramp_steps must be >= 0, got {out.ramp_steps}")
    if not 0.0 <= out.ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1), got {out.ema_decay}")
    if out.kind == "l1" and out.lam != 0:
        raise ValueError(f"kind='l1' has no co-activation term: lam must be 0, got {out.lam}")
    if out.ema_decay > 0 and out.kind != "competition":
        raise ValueError("ema_decay > 0 is only defined for kind='competition' (the EMA tracks c_ij)")
    _check_choice("backend", out.backend, BACKENDS)
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
    0.01 -> 0.075 is ``start_frac = 0.01/0.075`` (``PenaltyConfig.ramp_start_frac``). ``ramp_steps = 0`` means α = 1 from the start."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if ramp_steps <= 0:
        return 1.0
    frac = min(1.0, step / ramp_steps)
    return start_frac + (1.0 - start_frac) * frac
