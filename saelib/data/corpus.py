"""Offline English text corpus for SAE training, built from text that ships in packages.

The sources, their genres and licences are in :mod:`saelib.data.corpus_sources` (``SOURCES``):
literature and dictionaries (about a quarter of the words) and modern prose and code (news,
reviews, forum posts, encyclopedic web text, technical manuals, source files: the rest).

Document-level split (:mod:`saelib.data.split`): every source document (a review, an entry, a
gloss, a cut of a long work) is hashed (``doc_hash``) and goes to ``eval``, ``heldout`` or ``train``
by that hash alone. ``eval`` documents are dropped here: evaluation tasks that read the same
sources (sae-probes' AG News, Amazon, code and Wikidata files) use only those, so no document of
an eval task is in the training split. Exact duplicate documents (and passages) are kept once. Each source is
capped at ``max_words`` (documents taken in hash order), so that the genres stay balanced. Short
documents of one split are then packed into passages of about :attr:`CorpusConfig.doc_words`
words; every row of the corpus records the hashes of the documents it holds (``doc_hashes``).

``load_corpus`` returns a ``datasets.Dataset`` with columns ``text``, ``source``, ``genre``,
``split``, ``words``, ``doc_hashes`` in a seeded shuffled order; ``tokenize_by_genre`` packs the
held-out split into token rows that each stay within one genre (per-genre core metrics).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import datasets
import pandas as pd
import torch
from torch import Tensor

from .corpus_sources import (
    BIOMEDICAL_LABELS,
    EVAL_ONLY_SOURCES,
    GENRES,
    MODERN_GENRES,
    SAE_PROBES_TRAINING_FILES,
    SOURCE_PACKAGES,
    SOURCES,
    CorpusSource,
    CorpusSourceError,
    GcideEntry,
    cache_dir,
    clean_gcide,
    gcide_entries,
    is_biomedical,
)
from .hub import load_pile
from .split import EVAL_PERCENT, HELDOUT_PERCENT, SPLITS, doc_hash, split_of, split_of_doc
from .text import cut_lines, dedupe_paragraphs, group_paragraphs, paragraphs, word_count

__all__ = [
    "BIOMEDICAL_LABELS", "EVAL_ONLY_SOURCES", "GENRES", "MODERN_GENRES", "SAE_PROBES_TRAINING_FILES",
    "SOURCE_PACKAGES", "SOURCES", "SPLITS", "CorpusConfig", "CorpusSource", "CorpusSourceError", "GcideEntry",
    "GenreTokens", "build_offline_records", "clean_gcide", "columns", "composition", "content_sha256", "corpus_fingerprint",
    "dedupe_paragraphs", "doc_hash", "exclude_training", "gcide_entries", "genre_composition", "group_paragraphs",
    "heldout_by_genre", "is_biomedical", "load_corpus", "load_offline_corpus", "pack_documents", "paragraphs",
    "select_documents", "source_table", "split_of", "token_shares", "split_of_doc", "tokenize_by_genre", "tokenize_corpus",
    "training_document_hashes", "word_count",
]


@dataclass
class CorpusConfig:
    """How the offline corpus is built and split."""

    sources: tuple[str, ...] = tuple(SOURCES)
    """Training sources to include (keys of ``SOURCES``)."""
    heldout_percent: float = HELDOUT_PERCENT
    """Share of documents (by content hash) that go to the ``heldout`` split."""
    eval_percent: float = EVAL_PERCENT
    """Share of documents (by content hash) reserved for evaluation tasks and left out of the corpus;
    keep the default, which is what the eval tasks assume (``split.is_eval_doc``)."""
    doc_words: int = 200
    """Target passage length in words: long works are cut to it, short documents packed up to it."""
    word_scale: float = 1.0
    """Multiplies every source's ``max_words`` cap (tests build small corpora with it)."""
    seed: int = 0
    """Seed for the order of the returned documents."""
    required: bool = True
    """Raise ``CorpusSourceError`` when a source is unavailable (else skip it with a message)."""


# --------------------------------------------------------------------------------------------
# building


