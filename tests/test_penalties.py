"""saelib.penalties: the sparse O(B·k²) implementation against a dense naive F×F reference written the
way the original runs computed it (value and gradient), the spec's CompeteSAE identity, the weight
schedules, the EMA of the competition coefficients, and a short training run where the penalty
lowers the co-activation statistic it targets."""
from __future__ import annotations

import functools
import itertools
import math
from typing import NamedTuple

import pytest
import torch

from saelib.penalties import (
    READING_DEFAULTS,
    DenseCoefEMA,
    PenaltyConfig,
    SparseCoefEMA,
    active_set,
    coactivation_penalty,
    make_penalty,
    ramp_alpha,
    resolve_config,
)
from saelib.penalties.reference import reference_penalty_terms


class _Out(NamedTuple):
    """Stand-in for saelib.sae.SAEOutput (only the fields the penalty reads)."""

    x_hat_BD: torch.Tensor | None
    f_BF: torch.Tensor | None
    idx_BK: torch.Tensor | None
    val_BK: torch.Tensor | None
    losses: dict


class _Sae:
    def __init__(self, W_dec):
        self.W_dec = W_dec


# ------------------------------------------------------------------------------ dense reference
def ref_penalty(idx, val, F, **kw):
    """The package's dense F x F reference (saelib.penalties.reference, the spec's equations):
    (P, new EMA or None, W, n)."""
    if "W_dec" in kw:
        kw["W_dec_FD"] = kw.pop("W_dec")
    t = reference_penalty_terms(idx, val, F, **kw)
    return t.value, t.ema, t.weights, t.counts


def original_code_penalty(idx, val, F, *, kind, k, tau=0.6):
    """The original runs' code path, written independently of the reference: binary masks,
    intersections = MᵀM, ``/(count + 1e-8)``, D = fᵀf / B, mean over F² with the diagonal."""
    B = idx.shape[0]
    f = torch.zeros(B, F + 1, dtype=torch.float64).scatter(1, idx, val.double())[:, :F]
    M = torch.zeros(B, F + 1, dtype=torch.float64).scatter(1, idx, 1.0)[:, :F]
    n = M.T @ M
    counts = n.diag()
    if kind == "orthogonality":
        W = n / (torch.minimum(counts[:, None], counts[None, :]) + 1e-8)
    else:
        c = n / (counts[:, None] + 1e-8) / (k / F)
        c = torch.where(c > tau, c, 0.0)
        W = torch.maximum(c, c.T)
    return (W * (f.T @ f / B) ** 2).sum() / F**2


