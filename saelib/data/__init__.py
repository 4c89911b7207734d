"""Text corpora: the offline package corpus (``corpus``, sources in ``corpus_sources``), the
document-level split rule shared with the eval tasks (``split``) and the paper profile's hub
loaders (``hub``)."""
from .corpus import (
    EVAL_ONLY_SOURCES,
    GENRES,
    SOURCES,
    CorpusConfig,
    CorpusSourceError,
    composition,
    exclude_training,
    load_corpus,
    tokenize_by_genre,
    tokenize_corpus,
    training_document_hashes,
)
from .split import doc_hash, eval_docs, is_eval_doc, split_of_doc

__all__ = [
    "EVAL_ONLY_SOURCES",
    "GENRES",
    "SOURCES",
    "CorpusConfig",
    "CorpusSourceError",
    "composition",
    "doc_hash",
    "eval_docs",
    "exclude_training",
    "is_eval_doc",
    "load_corpus",
    "split_of_doc",
    "tokenize_by_genre",
    "tokenize_corpus",
    "training_document_hashes",
]
