"""Readers of the datasets that ship inside the PyPI package ``sae-probes==0.4.2`` (MIT).

The package is the benchmark of Kantamneni et al. 2025, "Are Sparse Autoencoders Useful? A Case
Study in Sparse Probing" (SAEBench wraps it as ``sparse_probing_sae_probes``). Its wheel carries
``sae_probes/data/cleaned_data/<n>_<tag>.csv.zst`` (columns ``prompt``, ``target`` and sometimes
``prompt_len``) and ``probing_datasets_MASTER.csv.zst`` (one row per dataset: tag, save name, data
type). The folder is found with ``importlib.util.find_spec`` and never imported (the package's
``__init__`` needs xgboost and transformer-lens); a ``data_dir`` argument reads a copy with the same
layout instead (the tests' fixtures in ``tests/fixtures/sae_probes/``).

Two uses:

- SAEBench-layout probing sources (:data:`SAEBENCH_SOURCES`): the binary files that sae-probes cut
  from SAEBench's own datasets. Their *positives* are real records of one SAEBench class each; their
  negatives are a pool of other texts (for the AG News files: GitHub code, not other news), so only
  positives are read and the classes are assembled into SAEBench's multi-class layout:
  ``161–163_agnews_{0,1,2}`` → AG News World / Sports / Business (ids "0", "1", "2"; Sci/Tech has no
  file), ``158–160_code_{C,Python,HTML}`` → GitHub code (Java and PHP have no file), and
  ``157_amazon_5star`` (target 1 = five stars, 0 = one star) → SAEBench's Amazon sentiment
  ("5.0" / "1.0"). ``112_amzn_rev`` is *not* Amazon: its rows are identical to ``111_yelp_data``
  (Yelp, five ratings).
- The sae-probes eval itself (:func:`read_binary_dataset`): any binary dataset by its numbered name,
  labels encoded as sae-probes does (sklearn ``LabelEncoder``: sorted unique targets → 0, 1).

The SAE training corpus reads some of these files (``corpus_sources.SAE_PROBES_TRAINING_FILES``:
AG News, Amazon, Yelp, movie reviews, SST-2, code, Wikidata, ...). From those files every reader
here keeps only the rows on the ``eval`` side of the document-level split
(``split.is_eval_doc(prompt)``, the raw prompt as stored), so no evaluation text is ever trained on;
rows of the other files are kept as they are.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .corpus_sources import SAE_PROBES_TRAINING_FILES
from .split import is_eval_doc
from .task_types import CODE_SKIP_CHARS, SourceError, TaskUnavailable, clean_text, package_dir

SAE_PROBES_PIN = "sae-probes==0.4.2"
"""The package whose data files these readers were written against."""
MASTER_FILE = "probing_datasets_MASTER.csv.zst"
"""Dataset table inside the data folder."""
TEXT_KEEP_CHARS = 2000
"""Characters kept of each SAEBench-layout text (far more than the 128 tokens the mean-pooled evals read;
the code files run to 8,192 characters)."""


def sae_probes_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data folder: ``data_dir`` when given, else ``<site-packages>/sae_probes/data``.

    Raises ``TaskUnavailable`` (one line, with the install command) when the package is missing."""
    if data_dir is not None:
        path = Path(data_dir)
        if not (path / "cleaned_data").is_dir():
            raise SourceError(f"{path} has no cleaned_data/ folder (expected the layout of sae_probes/data)")
        return path
    root = package_dir("sae_probes")
    if root is None or not (root / "data" / "cleaned_data").is_dir():
        raise TaskUnavailable(f"sae-probes datasets unavailable: pip install --no-deps {SAE_PROBES_PIN} zstandard")
    return root / "data"


def _read_zst_csv(path: Path):
    import pandas as pd
    import zstandard

    if not path.exists():
        raise SourceError(f"{path} does not exist (is {SAE_PROBES_PIN} installed complete?)")
    with open(path, "rb") as fh:
        raw = zstandard.ZstdDecompressor().stream_reader(fh).read()
    return pd.read_csv(io.BytesIO(raw))


