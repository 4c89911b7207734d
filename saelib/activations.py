"""On-disk cache of residual-stream activations (format in docs/DESIGN.md, "Activation cache format").

A cache folder holds ``manifest.json`` and ``shard_00000.safetensors`` ... Each shard stores
``acts_ND`` (bf16, the kept = non-special tokens of its sequences, row-major in sequence order),
``tokens_NS`` (int32, the shard's full sequences) and ``keep_NS`` (bool). The manifest records the
model, layer, sizes, one SHA-256 per shard and one for all token ids, and ``complete`` once every
shard is written. :class:`ActivationWriter` writes shards atomically and records each in the
manifest, so an interrupted extraction resumes at the first missing shard; reopening a folder
re-hashes the recorded shards and rewrites a corrupt or truncated one (and the shards after it).

``ActivationCache(path, expect={"model": ..., "layer": ..., "context": ...})`` refuses a cache built
for other settings than the run's, and ``iter_batches(..., device="cuda")`` streams batches to a GPU
through pinned host memory.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor

from .devices import to_device
from .io import atomic_save_safetensors, atomic_write_json, read_json

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class MissingCacheError(FileNotFoundError):
    """An activation cache is missing or incomplete; the message names the command that builds it."""


class CorruptShardError(RuntimeError):
    """A shard's bytes do not match the hash recorded in the manifest (or the file is unreadable)."""


class CacheMismatchError(ValueError):
    """The cache was extracted with other settings (model, layer, context, ...) than the run asks for."""


BUILD_COMMAND = "python -m saelib.runner notebooks/01_extract.py -p profile {profile}  (or: dvc repro extract)"
REPAIR_HINT = (
    "re-run extraction, which re-hashes every shard and rewrites the bad ones: {command}; "
    "or delete the folder {path} and extract again"
)


def guess_profile(path: str | Path) -> str | None:
    """The profile of a cache folder laid out as ``data/<profile>/activations/<split>``, else None."""
    parts = Path(path).parts
    if len(parts) >= 4 and parts[-4] == "data" and parts[-2] == "activations":
        return parts[-3]
    return None


def build_command(path: str | Path, profile: str | None = None) -> str:
    """The command that (re)builds the cache at ``path``, with the profile filled in when known."""
    return BUILD_COMMAND.format(profile=profile or guess_profile(path) or "<profile>")


def shard_name(index: int) -> str:
    """File name of shard ``index``."""
    return f"shard_{index:05d}.safetensors"


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tokens_sha256(tokens_NS: Tensor) -> str:
    """Hex SHA-256 of token ids as contiguous int32 (what the manifest's ``tokens_sha256`` holds)."""
    arr = np.ascontiguousarray(tokens_NS.to(torch.int32).cpu().numpy())
    return hashlib.sha256(arr.tobytes()).hexdigest()