@pytest.mark.parametrize("kind", ["orthogonality", "competition"])
def test_reference_matches_the_original_code(kind):
    idx, v = topk_batch(30, 40, 5, seed=11)
    got = ref_penalty(idx, v, 40, kind=kind, k=5)[0]
    want = original_code_penalty(idx, v, 40, kind=kind, k=5)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def topk_batch(B, F, K, seed, pad_frac=0.0):
    """A TopK-like code with skewed latent frequencies (so that pairs co-fire repeatedly); with
    ``pad_frac`` some slots become padding (index F, value 0) as for a ReLU SAE's active set."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, F, generator=g) + torch.linspace(2.0, 0.0, F)
    v, idx = logits.topk(K, dim=1)
    v = v.relu() + 0.1
    if pad_frac:
        drop = torch.rand(B, K, generator=g) < pad_frac
        idx = torch.where(drop, F, idx)
        v = torch.where(drop, 0.0, v)
    return idx, v


# ------------------------------------------------------------------ sparse == dense reference
CASES = list(itertools.product(
    ["orthogonality", "competition"],
    [("mean", True), ("sum", False)],  # as-run and as-described normalisation / diagonal
    ["activations", "decoder"],
    [1 << 22, 170],  # one block / many blocks (170 bins -> 3 latents per block at F = 50)
    [0.0, 0.3],  # TopK / padded active set
))
# the compiled kernel has no blocks: one bins value
BACKEND_CASES = [c + ("torch",) for c in CASES] + [c + ("kernel",) for c in CASES if c[3] == 1 << 22]


@pytest.mark.parametrize("kind,norm_diag,target,bins,pad,backend", BACKEND_CASES)
def test_sparse_matches_dense_reference(kind, norm_diag, target, bins, pad, backend):
    normalise, diag = norm_diag
    B, F, K, D = 40, 50, 6, 8
    idx, v = topk_batch(B, F, K, seed=CASES.index((kind, norm_diag, target, bins, pad)), pad_frac=pad)
    W0 = torch.randn(F, D, generator=torch.Generator().manual_seed(1))
    val, W = v.clone().requires_grad_(True), W0.clone().requires_grad_(True)
    res = coactivation_penalty(idx, val, F, kind=kind, k=K, normalise=normalise, include_diagonal=diag,
                               target=target, W_dec_FD=W, padded=pad > 0, block_bins=bins, backend=backend)
    res.value.backward()
    val_r, W_r = v.clone().requires_grad_(True), W0.clone().requires_grad_(True)
    p_ref, _, W_ref, n = ref_penalty(idx, val_r, F, kind=kind, k=K, normalise=normalise,
                                     include_diagonal=diag, target=target, W_dec=W_r)
    p_ref.backward()
    assert float(p_ref.detach()) > 0
    torch.testing.assert_close(res.value.detach().double(), p_ref.detach(), rtol=1e-5, atol=0)
    g, g_ref = (val.grad, val_r.grad) if target == "activations" else (W.grad, W_r.grad)
    torch.testing.assert_close(g.double(), g_ref.double(), rtol=1e-4, atol=1e-6 * float(g_ref.abs().max()))
    # diagnostics: off-diagonal statistic and the number of distinct co-firing pairs
    T = (torch.zeros(B, F + 1, dtype=torch.float64).scatter(1, idx, v.double())[:, :F])
    T = T.T @ T / B if target == "activations" else (
        torch.nn.functional.normalize(W0.double(), dim=1) @ torch.nn.functional.normalize(W0.double(), dim=1).T)
    off = (W_ref * T**2 * (n > 0)).sum() - (W_ref * T**2).diag().sum()
    torch.testing.assert_close(res.coact_stat.double(), off, rtol=1e-5, atol=0)
    n_pairs = int((n > 0).sum() - (n.diag() > 0).sum())
    assert int(res.pairs) == n_pairs


@pytest.mark.parametrize("kind", ["orthogonality", "competition"])
def test_block_cuts_do_not_change_the_result(kind):
    """Cuts by latent count (block_bins) and by instance count (block_instances, below one latent's
    share) give the same value and gradient as one block."""
    B, F, K = 64, 30, 5
    idx, v = topk_batch(B, F, K, seed=21)
    results = []
    for bins, inst in [(1 << 22, 1 << 22), (60, 1 << 22), (1 << 22, 7), (45, 13)]:
        val = v.clone().requires_grad_(True)
        res = coactivation_penalty(idx, val, F, kind=kind, k=K, block_bins=bins, block_instances=inst)
        res.value.backward()
        results.append((res.value.detach(), val.grad, res.pairs))
    for value, grad, pairs in results[1:]:
        torch.testing.assert_close(value, results[0][0], rtol=1e-6, atol=0)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-5, atol=1e-9)
        assert int(pairs) == int(results[0][2])


@pytest.mark.parametrize("kind", ["orthogonality", "competition"])
def test_kernel_matches_torch_pass_at_training_scale(kind):
    """On a TopK-shaped batch with skewed latent frequencies (B = 512, F = 1024, K = 32) the compiled
    kernel and the torch block pass give the same value, gradient and pair count (float rounding), and
    the kernel's result is bit-identical for 1, 2 and 3 threads (sums per latent, totals in latent order)."""
    B, F, K = 512, 1024, 32
    g = torch.Generator().manual_seed(5)
    freq = torch.rand(F, generator=g) ** 4 + 1e-3  # a few hot latents, a long tail
    idx = torch.multinomial(freq.expand(B, F), K, replacement=False, generator=g)
    v = torch.rand(B, K, generator=g) * 3
    out = {}
    for backend, threads in [("torch", 1), ("kernel", 1), ("kernel", 2), ("kernel", 3)]:
        val = v.clone().requires_grad_(True)
        res = coactivation_penalty(idx, val, F, kind=kind, k=K, tau=0.6, backend=backend, threads=threads)
        res.value.backward()
        out[backend, threads] = (res.value.detach(), val.grad, int(res.pairs), res.coact_stat)
    ref = out["torch", 1]
    assert float(ref[0]) > 0 and ref[2] > 0
    for key in [("kernel", 1), ("kernel", 2), ("kernel", 3)]:
        value, grad, pairs, stat = out[key]
        torch.testing.assert_close(value, ref[0], rtol=1e-5, atol=0)
        torch.testing.assert_close(stat, ref[3], rtol=1e-5, atol=0)
        torch.testing.assert_close(grad, ref[1], rtol=1e-4, atol=1e-6 * float(ref[1].abs().max()))
        assert pairs == ref[2]
    for key in [("kernel", 2), ("kernel", 3)]:
        assert torch.equal(out[key][0], out["kernel", 1][0]) and torch.equal(out[key][1], out["kernel", 1][1])


