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


def atomic_save_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Save a dict of tensors to ``path`` (safetensors) atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in tensors.items()}
    return _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def atomic_torch_save(path: str | Path, obj: Any) -> Path:
    """``torch.save`` to ``path`` atomically (checkpoints)."""
    import torch

    return _atomic_write(path, lambda tmp: torch.save(obj, tmp))
