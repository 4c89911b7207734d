"""SCR oracle headroom (remove the spurious probe's direction) on synthetic residuals with known answers."""
import numpy as np
import pytest
import torch

from saelib.evals.probing import ProbeTrainConfig
from saelib.evals.scr import ScrConfig
from saelib.evals.scr_headroom import MIN_ORACLE_S, oracle_headroom_from_quadrants, remove_direction

# the probe the default profile uses for SCR (centred inputs, last epoch; params.yaml profiles.default.scr)
CFG = ScrConfig(probe=ProbeTrainConfig(min_steps=400, seed=0, normalize_inputs=True, select_on_test=False))


def _synthetic(signal_a, signal_b, *, n_train=48, n_test=32, d=6, seed=0):
    """Pooled residuals of four quadrants: x = offset + Σ_k signal_k(a, b) e_k + noise. ``signal_a``
    and ``signal_b`` map (a, b) ∈ {0,1}² to the per-dimension mean shift vector (length d)."""
    rng = np.random.default_rng(seed)
    xs, quads = [], {"train": {}, "test": {}}
    offset = rng.normal(0, 5, d)
    n = 0
    for split, size in (("train", n_train), ("test", n_test)):
        for q, (a, b) in {"pp": (1, 1), "pn": (1, 0), "np": (0, 1), "nn": (0, 0)}.items():
            k = 2 * size if q in ("pp", "nn") else size
            mean = offset + signal_a(a, b) + signal_b(a, b)
            xs.append(mean + rng.normal(0, 1, (k, d)))
            quads[split][q] = np.arange(n, n + k)
            n += k
    return torch.tensor(np.concatenate(xs), dtype=torch.float32), quads


def _axis(k, scale, d=6):
    def f(a, b, k=k):
        v = np.zeros(d)
        v[k] = scale
        return v
    return f


def test_remove_direction_sets_the_projection_and_keeps_the_rest():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(20, 5, generator=g) * 3 + 1
    u = torch.tensor([1.0, 2.0, 0.0, -1.0, 0.5])
    c = torch.randn(5, generator=g)
    out = remove_direction(x, u, c)
    u_hat = u / u.norm()
    assert torch.allclose(out @ u_hat, torch.full((20,), float(c @ u_hat)), atol=1e-5)
    # the orthogonal complement is untouched
    P = torch.eye(5) - torch.outer(u_hat, u_hat)
    assert torch.allclose(out @ P, x @ P, atol=1e-5)
    assert torch.allclose(remove_direction(out, u * 7, c), out, atol=1e-5)  # idempotent, scale-free
    assert torch.allclose(remove_direction(x, u) @ u_hat, torch.zeros(20), atol=1e-5)
    with pytest.raises(ValueError, match="zero"):
        remove_direction(x, torch.zeros(5))
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        remove_direction(x[:, :3], u)


def test_orthogonal_attributes_have_full_headroom():
    # A along e0, B along e1, equally loud: the biased probe (pp vs nn) leans on both, scoring ~0.75 on
    # A's balanced test set; removing B's probe direction leaves it on e0 alone -> ~1.0, S ~ 1.
    a = lambda a_, b_: np.eye(6)[0] * (3.0 if a_ else -3.0)
    b = lambda a_, b_: np.eye(6)[1] * (3.0 if b_ else -3.0)
    x, quads = _synthetic(a, b)
    res = oracle_headroom_from_quadrants(x, quads, cfg=CFG)
    h = res[1]
    assert 0.5 <= h.acc_biased <= 0.9
    assert h.acc_oracle >= 0.95 and h.acc_removed >= 0.95
    assert h.s_oracle >= 0.85 and h.trusted
    assert h.removed_probe_acc <= 0.65  # B is no longer readable by its own probe
    assert res[2].s_oracle >= 0.85  # symmetric task: the same in direction 2


def test_attributes_sharing_one_direction_have_no_headroom():
    # A and B add along the same axis: the mixed quadrants coincide, so A's own probe is no better than
    # the biased one (denominator ~0) and removing "B" removes A too: S_oracle = 0 and the task is untrusted.
    a = lambda a_, b_: np.eye(6)[0] * (3.0 if a_ else -3.0)
    b = lambda a_, b_: np.eye(6)[0] * (3.0 if b_ else -3.0)
    x, quads = _synthetic(a, b, seed=1)
    h = oracle_headroom_from_quadrants(x, quads, cfg=CFG)[1]
    assert h.s_oracle < MIN_ORACLE_S and not h.trusted
    assert h.acc_removed <= 0.65  # nothing of A survives the removal


def test_rounds_must_be_positive():
    a = lambda a_, b_: np.eye(6)[0] * (3.0 if a_ else -3.0)
    b = lambda a_, b_: np.eye(6)[1] * (3.0 if b_ else -3.0)
    x, quads = _synthetic(a, b, n_train=8, n_test=4)
    with pytest.raises(ValueError, match="rounds"):
        oracle_headroom_from_quadrants(x, quads, cfg=CFG, rounds=0)


def test_extra_rounds_remove_orthogonal_directions_that_stay_removed():
    # B along an oblique direction (3 e1 + 2 e2): later rounds add directions orthogonal to the first, so the
    # first removal is never undone (the original B probe stays at chance) and S_oracle stays high
    a = lambda a_, b_: np.eye(6)[0] * (3.0 if a_ else -3.0)
    b = lambda a_, b_: (np.eye(6)[1] * 3.0 + np.eye(6)[2] * 2.0) * (1 if b_ else -1)
    x, quads = _synthetic(a, b, seed=2)
    one = oracle_headroom_from_quadrants(x, quads, cfg=CFG, rounds=1)[1]
    three = oracle_headroom_from_quadrants(x, quads, cfg=CFG, rounds=3)[1]
    assert three.rounds >= 2 and three.removed_probe_acc <= 0.65 and one.removed_probe_acc <= 0.65
    assert three.s_oracle >= 0.85 and three.s_oracle >= one.s_oracle - 0.05
