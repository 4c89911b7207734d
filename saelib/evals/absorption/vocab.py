"""The first-letter vocabulary: SAEBench's ``get_alpha_tokens`` filter and the train/test split."""
from __future__ import annotations

import numpy as np
import pandas as pd

from .config import LETTERS, AbsorptionConfig


ALPHA = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
"""The characters a vocabulary word may consist of (SAEBench's ``ALL_ALPHA_LETTERS``)."""


def _token_text(tokenizer, token: str, marker: str) -> str:
    """What a vocabulary entry reads as: the tokenizer's ``convert_tokens_to_string`` (a leading
    space for a marker token even where the tokenizer drops it, as SAEBench patches Mistral's),
    or for a plain ``{token: id}`` mapping the entry with its space marker as a space."""
    if tokenizer is None:
        return token.replace(marker, " ")
    text = tokenizer.convert_tokens_to_string([token])
    if token.startswith(marker) and not text.startswith(" "):
        text = " " + text
    return text


def is_alpha_word(text: str, *, allow_leading_space: bool = True, min_letters: int = 1,
                  require_leading_space: bool = False) -> bool:
    """SAEBench's ``get_alpha_tokens`` filter: ASCII letters only, after at most one leading space."""
    spaced = text.startswith(" ")
    if require_leading_space and not spaced:
        return False
    body = text[1:] if (spaced and allow_leading_space) else text
    return len(body) >= max(1, min_letters) and all(c in ALPHA for c in body)


def build_vocab(tokenizer_or_vocab, cfg: AbsorptionConfig) -> pd.DataFrame:
    """The first-letter vocabulary (SAEBench's ``get_alpha_tokens``), split train/test.

    Every vocabulary entry whose text is ASCII letters with an optional leading space (" cat",
    "cat", " A"); ``min_word_letters`` / ``require_leading_space`` give this repo's first, stricter
    filter ("▁" + ≥ 2 letters). ``tokenizer_or_vocab``: a tokenizer (``get_vocab()``,
    ``convert_tokens_to_string``) or a ``{token: id}`` mapping (space marker read as a space).
    Returns one row per entry, sorted by token id: ``text`` (what goes into the prompt, leading
    space included), ``word`` (letters only), ``token``, ``token_id`` (the id the prompt uses: for a
    byte-fallback entry such as ``<0x41>`` the id of the plain token with the same text, which is
    what tokenizing the text gives), ``letter``, ``letter_idx``, ``split``.
    Split (SAEBench): a random ``train_fraction`` of the entries, ``int(n · train_fraction)``
    of them, trains; ``group_case_variants`` keeps "Cat", "cat", " cat" on one side instead.
    Deterministic for a given ``cfg.seed``.
    """
    has_vocab = hasattr(tokenizer_or_vocab, "get_vocab")
    vocab = tokenizer_or_vocab.get_vocab() if has_vocab else dict(tokenizer_or_vocab)
    tokenizer = tokenizer_or_vocab if has_vocab and hasattr(tokenizer_or_vocab, "convert_tokens_to_string") else None
    marker = cfg.space_marker
    rows = []
    for tok, tid in vocab.items():
        text = _token_text(tokenizer, tok, marker)
        if is_alpha_word(text, min_letters=cfg.min_word_letters, require_leading_space=cfg.require_leading_space):
            plain = vocab.get(text.replace(" ", marker), tid)  # byte-fallback entries -> the plain token
            rows.append((int(tid), text, tok, int(plain)))
    rows.sort()
    if len(rows) < 4:
        raise ValueError(
            f"only {len(rows)} vocabulary tokens are letters-only words (space marker {marker!r}); "
            "is space_marker right for this tokenizer?"
        )
    rng = np.random.default_rng(cfg.seed)
    if cfg.max_words is not None and len(rows) > cfg.max_words:
        keep = np.sort(rng.choice(len(rows), size=cfg.max_words, replace=False))
        rows = [rows[i] for i in keep]
    texts = [t for _, t, _, _ in rows]
    words = [t.strip() for t in texts]
    groups = sorted({w.lower() for w in words}) if cfg.group_case_variants else list(range(len(rows)))
    order = rng.permutation(len(groups))
    n_train = int(len(groups) * cfg.train_fraction)
    if n_train == 0 or n_train == len(groups):
        raise ValueError(f"{len(groups)} words cannot be split {cfg.train_fraction:.0%}/rest; use more words")
    train_groups = {groups[i] for i in order[:n_train]}
    df = pd.DataFrame(
        {
            "text": texts,
            "word": words,
            "token": [t for _, _, t, _ in rows],
            "token_id": [p for _, _, _, p in rows],
            "letter": [w[0].lower() for w in words],
        }
    )
    df["letter_idx"] = df["letter"].map(LETTERS.index).astype(int)
    keys = df["word"].str.lower() if cfg.group_case_variants else pd.Series(range(len(df)))
    df["split"] = np.where(keys.isin(train_groups).to_numpy(), "train", "test")
    return df
