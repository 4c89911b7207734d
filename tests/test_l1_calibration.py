"""The L0-calibrated L1 rule (saelib.l1_calibration): the secant search, the record, and real trials."""
from __future__ import annotations

import math

import pytest
import torch

from saelib.l1_calibration import (
    L1Calibration, L1CalibrationConfig, calibration_path, final_l0, load_calibration, next_coef, save_calibration,
)
from saelib.pipeline import run_l1_calibration


def _power_law(coef: float, a: float = 50.0, gamma: float = 1.7) -> float:
    return a * coef ** (-gamma)


def test_secant_search_lands_on_the_target_of_a_power_law():
    """On ``L0 = a·λ^−γ`` the second trial assumes ``first_slope``; the next step measures γ exactly and hits."""
    cfg = L1CalibrationConfig(first_slope=2.0)
    target = 13.44
    trials = [{"coef": 0.2, "l0": _power_law(0.2)}]
    c2 = next_coef(trials, target, cfg)
    # the second trial: a step of log(L0/target)/first_slope in log λ, towards the target
    assert math.log(c2 / 0.2) == pytest.approx(math.log(_power_law(0.2) / target) / 2.0, rel=1e-12)
    trials.append({"coef": c2, "l0": _power_law(c2)})
    c3 = next_coef(trials, target, cfg)
    assert _power_law(c3) == pytest.approx(target, rel=1e-9)
    # order of the trials does not matter; the nearest trial is the step's origin
    assert next_coef(trials[::-1], target, cfg) == pytest.approx(c3, rel=1e-12)


def test_secant_slope_is_clamped_and_a_dead_trial_still_points_down():
    cfg = L1CalibrationConfig(first_slope=1.0, slope_bounds=(0.5, 4.0))
    flat = [{"coef": 1.0, "l0": 20.0}, {"coef": 2.0, "l0": 20.0}]  # measured slope 0 -> clamped to 0.5
    c = next_coef(flat, 10.0, cfg)
    assert math.log(c / 2.0) == pytest.approx(math.log(2.0) / 0.5) or math.log(c / 1.0) == pytest.approx(math.log(2.0) / 0.5)
    dead = [{"coef": 5.0, "l0": 0.0}]  # every latent dead: λ far too strong, so step down
    assert next_coef(dead, 10.0, cfg) < 5.0
    with pytest.raises(ValueError, match="at least one"):
        next_coef([], 10.0, cfg)


def test_config_checks_and_record_round_trip(tmp_path):
    with pytest.raises(ValueError, match="unknown key"):
        L1CalibrationConfig.from_params({"target_l0": 13})
    with pytest.raises(ValueError, match="target_l0_over_d"):
        L1CalibrationConfig(target_l0_over_d=2.0)
    with pytest.raises(ValueError, match="first_slope"):
        L1CalibrationConfig(first_slope=10.0)
    path = calibration_path(tmp_path / "results")
    with pytest.raises(FileNotFoundError, match="dvc repro calibrate_l1"):
        load_calibration(path)
    cal = L1Calibration(coef_normalized=0.1, input_scale=300.0, target_l0=13.4, trials=[{"coef": 0.2, "l0": 4.0}])
    save_calibration(path, cal, L1CalibrationConfig())
    back = load_calibration(path)
    assert back == cal
    assert back.sae_coef(0.04) == pytest.approx(0.1) and back.raw_coef(0.02) == pytest.approx(0.05 * 300.0)
    with pytest.raises(ValueError, match="coef_normalized"):
        L1Calibration(coef_normalized=0.0, input_scale=1.0)


def test_final_l0_averages_the_last_tenth_of_the_log():
    records = [{"step": s, "l0": float(s)} for s in range(0, 100, 10)] + [{"step": 99, "l0": 99.0}]
    assert final_l0(records, 100, 0.1) == pytest.approx((90 + 99) / 2)
    assert final_l0(records, 100, 0.25) == pytest.approx((80 + 90 + 99) / 3)
    with pytest.raises(ValueError, match="no training-log record"):
        final_l0([{"step": 1, "l0": 3.0}], 100, 0.1)


class _Cache:
    def __init__(self, x_ND: torch.Tensor):
        self.x, self.d_model, self.n = x_ND, x_ND.shape[1], x_ND.shape[0]

    def iter_batches(self, batch_size, *, seed=0, shuffle=True, drop_last=True):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(self.n)
        stop = self.n - batch_size + 1 if drop_last else self.n
        for s in range(0, stop, batch_size):
            yield self.x[order[s:s + batch_size]]


def test_real_trials_move_l0_towards_the_target():
    """Three short ReLU runs on sparse synthetic data at a large activation scale: the trials' L0 falls as
    the coefficient rises, and the last trial is nearer the target than the norm-matched start."""
    g = torch.Generator().manual_seed(0)
    d, n = 32, 8192
    dirs = torch.nn.functional.normalize(torch.randn(64, d, generator=g), dim=1)
    codes = (torch.rand(n, 64, generator=g) < 0.08).float() * (0.5 + torch.rand(n, 64, generator=g))
    x = (codes @ dirs + 0.02 * torch.randn(n, d, generator=g)) * 400.0 + 30.0
    cfg = L1CalibrationConfig(variant="m", target_l0_over_d=0.125, trials=3)  # target L0 4 at d = 32
    entry = {"arch": "relu", "l1_rule": "l0_calibrated", "width_mult": 4, "sae": {"l1_coef": 0.04}}
    run = {"sae_tokens": 256 * 96, "batch_size": 256, "warmup_scale": 0.01}
    cal = run_l1_calibration(cfg, entry, run, _Cache(x))
    t = cal.trials
    assert len(t) == 3 and cal.target_l0 == pytest.approx(4.0)
    by_coef = sorted(t, key=lambda r: r["coef"])
    assert all(a["l0"] >= b["l0"] for a, b in zip(by_coef, by_coef[1:]))  # more L1, fewer active latents
    gap = [abs(math.log(max(r["l0"], 1e-3) / 4.0)) for r in t]
    assert gap[-1] < gap[0] and gap[-1] < math.log(1.5)
    assert cal.input_scale == pytest.approx(float(x[:256].double().pow(2).sum(1).mean().sqrt()), rel=0.2)


def test_the_calibrate_l1_stage_tracks_the_calibrated_variant_and_feeds_every_train_stage():
    """DVC cannot name a param from another param's value, so dvc.yaml lists the calibrated variant's entry by
    name: it must be the one params.yaml's l1_calibration.variant names, and every train stage reads the record."""
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    params = yaml.safe_load((root / "params.yaml").read_text())
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    variant = L1CalibrationConfig.from_params(params.get("l1_calibration")).variant
    assert f"sae_variants.{variant}" in stages["calibrate_l1"]["params"]
    entry = params["sae_variants"][variant]
    assert entry["arch"] == "relu" and entry["l1_rule"] == "l0_calibrated"
    assert stages["calibrate_l1"]["outs"] == [{"results/${profile}/calibration/l1.json": {"cache": False}}]
    assert "results/${profile}/calibration/l1.json" in stages["train"]["do"]["deps"]
