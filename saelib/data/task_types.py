"""Task types and the helpers every labelled-text source shares (offline, sae-probes, WordNet, hub).

This module imports no registry: the readers (``tasks``, ``hub_tasks``, ``sae_probes_data``,
``wordnet_people``) build on it, and :mod:`saelib.data.tasks` holds the registries and dispatch
on top of them, so imports run one way (types → readers → registry) and no module imports back.

A *source* is a pool of labelled records (:class:`SourceSpec`); a *task* is a view of a source
(:class:`ProbingTask`: a label column and an optional row filter; :class:`ScrTask`: two binary
attributes with four quadrants). :func:`sample_balanced` draws ``n_train`` + ``n_test`` records per
stratum by a seeded shuffle of a canonical order (sha1 of the text).
"""
from __future__ import annotations

import hashlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

SPLITS = ("train", "test")


class TaskUnavailable(RuntimeError):
    """An optional source is not installed; ``str(exc)`` is one line saying what to install."""


class SourceError(RuntimeError):
    """A required source is missing or too small for the requested counts."""


# --------------------------------------------------------------------------------------------
# registry types
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceSpec:
    """A pool of labelled records."""

    name: str
    """Registry key."""
    read: Callable[[int | None], list[dict]]
    """``read(limit_per_stratum)`` → records (dicts with ``text`` and the label columns; a ``split``
    key, when present, is the source's own train/test split). ``limit`` may be ignored."""
    strata: tuple[str, ...]
    """Label columns whose value combinations are sampled in equal numbers."""
    description: str
    """Composition, for tables and the README."""
    licence: str
    """Licence of the text."""
    optional: bool = False
    """True when the source comes from a package the default install may lack."""
    shrink_to_fit: bool = False
    """True when a stratum may hold fewer records than asked for: it is then split train/test in the
    asked ratio instead of raising (small curated pools such as the WordNet person glosses)."""


@dataclass(frozen=True)
class ProbingTask:
    """A classification view of a source."""

    name: str
    """Task name (results key)."""
    source: str
    """Source it reads."""
    label_column: str = "label"
    """Column holding the class."""
    where: tuple[tuple[str, str], ...] = ()
    """Row filter: (column, value) pairs that must all hold."""
    classes: tuple[str, ...] | None = None
    """Classes to keep (all present ones when None)."""


@dataclass(frozen=True)
class ScrTask:
    """Two binary attributes of one source with all four quadrants (SAEBench SCR).

    ``a`` is SAEBench's column 1 (profession: professor / nurse), ``b`` its column 2 (gender:
    male / female). SCR trains a probe on the biased set {(a+, b+), (a−, b−)}.
    """

    name: str
    """Task name (results key)."""
    source: str
    """Source it reads."""
    column_a: str
    """Column of attribute A (SAEBench column 1)."""
    a_pos: str
    """Value of A treated as positive."""
    a_neg: str
    """Value of A treated as negative."""
    column_b: str
    """Column of attribute B (SAEBench column 2)."""
    b_pos: str
    """Value of B treated as positive (paired with a_pos in the biased set)."""
    b_neg: str
    """Value of B treated as negative."""
    where: tuple[tuple[str, str], ...] = ()
    """Extra row filter."""


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def text_key(text: str) -> str:
    """Canonical sort key of a text (sha1 hex)."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def package_dir(name: str) -> Path | None:
    """Folder of an installed package found without importing it (None when not installed)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def read_text_file(path: Path) -> str:
    """A file's text, UTF-8 or else Latin-1."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def clean_text(text: str) -> str:
    """Unix newlines, tabs as spaces, at most one blank line in a row, stripped."""
    text = text.replace("\r\n", "\n").replace("\t", " ")
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


CODE_SKIP_CHARS = 150
"""Leading characters dropped from every file (licence headers), as SAEBench does for github-code."""
CODE_MIN_CHARS = 534
"""Files of at most this many characters are skipped (SAEBench: 128 tokens × 3 chars + the skip)."""


# --------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------
def dedupe(records: Iterable[dict]) -> list[dict]:
    """Drop records whose text is empty or already seen (first occurrence kept)."""
    seen: set[str] = set()
    out = []
    for rec in records:
        text = rec["text"]
        if not text or text in seen:
            continue
        seen.add(text)
        out.append(rec)
    return out


def shrunk_counts(available: int, n_train: int, n_test: int) -> tuple[int, int]:
    """Train/test counts of a stratum with only ``available`` records: all of them, split in the
    ratio ``n_train : n_test`` (train rounded down, at least one of each)."""
    if available >= n_train + n_test:
        return n_train, n_test
    if available < 2:
        raise SourceError(f"a stratum with {available} record(s) cannot be split into train and test")
    n_tr = min(max(1, (available * n_train) // (n_train + n_test)), available - 1)
    return n_tr, available - n_tr


def sample_balanced(records: Sequence[dict], strata: Sequence[str], n_train: int, n_test: int, *,
                    seed: int = 0, name: str = "source", shrink_to_fit: bool = False) -> list[dict]:
    """``n_train`` train and ``n_test`` test records of every stratum (combination of ``strata`` values).

    Records carrying their own ``split`` are drawn from that split; the others are ordered by the
    sha1 of their text, shuffled with ``seed`` and cut into train then test. Raises ``SourceError``
    naming the stratum when one is too small, unless ``shrink_to_fit``: a short stratum (no own
    split) then gives all its records, split by :func:`shrunk_counts`.
    """
    if n_train < 1 or n_test < 1:
        raise ValueError(f"n_train and n_test must be >= 1, got {n_train}, {n_test}")
    groups: dict[tuple, list[dict]] = {}
    for rec in records:
        missing = [c for c in strata if c not in rec]
        if missing:
            raise ValueError(f"{name}: record lacks label column(s) {missing}")
        groups.setdefault(tuple(str(rec[c]) for c in strata), []).append(rec)
    rng = np.random.default_rng(seed)
    out = []
    for key in sorted(groups):
        group = sorted(groups[key], key=lambda r: text_key(r["text"]))
        own = [r for r in group if r.get("split") in SPLITS]
        if own and len(own) != len(group):
            raise ValueError(f"{name}: some records of stratum {key} carry a split and some do not")
        if own:
            pools = {s: [r for r in group if r["split"] == s] for s in SPLITS}
            chosen = {}
            for split, n in (("train", n_train), ("test", n_test)):
                pool = pools[split]
                if len(pool) < n:
                    raise SourceError(f"{name}: stratum {dict(zip(strata, key))} has {len(pool)} {split} records, need {n}")
                order = rng.permutation(len(pool))[:n]
                chosen[split] = [pool[i] for i in order]
        else:
            n_tr, n_te = n_train, n_test
            if shrink_to_fit:
                n_tr, n_te = shrunk_counts(len(group), n_train, n_test)
            if len(group) < n_tr + n_te:
                raise SourceError(f"{name}: stratum {dict(zip(strata, key))} has {len(group)} records, "
                                  f"need {n_train} + {n_test}")
            order = rng.permutation(len(group))
            chosen = {"train": [group[i] for i in order[:n_tr]],
                      "test": [group[i] for i in order[n_tr:n_tr + n_te]]}
        for split in SPLITS:
            out += [{**r, "split": split} for r in chosen[split]]
    perm = rng.permutation(len(out))
    return [out[i] for i in perm]


def task_rows(ds, task: ProbingTask | ScrTask) -> np.ndarray:
    """Indices of the rows of ``ds`` that the task's ``where`` filter (and class list) keeps."""
    keep = np.ones(len(ds), dtype=bool)
    for column, value in task.where:
        keep &= np.asarray(ds[column]) == value
    if isinstance(task, ProbingTask) and task.classes is not None:
        keep &= np.isin(np.asarray(ds[task.label_column]), list(task.classes))
    return np.nonzero(keep)[0]


