"""The sparsity-matched standard SAE's L1 coefficient, calibrated to a target L0 (``l1_rule: l0_calibrated``).

Rule (issue 12, deliverable 4; it looks only at the training L0, never at an evaluation metric). The papers'
standard ReLU SAE reached L0/d = 0.021 (L0 48.9 at d = 2304) with λ = 0.04. A coefficient converted from
the papers' units (``l1_rule: norm_matched``) rests on an estimated activation scale and loss convention, and
on our shorter run the L0 it gives is far from 0.021·d. So the coefficient that stands for the papers' 0.04 is
measured instead: full-length training runs of the ReLU variant ``L1CalibrationConfig.variant`` (its seed,
width, warmup and token budget), in SAEBench's normalised units (:mod:`saelib.sae.units`), at coefficients
chosen by a secant search on ``log L0`` against ``log λ``:

1. the first trial uses the ``norm_matched`` coefficient expressed in normalised units;
2. the second assumes ``L0 ∝ λ^(−first_slope)`` to aim at the target;
3. later trials (and the final coefficient) use the slope measured between the two trials nearest the target
   in ``log L0`` (clamped to ``slope_bounds``), stepping from the nearest one.

The final coefficient is that step taken after the last trial; the matched SAEs report the L0 it gives. A
trial's L0 is the mean training-batch L0 over the last ``FINAL_FRAC`` of its steps (the trainer's log).
Every L1 coefficient of an ``l0_calibrated`` entry is then ``value / PAPER_L1_COEF`` times the calibrated
one: a ReLU SAE's ``l1_coef`` in normalised units, a penalty's L1 term (which acts on a raw-units TopK SAE)
times the calibration run's ``input_scale``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

from .io import atomic_write_json, read_json

PAPER_L1_COEF = 0.04
"""The papers' L1 coefficient of the standard SAE (and of the as-described readings' L1 term)."""

CALIBRATION_FILE = Path("calibration") / "l1.json"
"""Where the calibration lives under a profile's results folder."""


@dataclass
class L1CalibrationConfig:
    """``params.yaml``'s ``l1_calibration`` block."""

    variant: str = "relu_l1_matched"
    """The ReLU variant (``l1_rule: l0_calibrated``) whose full-length training runs are the trials."""
    target_l0_over_d: float = 0.021
    """Target L0 / d_model (the papers' standard SAE: 48.9 / 2304)."""
    trials: int = 3
    """Number of full-length training runs."""
    first_slope: float = 2.0
    """Assumed ``−d log L0 / d log λ`` for the second trial (later trials measure it)."""
    slope_bounds: tuple[float, float] = (0.25, 8.0)
    """Clamp on the measured slope (a flat or noisy pair must not send λ far away)."""

    def __post_init__(self) -> None:
        self.slope_bounds = tuple(float(b) for b in self.slope_bounds)  # type: ignore[assignment]
        lo, hi = self.slope_bounds
        if not 0 < float(self.target_l0_over_d) < 1:
            raise ValueError(f"l1_calibration.target_l0_over_d must be in (0, 1), got {self.target_l0_over_d}")
        if int(self.trials) < 1:
            raise ValueError(f"l1_calibration.trials must be >= 1, got {self.trials}")
        if not 0 < lo <= float(self.first_slope) <= hi:
            raise ValueError(f"l1_calibration: need 0 < slope_bounds[0] <= first_slope <= slope_bounds[1], got "
                             f"{self.first_slope} and {self.slope_bounds}")

    @classmethod
    def from_params(cls, block: Mapping[str, Any] | None) -> "L1CalibrationConfig":
        """From ``params.yaml``'s ``l1_calibration`` (missing: the defaults); unknown keys are an error."""
        block = dict(block or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(block) - names)
        if unknown:
            raise ValueError(f"params.yaml l1_calibration: unknown key(s) {unknown}; known: {sorted(names)}")
        return cls(**block)


