"""Paper-profile text loaders that stream from the Hugging Face hub.

The paper runs trained on ``monology/pile-uncopyrighted`` (streamed, context 128). This module
keeps that loading code; offline it fails fast with :class:`~saelib.models.HubUnavailableError`
and a message that points at the offline ``default`` profile.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

import datasets

from ..models import HubUnavailableError
from .split import SPLITS, split_of
from .text import word_count

PILE_ID = "monology/pile-uncopyrighted"
"""Hub dataset the paper profile trains on."""

__all__ = ["PILE_ID", "HubUnavailableError", "stream_hub_records", "stream_hub_texts", "select_split", "load_pile"]


def _unavailable(dataset_id: str, exc: BaseException) -> HubUnavailableError:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return HubUnavailableError(
        f"could not stream {dataset_id} from the Hugging Face hub ({exc.__class__.__name__}: {first}). "
        "The paper profile needs network access to the hub (unset HF_HUB_OFFLINE); "
        "the offline 'default' and 'smoke' profiles use the package corpus (corpus: offline)."
    )


def stream_hub_records(dataset_id: str = PILE_ID, *, hf_split: str = "train", text_field: str = "text", **load_kwargs: Any) -> Iterator[dict[str, Any]]:
    """Yield each record of a streamed hub dataset, checked to carry a string ``text_field``.

    Connection problems (offline mode, no DNS, missing repo) raise ``HubUnavailableError`` both when
    the stream is opened and while it is read.
    """
    try:
        stream = datasets.load_dataset(dataset_id, split=hf_split, streaming=True, **load_kwargs)
    except (ConnectionError, OSError, ValueError, FileNotFoundError) as exc:
        raise _unavailable(dataset_id, exc) from exc
    iterator = iter(stream)
    while True:
        try:
            record = next(iterator)
        except StopIteration:
            return
        except (ConnectionError, OSError) as exc:
            raise _unavailable(dataset_id, exc) from exc
        if not isinstance(record.get(text_field), str):
            raise ValueError(f"{dataset_id} record has no string field {text_field!r}: keys {sorted(record)}")
        yield record


def stream_hub_texts(dataset_id: str = PILE_ID, *, hf_split: str = "train", text_field: str = "text", **load_kwargs: Any) -> Iterator[str]:
    """Yield the ``text_field`` of each record of a streamed hub dataset (see :func:`stream_hub_records`)."""
    for record in stream_hub_records(dataset_id, hf_split=hf_split, text_field=text_field, **load_kwargs):
        yield record[text_field]


def pile_genre(record: dict[str, Any]) -> str:
    """The Pile subset of a record (``meta.pile_set_name``, e.g. ``Pile-CC``, ``Github``), else ``pile``."""
    meta = record.get("meta")
    name = meta.get("pile_set_name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) and name else "pile"


def select_split(texts: Iterable[str], split: str, *, heldout_percent: float = 2.0) -> Iterator[str]:
    """Keep the texts whose hash puts them in ``split`` (``split.split_of``: no eval side, no eval
    task reads the Pile)."""
    if split not in (*SPLITS, "all"):
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}, all")
    for text in texts:
        if text.strip() and (split == "all" or split_of(text, heldout_percent) == split):
            yield text


def load_pile(
    split: str = "train",
    *,
    seed: int = 0,
    max_docs: int | None = None,
    max_words: int | None = None,
    heldout_percent: float = 2.0,
    dataset_id: str = PILE_ID,
):
    """The first documents of the Pile-uncopyrighted stream in ``split`` as a ``datasets.Dataset``
    (columns ``text``, ``source`` = ``pile``, ``genre`` = the Pile subset, ``split``), stopping at
    ``max_docs`` documents or ``max_words`` words. The stream order is the hub's; ``seed`` shuffles
    the selected documents.
    """
    if split not in (*SPLITS, "all"):
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}, all")
    if max_docs is None and max_words is None:
        raise ValueError("load_pile needs max_docs or max_words: the Pile is far too large to load whole")
    records = []
    words = 0
    for record in stream_hub_records(dataset_id):
        text = record["text"]
        if not text.strip():
            continue
        which = split_of(text, heldout_percent)
        if split != "all" and which != split:
            continue
        records.append({"text": text, "source": "pile", "genre": pile_genre(record), "split": which})
        words += word_count(text)
        if (max_docs is not None and len(records) >= max_docs) or (max_words is not None and words >= max_words):
            break
    if not records:
        raise ValueError(f"no {split} documents came from {dataset_id}")
    return datasets.Dataset.from_list(records).shuffle(seed=seed)
