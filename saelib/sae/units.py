"""Training in SAEBench's normalised units on raw activations (shared by the JumpReLU and ReLU SAEs).

SAEBench's trainers (dictionary_learning) divide every input by ``s = sqrt(mean_b ‖x_b‖²)`` before
training, so their sparsity coefficients, thresholds and learning rates are in units of a
unit-mean-squared-norm input. Training on ``x/s`` with parameters ``(W, b̃)`` is the same SAE as training
on ``x`` with ``(W, s·b̃)`` and the loss multiplied by ``s²``, except for how far Adam moves each parameter
per step (about the learning rate, whatever the gradient's size). So ``units = "normalized"`` reproduces
the normalised run on raw activations by

- weighting the sparsity term by the power of ``s`` that makes it the normalised term times ``s²``
  (``s²`` for an L0-type term, ``s`` for an L1 term, whose latents scale with the input), and
- letting the parameters measured in activation units (the biases, JumpReLU's θ) learn at ``s·lr``
  (:meth:`NormalizedUnitsMixin.lr_multiplier`, read by the trainer every step),

with ``s`` taken from the first training batch (``input_scale``, written back to the config).
``units = "raw"`` uses the coefficient as given and one learning rate for every parameter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .base import SAEConfig

UNITS = ("normalized", "raw")


@dataclass
class UnitsConfig(SAEConfig):
    """An SAE config with a choice of units (the module docstring)."""

    units: str = "normalized"
    """``"normalized"``: the sparsity coefficient and the learning rates of the activation-unit parameters
    in the units of inputs scaled to unit mean squared norm, SAEBench's; ``"raw"``: as given."""
    input_scale: float | None = None
    """``s = sqrt(mean_b ‖x_b‖²)`` of the first training batch (set by ``init_from_batch_`` when ``None``);
    only ``units = "normalized"`` uses it."""

    @classmethod
    def from_saved(cls, data: dict[str, Any]):
        """As :meth:`SAEConfig.from_saved`; a config saved before ``units`` existed was trained in raw units.
        (Not :meth:`from_dict`: a ``params.yaml`` entry without ``units`` gets the default.)"""
        return super().from_saved(data if "units" in data else {**data, "units": "raw"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.units not in UNITS:
            raise ValueError(f"unknown units {self.units!r}; expected one of {UNITS}")
        if self.input_scale is not None and not float(self.input_scale) > 0:
            raise ValueError(f"input_scale must be > 0, got {self.input_scale}")


def mean_square_norm_scale(x_BD: Tensor) -> float:
    """``sqrt(mean_b ‖x_b‖²)`` over the rows of ``x_BD`` (float64)."""
    x_ND = x_BD.reshape(-1, x_BD.shape[-1]).double()
    return float(x_ND.pow(2).sum(-1).mean().sqrt())


class NormalizedUnitsMixin:
    """Behaviour of an SAE whose config is a :class:`UnitsConfig` (mixed in before ``BaseSAE``)."""

    cfg: UnitsConfig
    activation_unit_params: tuple[str, ...] = ("b_enc", "b_dec")
    """Parameters measured in activation units: they learn at ``s·lr`` under normalised units."""

    def unit_scale(self) -> float:
        """``s`` under ``units = "normalized"``, else 1."""
        if self.cfg.units == "raw":
            return 1.0
        if self.cfg.input_scale is None:
            raise RuntimeError(f"{type(self).__name__} units='normalized' needs the input scale: call "
                               "init_from_batch_ on the first training batch or set cfg.input_scale")
        return float(self.cfg.input_scale)

    def uses_lr_multipliers(self) -> bool:
        """Under normalised units only."""
        return self.cfg.units == "normalized"

    def lr_multiplier(self, name: str) -> float:
        """``s`` for the activation-unit parameters under ``units = "normalized"``, else 1."""
        return self.unit_scale() if name in self.activation_unit_params else 1.0

    @torch.no_grad()
    def init_input_scale_(self, x_BD: Tensor) -> None:
        """Set ``cfg.input_scale`` from ``x_BD`` unless it is already set."""
        if self.cfg.input_scale is None:
            self.cfg.input_scale = mean_square_norm_scale(x_BD)