@dataclass
class L1Calibration:
    """The outcome: what the papers' λ = 0.04 stands for on this profile."""

    coef_normalized: float
    """The ReLU L1 coefficient, in normalised units, that stands for the papers' 0.04."""
    input_scale: float
    """``s`` of the calibration runs (their first training batch): converts to raw units."""
    target_l0: float = float("nan")
    """The L0 aimed at (``target_l0_over_d · d``)."""
    trials: list[dict[str, float]] = field(default_factory=list)
    """``{"coef", "l0", ...}`` of each trial run, in order."""

    def __post_init__(self) -> None:
        if not (float(self.coef_normalized) > 0 and float(self.input_scale) > 0):
            raise ValueError(f"a calibration needs coef_normalized > 0 and input_scale > 0, got "
                             f"{self.coef_normalized} and {self.input_scale}")

    def sae_coef(self, value: float) -> float:
        """A ReLU SAE's ``l1_coef`` (normalised units) for the papers' coefficient ``value``."""
        return float(value) / PAPER_L1_COEF * float(self.coef_normalized)

    def raw_coef(self, value: float) -> float:
        """An L1 coefficient on raw activations (a penalty's L1 term) for the papers' ``value``."""
        return self.sae_coef(value) * float(self.input_scale)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _log_l0(l0: float, target: float) -> float:
    return math.log(max(float(l0), 1e-3 * target))  # an all-dead trial (L0 0) still orders below the target


def next_coef(trials: Sequence[Mapping[str, float]], target_l0: float, cfg: L1CalibrationConfig) -> float:
    """The coefficient the secant search (module docstring) tries next, from the trials so far."""
    if not trials:
        raise ValueError("next_coef needs at least one trial")
    goal = math.log(float(target_l0))
    ranked = sorted(trials, key=lambda t: abs(_log_l0(t["l0"], target_l0) - goal))
    near = ranked[0]
    slope = float(cfg.first_slope)
    if len(ranked) >= 2:
        other = ranked[1]
        d_log_coef = math.log(other["coef"]) - math.log(near["coef"])
        if d_log_coef != 0:
            slope = -(_log_l0(other["l0"], target_l0) - _log_l0(near["l0"], target_l0)) / d_log_coef
        lo, hi = cfg.slope_bounds
        slope = min(max(slope, lo), hi)
    return float(near["coef"]) * math.exp((_log_l0(near["l0"], target_l0) - goal) / slope)


def final_l0(records: Sequence[Mapping[str, Any]], n_steps: int, frac: float) -> float:
    """Mean ``l0`` of the training-log records at steps ``>= n_steps·(1 − frac)``."""
    start = int(n_steps * (1.0 - frac))
    vals = [float(r["l0"]) for r in records if r.get("step", -1) >= start and r.get("l0") is not None]
    if not vals:
        raise ValueError(f"no training-log record with an l0 at step >= {start}")
    return sum(vals) / len(vals)


def calibration_path(results_dir: str | Path) -> Path:
    """``<results>/calibration/l1.json``."""
    return Path(results_dir) / CALIBRATION_FILE


def save_calibration(path: str | Path, cal: L1Calibration, cfg: L1CalibrationConfig) -> Path:
    """Write the calibration and the settings that made it, atomically."""
    doc = {"config": {**asdict(cfg), "slope_bounds": list(cfg.slope_bounds)}, "calibration": cal.to_dict()}
    atomic_write_json(Path(path), doc)
    return Path(path)


def load_calibration(path: str | Path) -> L1Calibration:
    """The calibration saved by the ``calibrate_l1`` stage; a clear error when it is missing or was skipped."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no L1 calibration at {path}: variants with l1_rule: l0_calibrated need it; run "
                                f"`dvc repro calibrate_l1` (notebooks/01b_calibrate_l1.py) first")
    cal = read_json(path).get("calibration")
    if not isinstance(cal, dict):
        raise ValueError(f"{path} holds no calibration; re-run `dvc repro calibrate_l1`")
    return L1Calibration(**cal)
