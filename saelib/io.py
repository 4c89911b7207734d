"""Atomic file writes: every result lands whole or not at all. Paths written into JSON results are
stored relative to the repository root, so committed results hold no machine-specific paths."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def _atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, fsync it, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    return _atomic_write(path, write)


def _root() -> Path | None:
    env = os.environ.get("SAELIB_ROOT")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    return next((f for f in (here, *here.parents) if (f / "params.yaml").exists()), None)


def repo_relative(path: str | Path, root: str | Path | None = None) -> str:
    """``path`` relative to the repository root (``root``, ``$SAELIB_ROOT`` or the nearest parent of
    the working directory holding ``params.yaml``) as a POSIX string; unchanged when outside it."""
    base = Path(root).resolve() if root is not None else _root()
    p = Path(path)
    if base is None or not p.is_absolute():
        return p.as_posix()
    try:
        return p.resolve().relative_to(base).as_posix()
    except ValueError:
        return p.as_posix()


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return repo_relative(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def atomic_write_json(path: str | Path, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON atomically; numpy/torch scalars and arrays are converted."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=_json_default, allow_nan=True) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file, with a clear error when it is missing."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"expected JSON file {path} does not exist")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its ``__metadata__`` entries in sorted key order.

    safetensors keeps the metadata in a Rust HashMap, whose order is randomised per process, so two saves
    of the same tensors and metadata can differ in their header bytes (hence in their SHA-256 and in DVC's
    hash of the folder) while holding identical data. The header is rewritten with sorted metadata keys and
    padded with spaces to its original length (the format allows trailing spaces), so the tensor bytes
    and their offsets are untouched."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", None)
    ordered = {"__metadata__": dict(sorted(meta.items()))} if meta is not None else {}
    ordered.update(header)  # tensor entries: the writer's order, which is deterministic
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > n:  # cannot happen for a header that only changed its key order
        raise ValueError(f"canonical safetensors header is longer than the original ({len(text)} > {n} bytes)")
    return data[:8] + text.ljust(n, b" ") + data[8 + n:]


def atomic_save_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Save a dict of tensors to ``path`` (safetensors) atomically, byte-for-byte reproducibly (the
    metadata keys are written in sorted order: :func:`canonical_safetensors`)."""
    from safetensors.torch import save

    tensors = {k: v.contiguous() for k, v in tensors.items()}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(canonical_safetensors(save(tensors, metadata=metadata)))

    return _atomic_write(path, write)


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    """``torch.save`` to ``path`` atomically (checkpoints)."""
    import torch

    return _atomic_write(path, lambda tmp: torch.save(obj, tmp))