def _load_shard_file(path: Path, hint: str = "") -> dict[str, Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncated/garbled files
        raise CorruptShardError(f"cannot read activation shard {path}: {exc}" + (f"; {hint}" if hint else "")) from exc


class ActivationWriter:
    """Writes an activation cache shard by shard; resumable.

    ``settings`` identify the cache (model, layer, context, token hash, ...). Opening a folder whose
    manifest has other settings starts it afresh (old shards removed); the same settings resume.
    """

    def __init__(self, path: str | Path, settings: dict[str, Any]):
        required = {"model", "layer", "d_model", "context", "n_sequences", "special_ids", "tokens_sha256"}
        missing = required - set(settings)
        if missing:
            raise ValueError(f"activation cache settings lack {sorted(missing)}")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.settings = dict(settings)
        manifest_path = self.path / MANIFEST
        old = read_json(manifest_path) if manifest_path.exists() else None
        if old is not None and all(old.get(k) == v for k, v in self.settings.items()) and old.get("format") == FORMAT_VERSION:
            self.manifest = old
            self._drop_missing_shards()
        else:
            if old is not None:
                for f in self.path.glob("shard_*.safetensors"):
                    f.unlink()
            self.manifest = {"format": FORMAT_VERSION, **self.settings, "dtype": "bfloat16", "n_tokens": 0, "complete": False, "shards": []}
            self._save()

    def _drop_missing_shards(self) -> None:
        """Forget the first recorded shard whose file vanished, changed size or no longer matches its
        SHA-256, and every shard after it (extraction writes shards in sequence order, so it resumes
        there and rewrites them)."""
        good = []
        for entry in self.manifest["shards"]:
            f = self.path / entry["file"]
            intact = f.exists() and f.stat().st_size == entry.get("bytes", f.stat().st_size) and sha256_file(f) == entry.get("sha256")
            if not intact:
                break
            good.append(entry)
        if len(good) != len(self.manifest["shards"]):
            bad = self.manifest["shards"][len(good)]["file"]
            print(f"activation cache {self.path}: {bad} is missing or corrupt; rewriting it and the "
                  f"{len(self.manifest['shards']) - len(good) - 1} shard(s) after it")
            for entry in self.manifest["shards"][len(good):]:
                (self.path / entry["file"]).unlink(missing_ok=True)
            self.manifest["shards"] = good
            self.manifest["complete"] = False
            self._recount()
            self._save()

    def _recount(self) -> None:
        self.manifest["n_tokens"] = sum(s["n_tokens"] for s in self.manifest["shards"])

    def _save(self) -> None:
        atomic_write_json(self.path / MANIFEST, self.manifest)

    @property
    def complete(self) -> bool:
        return bool(self.manifest["complete"])

    @property
    def n_done(self) -> int:
        """Shards already written."""
        return len(self.manifest["shards"])

    @property
    def sequences_done(self) -> int:
        return sum(s["n_sequences"] for s in self.manifest["shards"])

    def write_shard(self, acts_ND: Tensor, tokens_NS: Tensor, keep_NS: Tensor, *, extra: dict[str, Any] | None = None) -> Path:
        """Atomically write the next shard and record it in the manifest (``extra``: more fields
        for its manifest entry, e.g. norm statistics)."""
        if self.complete:
            raise RuntimeError(f"activation cache {self.path} is already complete")
        if tokens_NS.shape != keep_NS.shape or tokens_NS.ndim != 2:
            raise ValueError(f"tokens {tuple(tokens_NS.shape)} and keep {tuple(keep_NS.shape)} must be the same (N, S) shape")
        n_keep = int(keep_NS.sum())
        if acts_ND.shape != (n_keep, self.settings["d_model"]):
            raise ValueError(f"acts_ND has shape {tuple(acts_ND.shape)}, expected ({n_keep}, {self.settings['d_model']})")
        if not torch.isfinite(acts_ND).all():
            raise ValueError("activations contain NaN or inf")
        index = self.n_done
        f = self.path / shard_name(index)
        atomic_save_safetensors(
            f,
            {"acts_ND": acts_ND.to(torch.bfloat16), "tokens_NS": tokens_NS.to(torch.int32), "keep_NS": keep_NS.to(torch.bool)},
            metadata={"model": str(self.settings["model"]), "layer": str(self.settings["layer"]), "shard": str(index)},
        )
        self.manifest["shards"].append(
            {
                **(extra or {}),
                "file": f.name,
                "n_sequences": int(tokens_NS.shape[0]),
                "n_tokens": n_keep,
                "sha256": sha256_file(f),
                "bytes": f.stat().st_size,
            }
        )
        self._recount()
        self._save()
        return f

    def finish(self) -> "ActivationCache":
        """Check every sequence is written, mark the manifest complete and open the cache."""
        if self.sequences_done != self.settings["n_sequences"]:
            raise RuntimeError(f"cache {self.path} holds {self.sequences_done} of {self.settings['n_sequences']} sequences")
        self.manifest["complete"] = True
        self._save()
        return ActivationCache(self.path)


class ActivationCache:
    """Read access to a complete activation cache folder.

    ``expect`` (e.g. ``{"model": "gemma-3-270m", "layer": 8, "context": 128}``) names manifest fields
    the caller's run settings require; any difference raises :class:`CacheMismatchError` naming the
    folder and the fix. Opening checks that every shard exists with its recorded size (cheap; a
    truncated shard is caught here); :meth:`verify` re-hashes them.
    """

    def __init__(self, path: str | Path, *, profile: str | None = None, expect: dict[str, Any] | None = None):
        self.path = Path(path)
        self.command = build_command(self.path, profile)
        command = self.command
        manifest_path = self.path / MANIFEST
        if not manifest_path.exists():
            raise MissingCacheError(f"no activation cache at {self.path} (missing {MANIFEST}); build it with: {command}")
        self.manifest: dict[str, Any] = read_json(manifest_path)
        if not self.manifest.get("complete"):
            raise MissingCacheError(
                f"activation cache at {self.path} is incomplete ({len(self.manifest.get('shards', []))} shards written); "
                f"finish it with: {command}"
            )
        for entry in self.manifest["shards"]:
            f = self.path / entry["file"]
            if not f.exists():
                raise MissingCacheError(f"activation cache at {self.path} lacks {entry['file']}; rebuild it with: {command}")
            if "bytes" in entry and f.stat().st_size != entry["bytes"]:
                raise CorruptShardError(
                    f"activation shard {f} is truncated or overwritten ({f.stat().st_size} bytes, manifest says "
                    f"{entry['bytes']}); {self._repair_hint()}"
                )
        if expect:
            self.check_settings(expect)

    def _repair_hint(self) -> str:
        return REPAIR_HINT.format(command=self.command, path=self.path)

    def check_settings(self, expect: dict[str, Any]) -> None:
        """Raise :class:`CacheMismatchError` if any ``expect`` field differs from the manifest."""
        diffs = [f"{k}: cache has {self.manifest.get(k)!r}, the run wants {v!r}" for k, v in expect.items() if self.manifest.get(k) != v]
        if diffs:
            raise CacheMismatchError(
                f"activation cache {self.path} was extracted with other settings than this run ({'; '.join(diffs)}). "
                f"Training on it would label the SAE with settings it was not trained on. Rebuild the cache for "
                f"the current params.yaml with `dvc repro extract` (or: {self.command}), or delete the folder "
                f"{self.path} first."
            )

    def __repr__(self) -> str:
        m = self.manifest
        return f"ActivationCache({str(self.path)!r}, model={m['model']}, layer={m['layer']}, n_tokens={m['n_tokens']}, shards={len(m['shards'])})"

    @property
    def d_model(self) -> int:
        return int(self.manifest["d_model"])

    @property
    def n_tokens(self) -> int:
        """Kept (non-special) tokens, i.e. activation rows."""
        return int(self.manifest["n_tokens"])

    @property
    def n_sequences(self) -> int:
        return int(self.manifest["n_sequences"])

    @property
    def n_shards(self) -> int:
        return len(self.manifest["shards"])

    def shard_path(self, index: int) -> Path:
        return self.path / self.manifest["shards"][index]["file"]

    def load_shard(self, index: int) -> dict[str, Tensor]:
        """``{"acts_ND", "tokens_NS", "keep_NS"}`` of shard ``index`` (shape-checked against the manifest)."""
        entry = self.manifest["shards"][index]
        data = _load_shard_file(self.shard_path(index), self._repair_hint())
        acts = data.get("acts_ND")
        if acts is None or "tokens_NS" not in data or "keep_NS" not in data:
            raise CorruptShardError(f"shard {self.shard_path(index)} lacks acts_ND/tokens_NS/keep_NS (has {sorted(data)}); {self._repair_hint()}")
        if acts.shape != (entry["n_tokens"], self.d_model) or data["tokens_NS"].shape[0] != entry["n_sequences"]:
            raise CorruptShardError(
                f"shard {self.shard_path(index)} holds acts {tuple(acts.shape)} / {data['tokens_NS'].shape[0]} sequences, "
                f"manifest says ({entry['n_tokens']}, {self.d_model}) / {entry['n_sequences']}; {self._repair_hint()}"
            )
        return data

    def tokens(self) -> Tensor:
        """All sequences' token ids, ``tokens_NS`` (int64), in extraction order."""
        from safetensors import safe_open

        parts = []
        for i in range(self.n_shards):
            with safe_open(str(self.shard_path(i)), framework="pt") as fh:
                parts.append(fh.get_tensor("tokens_NS"))
        return torch.cat(parts).long()

    def keep_mask(self) -> Tensor:
        """``keep_NS`` for all sequences (True at the positions that have an activation row)."""
        from safetensors import safe_open

        parts = []
        for i in range(self.n_shards):
            with safe_open(str(self.shard_path(i)), framework="pt") as fh:
                parts.append(fh.get_tensor("keep_NS"))
        return torch.cat(parts)

    def activations(self, max_tokens: int | None = None) -> Tensor:
        """The first ``max_tokens`` activation rows in order, ``x_ND`` (bf16). Loads them into memory:
        meant for held-out sets and small caches; training streams with :meth:`iter_batches`."""
        parts, n = [], 0
        for i in range(self.n_shards):
            if max_tokens is not None and n >= max_tokens:
                break
            acts = self.load_shard(i)["acts_ND"]
            parts.append(acts)
            n += acts.shape[0]
        out = torch.cat(parts) if parts else torch.zeros((0, self.d_model), dtype=torch.bfloat16)
        return out if max_tokens is None else out[:max_tokens]

    def verify(self) -> None:
        """Re-hash every shard (and the token ids); raise ``CorruptShardError`` on any mismatch."""
        for i, entry in enumerate(self.manifest["shards"]):
            f = self.shard_path(i)
            digest = sha256_file(f)
            if digest != entry["sha256"]:
                raise CorruptShardError(
                    f"shard {f} is corrupt: SHA-256 {digest[:12]}… != manifest {entry['sha256'][:12]}…; {self._repair_hint()}"
                )
            self.load_shard(i)
        digest = tokens_sha256(self.tokens())
        if digest != self.manifest["tokens_sha256"]:
            raise CorruptShardError(f"token ids in {self.path} do not match the manifest's tokens_sha256; {self._repair_hint()}")

    def _shard_order(self, seed: int, shuffle: bool) -> list[int]:
        if not shuffle:
            return list(range(self.n_shards))
        g = torch.Generator().manual_seed(seed)
        return torch.randperm(self.n_shards, generator=g).tolist()

    def n_batches(self, batch_size: int, *, drop_last: bool = True) -> int:
        """How many batches :meth:`iter_batches` yields."""
        full, rest = divmod(self.n_tokens, batch_size)
        return full + (1 if rest and not drop_last else 0)

    def iter_batches(
        self,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        buffer_shards: int = 4,
        start_batch: int = 0,
        device: str | torch.device | None = None,
    ) -> Iterator[Tensor]:
        """Stream activation batches ``x_BD`` (bf16) over the whole cache once.

        Shards are visited in a seeded random order; ``buffer_shards`` of them at a time are pooled
        and their rows permuted (rows left over from one pool join the next), so memory stays at a
        few shards. Deterministic for a given ``seed``. ``start_batch`` skips that many batches of
        the same stream (to resume training; the skipped shards are still read, the model is not run).
        ``device``: where the batches go (None: stay on the host). On CUDA each batch is copied from
        pinned host memory with ``non_blocking=True``, so the copy overlaps the previous step.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if buffer_shards < 1:
            raise ValueError(f"buffer_shards must be >= 1, got {buffer_shards}")
        order = self._shard_order(seed, shuffle)
        g = torch.Generator().manual_seed(seed + 1)
        carry = torch.zeros((0, self.d_model), dtype=torch.bfloat16)
        emitted = 0
        for start in range(0, len(order), buffer_shards):
            group = order[start : start + buffer_shards]
            pool = torch.cat([carry] + [self.load_shard(i)["acts_ND"] for i in group])
            if shuffle:
                pool = pool[torch.randperm(pool.shape[0], generator=g)]
            n_full = pool.shape[0] // batch_size
            for b in range(n_full):
                if emitted >= start_batch:
                    yield to_device(pool[b * batch_size : (b + 1) * batch_size], device)
                emitted += 1
            carry = pool[n_full * batch_size :]
        if carry.shape[0] and not drop_last and emitted >= start_batch:
            yield to_device(carry, device)