def select_documents(docs: Iterable[str], max_words: int | None, cfg: CorpusConfig, seen: set[str]) -> dict[str, list[tuple[str, str]]]:
    """A source's documents per split (``train``, ``heldout``) as ``(doc_hash, text)`` in source order.

    ``eval`` documents are dropped, as are documents whose hash is in ``seen`` (updated with every
    hash, so a text that two sources share is kept once). Of the rest, documents are taken in hash
    order until ``max_words`` words (None: all).
    """
    kept: list[tuple[int, str, str, str]] = []
    for i, text in enumerate(docs):
        if not text.strip():
            continue
        h = doc_hash(text)
        if h in seen:
            continue
        seen.add(h)
        split = split_of_doc(text, heldout_percent=cfg.heldout_percent, eval_percent=cfg.eval_percent)
        if split != "eval":
            kept.append((i, h, split, text))
    if max_words is not None:
        taken, words = [], 0
        for item in sorted(kept, key=lambda x: x[1]):
            if words >= max_words:
                break
            taken.append(item)
            words += word_count(item[3])
        kept = sorted(taken)
    return {s: [(h, t) for _, h, split, t in kept if split == s] for s in SPLITS}


def pack_documents(docs: Sequence[tuple[str, str]], doc_words: int, *, sep: str = "\n\n") -> list[tuple[str, list[str]]]:
    """Pack consecutive short ``(doc_hash, text)`` documents into passages of at most ``doc_words``
    words; a document longer than that is cut at line breaks into passages of its own (:func:`cut_lines`).
    Returns ``(passage, [doc_hash, ...])`` pairs."""
    if doc_words < 1:
        raise ValueError(f"doc_words must be >= 1, got {doc_words}")
    out: list[tuple[str, list[str]]] = []
    cur: list[str] = []
    hashes: list[str] = []
    n = 0
    for h, text in docs:
        w = word_count(text)
        if cur and n + w > doc_words:
            out.append((sep.join(cur), hashes))
            cur, hashes, n = [], [], 0
        if w > doc_words:
            out.extend((piece, [h]) for piece in cut_lines(text, doc_words))
            continue
        cur.append(text)
        hashes.append(h)
        n += w
    if cur:
        out.append((sep.join(cur), hashes))
    return out


def build_offline_records(cfg: CorpusConfig) -> list[dict[str, Any]]:
    """All passages of the configured sources as ``{"text", "source", "genre", "split", "words",
    "doc_hashes"}`` (source order, then ``train`` before ``heldout``)."""
    unknown = [s for s in cfg.sources if s not in SOURCES]
    if unknown:
        bad = [s for s in unknown if s in EVAL_ONLY_SOURCES]
        why = f" ({', '.join(bad)} is reserved for evaluation)" if bad else ""
        raise ValueError(f"unknown corpus source(s) {unknown}{why}; training sources: {', '.join(SOURCES)}")
    records = []
    seen: set[str] = set()  # document hashes
    seen_passages: set[str] = set()  # passage hashes: cut pieces of different documents can coincide (licence headers)
    for name in cfg.sources:
        src = SOURCES[name]
        try:
            docs = src.read(cfg.doc_words)
        except CorpusSourceError:
            if cfg.required:
                raise
            print(f"corpus: skipping unavailable source {name!r}", file=sys.stderr)
            continue
        cap = None if src.max_words is None else int(round(src.max_words * cfg.word_scale))
        for split, chosen in select_documents(docs, cap, cfg, seen).items():
            passages = pack_documents(chosen, cfg.doc_words) if src.pack else [(t, [h]) for h, t in chosen]
            for t, hs in passages:
                key = doc_hash(t)
                if key in seen_passages:
                    continue
                seen_passages.add(key)
                records.append({"text": t, "source": name, "genre": src.genre, "split": split, "words": word_count(t), "doc_hashes": hs})
    return records


def _code_key(cfg: CorpusConfig) -> str:
    """Hash of the corpus settings and of the corpus modules' code (names the build cache folder)."""
    here = Path(__file__).parent
    code = hashlib.sha256(b"".join((here / f).read_bytes() for f in ("corpus.py", "corpus_sources.py", "split.py", "text.py")))
    key = json.dumps({
        "code": code.hexdigest(), "sources": list(cfg.sources), "held": cfg.heldout_percent, "eval": cfg.eval_percent,
        "doc": cfg.doc_words, "scale": cfg.word_scale,
    })
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _memo_path(cfg: CorpusConfig) -> Path:
    """Cache folder of the built corpus (an edit of the corpus modules rebuilds it)."""
    return cache_dir() / "offline" / _code_key(cfg)


CONTENT_HASH_FILE = "content_sha256.txt"


