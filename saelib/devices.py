"""Where tensors live: one ``device`` setting (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``) for every module.

``auto`` means CUDA when ``torch.cuda.is_available()``, else the CPU. Compute runs under bf16
autocast on either device type (AMX makes bf16 matmuls fast on recent CPUs; on a GPU it is the
usual training precision). Kept tiny and free of saelib imports so any module can use it.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterator

import torch
from torch import Tensor

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
"""Accepted spellings of the ``device`` setting (``cuda:N`` for the N-th GPU)."""


class DeviceError(ValueError):
    """An unknown device name, or a CUDA device asked for on a machine without one."""


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``/``None`` → ``cuda`` if available else ``cpu``; ``cpu``/``cuda``/``cuda:N`` checked.

    Raises :class:`DeviceError` for any other value, or for CUDA when no GPU is visible.
    """
    if isinstance(device, torch.device):
        name = str(device)
    elif device is None:
        name = "auto"
    elif isinstance(device, str):
        name = device.strip().lower()
    else:
        raise DeviceError(f"device must be a string such as {', '.join(DEVICE_CHOICES)}; got {device!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = name.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise DeviceError(f"unknown device {device!r}; use one of {', '.join(DEVICE_CHOICES)}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} asked for, but torch sees no CUDA GPU on this machine; use 'auto' or 'cpu'")
        if index and int(index) >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device(name)


@functools.lru_cache(maxsize=None)
def bf16_matmul_is_fast(device_type: str) -> bool:
    """Whether bf16 matmuls run at hardware speed on ``device_type``: CUDA with bf16 support, or a CPU
    with AVX-512 (oneDNN's bf16 kernels; AMX / AVX512-BF16 are faster still). On an AVX2-only CPU PyTorch
    falls back to a reference kernel that is 50-1000x slower than fp32 (measured on the 2-core build box:
    a 512x640 @ 640x5120 matmul took 3.4 s in bf16 against 0.065 s in fp32)."""
    if device_type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device_type != "cpu":
        return True
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported", "_is_avx512_supported")
    found = [getattr(torch.cpu, name, None) for name in probes]
    if all(f is None for f in found):
        return True  # this torch cannot tell: keep bf16
    return any(bool(f()) for f in found if f is not None)


def compute_dtype(device: str | torch.device) -> torch.dtype:
    """bf16 where bf16 matmuls are fast on ``device`` (GPU, AVX-512/AMX CPU), else float32."""
    kind = device.type if isinstance(device, torch.device) else torch.device(device).type
    return torch.bfloat16 if bf16_matmul_is_fast(kind) else torch.float32


def autocast_context(device: str | torch.device, dtype: torch.dtype = torch.bfloat16, enabled: bool = True):
    """``torch.autocast`` for the device's type (bf16 by default on both ``cpu`` and ``cuda``).

    Off (fp32) where bf16 matmuls are not fast on that device (:func:`bf16_matmul_is_fast`), since
    autocast would then make every matmul tens of times slower."""
    kind = device.type if isinstance(device, torch.device) else torch.device(device).type
    if not enabled or (dtype == torch.bfloat16 and not bf16_matmul_is_fast(kind)):
        return contextlib.nullcontext()
    return torch.autocast(kind, dtype=dtype)


def to_device(x_ND: Tensor, device: str | torch.device | None) -> Tensor:
    """Move a host tensor to ``device``; on CUDA through pinned memory with a non-blocking copy.

    ``None`` or a tensor already on ``device`` returns ``x_ND`` unchanged.
    """
    if device is None:
        return x_ND
    device = torch.device(device)
    if x_ND.device == device:
        return x_ND
    if device.type == "cuda" and x_ND.device.type == "cpu":
        return x_ND.pin_memory().to(device, non_blocking=True)
    return x_ND.to(device)


def module_device(module: Any) -> torch.device:
    """Device of a module's first parameter (CPU for a module without parameters)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


@contextlib.contextmanager
def synchronized(device: str | torch.device) -> Iterator[None]:
    """Wait for queued CUDA work on entry and exit (for timing); a no-op on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    try:
        yield
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)


__all__ = ["DEVICE_CHOICES", "DeviceError", "autocast_context", "bf16_matmul_is_fast", "compute_dtype", "module_device", "resolve_device", "synchronized", "to_device"]