def test_backend_choice_and_errors():
    """"auto" takes the kernel for per-batch weights on CPU and the torch pass for the EMA reading;
    "kernel" refuses what it cannot run; an unknown backend is named in the error."""
    from saelib.penalties.sparse import use_kernel
    cpu = torch.device("cpu")
    assert use_kernel("auto", cpu, has_ema=False) and not use_kernel("auto", cpu, has_ema=True)
    assert not use_kernel("torch", cpu, has_ema=False)
    assert not use_kernel("auto", torch.device("meta"), has_ema=False)
    with pytest.raises(ValueError, match="per-batch weights only"):
        use_kernel("kernel", cpu, has_ema=True)
    with pytest.raises(ValueError, match="backend"):
        use_kernel("numba", cpu, has_ema=False)
    with pytest.raises(ValueError, match="backend"):
        resolve_config(PenaltyConfig(kind="orthogonality", backend="cuda"))


def test_gradient_matches_finite_differences():
    """The hand-written gradient also agrees with central differences of the sparse value itself."""
    B, F, K = 12, 20, 4
    idx, v = topk_batch(B, F, K, seed=3)
    v = v.double()
    val = v.clone().requires_grad_(True)
    res = coactivation_penalty(idx, val, F, kind="orthogonality", k=K, normalise="sum", include_diagonal=True)
    res.value.backward()
    for b, a in [(0, 0), (5, 2), (11, 3)]:
        e = torch.zeros_like(v)
        e[b, a] = 1e-3
        hi = coactivation_penalty(idx, v + e, F, kind="orthogonality", k=K, normalise="sum").value
        lo = coactivation_penalty(idx, v - e, F, kind="orthogonality", k=K, normalise="sum").value
        fd = (float(hi) - float(lo)) / 2e-3
        assert math.isclose(float(val.grad[b, a]), fd, rel_tol=2e-3)


# ------------------------------------------------------------------------- the spec's identity
def test_competition_identity_after_max_symmetrisation():
    """As run: S_ij = max(thr(c_ij), thr(c_ji)) == (F/k) w_ij 1[w_ij > tau k / F], entry by entry."""
    B, F, K, tau = 256, 40, 8, 0.6
    idx, v = topk_batch(B, F, K, seed=7)
    _, _, S, n = ref_penalty(idx, v, F, kind="competition", k=K, tau=tau)
    _, _, w, _ = ref_penalty(idx, v, F, kind="orthogonality", k=K)
    identity = (F / K) * w * (w > tau * K / F)
    torch.testing.assert_close(S, identity, rtol=1e-6, atol=1e-9)
    # the threshold is not vacuous in this batch: it removes some co-firing pairs and keeps others
    cofire = n > 0
    removed = cofire & (S == 0)
    assert int(removed.sum()) > 0 and int((cofire & (S > 0)).sum()) > int(removed.sum())
    # the sparse per-batch competition penalty therefore equals the 004 sum reweighted by this identity
    f = torch.zeros(B, F, dtype=torch.float64).scatter(1, idx, v.double())
    D = f.T @ f / B
    res = coactivation_penalty(idx, v, F, kind="competition", k=K, tau=tau, normalise="mean")
    torch.testing.assert_close(res.value.double(), (identity * D**2).sum() / F**2, rtol=1e-5, atol=0)


def test_competition_threshold_almost_never_binds_at_paper_ratio():
    """At the paper's F/k = 184.32 the threshold tau k/F = 0.0033 is below every w_ij >= 1/min(n_i, n_j)
    unless a latent fires on > 300 of the batch's tokens: no co-firing pair is removed."""
    B, F, K, tau = 256, 1843, 10, 0.6
    idx, v = topk_batch(B, F, K, seed=11)
    _, _, S, n = ref_penalty(idx, v, F, kind="competition", k=K, tau=tau)
    cofire = n > 0
    assert int(cofire.sum()) > 10_000
    assert int((cofire & (S == 0)).sum()) == 0