def content_sha256(records: Iterable[dict[str, Any]]) -> str:
    """SHA-256 over the (source, split, text) of every passage, in order."""
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r['source']}\x00{r['split']}\x00{len(r['text'])}\x00".encode())
        h.update(r["text"].encode("utf-8"))
    return h.hexdigest()


def corpus_fingerprint(cfg: CorpusConfig | None = None) -> str:
    """Content hash of the offline corpus (builds it if needed): equal fingerprints, equal text.

    Activation caches record it, so editing the corpus code without changing the text keeps them valid.
    """
    cfg = cfg or CorpusConfig()
    load_offline_corpus(cfg)
    return (_memo_path(cfg) / CONTENT_HASH_FILE).read_text().strip()[:16]


@contextlib.contextmanager
def _quiet_datasets() -> Iterator[None]:
    """Silence ``datasets`` progress bars inside the block (restored afterwards)."""
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def load_offline_corpus(cfg: CorpusConfig | None = None, *, use_cache: bool = True) -> datasets.Dataset:
    """The whole offline corpus as a ``datasets.Dataset`` in source order.

    The built dataset is cached under :func:`cache_dir` keyed by the settings and the corpus code.
    """
    cfg = cfg or CorpusConfig()
    memo = _memo_path(cfg)
    with _quiet_datasets():
        if use_cache and (memo / "dataset_info.json").exists() and (memo / CONTENT_HASH_FILE).exists():
            return datasets.load_from_disk(str(memo))
        records = build_offline_records(cfg)
        features = datasets.Features({
            "text": datasets.Value("string"), "source": datasets.Value("string"), "genre": datasets.Value("string"),
            "split": datasets.Value("string"), "words": datasets.Value("int64"),
            "doc_hashes": datasets.Sequence(datasets.Value("string")),
        })
        ds = datasets.Dataset.from_list(records, features=features)
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
    columns ``text``, ``source``, ``genre``, ``split`` (and ``words``, ``doc_hashes`` for the offline
    corpus), in an order shuffled with ``seed``.

    ``name`` is ``offline`` (package corpus, this module) or ``pile`` (Pile-uncopyrighted streamed
    from the hub, see :mod:`saelib.data.hub`; ``hub_kwargs`` go to :func:`~saelib.data.hub.load_pile`).
    """
    if split not in (*SPLITS, "all"):
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}, all")
    if name == "pile":
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


def columns(ds, *names: str) -> dict[str, list]:
    """Columns of a ``datasets.Dataset`` (or a dict of lists) as Python lists, read in one go
    (``ds[name]`` of a Dataset is a lazy column that decodes row by row)."""
    if isinstance(ds, datasets.Dataset):
        return ds.select_columns(list(names)).to_dict()
    return {n: list(ds[n]) for n in names}


def training_document_hashes(cfg: CorpusConfig | None = None) -> frozenset[str]:
    """Content hashes (``split.doc_hash``) of every source document in the training split."""
    c = columns(load_offline_corpus(cfg), "doc_hashes", "split")
    return frozenset(h for hs, s in zip(c["doc_hashes"], c["split"]) if s == "train" for h in hs)


def exclude_training(texts: Iterable[str], cfg: CorpusConfig | None = None) -> list[str]:
    """``texts`` without those whose content hash is a training document (for an eval task drawing
    on a source outside the split rule, e.g. a sae-probes file the corpus does not read)."""
    train = training_document_hashes(cfg)
    return [t for t in texts if doc_hash(t) not in train]


def composition(ds) -> pd.DataFrame:
    """Documents and words per source and split (the corpus composition table), with each source's genre."""
    c = columns(ds, *[n for n in ("text", "source", "genre", "split", "words") if n in ds.column_names])
    words = c["words"] if "words" in c else [word_count(t) for t in c["text"]]
    genres = c.get("genre", [""] * len(c["source"]))
    df = pd.DataFrame({"source": c["source"], "genre": genres, "split": c["split"], "words": words})
    table = df.groupby(["source", "split"]).agg(documents=("words", "size"), words=("words", "sum")).unstack("split", fill_value=0)
    table.columns = [f"{a}_{b}" for a, b in table.columns]
    table.insert(0, "genre", df.groupby("source")["genre"].first())
    total = table.drop(columns="genre").sum()
    table.loc["total"] = ["", *total.tolist()]
    return table


