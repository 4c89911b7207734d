"""Plumbing every eval shares: one content-keyed cache, one thread limiter, one SAEBench-JSON writer.

- **Cache.** A model-side result (residuals of a corpus, pooled activations, …) is saved as one
  safetensors file whose metadata holds ``cache_key`` = :func:`content_key` of everything that
  decides its content (settings and inputs). :func:`load_cached` returns it only when the stored
  key equals the key asked for; :func:`save_cached` writes atomically (``saelib.io``), so a cache
  file is either whole and keyed, or absent. :func:`cached` combines the two around a build function.
- **Threads.** :func:`limit_threads` runs a block with ``n`` torch intra-op threads and ``n``
  BLAS/OpenMP threads (threadpoolctl, for numpy/sklearn), restoring both afterwards. Small probe fits
  and SAE encodes are overhead-bound with more threads on a shared 2-core machine.
- **SAEBench JSON.** :func:`saebench_document` builds the top-level layout of SAEBench's
  ``BaseEvalOutput`` (``eval_type_id``, ``eval_config``, ``eval_id``, ``datetime_epoch_millis``,
  ``eval_result_metrics`` (categories of flat metrics), ``eval_result_details``,
  ``sae_bench_commit_hash``, ``sae_lens_*``, ``sae_cfg_dict``, ``eval_result_unstructured``) plus
  this repo's own top-level fields; :func:`write_saebench_json` writes it atomically.
"""
from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from ..io import atomic_save_safetensors, atomic_write_json
from ..threads import limit_threads  # noqa: F401  (re-exported: the evals' thread limiter)

CACHE_KEY = "cache_key"
"""Metadata entry of a cache file that holds its content key."""