# ------------------------------------------------------------------------------------ schedules
def test_ramp_alpha_at_key_steps():
    assert ramp_alpha(0, 2000) == 0.0
    assert ramp_alpha(1000, 2000) == 0.5
    assert ramp_alpha(2000, 2000) == 1.0
    assert ramp_alpha(7000, 2000) == 1.0
    assert ramp_alpha(123, 0) == 1.0
    with pytest.raises(ValueError, match="step"):
        ramp_alpha(-1, 10)


@pytest.mark.parametrize("lam_mult", [1e-2, 1.0, 1e2])
def test_described_ramp_start_scales_with_lambda(lam_mult):
    """The 004 ramp is alpha 0.01 -> 0.075: a lambda sweep scales both ends (issue 12, finding 5)."""
    from saelib.variants import resolve_variant

    entry = {"arch": "topk", "k_over_d": 0.25, "penalty": {"kind": "orthogonality", "reading": "as_described",
                                                           "lam_mult": lam_mult}}
    run = {"sae_tokens": 64, "batch_size": 8, "warmup_scale": 0.2}
    rv = resolve_variant("v", entry, run, d_model=8)
    pen = make_penalty(rv.penalty_cfg, d_sae=64, k=2)
    lam = 0.075 * lam_mult
    assert rv.penalty_cfg.lam == pytest.approx(lam) and rv.penalty_cfg.ramp_steps == 200
    assert lam * pen.alpha(0) == pytest.approx(0.01 * lam_mult)
    assert lam * pen.alpha(100) == pytest.approx(lam * (0.01 + 0.075) / 2 / 0.075)
    assert lam * pen.alpha(200) == pytest.approx(lam)