def genre_composition(ds) -> pd.DataFrame:
    """Words per genre and split, with each genre's share of the training words."""
    c = columns(ds, *[n for n in ("text", "genre", "split", "words") if n in ds.column_names])
    words = c["words"] if "words" in c else [word_count(t) for t in c["text"]]
    df = pd.DataFrame({"genre": c["genre"], "split": c["split"], "words": words})
    table = df.pivot_table(index="genre", columns="split", values="words", aggfunc="sum", fill_value=0)
    table.columns = [f"words_{c}" for c in table.columns]
    if "words_train" in table:
        table["share_train"] = table["words_train"] / table["words_train"].sum()
    return table


def token_shares(tokenizer, ds, max_tokens: int, *, batch_docs: int = 256) -> pd.DataFrame:
    """Tokens per genre in the first documents of ``ds`` (in its order) that hold ``max_tokens``
    tokens, as the training extraction takes them (``tokenize_corpus`` with that budget), with each
    genre's share and whether it is modern prose or code (:data:`MODERN_GENRES`)."""
    c = columns(ds, "text", "genre")
    counts: dict[str, int] = {}
    total = 0
    for start in range(0, len(c["text"]), batch_docs):
        texts = c["text"][start : start + batch_docs]
        for ids, g in zip(tokenizer(texts, add_special_tokens=False)["input_ids"], c["genre"][start : start + batch_docs]):
            take = min(len(ids), max_tokens - total)
            counts[g] = counts.get(g, 0) + take
            total += take
            if total >= max_tokens:
                break
        if total >= max_tokens:
            break
    table = pd.DataFrame({"tokens": pd.Series(counts, dtype="int64")}).sort_index()
    table["share"] = table["tokens"] / max(total, 1)
    table["modern"] = [g in MODERN_GENRES for g in table.index]
    return table


def source_table() -> pd.DataFrame:
    """The README's source table: source, genre, package, licence, word cap."""
    rows = [{"source": s.name, "genre": s.genre, "package": s.package, "licence": s.licence, "max_words": s.max_words} for s in SOURCES.values()]
    return pd.DataFrame(rows).set_index("source")


# --------------------------------------------------------------------------------------------
# tokenisation


def _special_ids(tokenizer) -> set[int]:
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    special.update(i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None)
    return special


def _pack_tokens(
    tokenizer,
    texts: Iterable[str],
    labels: Iterable[int] | None,
    context: int,
    max_tokens: int | None,
    max_sequences: int | None,
    add_bos: bool,
    separator: str | None,
    batch_docs: int,
) -> tuple[list[list[int]], list[int]]:
    """Rows of token ids and, per row, the label of the document that gave most of its tokens
    (no labels, an empty list, when ``labels`` is None)."""
    if context < 2:
        raise ValueError(f"context must be >= 2, got {context}")
    bos = tokenizer.bos_token_id
    sep_id = {"bos": bos, "eos": tokenizer.eos_token_id, None: None}.get(separator, -1)
    if sep_id == -1:
        raise ValueError(f"separator must be 'bos', 'eos' or None, got {separator!r}")
    if add_bos and bos is None:
        raise ValueError("tokenizer has no BOS token but add_bos=True")
    special = _special_ids(tokenizer)
    body = context - (1 if add_bos else 0)
    rows: list[list[int]] = []
    row_labels: list[int] = []
    kept = 0
    buf: list[int] = []
    buf_lab: list[int] = []

    def done() -> bool:
        return (max_tokens is not None and kept >= max_tokens) or (max_sequences is not None and len(rows) >= max_sequences)

    def drain() -> None:
        nonlocal buf, buf_lab, kept
        start = 0
        while len(buf) - start >= body and not done():
            row = ([bos] if add_bos else []) + buf[start : start + body]
            if track:
                labs = buf_lab[start : start + body]
                row_labels.append(max(dict.fromkeys(labs), key=labs.count))
            start += body
            rows.append(row)
            kept += sum(1 for t in row if t not in special)
        buf = buf[start:]
        if track:
            buf_lab = buf_lab[start:]

    def feed(batch: list[str], labs: list[int]) -> None:
        for ids, lab in zip(tokenizer(batch, add_special_tokens=False)["input_ids"], labs):
            ids = list(ids) + ([sep_id] if sep_id is not None else [])
            buf.extend(ids)
            if track:
                buf_lab.extend([lab] * len(ids))
        drain()

    track = labels is not None
    label_iter = iter(labels) if track else None
    if not done():
        batch: list[str] = []
        labs: list[int] = []
        for text in texts:
            lab = next(label_iter) if label_iter is not None else 0
            if not isinstance(text, str):
                raise TypeError(f"texts must be strings, got {type(text).__name__}")
            if not text.strip():
                continue
            batch.append(text)
            labs.append(lab)
            if len(batch) < batch_docs:
                continue
            feed(batch, labs)
            batch, labs = [], []
            if done():
                break
        if batch and not done():
            feed(batch, labs)
    return rows, row_labels


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
    rows, _ = _pack_tokens(tokenizer, texts, None, context, max_tokens, max_sequences, add_bos, separator, batch_docs)
    if not rows:
        return torch.zeros((0, context), dtype=torch.long)
    return torch.tensor(rows, dtype=torch.long)