def shared_with_training(name: str) -> bool:
    """Whether the SAE training corpus reads the file ``name`` (its rows are then split by document)."""
    return name in SAE_PROBES_TRAINING_FILES


def read_dataset_frame(name: str, *, data_dir: str | Path | None = None, eval_side_only: bool = True):
    """``cleaned_data/<name>.csv.zst`` as a pandas frame (columns ``prompt``, ``target``, ...), file
    order; for a file the training corpus reads, only its ``eval``-side rows unless ``eval_side_only``
    is False."""
    df = _read_zst_csv(sae_probes_data_dir(data_dir) / "cleaned_data" / f"{name}.csv.zst")
    missing = {"prompt", "target"} - set(df.columns)
    if missing:
        raise SourceError(f"sae-probes dataset {name}: columns {sorted(missing)} missing (has {list(df.columns)})")
    if eval_side_only and shared_with_training(name):
        df = df[[is_eval_doc(str(p)) for p in df["prompt"]]].reset_index(drop=True)
    return df


def binary_dataset_names(*, data_dir: str | Path | None = None) -> list[str]:
    """Numbered names of every binary-classification dataset, in the master table's order (as
    sae-probes' ``DATASETS``)."""
    master = _read_zst_csv(sae_probes_data_dir(data_dir) / MASTER_FILE)
    rows = master[master["Data type"] == "Binary Classification"]
    return [str(n).split("/")[-1].split(".")[0] for n in rows["Dataset save name"]]


@dataclass(frozen=True)
class BinaryDataset:
    """One sae-probes binary dataset."""

    name: str
    """Numbered name, e.g. ``5_hist_fig_ismale``."""
    texts: list[str]
    """Prompts, in file order."""
    y: np.ndarray
    """Labels 0/1 (int64), the sorted unique targets encoded in order."""
    classes: tuple[str, ...]
    """Target values for label 0 and label 1."""


def read_binary_dataset(name: str, *, data_dir: str | Path | None = None, max_rows: int = 5000,
                        eval_side_only: bool = True) -> BinaryDataset:
    """The first ``max_rows`` rows of a binary dataset (sae-probes reads at most 5,000; counted after
    the eval-side filter of :func:`read_dataset_frame`), labels encoded like sklearn's
    ``LabelEncoder``. Raises ``SourceError`` unless there are exactly two target values."""
    df = read_dataset_frame(name, data_dir=data_dir, eval_side_only=eval_side_only).iloc[:max_rows]
    targets = df["target"].to_numpy()
    classes = np.unique(targets)
    if len(classes) != 2:
        raise SourceError(f"sae-probes dataset {name} has {len(classes)} target values, a binary task needs 2")
    y = np.searchsorted(classes, targets).astype(np.int64)
    return BinaryDataset(name, [str(p) for p in df["prompt"]], y, tuple(str(c) for c in classes))


# --------------------------------------------------------------------------------------------
# SAEBench-layout sources assembled from sae-probes' per-class files
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClassFiles:
    """A multi-class SAEBench source assembled from sae-probes files."""

    saebench_dataset: str
    """SAEBench's hub dataset these records come from."""
    files: tuple[tuple[str, str, str], ...]
    """(file, target value to keep, class label) triples; each file contributes the rows whose
    ``target`` equals the value (as a string)."""
    missing_classes: tuple[str, ...] = ()
    """SAEBench classes with no sae-probes file (named in tables)."""
    skip_chars: int = 0
    """Leading characters sae-probes already dropped (for the record; nothing is cut here)."""


SAEBENCH_SOURCES: dict[str, ClassFiles] = {
    "sp_ag_news": ClassFiles("fancyzhx/ag_news", (("161_agnews_0", "1", "0"), ("162_agnews_1", "1", "1"),
                                                 ("163_agnews_2", "1", "2")), missing_classes=("3",)),
    "sp_github_code": ClassFiles("codeparrot/github-code", (("158_code_C", "1", "C"), ("159_code_Python", "1", "Python"),
                                                           ("160_code_HTML", "1", "HTML")),
                                 missing_classes=("Java", "PHP"), skip_chars=CODE_SKIP_CHARS),
    "sp_amazon_sentiment": ClassFiles("canrager/amazon_reviews_mcauley_1and5",
                                      (("157_amazon_5star", "1", "5.0"), ("157_amazon_5star", "0", "1.0"))),
}
"""Source name → the sae-probes files and classes it reads (SAEBench's class ids)."""


