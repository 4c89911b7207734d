"""Co-activation penalties of the two reproduced papers (docs/spec/methods.md), both readings.

- :mod:`.reference`: the paper equations as short dense F x F functions (the test oracle; read this first);
- :mod:`.sparse`: the fast O(B*K^2) implementation used in training, tested against the reference;
- :mod:`.ema`: the EMA of CompeteSAE's directional coefficients (as described);
- :mod:`.config`: :class:`PenaltyConfig`, the readings' defaults, the weight ramp;
- :mod:`.module`: :class:`CoactivationPenalty`, the loss term the trainer calls.
"""
from __future__ import annotations

from .config import (
    EMA_STORAGES, KINDS, NORMALISATIONS, READING_DEFAULTS, READINGS, TARGETS, PenaltyConfig, ramp_alpha,
    resolve_config,
)
from .ema import DenseCoefEMA, SparseCoefEMA
from .module import CoactivationPenalty, make_penalty
from .sparse import CoactResult, active_set, coactivation_penalty

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
    "KINDS",
    "READINGS",
    "TARGETS",
    "NORMALISATIONS",
    "EMA_STORAGES",
]
