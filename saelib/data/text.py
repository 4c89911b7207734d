"""Small text helpers shared by the corpus sources, the corpus builder and the hub loaders.

Pure functions of strings, no I/O: word counts, paragraph splitting, grouping paragraphs into
documents of a word budget, and paragraph de-duplication.
"""
from __future__ import annotations

import hashlib
import re
from typing import Iterable

__all__ = ["word_count", "normalise_paragraph", "paragraphs", "group_paragraphs", "cut_lines", "dedupe_paragraphs"]


def word_count(text: str) -> int:
    """Whitespace-separated words in ``text``."""
    return len(text.split())


def normalise_paragraph(par: str) -> str:
    """``par`` with every run of whitespace replaced by one space, stripped."""
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


def cut_lines(text: str, doc_words: int) -> list[str]:
    """Cut ``text`` at line breaks into pieces of at most ``doc_words`` words, keeping every line as
    it is (indentation included, for code); a single longer line is cut on words."""
    if doc_words < 1:
        raise ValueError(f"doc_words must be >= 1, got {doc_words}")
    pieces: list[str] = []
    buf: list[str] = []
    n = 0
    for line in text.replace("\r\n", "\n").split("\n"):
        w = word_count(line)
        if w > doc_words:
            if buf:
                pieces.append("\n".join(buf))
                buf, n = [], 0
            words = line.split()
            pieces.extend(" ".join(words[i : i + doc_words]) for i in range(0, len(words), doc_words))
            continue
        if buf and n + w > doc_words:
            pieces.append("\n".join(buf))
            buf, n = [], 0
        buf.append(line.rstrip())
        n += w
    if buf:
        pieces.append("\n".join(buf))
    return [p for p in (p.strip("\n") for p in pieces) if p.strip()]


def dedupe_paragraphs(pars: Iterable[str], seen: set[str]) -> list[str]:
    """Drop paragraphs whose whitespace-normalised text is already in ``seen`` (updated in place)."""
    out = []
    for par in pars:
        key = hashlib.sha1(normalise_paragraph(par).lower().encode()).hexdigest()
        if key in seen:
            continue
        seen.add(key)
        out.append(par)
    return out