def probing_view(ds, task: ProbingTask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(rows, labels, splits)`` of a probing task over its source dataset ``ds``.

    Raises ``TaskUnavailable`` when fewer than two classes remain (e.g. the food half of ``reviews``
    is not installed)."""
    rows = task_rows(ds, task)
    labels = np.asarray(ds[task.label_column])[rows]
    splits = np.asarray(ds["split"])[rows]
    classes = sorted(set(labels.tolist()))
    if len(classes) < 2:
        raise TaskUnavailable(f"task {task.name!r} skipped: its source {task.source!r} has no rows for "
                              f"{dict(task.where)} (an optional package is missing)")
    return rows, labels, splits


def scr_quadrants(ds, task: ScrTask) -> dict[str, dict[str, np.ndarray]]:
    """Row indices per split and quadrant: ``{"train": {"pp", "pn", "np", "nn"}, "test": ...}``
    where the first letter is A (p = ``a_pos``) and the second B. Raises ``TaskUnavailable`` when a
    quadrant is empty."""
    base = task_rows(ds, task)
    a = np.asarray(ds[task.column_a])[base]
    b = np.asarray(ds[task.column_b])[base]
    split = np.asarray(ds["split"])[base]
    out: dict[str, dict[str, np.ndarray]] = {}
    for s in SPLITS:
        out[s] = {}
        for qa, va in (("p", task.a_pos), ("n", task.a_neg)):
            for qb, vb in (("p", task.b_pos), ("n", task.b_neg)):
                idx = base[(a == va) & (b == vb) & (split == s)]
                if len(idx) == 0:
                    raise TaskUnavailable(f"SCR task {task.name!r} skipped: no {s} rows with "
                                          f"{task.column_a}={va}, {task.column_b}={vb} (an optional package is missing)")
                out[s][qa + qb] = idx
    return out


def quadrant_counts(ds, task: ScrTask):
    """Table (pandas) of rows per split × quadrant, for the notebook."""
    import pandas as pd

    quads = scr_quadrants(ds, task)
    names = {"pp": f"{task.a_pos}+{task.b_pos}", "pn": f"{task.a_pos}+{task.b_neg}",
             "np": f"{task.a_neg}+{task.b_pos}", "nn": f"{task.a_neg}+{task.b_neg}"}
    return pd.DataFrame({s: {names[q]: len(v) for q, v in quads[s].items()} for s in SPLITS})




__all__ = [
    "SPLITS", "TaskUnavailable", "SourceError", "SourceSpec", "ProbingTask", "ScrTask", "text_key", "dedupe",
    "sample_balanced", "shrunk_counts", "task_rows", "probing_view", "scr_quadrants", "quadrant_counts",
    "CODE_SKIP_CHARS", "CODE_MIN_CHARS", "package_dir", "read_text_file", "clean_text",
]
