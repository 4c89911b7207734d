"""One thread limiter for every module that wants fewer threads than torch's default for a while
(the memory-bound penalty scatters, extraction on a busy machine, the evals' small probes)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from threadpoolctl import threadpool_limits


@contextmanager
def limit_threads(n: int | None = 1, *, blas: bool = True) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads and (``blas``) ``n`` BLAS/OpenMP threads;
    both are restored afterwards. ``None`` leaves everything as it is."""
    if n is None:
        yield
        return
    n = int(n)
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        if blas:
            with threadpool_limits(limits=n):
                yield
        else:
            yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


__all__ = ["limit_threads"]
