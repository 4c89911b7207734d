"""The SAE-independent half of the core splice metrics, computed once per profile.

Every SAE's KL/CE scores compare three runs of the model on the same held-out sequences: the clean
run, the SAE spliced in, and the zero-ablation baselines (``zero``: every position zeroed, SAEBench's;
``zero_keep_bos``: special positions left clean). Only the SAE run depends on the SAE. On Gemma-3's
262k-word vocabulary each run costs a full forward plus the unembedding of every scored position, so
the train stage of each SAE would spend three quarters of its core-metric time on runs that are the
same for all of them. ``compute_core_baseline`` runs the clean model (keeping its final hidden states)
and both baselines once; :func:`saelib.evals.core.evaluate_core` with ``baseline=`` adds the SAE run.

Saved as ``baseline.json`` (per-sequence KL/CE sums, the settings and a hash of the tokens) and
``clean_hidden.safetensors`` in one folder; ``load_core_baseline`` refuses a folder written for other
tokens, layer or positions, naming the stage that rebuilds it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from ..hooks import SpliceSums, clean_final_hidden, splice_sums
from ..io import atomic_save_safetensors, atomic_write_json, read_json
from .core import splice_rows

BASELINE_JSON = "baseline.json"
HIDDEN_FILE = "clean_hidden.safetensors"
FORMAT = 1
"""Version of the saved layout."""


def tokens_digest(tokens_NS: Tensor) -> str:
    """SHA-256 of the token ids (int64, row-major) and their shape."""
    t = tokens_NS.detach().to(torch.int64).contiguous().cpu()
    h = hashlib.sha256(str(tuple(t.shape)).encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()


@dataclass
class CoreBaseline:
    """Clean hidden states and zero-ablation sums for the splice sequences ``tokens_digest``."""

    layer: int
    tokens_digest: str
    sums: SpliceSums
    """Patches ``zero`` and ``zero_keep_bos`` plus ``clean``, SAEBench and repo positions."""
    clean_hidden_NSD: Tensor
    """The clean run's final-norm hidden states of the splice sequences."""
    where: str = "the core baseline"
    """Where it came from (for error messages)."""

    def check(self, tokens_NS: Tensor, layer: int) -> None:
        """Raise unless this baseline was computed for these splice sequences and layer."""
        if int(layer) != self.layer or tokens_digest(tokens_NS) != self.tokens_digest:
            raise ValueError(
                f"{self.where} was computed for other held-out sequences or another layer (layer {self.layer}, "
                f"asked {layer}): rebuild it with `dvc repro extract` (it is written beside the activation cache)")


def compute_core_baseline(model: Any, tokens_NS: Tensor, layer: int, *, n_kl_sequences: int | None,
                          groups: Sequence[str] | None = None, batch_size: int = 16, token_chunk: int = 256,
                          progress: bool = False) -> CoreBaseline:
    """The baseline for :func:`~saelib.evals.core.evaluate_core` on ``tokens_NS`` with the same
    ``n_kl_sequences`` and ``groups`` (which pick the splice sequences, :func:`splice_rows`)."""
    rows = splice_rows(tokens_NS.shape[0], n_kl_sequences, groups)
    kl_tokens = tokens_NS[rows]
    hidden = clean_final_hidden(model, kl_tokens, layer, batch_size=batch_size)
    zeros = {"zero": torch.zeros_like, "zero_keep_bos": torch.zeros_like}
    sums = splice_sums(model, kl_tokens, layer, zeros, batch_size=batch_size, token_chunk=token_chunk,
                       patch_everywhere=("zero",), saebench_positions=True, clean_hidden_NSD=hidden,
                       progress=progress)
    return CoreBaseline(int(layer), tokens_digest(kl_tokens), sums, hidden)


def save_core_baseline(folder: str | Path, baseline: CoreBaseline, settings: dict[str, Any]) -> Path:
    """Write ``folder/baseline.json`` and ``folder/clean_hidden.safetensors`` (atomically)."""
    folder = Path(folder)
    atomic_save_safetensors(folder / HIDDEN_FILE, {"clean_hidden_NSD": baseline.clean_hidden_NSD.contiguous()})
    atomic_write_json(folder / BASELINE_JSON, {"format": FORMAT, "layer": baseline.layer,
                                               "tokens_digest": baseline.tokens_digest, "settings": settings,
                                               **baseline.sums.to_dict()})
    return folder


def load_core_baseline(folder: str | Path, settings: dict[str, Any] | None = None) -> CoreBaseline:
    """Read what :func:`save_core_baseline` wrote; with ``settings``, they must equal the saved ones."""
    from safetensors.torch import load_file

    folder = Path(folder)
    path = folder / BASELINE_JSON
    if not path.exists() or not (folder / HIDDEN_FILE).exists():
        raise FileNotFoundError(f"no core baseline in {folder}: run `dvc repro extract` (it writes {BASELINE_JSON} "
                                f"and {HIDDEN_FILE} there)")
    d = read_json(path)
    if d.get("format") != FORMAT:
        raise ValueError(f"{path}: format {d.get('format')!r}, this code reads {FORMAT}; rebuild it with `dvc repro extract`")
    if settings is not None and d.get("settings") != settings:
        raise ValueError(f"{path} was computed with {d.get('settings')}, the profile asks {settings}: "
                         f"rebuild it with `dvc repro extract`")
    hidden = load_file(str(folder / HIDDEN_FILE))["clean_hidden_NSD"]
    return CoreBaseline(int(d["layer"]), str(d["tokens_digest"]), SpliceSums.from_dict(d), hidden, where=str(path))


__all__ = ["CoreBaseline", "compute_core_baseline", "load_core_baseline", "save_core_baseline", "tokens_digest"]