def read_saebench_source(name: str, limit: int | None = None, *, data_dir: str | Path | None = None) -> list[dict]:
    """Records ``{text, label}`` of a source of :data:`SAEBENCH_SOURCES` (texts cleaned and cut
    to :data:`TEXT_KEEP_CHARS`, empty ones dropped); ``limit`` is ignored."""
    if name not in SAEBENCH_SOURCES:
        raise KeyError(f"unknown sae-probes source {name!r}; known: {', '.join(SAEBENCH_SOURCES)}")
    out = []
    frames: dict[str, object] = {}
    for file, target, label in SAEBENCH_SOURCES[name].files:
        if file not in frames:
            frames[file] = read_dataset_frame(file, data_dir=data_dir)
        df = frames[file]
        keep = df["target"].astype(str) == target
        for prompt in df.loc[keep, "prompt"]:
            text = clean_text(str(prompt)[:TEXT_KEEP_CHARS])
            if text:
                out.append({"text": text, "label": label})
    return out


# --------------------------------------------------------------------------------------------
# Wikidata occupation x gender (an SCR pairing): the same prompt appears in the gender file and in an occupation file
# --------------------------------------------------------------------------------------------
WIKIDATA_GENDER_FILE = "56_wikidatasex_or_gender"
"""Wikidata contexts labelled with the person's sex or gender (``female`` / ``male``)."""
WIKIDATA_OCCUPATION_FILES = {
    "actor": "61_wikidata_occupation_isactor", "politician": "62_wikidata_occupation_ispolitician",
    "singer": "63_wikidata_occupation_issinger", "journalist": "59_wikidata_occupation_isjournalist",
    "athlete": "60_wikidata_occupation_isathlete",
}
"""Occupation → its binary file (target 1 = has that occupation)."""


def read_wikidata_occupation_gender(occupation: str, limit: int | None = None, *,
                                    data_dir: str | Path | None = None) -> list[dict]:
    """Records ``{text, occupation, gender}`` of the prompts present in both the occupation file and
    the gender file: ``occupation`` = the occupation or ``other``, ``gender`` = ``female``/``male``.
    Prompts that carry two genders (the gender file repeats some) are dropped."""
    if occupation not in WIKIDATA_OCCUPATION_FILES:
        raise KeyError(f"unknown occupation {occupation!r}; known: {', '.join(WIKIDATA_OCCUPATION_FILES)}")
    genders: dict[str, set[str]] = {}
    gdf = read_dataset_frame(WIKIDATA_GENDER_FILE, data_dir=data_dir)
    for prompt, target in zip(gdf["prompt"].astype(str), gdf["target"].astype(str)):
        genders.setdefault(prompt, set()).add(target)
    odf = read_dataset_frame(WIKIDATA_OCCUPATION_FILES[occupation], data_dir=data_dir)
    out, seen = [], set()
    for prompt, target in zip(odf["prompt"].astype(str), odf["target"].astype(str)):
        g = genders.get(prompt)
        if g is None or len(g) != 1 or prompt in seen:
            continue
        seen.add(prompt)
        text = clean_text(prompt)
        if text:
            out.append({"text": text, "occupation": occupation if target == "1" else "other", "gender": next(iter(g))})
    return out


__all__ = ["shared_with_training", "WIKIDATA_GENDER_FILE", "WIKIDATA_OCCUPATION_FILES", "read_wikidata_occupation_gender", "SAE_PROBES_PIN", "sae_probes_data_dir", "read_dataset_frame", "binary_dataset_names", "BinaryDataset",
           "read_binary_dataset", "ClassFiles", "SAEBENCH_SOURCES", "read_saebench_source", "TEXT_KEEP_CHARS"]
