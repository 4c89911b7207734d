"""EMA of the competition coefficients (as described)
--------------------------------------------------
A correct EMA decays *every* entry every step, ``c_hat <- d c_hat + (1-d) c_batch`` with
``c_batch = 0`` for pairs that did not co-fire (the original code's ``0/(0+eps)`` convention for a
conditioning latent that did not fire). We store ``c_hat / s`` with a global scale ``s = d^t``, so
the decay of un-refreshed entries is exact and free, and only co-firing pairs are touched.
The state is inherently pairwise and, in general, dense: ``sum_i c_ij = F`` for every latent ``j``
that fires (TopK), so in steady state ``sum_ij c_hat_ij ~= F * (#latents firing)``, i.e. the mean
entry is ~1 (> tau); once latents fire broadly, a constant fraction of all F^2 entries is nonzero.
A sorted-key map costs 12 bytes per entry against 4 for a dense fp32 buffer, so dense is the
*smallest exact* representation. Policy (``ema_storage="auto"``): dense fp32 buffer when
``4 F^2`` bytes <= ``ema_dense_max_mb`` (default 1536 MiB: F <= 20066, which covers the paper's
F = 18432 with one 1.27 GiB buffer, against the eight the as-run code allocated per step); above it,
a sparse sorted-key map that is exact until it holds ``ema_sparse_capacity`` entries and then evicts
the smallest values (entries below ``ema_sparse_floor`` are dropped every step). The number of stored
and evicted entries is returned every step so the approximation is visible.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

class DenseCoefEMA:
    """Exact EMA of the F x F directional coefficients, fp32 buffer of ``c_hat / scale`` (see module doc)."""

    needs_unique = False

    def __init__(self, n_latents: int, decay: float, device: torch.device | str | None = None):
        self.F, self.decay = n_latents, decay
        self.E = torch.zeros(n_latents * n_latents, device=device)
        self.scale = 1.0
        self.updates = 0

    def begin_step(self) -> None:
        """Decay every entry by ``decay`` (a scalar multiply; rescales the buffer when it underflows)."""
        self.scale *= self.decay
        self.updates += 1
        if self.scale < 1e-30:
            self.E.mul_(self.scale)
            self.scale = 1.0

    def add(self, keys: Tensor, c: Tensor) -> None:
        """Add ``(1 - decay) * c`` to the entries ``keys = i * F + j`` (repeated keys accumulate)."""
        self.E.index_add_(0, keys.reshape(-1), c.reshape(-1).float() * ((1.0 - self.decay) / self.scale))

    def finish_step(self) -> dict[str, float]:
        return {}

    def get(self, keys: Tensor) -> Tensor:
        """Current values at ``keys`` (any shape)."""
        return self.E.index_select(0, keys.reshape(-1)).view(keys.shape) * self.scale

    def dense(self) -> Tensor:
        return (self.E * self.scale).view(self.F, self.F)

    def to_(self, device: torch.device) -> None:
        """Keep the buffer on ``device`` (the SAE's; a no-op when it is there already)."""
        if self.E.device != device:
            self.E = self.E.to(device)

    def state(self) -> dict[str, Any]:
        return {"storage": "dense", "E": self.E, "scale": self.scale, "updates": self.updates}

    def load(self, st: dict[str, Any]) -> None:
        if st["storage"] != "dense" or st["E"].numel() != self.E.numel():
            raise ValueError("EMA state does not match a dense buffer of this width")
        self.E = st["E"].to(self.E.device, torch.float32, copy=True)
        self.scale, self.updates = float(st["scale"]), int(st["updates"])


class SparseCoefEMA:
    """EMA of the directional coefficients as a sorted-key map (``keys = i*F + j`` int64, values
    ``c_hat / scale`` fp32). Exact while it holds at most ``capacity`` entries and ``floor = 0``;
    otherwise the smallest entries are dropped (counted in ``evicted``). Updates of one step are
    buffered by :meth:`add` and merged in :meth:`finish_step` (keys must arrive sorted and unique)."""

    needs_unique = True

    def __init__(self, n_latents: int, decay: float, capacity: int, floor: float,
                 device: torch.device | str | None = None):
        self.F, self.decay, self.capacity, self.floor = n_latents, decay, capacity, floor
        self.keys = torch.zeros(0, dtype=torch.long, device=device)
        self.vals = torch.zeros(0, device=device)
        self.scale = 1.0
        self.updates = 0
        self.evicted = 0
        self._pending: list[tuple[Tensor, Tensor]] = []

    def begin_step(self) -> None:
        self.scale *= self.decay
        self.updates += 1
        if self.scale < 1e-30:
            self.vals.mul_(self.scale)
            self.scale = 1.0

    def add(self, keys: Tensor, c: Tensor) -> None:
        self._pending.append((keys, c.float() * ((1.0 - self.decay) / self.scale)))

    def finish_step(self) -> dict[str, float]:
        """Merge the buffered updates (two sorted runs, via searchsorted), then prune."""
        if self._pending:
            new_k = torch.cat([k for k, _ in self._pending])
            new_v = torch.cat([v for _, v in self._pending])
            self._pending = []
            if new_k.numel() > 1 and not bool((new_k[1:] > new_k[:-1]).all()):
                raise ValueError("SparseCoefEMA.add keys must be sorted and unique within a step")
            self.keys, self.vals = _merge_sorted(self.keys, self.vals, new_k, new_v)
        evicted = 0
        if self.floor > 0 and self.keys.numel():
            keep = self.vals * self.scale > self.floor
            evicted += int((~keep).sum())
            self.keys, self.vals = self.keys[keep], self.vals[keep]
        if self.keys.numel() > self.capacity:
            over = self.keys.numel() - self.capacity
            cut = torch.kthvalue(self.vals, over).values
            keep = self.vals > cut
            # ties at the cut: keep the earliest ones up to capacity
            ties = torch.nonzero(self.vals == cut).squeeze(1)
            n_tie_keep = self.capacity - int(keep.sum())
            if n_tie_keep > 0:
                keep[ties[:n_tie_keep]] = True
            evicted += int((~keep).sum())
            self.keys, self.vals = self.keys[keep], self.vals[keep]
        self.evicted += evicted
        return {"ema_entries": float(self.keys.numel()), "ema_evicted": float(evicted)}

    def get(self, keys: Tensor) -> Tensor:
        if self.keys.numel() == 0:
            return torch.zeros(keys.shape, dtype=torch.float32, device=keys.device)
        flat = keys.reshape(-1)
        pos = torch.searchsorted(self.keys, flat).clamp_(max=self.keys.numel() - 1)
        found = self.keys.index_select(0, pos) == flat
        out = torch.where(found, self.vals.index_select(0, pos) * self.scale, torch.zeros((), dtype=torch.float32, device=keys.device))
        return out.view(keys.shape)

    def dense(self) -> Tensor:
        out = torch.zeros(self.F * self.F, device=self.vals.device)
        out[self.keys] = self.vals * self.scale
        return out.view(self.F, self.F)

    def to_(self, device: torch.device) -> None:
        """Keep the map on ``device`` (the SAE's; a no-op when it is there already)."""
        if self.keys.device != device:
            self.keys, self.vals = self.keys.to(device), self.vals.to(device)

    def state(self) -> dict[str, Any]:
        return {"storage": "sparse", "keys": self.keys, "vals": self.vals, "scale": self.scale,
                "updates": self.updates, "evicted": self.evicted}

    def load(self, st: dict[str, Any]) -> None:
        if st["storage"] != "sparse":
            raise ValueError("EMA state is not a sparse map")
        dev = self.keys.device
        self.keys, self.vals = st["keys"].to(dev, torch.long, copy=True), st["vals"].to(dev, torch.float32, copy=True)
        self.scale, self.updates, self.evicted = float(st["scale"]), int(st["updates"]), int(st["evicted"])


def _merge_sorted(k1: Tensor, v1: Tensor, k2: Tensor, v2: Tensor) -> tuple[Tensor, Tensor]:
    """Union of two sorted unique key runs; values of equal keys are added."""
    if k1.numel() == 0:
        return k2.clone(), v2.clone()
    pos = torch.searchsorted(k1, k2)
    hit = pos < k1.numel()
    hit[hit.clone()] = k1.index_select(0, pos[hit]) == k2[hit]
    v1 = v1.clone()
    v1.index_add_(0, pos[hit], v2[hit])
    k_new, v_new = k2[~hit], v2[~hit]
    if k_new.numel() == 0:
        return k1, v1
    n = k1.numel() + k_new.numel()
    keys = torch.empty(n, dtype=k1.dtype, device=k1.device)
    vals = torch.empty(n, dtype=v1.dtype, device=k1.device)
    at_new = torch.searchsorted(k1, k_new) + torch.arange(k_new.numel(), device=k1.device)
    at_old = torch.arange(k1.numel(), device=k1.device) + torch.searchsorted(k_new, k1)
    keys[at_new], vals[at_new] = k_new, v_new
    keys[at_old], vals[at_old] = k1, v1
    return keys, vals