# ---------------------------------------------------------------------------------------------
# content-keyed cache
# ---------------------------------------------------------------------------------------------
def _hash_input(h, obj: Any) -> None:
    """Feed one input into the hash, with a type tag so that e.g. "1" and 1 differ."""
    if isinstance(obj, Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        h.update(f"A{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    elif isinstance(obj, bytes):
        h.update(b"B%d:" % len(obj))
        h.update(obj)
    elif isinstance(obj, str):
        data = obj.encode("utf-8")
        h.update(b"S%d:" % len(data))
        h.update(data)
    elif isinstance(obj, (list, tuple)) and not all(isinstance(x, (int, float, bool, type(None))) for x in obj):
        h.update(b"L%d:" % len(obj))
        for x in obj:
            _hash_input(h, x)
    else:
        h.update(b"J")
        h.update(json.dumps(obj, sort_keys=True, default=str).encode())


def content_key(settings: Mapping[str, Any], *inputs: Any) -> str:
    """sha256 (hex) of ``settings`` (canonical JSON) and every input in order (str, bytes, tensors,
    arrays, sequences of these, or anything JSON-able). Equal keys ⇔ same settings and inputs."""
    h = hashlib.sha256(b"saelib-cache-v1\0")
    h.update(json.dumps(dict(settings), sort_keys=True, default=str).encode())
    for obj in inputs:
        h.update(b"\0")
        _hash_input(h, obj)
    return h.hexdigest()


def stored_key(path: str | Path) -> str | None:
    """The content key a cache file was saved under (None: missing, unkeyed or unreadable file)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            return (fh.metadata() or {}).get(CACHE_KEY)
    except Exception:  # a foreign or truncated file
        return None


def load_cached(path: str | Path, key: str) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    """``(tensors, meta)`` of the cache file at ``path`` when it exists and was saved under ``key``;
    None otherwise (missing file, other key, or a file that is not a readable safetensors cache)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = dict(fh.metadata() or {})
    except Exception:  # a foreign or truncated file: treat as a miss, it is rebuilt and replaced
        return None
    if raw.get(CACHE_KEY) != key:
        return None
    meta = {k: json.loads(v) for k, v in raw.items() if k != CACHE_KEY}
    return load_file(str(path)), meta


def save_cached(path: str | Path, key: str, tensors: Mapping[str, Tensor], meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``tensors`` and ``meta`` (JSON-able values) to ``path`` atomically under ``key``."""
    meta = dict(meta or {})
    if CACHE_KEY in meta:
        raise ValueError(f"meta may not contain the reserved entry {CACHE_KEY!r}")
    encoded = {k: json.dumps(v, default=str) for k, v in meta.items()}
    encoded[CACHE_KEY] = str(key)
    return atomic_save_safetensors(path, dict(tensors), metadata=encoded)


def cached(path: str | Path, key: str, build: Callable[[], tuple[Mapping[str, Tensor], Mapping[str, Any]]]
           ) -> tuple[dict[str, Tensor], dict[str, Any], bool]:
    """``(tensors, meta, hit)``: the cache at ``path`` if saved under ``key``, else ``build()``'s
    ``(tensors, meta)``, saved first (``hit`` False)."""
    found = load_cached(path, key)
    if found is not None:
        return found[0], found[1], True
    tensors, meta = build()
    save_cached(path, key, tensors, meta)
    return dict(tensors), dict(meta), False


# ---------------------------------------------------------------------------------------------
# SAEBench-shaped JSON
# ---------------------------------------------------------------------------------------------
SAEBENCH_VERSION = "sae-bench==0.6.0"
"""The SAEBench release whose definitions the evals follow unless a document says otherwise."""

SAEBENCH_FIELDS = ("eval_type_id", "eval_config", "eval_id", "datetime_epoch_millis", "eval_result_metrics",
                   "eval_result_details", "sae_bench_commit_hash", "sae_lens_id", "sae_lens_release_id",
                   "sae_lens_version", "sae_cfg_dict", "eval_result_unstructured")
"""Top-level fields of SAEBench's ``BaseEvalOutput``, in its order."""


@functools.lru_cache(maxsize=1)
def saelib_commit() -> str:
    """The git commit of the working tree that runs the eval (``unknown`` outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _check_metrics(metrics: Mapping[str, Any], eval_type_id: str) -> dict[str, dict[str, Any]]:
    """SAEBench's rule: categories of flat metrics (no dict inside a category)."""
    if not isinstance(metrics, Mapping) or not metrics:
        raise ValueError(f"{eval_type_id}: eval_result_metrics must be a non-empty dict of categories")
    out = {}
    for cat, values in metrics.items():
        if not isinstance(values, Mapping):
            raise ValueError(f"{eval_type_id}: metric category {cat!r} must be a dict of metrics, got {type(values).__name__}")
        nested = [k for k, v in values.items() if isinstance(v, Mapping)]
        if nested:
            raise ValueError(f"{eval_type_id}: metrics {nested} in category {cat!r} are dicts; SAEBench metrics are flat "
                             "(put nested numbers in eval_result_details or eval_result_unstructured)")
        out[str(cat)] = dict(values)
    return out


def saebench_document(eval_type_id: str, eval_config: Mapping[str, Any], eval_result_metrics: Mapping[str, Any],
                      eval_result_details: Sequence[Mapping[str, Any]] | None = None, *,
                      eval_result_unstructured: Any = None, sae_cfg_dict: Mapping[str, Any] | None = None,
                      follows: str = SAEBENCH_VERSION, extra: Mapping[str, Any] | None = None,
                      eval_id: str | None = None, datetime_epoch_millis: int | None = None) -> dict[str, Any]:
    """SAEBench's ``BaseEvalOutput`` layout as a dict, followed by ``extra`` (this repo's own fields).

    ``eval_id`` defaults to a fresh UUID4 and ``datetime_epoch_millis`` to now, as in SAEBench.
    ``sae_bench_commit_hash`` names the SAEBench version whose definitions were followed
    (``follows``), since SAEBench's code did not run; ``saelib_commit_hash`` is this repo's commit."""
    if not eval_type_id:
        raise ValueError("eval_type_id is required")
    extra = dict(extra or {})
    clash = sorted(set(extra) & set(SAEBENCH_FIELDS))
    if clash:
        raise ValueError(f"extra fields {clash} would overwrite SAEBench's own fields")
    millis = int(time.time() * 1000) if datetime_epoch_millis is None else int(datetime_epoch_millis)
    if not 0 <= millis <= 9_999_999_999_999:
        raise ValueError(f"datetime_epoch_millis out of range: {millis}")
    doc = {
        "eval_type_id": eval_type_id,
        "eval_config": dict(eval_config),
        "eval_id": eval_id or str(uuid.uuid4()),
        "datetime_epoch_millis": millis,
        "eval_result_metrics": _check_metrics(eval_result_metrics, eval_type_id),
        "eval_result_details": [dict(d) for d in (eval_result_details or [])],
        "sae_bench_commit_hash": follows,
        "sae_lens_id": None,
        "sae_lens_release_id": None,
        "sae_lens_version": None,
        "sae_cfg_dict": dict(sae_cfg_dict or {}),
        "eval_result_unstructured": eval_result_unstructured,
        "saelib_commit_hash": saelib_commit(),
    }
    doc.update(extra)
    return doc


def write_saebench_json(path: str | Path, document: Mapping[str, Any]) -> Path:
    """Write a :func:`saebench_document` atomically (NaN is written as ``NaN``, as SAEBench's
    ``json.dump`` does)."""
    missing = [f for f in SAEBENCH_FIELDS if f not in document]
    if missing:
        raise ValueError(f"{path}: not a SAEBench document, missing {missing} (build it with saebench_document)")
    return atomic_write_json(path, dict(document))


__all__ = ["CACHE_KEY", "content_key", "stored_key", "load_cached", "save_cached", "cached", "limit_threads", "SAEBENCH_VERSION",
           "SAEBENCH_FIELDS", "saelib_commit", "saebench_document", "write_saebench_json"]