@pytest.mark.parametrize("kind,reading,expected", [
    # CompeteSAE warmup alpha = min(1, t / t_w), lam = 0.01 (as run) / 0.03 (as described)
    ("competition", "as_run", [0.0, 0.005, 0.01, 0.01]),
    ("competition", "as_described", [0.0, 0.015, 0.03, 0.03]),
    # 004 as described: lam * alpha ramps 0.01 -> 0.075 over 1000 steps; as run: constant 0.075
    ("orthogonality", "as_described", [0.01, 0.0425, 0.075, 0.075]),
    ("orthogonality", "as_run", [0.075, 0.075, 0.075, 0.075]),
])
def test_penalty_weight_schedule(kind, reading, expected):
    pen = make_penalty(PenaltyConfig(kind=kind, reading=reading), d_sae=30, k=4)
    t_w = pen.cfg.ramp_steps or 1000
    idx, v = topk_batch(16, 30, 4, seed=5)
    val = v.clone().requires_grad_(True)
    for t, want in zip([0, t_w // 2, t_w, 3 * t_w], expected):
        logs = pen(_Out(None, None, idx, val, {}), None, t)
        assert math.isclose(float(logs["penalty_lambda"] * logs["penalty_alpha"]), want, rel_tol=1e-6, abs_tol=1e-12)
        l1 = pen.cfg.l1_coef * float(v.abs().sum(1).mean())
        assert math.isclose(float(logs["penalty_l1"]), l1, rel_tol=1e-6)
        assert math.isclose(float(logs["penalty"].detach()), want * float(logs["penalty_raw"]) + l1, rel_tol=1e-5)


def test_reading_defaults_follow_the_spec():
    run = resolve_config(PenaltyConfig(kind="competition", reading="as_run"))
    assert (run.lam, run.ramp_steps, run.ema_decay, run.l1_coef, run.normalise, run.include_diagonal) == (
        0.01, 2000, 0.0, 0.0, "mean", True)
    desc = resolve_config(PenaltyConfig(kind="competition", reading="as_described"))
    assert (desc.lam, desc.ramp_steps, desc.ema_decay, desc.l1_coef, desc.normalise, desc.tau) == (
        0.03, 2000, 0.99, 0.04, "sum", 0.6)
    o_desc = resolve_config(PenaltyConfig(kind="orthogonality", reading="as_described", ramp_steps=250))
    assert (o_desc.lam, o_desc.ramp_steps) == (0.075, 250)  # explicit field wins
    assert o_desc.lam * o_desc.ramp_start_frac == pytest.approx(0.01)  # alpha starts at 0.01
    # both papers write the sum as Sigma_{i,j}: the as-described readings include the diagonal
    assert o_desc.include_diagonal and desc.include_diagonal
    assert not resolve_config(PenaltyConfig(kind="competition", reading="as_described",
                                            include_diagonal=False)).include_diagonal
    with pytest.raises(ValueError, match="ramp_start_frac"):
        resolve_config(PenaltyConfig(kind="orthogonality", ramp_start_frac=1.5))
    assert set(READING_DEFAULTS) == {(k, r) for k in ("orthogonality", "competition", "l1")
                                     for r in ("as_run", "as_described")}


# ------------------------------------------------------------------------------------------ EMA
@pytest.mark.parametrize("pad", [0.0, 0.3])
def test_ema_matches_dense_recursion_including_unrefreshed_entries(pad):
    B, F, K, d = 30, 40, 5, 0.9
    ema_dense, ema_sparse = DenseCoefEMA(F, d), SparseCoefEMA(F, d, capacity=10**9, floor=0.0)
    E = torch.zeros(F, F, dtype=torch.float64)
    first_pairs = None
    for t in range(6):
        idx, v = topk_batch(B, F, K, seed=100 + t, pad_frac=pad)
        for ema, bins in ((ema_dense, 1 << 22), (ema_sparse, 100)):
            val = v.clone().requires_grad_(True)
            res = coactivation_penalty(idx, val, F, kind="competition", k=K, normalise="sum",
                                       include_diagonal=False, ema=ema, block_bins=bins, padded=pad > 0)
            res.value.backward()
            val_r = v.clone().requires_grad_(True)
            p_ref, E_new, _, n = ref_penalty(idx, val_r, F, kind="competition", k=K, normalise="sum",
                                             include_diagonal=False, ema_prev=E, decay=d)
            p_ref.backward()
            torch.testing.assert_close(ema.dense().double(), E_new, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(res.value.double(), p_ref.detach(), rtol=1e-5, atol=0)
            torch.testing.assert_close(val.grad, val_r.grad, rtol=1e-4, atol=1e-5)
        if first_pairs is None:
            first_pairs = n > 0
        E = E_new
    # an entry set at step 0 and never refreshed has decayed by d per step: c0 (1-d) d^5
    stale = first_pairs & (E > 0)
    assert bool(stale.any())
    torch.testing.assert_close(ema_dense.dense().double(), E, rtol=1e-5, atol=1e-6)


def test_ema_single_entry_update_by_hand():
    """Two latents that always fire together (k = 2, F = 4): c_01 = (F/k) n_01 / n_1 = 2 every step,
    so after t steps c_hat = 2 (1 - d^t); a pair seen once then never again decays as d^t."""
    F, K, d = 4, 2, 0.99
    ema = DenseCoefEMA(F, d)
    together = torch.tensor([[0, 1]] * 8)
    for _ in range(3):
        coactivation_penalty(together, torch.ones(8, 2), F, kind="competition", k=K, ema=ema)
    assert math.isclose(float(ema.dense()[0, 1]), 2 * (1 - d**3), rel_tol=1e-6)
    once = torch.tensor([[2, 3]] * 8)
    coactivation_penalty(once, torch.ones(8, 2), F, kind="competition", k=K, ema=ema)
    for _ in range(4):
        coactivation_penalty(together, torch.ones(8, 2), F, kind="competition", k=K, ema=ema)
    assert math.isclose(float(ema.dense()[2, 3]), 2 * (1 - d) * d**4, rel_tol=1e-6)
    assert math.isclose(float(ema.dense()[0, 1]), 2 * (1 - d**3) * d**5 + 2 * (1 - d**4), rel_tol=1e-6)


def test_ema_rescales_before_underflow():
    F, K, d = 6, 2, 0.5
    ema = DenseCoefEMA(F, d)
    idx = torch.tensor([[0, 1]] * 4)
    for _ in range(150):  # 0.5**150 ~ 7e-46 would underflow fp32 without the rescale
        coactivation_penalty(idx, torch.ones(4, 2), F, kind="competition", k=K, ema=ema)
    assert ema.scale > 1e-30
    assert math.isclose(float(ema.dense()[0, 1]), F / K * (1 - d**150), rel_tol=1e-6)


def test_sparse_ema_capacity_keeps_the_largest_entries():
    """Over capacity the smallest entries are evicted: after one step the kept ones are exactly the
    dense EMA's largest; later an evicted pair that co-fires again restarts from 0, so the capped map
    can only under-estimate (never over-estimate) the exact EMA."""
    B, F, K, d = 30, 40, 5, 0.9
    dense, capped = DenseCoefEMA(F, d), SparseCoefEMA(F, d, capacity=150, floor=0.0)
    for t in range(4):
        idx, v = topk_batch(B, F, K, seed=200 + t)
        coactivation_penalty(idx, v, F, kind="competition", k=K, ema=dense)
        res = coactivation_penalty(idx, v, F, kind="competition", k=K, ema=capped)
        assert res.ema["ema_entries"] == 150
        full, kept = dense.dense().flatten(), capped.dense().flatten()
        assert int((kept > 0).sum()) == 150
        if t == 0:
            assert res.ema["ema_evicted"] == int((full > 0).sum()) - 150 > 0
            torch.testing.assert_close(kept[kept > 0], full[kept > 0], rtol=1e-6, atol=0)
            assert float(full[kept == 0].max()) <= float(kept[kept > 0].min())
        assert bool((kept <= full * (1 + 1e-6)).all())
    assert capped.evicted > 0


def test_ema_frozen_in_eval_and_restored_from_state_dict():
    cfg = PenaltyConfig(kind="competition", reading="as_described", ema_decay=0.9)
    pen = make_penalty(cfg, d_sae=30, k=4)
    for t in range(3):
        idx, v = topk_batch(16, 30, 4, seed=300 + t)
        pen(_Out(None, None, idx, v, {}), None, 2000 + t)
    before = pen.ema.dense().clone()
    pen.eval()
    idx, v = topk_batch(16, 30, 4, seed=400)
    eval_logs = pen(_Out(None, None, idx, v, {}), None, 5000)
    torch.testing.assert_close(pen.ema.dense(), before, rtol=0, atol=0)
    clone = make_penalty(cfg, d_sae=30, k=4)
    clone.load_state_dict(pen.state_dict())
    clone.eval()
    torch.testing.assert_close(clone(_Out(None, None, idx, v, {}), None, 5000)["penalty_raw"],
                               eval_logs["penalty_raw"], rtol=0, atol=0)
    assert float(eval_logs["penalty_raw"]) > 0


def test_auto_ema_storage_threshold():
    small = make_penalty(PenaltyConfig(kind="competition", reading="as_described"), d_sae=64, k=4)
    assert isinstance(small.ema, DenseCoefEMA)
    tiny_budget = PenaltyConfig(kind="competition", reading="as_described", ema_dense_max_mb=0.01)
    assert isinstance(make_penalty(tiny_budget, d_sae=64, k=4).ema, SparseCoefEMA)  # 16 KiB > 10 KiB


# ---------------------------------------------------------------------- dense SAEs (ReLU etc.)
def test_active_set_from_dense_latents_with_variable_l0():
    B, F = 24, 30
    g = torch.Generator().manual_seed(9)
    f0 = torch.relu(torch.randn(B, F, generator=g) - 0.8)  # ~20% non-zero, varying per row
    f0[3] = 0.0  # a token with no active latent
    f = f0.clone().requires_grad_(True)
    idx, val, padded = active_set(_Out(None, f, None, None, {}), F)
    assert padded and idx.shape[1] == int((f0 != 0).sum(1).max())
    cfg = PenaltyConfig(kind="orthogonality", reading="as_described", include_diagonal=True, lam=1.0,
                        ramp_steps=0, l1_coef=0.0)
    pen = make_penalty(cfg, F, k=6)
    pen(_Out(None, f, None, None, {}), None, 0)["penalty"].backward()  # = P here (lam = 1, no L1)
    # reference on the dense latents directly
    fr = f0.clone().double().requires_grad_(True)
    M = (fr != 0).double()
    n = M.T @ M
    w = n / (torch.minimum(n.diag()[:, None], n.diag()[None, :]) + 1e-8)
    D = fr.T @ fr / B
    p_ref = (w * D**2).sum()
    p_ref.backward()
    res = pen(_Out(None, f0, None, None, {}), None, 10_000)
    torch.testing.assert_close(res["penalty_raw"].double(), p_ref.detach(), rtol=1e-5, atol=0)
    # the gradient reaches the active entries only (ReLU/TopK pass no gradient to inactive ones anyway)
    live = f0 != 0
    torch.testing.assert_close(f.grad.double()[live], fr.grad[live], rtol=1e-4, atol=1e-8)
    assert float(f.grad[~live].abs().max()) == 0.0


# ----------------------------------------------------------------------------- errors / config
def test_clear_errors():
    with pytest.raises(ValueError, match="kind"):
        make_penalty(PenaltyConfig(kind="orthogonal"), 10, 2)
    with pytest.raises(ValueError, match="reading"):
        make_penalty(PenaltyConfig(kind="competition", reading="as_written"), 10, 2)
    with pytest.raises(ValueError, match="target"):
        make_penalty(PenaltyConfig(kind="competition", target="weights"), 10, 2)
    with pytest.raises(ValueError, match="ema_decay"):
        make_penalty(PenaltyConfig(kind="orthogonality", ema_decay=0.99), 10, 2)
    assert make_penalty(PenaltyConfig(kind="none"), 10, 2) is None
    assert make_penalty(PenaltyConfig(kind="orthogonality"), 10, 0) is not None  # k unused there
    with pytest.raises(ValueError, match="nominal L0"):
        make_penalty(PenaltyConfig(kind="competition"), 10, 0)
    idx, v = topk_batch(8, 10, 3, seed=0)
    with pytest.raises(ValueError, match=r"\(B, K\)"):
        coactivation_penalty(idx, v[:, :2], 10, kind="orthogonality", k=3)
    with pytest.raises(ValueError, match="lie in"):
        coactivation_penalty(idx + 5, v, 10, kind="orthogonality", k=3)
    with pytest.raises(ValueError, match="NaN"):
        coactivation_penalty(idx, v.masked_fill(v > 1, float("nan")), 10, kind="orthogonality", k=3)
    with pytest.raises(ValueError, match="W_dec_FD"):
        coactivation_penalty(idx, v, 10, kind="orthogonality", k=3, target="decoder")
    pen = make_penalty(PenaltyConfig(kind="orthogonality"), 10, 3)
    with pytest.raises(ValueError, match="needs_dense_latents"):
        pen(_Out(None, None, None, None, {}), None, 0)


# ----------------------------------------------------------------------------- a training run
def _synthetic_data(n, d, seed):
    """Tokens built from 24 ground-truth directions that fire in correlated groups of three, so that an
    SAE's latents co-fire in structured ways."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(24, d, generator=torch.Generator().manual_seed(0)), dim=1)
    groups = torch.randint(0, 8, (n, 2), generator=g)
    act = torch.zeros(n, 24)
    for c in range(2):
        for m in range(3):
            act[torch.arange(n), groups[:, c] * 3 + m] += torch.rand(n, generator=g) + 0.5
    return act @ dirs + 0.05 * torch.randn(n, d, generator=g)


@functools.lru_cache(maxsize=None)
def _train(lam, kind, steps=60, seed=0):
    from saelib.sae import make_sae
    from saelib.sae.topk import TopKConfig

    d, F, K, B = 16, 48, 6, 128
    torch.manual_seed(seed)
    sae = make_sae("topk", TopKConfig(d_in=d, d_sae=F, k=K, seed=seed))
    x_all = _synthetic_data(steps * B, d, seed=1)
    sae.init_from_batch_(x_all[:B])
    pen = make_penalty(PenaltyConfig(kind=kind, reading="as_described", lam=lam, ramp_steps=0, ramp_start_frac=0.0,
                                     l1_coef=0.0, ema_decay=0.0 if kind == "orthogonality" else 0.9), F, K)
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    for t in range(steps):
        sae.normalize_decoder_()
        out = sae(x_all[t * B:(t + 1) * B], step=t, dense_latents=False)
        loss = out.losses["mse"] + pen(out, sae, t)["penalty"]
        opt.zero_grad()
        loss.backward()
        sae.remove_parallel_decoder_grad_()
        opt.step()
    x_eval = _synthetic_data(1024, d, seed=2)
    with torch.no_grad():
        out = sae(x_eval, dense_latents=False)
        stat = coactivation_penalty(out.idx_BK, out.val_BK, F, kind="orthogonality", k=K, normalise="sum",
                                    include_diagonal=False).coact_stat
    return float(stat), float(out.losses["mse"])


@pytest.mark.parametrize("kind", ["orthogonality", "competition"])
def test_training_with_large_lambda_lowers_the_targeted_statistic(kind):
    """Same data, seed and steps; only λ differs. The co-activation statistic the penalty targets,
    sum_{i != j} w_ij D_ij^2 on held-out tokens, ends far lower with a large λ."""
    pytest.importorskip("saelib.sae")
    stat0, mse0 = _train(0.0, "orthogonality")  # λ = 0: the two kinds train identically
    stat1, mse1 = _train(1.0 if kind == "orthogonality" else 0.2, kind)
    assert stat0 > 0
    assert stat1 < 0.5 * stat0, (stat0, stat1)  # measured: 0.29 (orthogonality), 0.24 (competition)
    assert mse1 < 10 * mse0  # it still reconstructs


def test_penalty_plugs_into_the_trainer_step():
    """The module's output is what ``saelib.train.train_step`` expects: it adds "penalty" to the loss and
    the gradient reaches the encoder through val_BK."""
    train = pytest.importorskip("saelib.train")
    from saelib.sae import make_sae
    from saelib.sae.topk import TopKConfig

    sae = make_sae("topk", TopKConfig(d_in=16, d_sae=48, k=6))
    x = _synthetic_data(64, 16, seed=3)
    sae.init_from_batch_(x)
    cfg = train.TrainConfig(total_tokens=640, batch_size=64)
    opt = train.make_optimizer(sae, cfg, 1e-3)
    pen = make_penalty(PenaltyConfig(kind="competition", reading="as_described", lam=0.5, ramp_steps=0), 48, 6)
    res = train.train_step(sae, opt, x, step=0, lr=1e-3, cfg=cfg, penalty=pen)
    base = float(res.out.losses["loss"].detach())
    assert math.isclose(float(res.loss.detach()), base + float(res.penalty["penalty"].detach()), rel_tol=1e-5)
    assert {"penalty_raw", "penalty_alpha", "coact_stat", "coact_pairs", "penalty_l1"} <= set(res.penalty)
    assert float(res.penalty["penalty_l1"]) > 0 and float(res.penalty["coact_pairs"]) > 0


def test_l1_control_has_only_the_l1_term():
    pen = make_penalty(PenaltyConfig(kind="l1"), d_sae=30, k=4)
    assert pen.cfg.l1_coef == 0.04 and pen.cfg.lam == 0.0
    idx, v = topk_batch(16, 30, 4, seed=2)
    val = v.clone().requires_grad_(True)
    logs = pen(_Out(None, None, idx, val, {}), None, 0)
    want = 0.04 * float(v.abs().sum(1).mean())
    assert float(logs["penalty"].detach()) == pytest.approx(want, rel=1e-6)
    assert float(logs["penalty_l1"]) == pytest.approx(want, rel=1e-6) and float(logs["penalty_coact"]) == 0.0
    logs["penalty"].backward()
    torch.testing.assert_close(val.grad, torch.full_like(v, 0.04 / 16))
    with pytest.raises(ValueError, match="lam must be 0"):
        resolve_config(PenaltyConfig(kind="l1", lam=0.1))


def test_kernel_refuses_a_latent_listed_twice_in_a_token():
    """n_ij and D_ij assume a set of active latents per token: the kernel names a repeated latent instead of
    returning a silently different sum; out-of-range indices are refused before its unchecked loops."""
    from saelib.penalties import kernel
    idx = torch.tensor([[0, 3, 5], [2, 3, 3]])
    v = torch.ones(2, 3)
    with pytest.raises(ValueError, match=r"latent\(s\) \[3\] twice"):
        kernel.pair_pass(idx, v, 8, padded=False, kind="orthogonality", k=3, tau=0.0, want_grad=True,
                         want_q=False, threads=1)
    with pytest.raises(ValueError, match="must lie in"):
        kernel.pair_pass(idx + 6, v, 8, padded=False, kind="orthogonality", k=3, tau=0.0, want_grad=True,
                         want_q=False, threads=1)
    pad = torch.tensor([[0, 8, 8], [2, 3, 8]])  # the padding index may repeat; padding slots carry nothing
    off, pairs, g, _ = kernel.pair_pass(pad, v, 8, padded=True, kind="orthogonality", k=3, tau=0.0,
                                        want_grad=True, want_q=False, threads=1)
    # only (2, 3) co-fire: w = 1, B D = 1 in both rows; slot gradients W (B D) f_partner = 1
    assert off == 2.0 and g.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
