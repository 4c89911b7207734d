"""Variant resolution of the issue-12 controls: the matched L1 rules, the L1 controls, five seeds."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from saelib.l1_calibration import L1Calibration
from saelib.sae import ReLUConfig, make_sae
from saelib.variants import (
    PAPER_ACTIVATION_RMS, PAPER_D_MODEL, activation_rms, matched_l1_coef, needs_activation_rms, needs_l1_calibration,
    resolve_variant,
)

ROOT = Path(__file__).resolve().parents[1]
RUN = {"sae_tokens": 4096, "batch_size": 2048, "warmup_scale": 0.2}


@pytest.fixture(scope="module")
def params():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


class _Cache:
    def __init__(self, x):
        self.x = x

    def iter_batches(self, batch_size, *, seed=0, shuffle=True, drop_last=True):
        assert not shuffle
        for s in range(0, self.x.shape[0], batch_size):
            yield self.x[s:s + batch_size]


def test_activation_rms_is_the_centred_per_token_norm():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 16, generator=g) * 3 + 50.0
    want = math.sqrt(float((x.double() - x.double().mean(0)).pow(2).sum(1).mean()))
    assert activation_rms(_Cache(x), batch_size=300) == pytest.approx(want, rel=1e-9)
    uncentred = math.sqrt(float(x.double().pow(2).sum(1).mean()))  # SAEBench's normalising scale
    assert activation_rms(_Cache(x), batch_size=300, centred=False) == pytest.approx(uncentred, rel=1e-9)
    part = math.sqrt(float((x[:500].double() - x[:500].double().mean(0)).pow(2).sum(1).mean()))
    assert activation_rms(_Cache(x), max_tokens=500, batch_size=300) == pytest.approx(part, rel=1e-9)


def test_the_rule_rests_on_the_loss_scaling_identity():
    """loss(s·x; s·λ) = s²·loss(x; λ) for a ReLU SAE whose biases scale with x: λ must scale with ‖x‖."""
    s, lam = 7.5, 0.3
    sae = make_sae("relu", ReLUConfig(d_in=8, d_sae=32, l1_coef=lam, l1_warmup_steps=0, seed=1))
    big = make_sae("relu", ReLUConfig(d_in=8, d_sae=32, l1_coef=lam * s, l1_warmup_steps=0, seed=1))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 1.0)
        big.load_state_dict({"W_enc": sae.W_enc, "W_dec": sae.W_dec, "b_enc": sae.b_enc * s, "b_dec": sae.b_dec * s})
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(2))
    small_loss = sae(x, step=None).losses["loss"]
    big_loss = big(x * s, step=None).losses["loss"]
    torch.testing.assert_close(big_loss, small_loss * s**2, rtol=1e-5, atol=0)
    assert matched_l1_coef(lam, s * PAPER_ACTIVATION_RMS, ref_d=1) == pytest.approx(lam * s)


def test_the_rule_converts_a_per_element_coefficient_to_our_summed_loss():
    """d · [(1/d)‖x − x̂‖² + λ‖f‖₁] is our summed loss with coefficient λ·d (step 1 of the rule)."""
    d, lam = 8, 0.04
    sae = make_sae("relu", ReLUConfig(d_in=d, d_sae=32, l1_coef=lam * d, l1_warmup_steps=0, seed=3))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
    x = torch.randn(64, d, generator=torch.Generator().manual_seed(4))
    out = sae(x, step=None)
    f = sae.encode(x)
    per_element = (out.x_hat_BD - x).pow(2).mean(-1).mean() + lam * f.sum(-1).mean()
    torch.testing.assert_close(out.losses["loss"], d * per_element, rtol=1e-5, atol=0)
    assert matched_l1_coef(lam, PAPER_ACTIVATION_RMS, ref_d=d) == pytest.approx(lam * d)
    assert matched_l1_coef(lam, 2 * PAPER_ACTIVATION_RMS) == pytest.approx(lam * PAPER_D_MODEL * 2)
    assert PAPER_D_MODEL == 2304
    with pytest.raises(ValueError, match="ref_d"):
        matched_l1_coef(lam, 1.0, ref_d=0)


CAL = L1Calibration(coef_normalized=0.11, input_scale=5000.0, target_l0=13.4)


def test_matched_variants_scale_every_l1_coefficient_by_the_calibration(params):
    V = params["sae_variants"]
    relu = resolve_variant("relu_l1_matched", V["relu_l1_matched"], RUN, d_model=640, l1_calibration=CAL)
    # the ReLU SAE trains in normalised units with the calibrated coefficient itself (its value is the papers' 0.04)
    assert relu.sae_cfg.units == "normalized" and relu.sae_cfg.l1_coef == pytest.approx(0.11)
    for name in ("compete_described_matched", "ortho_described_matched", "topk_l1_matched", "topk_k100_l1_matched"):
        rv = resolve_variant(name, V[name], RUN, d_model=640, l1_calibration=CAL)
        # a penalty's L1 term acts on a raw-units TopK SAE: the coefficient times the calibration's input scale
        assert rv.penalty_cfg.l1_coef == pytest.approx(0.11 * 5000.0), name
        twin = name.replace("_matched", "")
        literal = resolve_variant(twin, V[twin], RUN, d_model=640)
        assert literal.penalty_cfg.l1_coef == 0.04
        assert (literal.penalty_cfg.kind, literal.penalty_cfg.lam, literal.sae_cfg.k) == (
            rv.penalty_cfg.kind, rv.penalty_cfg.lam, rv.sae_cfg.k)
    assert needs_l1_calibration(V["relu_l1_matched"]) and not needs_l1_calibration(V["relu_l1"])
    with pytest.raises(ValueError, match="l1_calibration"):
        resolve_variant("relu_l1_matched", V["relu_l1_matched"], RUN, d_model=640)
    literal = resolve_variant("relu_l1", V["relu_l1"], RUN, d_model=640)
    assert literal.sae_cfg.l1_coef == 0.04 and literal.sae_cfg.units == "raw"  # the literal row is unchanged
    # a coefficient other than the papers' 0.04 scales with it; raw units cannot take a normalised coefficient
    half = {**V["relu_l1_matched"], "sae": {"l1_coef": 0.02}}
    assert resolve_variant("x", half, RUN, d_model=640, l1_calibration=CAL).sae_cfg.l1_coef == pytest.approx(0.055)
    with pytest.raises(ValueError, match="normalised units"):
        resolve_variant("x", {**half, "sae": {"units": "raw"}}, RUN, d_model=640, l1_calibration=CAL)


def test_norm_matched_rule_still_converts_the_papers_coefficient(params):
    """``l1_rule: norm_matched`` (the calibration's starting point) on a ReLU entry."""
    rms = 1474.0
    entry = {**params["sae_variants"]["relu_l1_matched"], "l1_rule": "norm_matched"}
    rv = resolve_variant("relu_l1_matched", entry, RUN, d_model=640, activation_rms=rms)
    assert rv.sae_cfg.l1_coef == pytest.approx(0.04 * 2304 * rms / PAPER_ACTIVATION_RMS)
    assert PAPER_ACTIVATION_RMS == pytest.approx(120.26, rel=1e-3)
    assert needs_activation_rms(entry) and not needs_activation_rms(params["sae_variants"]["relu_l1_matched"])
    with pytest.raises(ValueError, match="activation_rms"):
        resolve_variant("relu_l1_matched", entry, RUN, d_model=640)


def test_l1_controls_match_their_topk_baselines(params):
    V = params["sae_variants"]
    for control, base in (("topk_l1", "topk"), ("topk_k100_l1", "topk_k100")):
        c = resolve_variant(control, V[control], RUN, d_model=640)
        b = resolve_variant(base, V[base], RUN, d_model=640)
        assert c.sae_cfg == b.sae_cfg and b.penalty_cfg is None
        assert (c.penalty_cfg.kind, c.penalty_cfg.lam, c.penalty_cfg.l1_coef) == ("l1", 0.0, 0.04)


def test_five_seeds_for_the_headline_rows_and_every_run_variant_resolves(params):
    V, run_variants = params["sae_variants"], params["run_variants"]
    for base in ("topk", "topk_k100", "compete_run6", "ortho_run4", "topk_l1", "topk_k100_l1", "relu_l1_matched"):
        names = [base] + [f"{base}_s{i}" for i in range(1, 5)]
        assert all(n in V and n in run_variants for n in names), base
        seeds = {resolve_variant(n, V[n], RUN, d_model=640, l1_calibration=CAL).train_cfg.seed for n in names}
        assert len(seeds) == 5, base
        ref = {k: v for k, v in V[base].items() if k not in ("seed", "description", "paper_run")}
        for n in names[1:]:
            assert {k: v for k, v in V[n].items() if k not in ("seed", "description", "paper_run")} == ref, n
    assert len(set(run_variants)) == len(run_variants)
    for name in run_variants:
        resolve_variant(name, V[name], RUN, d_model=640, l1_calibration=CAL)


def test_jumprelu_variant_trains_in_normalised_units_and_old_saves_load_as_raw(params, tmp_path):
    """The params entry (no ``units`` key) resolves to the default, normalised units; an SAE folder written
    before the field existed (its saved config has no ``units``) loads as the raw-units SAE it was."""
    import json

    from saelib.sae import load_sae, make_sae

    rv = resolve_variant("jumprelu", params["sae_variants"]["jumprelu"], RUN, d_model=640)
    assert "units" not in params["sae_variants"]["jumprelu"].get("sae", {})
    assert rv.arch == "jumprelu" and rv.sae_cfg.units == "normalized" and rv.sae_cfg.input_scale is None
    small = make_sae("jumprelu", {**rv.sae_cfg.to_dict(), "d_in": 8, "d_sae": 16, "target_l0": 4, "threshold_init": 1.0})
    small.save(tmp_path / "new")
    assert load_sae(tmp_path / "new").cfg.units == "normalized"
    small.save(tmp_path / "old")
    cfg_path = tmp_path / "old" / "cfg.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("units", "input_scale"):
        del cfg["metadata"]["saelib_config"][key]
    cfg_path.write_text(json.dumps(cfg))
    assert load_sae(tmp_path / "old").cfg.units == "raw"
