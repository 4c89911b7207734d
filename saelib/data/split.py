"""The document-level split rule shared by the SAE training corpus and the evaluation tasks.

Every document (a review, a news item, a dictionary entry, a code file, a gloss, ...) has a
content hash, :func:`doc_hash` (SHA-256 of its whitespace-normalised text). The hash alone decides
which side the document is on (:func:`split_of_doc`):

- ``eval``: :data:`EVAL_PERCENT` % of documents. Evaluation tasks may use these, and only these,
  from a source that the training corpus also reads.
- ``heldout``: the next :data:`HELDOUT_PERCENT` %: the core metrics' held-out text.
- ``train``: the rest: SAE training text.

Both sides import this module (it imports nothing from ``saelib``), so an evaluation task built
from, say, the sae-probes AG News file keeps ``split_of_doc(prompt) == "eval"`` and can never share
a document with the training split. Apply it to each record's text as read from its source (the
hash ignores whitespace differences, nothing else).
"""
from __future__ import annotations

import hashlib

__all__ = [
    "SPLITS",
    "DOC_SPLITS",
    "EVAL_PERCENT",
    "HELDOUT_PERCENT",
    "normalise_text",
    "doc_hash",
    "hash_bucket",
    "split_of_doc",
    "split_of",
    "is_eval_doc",
    "eval_docs",
]

SPLITS = ("train", "heldout")
"""Splits a corpus loader returns (``load_corpus`` / ``load_pile``)."""

DOC_SPLITS = ("train", "heldout", "eval")
"""Sides of the document-level split (``eval`` documents never enter a corpus)."""

EVAL_PERCENT = 50.0
"""Share of every source's documents reserved for evaluation tasks. Half, because the eval tasks
are limited by document counts (SCR quadrants of a few hundred texts) and training is not (the
default trains on about a fifth of the corpus)."""

HELDOUT_PERCENT = 2.0
"""Share of documents that go to the ``heldout`` split (core metrics, unlearning retain text)."""

_BUCKETS = 10_000


def normalise_text(text: str) -> str:
    """``text`` with each run of whitespace made one space, stripped (what :func:`doc_hash` hashes)."""
    return " ".join(text.split())


def doc_hash(text: str) -> str:
    """Content hash of a document: hex SHA-256 of its UTF-8 whitespace-normalised text."""
    if not isinstance(text, str):
        raise TypeError(f"doc_hash needs a string, got {type(text).__name__}")
    return hashlib.sha256(normalise_text(text).encode("utf-8")).hexdigest()


def hash_bucket(digest: str) -> int:
    """The bucket 0..9999 of a :func:`doc_hash` digest (its first 64 bits mod 10,000)."""
    return int(digest[:16], 16) % _BUCKETS


def _check_percent(name: str, value: float) -> None:
    if not 0 <= value <= 100:
        raise ValueError(f"{name} must be in [0, 100], got {value}")


def split_of_doc(text: str, *, heldout_percent: float = HELDOUT_PERCENT, eval_percent: float = EVAL_PERCENT) -> str:
    """``eval`` | ``heldout`` | ``train`` for a document, by its content hash.

    Buckets ``[0, eval)`` are ``eval``, ``[eval, eval + heldout)`` are ``heldout`` and the rest
    ``train`` (percent of 10,000 buckets), so the ``eval`` side depends on ``eval_percent`` alone.
    """
    _check_percent("heldout_percent", heldout_percent)
    _check_percent("eval_percent", eval_percent)
    if heldout_percent + eval_percent > 100:
        raise ValueError(f"heldout_percent + eval_percent must be <= 100, got {heldout_percent} + {eval_percent}")
    b = hash_bucket(doc_hash(text))
    if b < eval_percent * 100:
        return "eval"
    if b < (eval_percent + heldout_percent) * 100:
        return "heldout"
    return "train"


def is_eval_doc(text: str) -> bool:
    """Whether an evaluation task may use ``text`` (``split_of_doc(text) == "eval"`` with the defaults)."""
    return split_of_doc(text) == "eval"


def eval_docs(texts):
    """The texts an evaluation task may use (:func:`is_eval_doc`), in order."""
    return [t for t in texts if is_eval_doc(t)]


def split_of(text: str, heldout_percent: float = HELDOUT_PERCENT) -> str:
    """Two-way ``heldout`` | ``train`` split for a corpus no eval task reads (the paper profile's Pile):
    :func:`split_of_doc` with no ``eval`` side."""
    return split_of_doc(text, heldout_percent=heldout_percent, eval_percent=0.0)
