"""The held-out split as the core metrics read it: which caches a run accepts, each sequence's genre,
and the SAE-independent half of the splice metrics (:mod:`saelib.evals.core_baseline`), which the
extract stage computes once per profile and every train stage reads back."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .activations import ActivationCache
from .evals.core_baseline import CoreBaseline, compute_core_baseline, load_core_baseline, save_core_baseline
from .io import read_json
from .models import LoadedModel, load_model

SEQUENCE_LABELS = "sequence_labels.json"
"""Side file of the held-out activation cache: ``{"genre": [...], "source": [...]}``, one entry per
sequence (``saelib.data.corpus.GenreTokens.labels_json``), written by extraction
(``saelib.extract.SEQUENCE_LABELS``, the same name; not imported, so the train stage does not depend on
the extraction code)."""


def cache_expectation(P: dict[str, Any]) -> dict[str, Any]:
    """The manifest fields an activation cache must have for the active profile (model, layer, context)."""
    run = P["run"]
    return {"model": run["model"], "layer": int(run["layer"]), "context": int(run["context"])}


def read_sequence_genres(folder: str | Path, n_sequences: int) -> list[str] | None:
    """The genre of each held-out sequence from ``folder/sequence_labels.json``, or None (with a one-line
    note) when the file is absent; a file that does not match the cache's sequences is a clear error."""
    path = Path(folder) / SEQUENCE_LABELS
    if not path.exists():
        print(f"per-genre core metrics skipped: no {path} (extraction writes it for the offline corpus)")
        return None
    genres = read_json(path).get("genre")
    if not isinstance(genres, list) or len(genres) != n_sequences:
        got = len(genres) if isinstance(genres, list) else type(genres).__name__
        raise ValueError(f"{path}: 'genre' must list one genre per held-out sequence ({n_sequences}), got {got}; "
                         f"re-run extraction (`dvc repro extract`) to rewrite it with the cache")
    return [str(g) for g in genres]


CORE_BASELINE_DIR = "core"
"""Folder of the core baseline under the profile's ``eval_cache`` (written by the extract stage)."""


def core_baseline_settings(P: dict[str, Any]) -> dict[str, Any]:
    """The settings a core baseline is computed for (checked when a train stage reads it)."""
    run = P["run"]
    eval_cfg = run.get("core", {})
    n_kl = eval_cfg.get("n_kl_sequences")
    return {"model": run["model"], "layer": int(run["layer"]), "context": int(run["context"]),
            "batch_size": int(eval_cfg.get("batch_size", 16)), "n_kl_sequences": None if n_kl is None else int(n_kl)}


def build_core_baseline(P: dict[str, Any], model: LoadedModel | None = None, *, progress: bool = True) -> Path:
    """Compute the SAE-independent core splice runs (clean hidden states, both zero-ablation
    baselines) on the profile's held-out cache once, into ``data/<profile>/eval_cache/core``
    (:mod:`saelib.evals.core_baseline`); every train stage reads them back."""
    settings = core_baseline_settings(P)
    model = model or load_model(P["run"]["model"], device=P.get("device", "auto"))
    layer = model.check_layer(settings["layer"])
    heldout = ActivationCache(P["paths"]["activations_heldout"], profile=P["profile"], expect=cache_expectation(P))
    tokens = heldout.tokens()
    genres = read_sequence_genres(P["paths"]["activations_heldout"], tokens.shape[0])
    baseline = compute_core_baseline(model, tokens, layer, n_kl_sequences=settings["n_kl_sequences"], groups=genres,
                                     batch_size=settings["batch_size"], progress=progress)
    return save_core_baseline(P["paths"]["eval_cache"] / CORE_BASELINE_DIR, baseline, settings)


def load_profile_baseline(P: dict[str, Any]) -> CoreBaseline:
    """The profile's core baseline, refused (naming `dvc repro extract`) if built for other settings."""
    return load_core_baseline(P["paths"]["eval_cache"] / CORE_BASELINE_DIR, core_baseline_settings(P))


__all__ = ["CORE_BASELINE_DIR", "build_core_baseline", "cache_expectation", "core_baseline_settings",
           "load_profile_baseline", "read_sequence_genres"]