@dataclass
class GenreTokens:
    """Token rows that each stay within one genre, with their labels."""

    tokens_NS: Tensor
    """Token ids (int64), rows interleaved across genres (row i has genre ``genres[i]``)."""
    genres: list[str] = field(default_factory=list)
    """Genre of each row."""
    sources: list[str] = field(default_factory=list)
    """Source of each row (the source that gave most of its tokens)."""

    def counts(self) -> dict[str, int]:
        """Rows per genre."""
        return {g: self.genres.count(g) for g in dict.fromkeys(self.genres)}

    def labels_json(self) -> dict[str, Any]:
        """``{"genre": [...], "source": [...]}``: the side file the held-out cache keeps beside its manifest."""
        return {"genre": list(self.genres), "source": list(self.sources)}

    def rows_of(self, genre: str) -> list[int]:
        """Row indices of ``genre``."""
        return [i for i, g in enumerate(self.genres) if g == genre]


def tokenize_by_genre(
    tokenizer,
    ds,
    context: int = 128,
    n_sequences: int = 64,
    *,
    add_bos: bool = True,
    separator: str | None = "bos",
    batch_docs: int = 64,
) -> GenreTokens:
    """Pack each genre's documents of ``ds`` (columns ``text``, ``genre``, ``source``) separately into
    ``n_sequences`` rows in all, split as evenly as possible over the genres (the first genres in
    :data:`GENRES` order take the remainder), interleaved so that every prefix of the rows covers
    the genres evenly. Raises ``ValueError`` naming a genre whose text is too short for its share."""
    c = columns(ds, "text", "genre", "source")
    texts, sources, doc_genres = c["text"], c["source"], c["genre"]
    present = list(dict.fromkeys(doc_genres))
    genres = [g for g in GENRES if g in present] + sorted(g for g in present if g not in GENRES)
    if not genres:
        raise ValueError("tokenize_by_genre got no documents")
    base, extra = divmod(n_sequences, len(genres))
    quota = {g: base + (1 if i < extra else 0) for i, g in enumerate(genres)}
    per: dict[str, tuple[list[list[int]], list[str]]] = {}
    for g in genres:
        idx = [i for i, x in enumerate(doc_genres) if x == g]
        names = list(dict.fromkeys(sources[i] for i in idx))
        code = {n: k for k, n in enumerate(names)}
        rows, labs = _pack_tokens(tokenizer, (texts[i] for i in idx), (code[sources[i]] for i in idx), context, None,
                                  quota[g], add_bos, separator, batch_docs)
        if len(rows) < quota[g]:
            raise ValueError(f"genre {g!r} gave {len(rows)} sequences of {context} tokens; its share of {n_sequences} is {quota[g]}")
        per[g] = (rows, [names[k] for k in labs])
    out_rows, out_genres, out_sources = [], [], []
    for r in range(max(quota.values())):
        for g in genres:
            if r < quota[g]:
                out_rows.append(per[g][0][r])
                out_genres.append(g)
                out_sources.append(per[g][1][r])
    tokens = torch.tensor(out_rows, dtype=torch.long) if out_rows else torch.zeros((0, context), dtype=torch.long)
    return GenreTokens(tokens, out_genres, out_sources)


def heldout_by_genre(tokenizer, context: int = 128, n_sequences: int = 64, *, seed: int = 0, cfg: CorpusConfig | None = None) -> GenreTokens:
    """The offline corpus's held-out rows for the core metrics, one genre per row (see :func:`tokenize_by_genre`)."""
    return tokenize_by_genre(tokenizer, load_corpus("offline", "heldout", seed=seed, cfg=cfg), context, n_sequences)
