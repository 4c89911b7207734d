"""SAEBench's in-context first-letter prompts, built from token ids (query position known exactly)."""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .config import LETTERS, AbsorptionConfig


@dataclass
class PromptSet:
    """Token ids of equal-length prompts whose query word sits at ``query_pos``."""

    tokens_NS: Tensor
    """(prompts, positions) int64 token ids, BOS first."""
    query_pos: int
    """Position of the query word's token in every prompt (counted from 0)."""
    answer_ids_N: Tensor
    """The token id of the correct answer (e.g. ``" F"``) for each prompt."""
    letter_idx_N: Tensor
    """First-letter class (0..25) of each query word."""
    rows_N: np.ndarray
    """Row of each query word in the vocabulary frame."""

    def __len__(self) -> int:
        return int(self.tokens_NS.shape[0])

    def text(self, tokenizer, i: int) -> str:
        """Decoded prompt ``i`` without its BOS (tokenizing the text gives the ids back)."""
        ids = self.tokens_NS[i].tolist()
        if ids and ids[0] == getattr(tokenizer, "bos_token_id", None):
            ids = ids[1:]
        return tokenizer.decode(ids)

    def sha256(self) -> str:
        """Hash of the token ids (the residual cache is checked against it)."""
        return hashlib.sha256(self.tokens_NS.to(torch.int64).numpy().tobytes()).hexdigest()


def _encode(tokenizer, text: str) -> list[int]:
    if text == "":
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def answer_token_ids(tokenizer, cfg: AbsorptionConfig) -> list[int]:
    """Token id of the answer for each letter; each answer must be a single token."""
    ids = []
    for letter in LETTERS:
        text = cfg.answer_template.format(L=letter.upper())
        toks = _encode(tokenizer, text)
        if len(toks) != 1:
            raise ValueError(f"answer {text!r} is {len(toks)} tokens; answer_template must give one token per letter")
        ids.append(toks[0])
    return ids


def sample_icl_examples(query_texts: list[str], pool_texts: list[str], n_shot: int, rng: random.Random,
                        max_attempts: int = 1000) -> list[list[int]]:
    """In-context examples for each query, as SAEBench's ``create_icl_prompt`` draws them: per query,
    in order, ``rng.sample(pool, n_shot)``, redrawn while the query's text is among the examples.

    Returns indices into ``pool_texts``. With ``rng = random.Random(s)`` the draws equal SAEBench's
    after ``random.seed(s)`` on the same pool list.
    """
    if n_shot > len(pool_texts):
        raise ValueError(f"{len(pool_texts)} words cannot give {n_shot} in-context examples; use fewer shots")
    idx = range(len(pool_texts))
    out = []
    for q in query_texts:
        for _ in range(max_attempts):
            ex = rng.sample(idx, n_shot)
            if all(pool_texts[i] != q for i in ex):
                break
        else:
            raise ValueError(f"could not draw {n_shot} in-context examples without {q!r} in {max_attempts} attempts; use more words")
        out.append(ex)
    return out


def build_prompts(vocab: pd.DataFrame, tokenizer, cfg: AbsorptionConfig, split: str, *, variant: int = 0,
                  pool: str = "split", rng: random.Random | None = None) -> PromptSet:
    """n-shot prompts for every word of ``split``, built from token ids (SAEBench's prompts).

    Each prompt is ``BOS [sep] line answer (sep line answer)×(n_shot−1) sep query-line``; for 2 shots
    ``"<bos>\\n cat has the first letter: C\\n dog has the first letter: D\\n fish has the first letter:"``
    (SAEBench 0.6.0 ``create_icl_prompt`` with ``prepend_separator_to_first_example``; without
    ``prepend_separator`` the Jan 2025 text, no leading "\\n"). In-context examples: ``pool="split"``
    draws them from the same split (SAEBench's probe prompts), ``pool="all"`` from the whole
    vocabulary (SAEBench's absorption prompts); never the query's text. ``rng`` defaults to a
    ``random.Random`` seeded by ``(cfg.seed, split, variant, pool)``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if pool not in ("split", "all"):
        raise ValueError(f"pool must be 'split' or 'all', got {pool!r}")
    rows = np.flatnonzero((vocab["split"] == split).to_numpy())
    if len(rows) == 0:
        raise ValueError(f"the vocabulary has no {split!r} words")
    pool_rows = rows if pool == "split" else np.arange(len(vocab))
    texts = vocab["text"].tolist()
    pre, post = cfg.template.split("{word}")
    sep_ids, pre_ids, post_ids = _encode(tokenizer, cfg.separator), _encode(tokenizer, pre), _encode(tokenizer, post)
    answers = np.asarray(answer_token_ids(tokenizer, cfg), dtype=np.int64)
    all_ids = vocab["token_id"].to_numpy().astype(np.int64)
    all_letters = vocab["letter_idx"].to_numpy().astype(np.int64)
    if rng is None:
        rng = random.Random(f"{cfg.seed}/{split}/{variant}/{pool}")
    ex_pool = sample_icl_examples([texts[r] for r in rows], [texts[r] for r in pool_rows], cfg.n_shot, rng)
    ex = pool_rows[np.asarray(ex_pool, dtype=np.int64).reshape(len(rows), cfg.n_shot)]
    bos = getattr(tokenizer, "bos_token_id", None)
    head = [] if bos is None else [int(bos)]
    line = len(pre_ids) + 1 + len(post_ids)
    seps = [len(sep_ids) if (j > 0 or cfg.prepend_separator) else 0 for j in range(cfg.n_shot + 1)]
    S = len(head) + sum(seps) + cfg.n_shot * (line + 1) + line
    tokens = np.empty((len(rows), S), dtype=np.int64)
    tokens[:, : len(head)] = head
    col = len(head)
    for j in range(cfg.n_shot + 1):
        query = j == cfg.n_shot
        ids = all_ids[rows] if query else all_ids[ex[:, j]]
        lead = (sep_ids if seps[j] else []) + pre_ids
        tokens[:, col : col + len(lead)] = lead
        col += len(lead)
        tokens[:, col] = ids
        word_col = col
        col += 1
        tokens[:, col : col + len(post_ids)] = post_ids
        col += len(post_ids)
        if not query:
            tokens[:, col] = answers[all_letters[ex[:, j]]]
            col += 1
    assert col == S
    return PromptSet(
        tokens_NS=torch.from_numpy(tokens),
        query_pos=word_col,
        answer_ids_N=torch.as_tensor(answers[all_letters[rows]]),
        letter_idx_N=torch.from_numpy(all_letters[rows]),
        rows_N=rows,
    )


def check_prompt_tokenization(prompts: PromptSet, tokenizer, n: int = 64, max_mismatch: float = 0.5) -> float:
    """Fraction of the first ``n`` prompts whose decoded text re-tokenizes to other ids.

    A few mismatches can come from word tokens the tokenizer would not produce from plain text; a
    majority means the template does not tokenize piece by piece, and raises. (Gemma-3: 0 of 4006.)
    """
    m = min(n, len(prompts))
    bad = [i for i in range(m) if list(tokenizer(prompts.text(tokenizer, i))["input_ids"]) != prompts.tokens_NS[i].tolist()]
    if m and len(bad) / m > max_mismatch:
        raise ValueError(
            f"{len(bad)} of {m} prompts are not what the tokenizer makes of their text (e.g. "
            f"{prompts.text(tokenizer, bad[0])!r}); the template does not tokenize piece by piece for this tokenizer"
        )
    return len(bad) / m if m else 0.0
