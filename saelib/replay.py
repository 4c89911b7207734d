"""Run a model's decoder stack from a cached residual instead of from the tokens.

An eval that splices many different patches into one layer's output of the same sequences (the unlearning
sweep: 16 clamps x 2 corpora) re-runs the layers up to and including that layer on unchanged input every
time. Their output is the clean residual it already has. :func:`final_hidden_from` feeds that cached
residual (patched) straight into the next layer, so only the layers after the patched one run: for
Gemma-3-270M at layer 8 that is 9 of 18 decoder layers.

The model's own forward still runs, so the attention masks, rotary tables and position ids are the ones
the full run builds: the layers up to ``layer`` are swapped, for the duration of one call, for modules
that pass the cached residual through. With the same input and batch the result equals
:func:`saelib.hooks.final_hidden` (``tests/test_replay.py``).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn

from .hooks import Patch
from .models import LoadedModel


class _PassThrough(nn.Module):
    """Stands in for a decoder layer before the cached one: returns its input hidden states unchanged."""

    def forward(self, hidden_states: Tensor, *args, **kwargs) -> Tensor:
        return hidden_states


class _Cached(nn.Module):
    """Stands in for the cached layer: returns the given residual ``x_NSD`` whatever it is fed."""

    def __init__(self, x_NSD: Tensor) -> None:
        super().__init__()
        self.x_NSD = x_NSD

    def forward(self, hidden_states: Tensor, *args, **kwargs) -> Tensor:
        if hidden_states.shape != self.x_NSD.shape:
            raise ValueError(f"cached residual has shape {tuple(self.x_NSD.shape)}, the model's hidden states "
                             f"{tuple(hidden_states.shape)}: pass the tokens the residual was taken on")
        return self.x_NSD


@contextmanager
def layers_replaced(layers: nn.ModuleList, layer: int, x_NSD: Tensor) -> Iterator[None]:
    """Within the block, ``layers[:layer]`` pass their input through and ``layers[layer]`` returns ``x_NSD``;
    the original layers are put back on exit, also after an error."""
    if not 0 <= layer < len(layers):
        raise ValueError(f"layer {layer} is outside the model's {len(layers)} decoder layers")
    saved = [layers[i] for i in range(layer + 1)]
    try:
        for i in range(layer):
            layers[i] = _PassThrough()
        layers[layer] = _Cached(x_NSD)
        yield
    finally:
        for i, module in enumerate(saved):
            layers[i] = module


@torch.inference_mode()
def final_hidden_from(model: LoadedModel, tokens_NS: Tensor, layer: int, x_NSD: Tensor, patch: Patch | None,
                      keep_NS: Tensor) -> Tensor:
    """Final-norm hidden states ``h_NSD`` of ``tokens_NS`` (no padding), with ``layer``'s output taken to be
    ``x_NSD`` (the clean residual of these sequences at ``layer``) and ``patch`` applied to it at the
    ``keep_NS`` positions, as :func:`saelib.hooks.final_hidden` applies it. Only the later layers run."""
    model.check_layer(layer)
    hf = model.hf_model
    device = model.device
    if x_NSD.shape[:2] != tokens_NS.shape or keep_NS.shape != tokens_NS.shape:
        raise ValueError(f"tokens {tuple(tokens_NS.shape)}, residual {tuple(x_NSD.shape)} and keep mask "
                         f"{tuple(keep_NS.shape)} must cover the same (sequences, positions)")
    dtype = next(hf.parameters()).dtype
    x_NSD = x_NSD.to(device=device, dtype=dtype)
    if patch is not None:
        keep_NS = keep_NS.to(device)
        x_NSD = x_NSD.clone()
        x_NSD[keep_NS] = patch(x_NSD[keep_NS].float()).to(dtype)
    with layers_replaced(model.layers(), layer, x_NSD):
        out = hf.model(input_ids=tokens_NS.to(device), use_cache=False)
    return out.last_hidden_state.detach()
