"""Text corpora: the offline package corpus (``corpus``) and the paper profile's hub loaders (``hub``)."""
from .corpus import (
    EVAL_ONLY_SOURCES,
    SOURCES,
    CorpusConfig,
    CorpusSourceError,
    composition,
    load_corpus,
    tokenize_corpus,
)

__all__ = [
    "EVAL_ONLY_SOURCES",
    "SOURCES",
    "CorpusConfig",
    "CorpusSourceError",
    "composition",
    "load_corpus",
    "tokenize_corpus",
]
