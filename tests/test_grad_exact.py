"""The co-activation penalty's gradient survives bf16 autocast on both TopK backward implementations.

Issue 12, finding 1: on the dense backward the penalty gradient used to be rounded into the bf16 MSE
gradient, so small penalties changed nothing. Here (a) a few training steps with λ > 0 and λ = 0 must
give different parameters, and (b) the penalty's contribution to ``W_enc.grad`` (with minus without)
must point the same way as an fp32-everywhere reference, for penalty/MSE gradient ratios 1e-6..1e-2.
"""
from __future__ import annotations

import pytest
import torch

from saelib.penalties import PenaltyConfig, make_penalty
from saelib.penalties.reference import reference_penalty
from saelib.sae import TopKConfig, make_sae
import saelib.train as train_mod
from saelib.train import TrainConfig, make_optimizer, train_step

D, F, B = 32, 256, 128
PATHS = {"sparse": 4, "dense": 16}  # k: sparse needs k * 64 <= F


def _x(seed=0, scale=8.0):
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(40, D, generator=g)
    codes = (torch.rand(B, 40, generator=g) < 0.2).float() * torch.rand(B, 40, generator=g)
    return ((codes @ dirs) * scale + 3.0).to(torch.bfloat16)


def _sae(impl):
    sae = make_sae("topk", TopKConfig(d_in=D, d_sae=F, k=PATHS[impl], backward_impl=impl, seed=3))
    sae.init_from_batch_(_x())
    assert sae.cfg.sparse_backward == (impl == "sparse")
    return sae


def _cos(a, b):
    return float(torch.nn.functional.cosine_similarity(a.reshape(1, -1).double(), b.reshape(1, -1).double()))


@pytest.mark.parametrize("impl", list(PATHS))
def test_three_steps_with_and_without_penalty_differ(impl, monkeypatch):
    monkeypatch.setattr(train_mod, "bf16_matmul_is_fast", lambda device_type: True)  # bf16 even on AVX2-only CPUs
    x = _x()
    params = {}
    lam_on = 1e-3  # penalty/MSE value ratio ~6e-7, inside the real runs' 1e-6..6e-3 (bf16 erased it here)
    for lam in (0.0, lam_on):
        torch.manual_seed(0)
        sae = _sae(impl)
        pen = make_penalty(PenaltyConfig(kind="orthogonality", reading="as_run", lam=lam), F, PATHS[impl]) if lam else None
        cfg = TrainConfig(total_tokens=3 * B, batch_size=B, lr=1e-3)
        opt = make_optimizer(sae, cfg, 1e-3)
        for step in range(3):
            res = train_step(sae, opt, x, step=step, lr=1e-3, cfg=cfg, penalty=pen)
        if pen is not None:  # the regime of the issue: the penalty is a tiny part of the loss
            assert 0 < float(res.penalty["penalty"].detach()) < 1e-5 * float(res.out.losses["mse"].detach())
        params[lam] = {n: p.detach().clone() for n, p in sae.named_parameters()}
    for name in ("W_enc", "b_enc", "W_dec"):
        assert not torch.equal(params[0.0][name], params[lam_on][name]), name


def _w_enc_grad(sae, x, pen, scale):
    sae.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sae(x, step=0, dense_latents=False)
        loss = out.losses["loss"]
        if scale:
            loss = loss + scale * pen(out, sae, 0)["penalty"]
    loss.backward()
    return sae.W_enc.grad.detach().clone(), out.idx_BK


def _fp32_reference_grad(sae, x, idx_BK, kind):
    """The penalty alone, fp32 everywhere, by the dense F x F reference, at the same active set."""
    W = sae.W_enc.detach().clone().requires_grad_(True)
    pre_BF = (x.float() - sae.b_dec.detach()) @ W + sae.b_enc.detach()
    val_BK = pre_BF.gather(1, idx_BK).relu()
    reference_penalty(idx_BK, val_BK, F, kind=kind, k=idx_BK.shape[1]).backward()
    return W.grad


@pytest.mark.parametrize("impl", list(PATHS))
@pytest.mark.parametrize("kind", ["orthogonality", "competition"])
def test_penalty_gradient_contribution_matches_fp32_reference(impl, kind):
    x = _x(seed=1)
    sae = _sae(impl)
    pen = make_penalty(PenaltyConfig(kind=kind, reading="as_run", lam=1.0, ramp_steps=0, tau=0.0), F, PATHS[impl])
    g0, idx_BK = _w_enc_grad(sae, x, pen, 0.0)
    ref = _fp32_reference_grad(sae, x, idx_BK, kind)
    assert float(ref.norm()) > 0
    for ratio in (1e-6, 1e-5, 1e-4, 1e-3, 1e-2):
        scale = ratio * float(g0.norm()) / float(ref.norm())
        g1, idx1 = _w_enc_grad(sae, x, pen, scale)
        assert torch.equal(idx1, idx_BK)
        contribution = g1 - g0
        assert _cos(contribution, ref) >= 0.99, (impl, kind, ratio, _cos(contribution, ref))
        assert float(contribution.norm()) == pytest.approx(scale * float(ref.norm()), rel=0.05)


@pytest.mark.parametrize("impl", list(PATHS))
def test_loss_on_val_reaches_every_encoder_parameter_exactly(impl):
    """A loss on ``out.val_BK`` alone: gradients of W_enc, b_enc and b_dec equal a float64 autograd
    reference at the same active set (fp32 compute, no autocast)."""
    x = _x(seed=2).float()
    sae = _sae(impl)
    out = sae(x, dense_latents=False)
    (out.val_BK.pow(2).sum() / B).backward()
    p = {n: t.detach().double().requires_grad_(True) for n, t in sae.named_parameters()}
    pre = (x.double() - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    (pre.gather(1, out.idx_BK).relu().pow(2).sum() / B).backward()
    for name in ("W_enc", "b_enc", "b_dec"):
        g, ref = getattr(sae, name).grad.double(), p[name].grad
        torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max())), name
    assert sae.W_dec.grad is None or float(sae.W_dec.grad.abs().max()) == 0.0
