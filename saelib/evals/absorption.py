"""Feature absorption on the first-letter task (Chanin et al. 2024, as SAEBench computes it).

The task: a prompt of in-context lines ``" cat has the first letter: C"`` ending with a query word
``" fish has the first letter:"``. The residual at the SAE layer on the query word's token carries
"starts with F"; a linear probe (one per letter) finds that direction. An SAE latent that represents
the letter should fire on every such word; *absorption* is when it stays silent and a token-specific
latent, whose decoder row carries the letter direction, fires instead.

Reference: SAEBench 0.6.0 (``sae_bench.evals.absorption``) unless a step names another version;
``tests/test_saebench_absorption.py`` runs SAEBench's functions and these on identical inputs.

Steps (model side, once per model/layer, cached under ``eval_cache``):
  1. ``build_vocab``: SAEBench's ``get_alpha_tokens`` (ASCII letters, leading space optional),
     split 80/20 at random. Named alternative: ``min_word_letters=2, require_leading_space=True,
     group_case_variants=True`` (this repo's first vocabulary).
  2. ``build_prompts``: SAEBench's ``create_icl_prompt`` prompts (10 shots, template
     ``"{word} has the first letter:"``, answers ``" L"``, separator ``"\\n"``), built from token ids
     so the query position is known exactly; examples from the word's split (probe prompts) or the
     whole vocabulary (absorption prompts), drawn as SAEBench draws them. ``prepend_separator``:
     0.6.0's leading newline (f7b1ad0, 2025-04-10); False gives the Jan 2025 prompt text.
  3. ``collect_residuals``: batched forward passes that stop after the hooked layer.
  4. ``train_letter_probes``: 26 one-vs-rest logistic probes (BCE, pos_weight = neg/pos; full-batch
     L-BFGS where SAEBench uses Adam).
  5. ``prompt_accuracy``: how often the model itself predicts the right letter.
SAE side (per SAE, from the cached residuals):
  6. ``encode_latents``: each residual set is encoded once.
  7. ``select_split_features``: SAEBench's ``train_k_sparse_probes``: an L1 probe on the raw
     latents (default init) ranks them per letter; k-sparse probes (k = 1..max_k) on the top-k
     latents; k grows while test F1 gains more than 0.03. Named alternative ``ksparse_normalize``.
  8. ``absorption_scores``: legacy ``mean_absorption_score`` (SAEBench 293b385..bb8e145, Nov 2024 to
     Jan 2025, what both papers reported; not in 0.6.0) and the current (0.6.0)
     ``mean_absorption_fraction_score`` / ``mean_full_absorption_score``
     (``FeatureAbsorptionCalculator``'s per-word rules in ``word_absorption``).

**Lower is better** for every absorption score (0 = no absorption).
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as Fn
from torch import Tensor

LETTERS = "abcdefghijklmnopqrstuvwxyz"
"""The 26 classes, in probe-row order."""
EPS = 1e-8
"""A latent with |activation| below this is "not firing" (SAEBench's constant)."""
EVAL_TYPE_ID = "absorption_first_letter"


@dataclass
class AbsorptionConfig:
    """Settings of the first-letter absorption eval. Defaults follow SAEBench 0.6.0 (see the module
    docstring for which fields reproduce the Jan 2025 code and which are named alternatives)."""

    # ---- vocabulary and prompts (change these and the residual cache is rebuilt) -------------
    n_shot: int = 10
    """In-context example lines before the query (SAEBench: 10, in every version)."""
    max_words: int | None = None
    """Use at most this many vocabulary tokens (deterministic subsample before the split); None = all
    (SAEBench). Fewer words = fewer prompts, the same prompt."""
    min_word_letters: int = 1
    """Shortest word (in letters) kept in the vocabulary (SAEBench: 1; this repo's first filter: 2)."""
    require_leading_space: bool = False
    """Keep only words with a leading space (SAEBench: False, the space is optional; this repo's
    first filter: True)."""
    train_fraction: float = 0.8
    """Fraction of the vocabulary used to train the probes; the rest is the test set."""
    group_case_variants: bool = False
    """False (SAEBench): split vocabulary entries at random. True: "Cat", "cat", " cat" always land
    in the same split (this repo's first split; no near-duplicate of a test word is trained on)."""
    seed: int = 42
    """Seed of the subsample, the split, the in-context examples and the probe minibatches."""
    template: str = "{word} has the first letter:"
    """Prompt line (SAEBench's ``prompt_template``); ``{word}`` is replaced by the word token (which
    carries its leading space, if any)."""
    answer_template: str = " {L}"
    """Answer after each in-context line; ``{L}`` is the upper-case first letter (one token;
    SAEBench's ``first_letter_formatter``)."""
    separator: str = "\n"
    """Text between lines (SAEBench's ``example_separator``)."""
    prepend_separator: bool = True
    """Also put the separator before the first line: SAEBench since f7b1ad0 (2025-04-10, 0.6.0).
    False = the Jan 2025 code behind the papers' legacy score (no leading newline)."""
    space_marker: str = "\u2581"
    """How the tokenizer's vocabulary marks a leading space (Gemma/SentencePiece: ``▁``)."""
    fresh_absorption_prompts: bool = True
    """Measure absorption on new prompts for the test words whose in-context examples come from the
    whole vocabulary, as SAEBench's ``FeatureAbsorptionCalculator`` does; False reuses the probe's
    test prompts (examples from the test split)."""

    # ---- model I/O ------------------------------------------------------------------------------
    llm_batch_size: int = 256
    """Prompts per forward pass (on the 2-core CPU 256 prompts of 24 tokens ran 4x faster than 64)."""
    accuracy_prompts: int = 1000
    """Test prompts (deterministic subsample) on which the model's own next-token answer is scored."""

    # ---- ground-truth probe -----------------------------------------------------------------------
    probe_l2: float = 1e-4
    """L2 penalty (per letter, on standardised residuals) of the ground-truth probes."""
    probe_max_iter: int = 150
    """L-BFGS iterations of the ground-truth probes (full batch)."""

    # ---- k-sparse probing (feature splitting) ------------------------------------------------------
    max_k: int = 10
    """Largest k of the k-sparse probes."""
    f1_jump_threshold: float = 0.03
    """k grows while the k-sparse probe's test F1 improves by more than this."""
    ksparse_l1_decay: float = 0.01
    """L1 coefficient of the latent-ranking probe (sum over latents, mean over letters)."""
    ksparse_epochs: int = 50
    """Epochs of the latent-ranking probe (Adam, exponential LR decay; SAEBench: 50)."""
    ksparse_batch_size: int = 4096
    """Minibatch of the latent-ranking probe."""
    ksparse_lr: float = 0.01
    """Start learning rate of the latent-ranking probe."""
    ksparse_end_lr: float = 1e-5
    """End learning rate of the latent-ranking probe."""
    ksparse_C: float = 1.0
    """Inverse L2 strength of the k-sparse logistic probes (sklearn's C, class-balanced weights)."""
    ksparse_max_iter: int = 500
    """L-BFGS iterations of the k-sparse probes (sklearn's max_iter in SAEBench; raw activations at
    a real SAE's scale need several hundred)."""
    ksparse_normalize: bool = False
    """False (SAEBench): rank latents and fit the k-sparse probes on raw activations, ranking probe
    with default init. True: named alternative (this repo's first version): activations divided by
    their mean non-zero magnitude and a zero-initialised ranking probe, so the split features do not
    depend on the SAE's activation scale."""

    # ---- scoring -----------------------------------------------------------------------------------
    full_absorption_cos_threshold: float = 0.025
    """Full absorption: cos(probe, top latent's decoder row) must be at least this."""
    absorption_fraction_cos_threshold: float = 0.1
    """Absorption fraction: absorbing latents need cos(probe, decoder row) at least this."""
    projection_proportion_threshold: float = 0.4
    """Absorbing latent(s) must supply at least this share of the residual's probe projection."""
    max_absorbing_latents: int = 3
    """Absorption fraction: at most this many latents may absorb together."""
    fold_decoder_norm: bool = True
    """Latent i's probe projection is ``f_i · (W_dec[i] · p)`` (SAEBench folds decoder norms); False
    uses ``f_i · cos(W_dec[i], p)`` (early-2025 code without folding; equal for unit-norm rows)."""
    min_probe_f1: float = 0.6
    """Current score: only letters whose ground-truth probe has test F1 above this count."""
    min_letters_for_eval: int = 20
    """Current score: SAEBench refuses to score with fewer qualifying letters (we flag it)."""
    sae_batch_size: int = 2048
    """Residuals per ``sae.encode`` call."""
    probe_threads: int | None = 1
    """torch threads while fitting the probes (their ops are small: one thread avoids OpenMP
    overhead, which on a busy 2-core machine made them 20x slower); None keeps torch's setting."""

    def __post_init__(self) -> None:
        if self.n_shot < 0:
            raise ValueError(f"n_shot must be >= 0, got {self.n_shot}")
        if self.max_words is not None and self.max_words < 4:
            raise ValueError(f"max_words must be None or >= 4, got {self.max_words}")
        if not 0.0 < self.train_fraction < 1.0:
            raise ValueError(f"train_fraction must be in (0, 1), got {self.train_fraction}")
        if self.template.count("{word}") != 1:
            raise ValueError(f"template must contain '{{word}}' exactly once, got {self.template!r}")
        if "{L}" not in self.answer_template:
            raise ValueError(f"answer_template must contain '{{L}}', got {self.answer_template!r}")
        if self.max_k < 1:
            raise ValueError(f"max_k must be >= 1, got {self.max_k}")
        if self.max_absorbing_latents < 1:
            raise ValueError(f"max_absorbing_latents must be >= 1, got {self.max_absorbing_latents}")
        for name in ("llm_batch_size", "sae_batch_size", "ksparse_batch_size", "ksparse_epochs", "probe_max_iter",
                     "ksparse_max_iter"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_params(cls, params: dict[str, Any] | None) -> "AbsorptionConfig":
        """Build from a ``params.yaml`` block (``P["run"].get("absorption", {})``); unknown keys raise."""
        from ..params_block import from_block

        return from_block(cls, params, what="absorption")

    def prompt_settings(self) -> dict[str, Any]:
        """The fields that decide the prompts (and hence the cached residuals)."""
        keys = ("n_shot", "max_words", "min_word_letters", "require_leading_space", "train_fraction",
                "group_case_variants", "seed", "template", "answer_template", "separator", "prepend_separator",
                "space_marker", "fresh_absorption_prompts")
        return {k: getattr(self, k) for k in keys}


class _threads:
    """Context manager: ``torch.set_num_threads(n)`` inside, restored after (no-op for None)."""

    def __init__(self, n: int | None):
        self.n, self.before = n, None

    def __enter__(self):
        if self.n is not None:
            self.before = torch.get_num_threads()
            torch.set_num_threads(int(self.n))

    def __exit__(self, *exc):
        if self.before is not None:
            torch.set_num_threads(self.before)


# =====================================================================================================
# Vocabulary and prompts
# =====================================================================================================
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


# =====================================================================================================
# Model I/O: residuals at the query token, prompt accuracy, cache
# =====================================================================================================
@torch.inference_mode()
def collect_residuals(model, layer: int, prompts: PromptSet, *, batch_size: int = 128, progress: bool = False) -> Tensor:
    """Residual output of ``layer`` on each prompt's query token: ``x_ND`` in the model dtype (bf16).

    Batched forward passes that stop after ``layer`` (``saelib.hooks.residuals_batch``).
    """
    from tqdm.auto import tqdm

    from saelib.hooks import residuals_batch

    model.check_layer(layer)
    out = []
    starts = range(0, len(prompts), batch_size)
    for s in tqdm(starts, desc=f"absorption residuals L{layer}", disable=not progress):
        x_NSD = residuals_batch(model, prompts.tokens_NS[s : s + batch_size], layer)
        out.append(x_NSD[:, prompts.query_pos].clone())
    return torch.cat(out)


@torch.inference_mode()
def prompt_accuracy(model, prompts: PromptSet, *, max_prompts: int = 1000, batch_size: int = 64, seed: int = 0,
                    letter_ids: list[int] | None = None, progress: bool = False) -> tuple[dict[str, Any], pd.DataFrame]:
    """How often the model's own next token after the prompt is the right letter.

    Returns a summary (``prompt_accuracy``: argmax over the whole vocabulary equals the answer token;
    ``prompt_accuracy_letters``: argmax over the answer tokens ``letter_ids`` only — the 26 letters,
    default: the answers present in ``prompts``; ``n_prompts``) and a per-letter frame. Scores a
    deterministic subsample of at most ``max_prompts`` prompts (full forward passes).
    """
    from tqdm.auto import tqdm

    n = len(prompts)
    if max_prompts < n:
        pick = np.sort(np.random.default_rng(seed).choice(n, size=max_prompts, replace=False))
    else:
        pick = np.arange(n)
    hf = model.hf_model
    body = hf.model if hasattr(hf, "model") else hf.base_model
    head = hf.get_output_embeddings()
    all_answers = torch.as_tensor(sorted(set(letter_ids if letter_ids is not None else prompts.answer_ids_N.tolist())))
    correct, correct26 = [], []
    for s in tqdm(range(0, len(pick), batch_size), desc="prompt accuracy", disable=not progress):
        sel = torch.as_tensor(pick[s : s + batch_size])
        h_BD = body(input_ids=prompts.tokens_NS[sel].to(head.weight.device)).last_hidden_state[:, -1]
        logits_BV = head(h_BD.to(head.weight.dtype)).float().cpu()
        answer_B = prompts.answer_ids_N[sel]
        correct.append(logits_BV.argmax(-1) == answer_B)
        pred26 = all_answers[logits_BV[:, all_answers].argmax(-1)]
        correct26.append(pred26 == answer_B)
    ok = torch.cat(correct).numpy()
    ok26 = torch.cat(correct26).numpy()
    letters = prompts.letter_idx_N[torch.as_tensor(pick)].numpy()
    per = pd.DataFrame({"letter_idx": letters, "ok": ok, "ok26": ok26}).groupby("letter_idx").agg(
        n_accuracy_prompts=("ok", "size"), prompt_accuracy=("ok", "mean"), prompt_accuracy_letters=("ok26", "mean")
    )
    per = per.reindex(range(26)).reset_index()
    per.insert(0, "letter", [LETTERS[i] for i in per["letter_idx"]])
    per = per.drop(columns="letter_idx")
    per["n_accuracy_prompts"] = per["n_accuracy_prompts"].fillna(0).astype(int)
    summary = {"prompt_accuracy": float(ok.mean()), "prompt_accuracy_letters": float(ok26.mean()), "n_prompts": int(len(ok))}
    return summary, per


def cache_folder(cache_dir: str | Path, model_name: str, layer: int, cfg: AbsorptionConfig) -> Path:
    """``<cache_dir>/absorption/<model>_L<layer>_<hash of the prompt settings>``."""
    key = json.dumps({"model": model_name, "layer": layer, **cfg.prompt_settings()}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(cache_dir) / "absorption" / f"{model_name}_L{layer}_{digest}"


def _cached_residuals(model, layer: int, prompts: PromptSet, path: Path, cfg: AbsorptionConfig, progress: bool) -> Tensor:
    from safetensors import safe_open

    from saelib.io import atomic_save_safetensors

    digest = prompts.sha256()
    if path.exists():
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("tokens_sha256") == digest:
                return fh.get_tensor("x_ND")
    x_ND = collect_residuals(model, layer, prompts, batch_size=cfg.llm_batch_size, progress=progress)
    atomic_save_safetensors(path, {"x_ND": x_ND}, metadata={"tokens_sha256": digest, "model": model.name, "layer": str(layer)})
    return x_ND


# =====================================================================================================
# Ground-truth letter probes
# =====================================================================================================
@dataclass
class LetterProbes:
    """26 one-vs-rest linear probes on the raw residual: ``score = x · W[L] + b[L]``."""

    W_LD: Tensor
    """Probe weights in residual space (float32)."""
    b_L: Tensor
    """Probe biases."""

    def scores(self, x_ND: Tensor) -> Tensor:
        """Logits ``(N, 26)``; positive = the probe says "starts with L"."""
        return x_ND.float() @ self.W_LD.T + self.b_L

    @property
    def directions_LD(self) -> Tensor:
        """Unit-norm probe directions."""
        return self.W_LD / self.W_LD.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _pos_weight(Y_NL: Tensor) -> Tensor:
    pos = Y_NL.sum(0)
    return (Y_NL.shape[0] - pos) / pos.clamp_min(1.0)


def train_letter_probes(x_ND: Tensor, y_N: Tensor, *, l2: float = 1e-4, max_iter: int = 150, n_classes: int = 26) -> LetterProbes:
    """One-vs-rest logistic probes (BCE with pos_weight = neg/pos), full-batch L-BFGS.

    Trained on centred residuals divided by one global scale (the direction in residual space is
    unchanged); the returned weights and biases act on the raw residual.
    """
    if x_ND.ndim != 2 or y_N.ndim != 1 or x_ND.shape[0] != y_N.shape[0]:
        raise ValueError(f"need x (N, D) and y (N,), got {tuple(x_ND.shape)} and {tuple(y_N.shape)}")
    x = x_ND.float()
    if not torch.isfinite(x).all():
        raise ValueError("residuals contain NaN or inf")
    mu_D = x.mean(0)
    z = x - mu_D
    scale = float(z.norm(dim=1).mean()) / math.sqrt(x.shape[1]) or 1.0
    z = z / scale
    Y = Fn.one_hot(y_N.long(), n_classes).float()
    pw = _pos_weight(Y)
    W = torch.zeros(n_classes, x.shape[1], requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        logits = z @ W.T + b
        loss = Fn.binary_cross_entropy_with_logits(logits, Y, pos_weight=pw, reduction="none").mean(0).sum()
        loss = loss + 0.5 * l2 * (W * W).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    W_raw = W.detach() / scale
    b_raw = b.detach() - W_raw @ mu_D
    return LetterProbes(W_LD=W_raw, b_L=b_raw)


def f1_scores(pred_NL: Tensor, true_NL: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-column F1, precision, recall of boolean predictions (0 where undefined)."""
    pred, true = pred_NL.bool(), true_NL.bool()
    tp = (pred & true).sum(0).float()
    n_pred, n_true = pred.sum(0).float(), true.sum(0).float()
    precision = torch.where(n_pred > 0, tp / n_pred.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(n_true > 0, tp / n_true.clamp_min(1), torch.zeros_like(tp))
    f1 = torch.where(tp > 0, 2 * tp / (n_pred + n_true).clamp_min(1), torch.zeros_like(tp))
    return f1, precision, recall


def probe_metrics(scores_NL: Tensor, y_N: Tensor, y_train_N: Tensor | None = None) -> pd.DataFrame:
    """Per-letter test metrics of the probes (prediction = score > 0)."""
    true = Fn.one_hot(y_N.long(), scores_NL.shape[1]).bool()
    f1, precision, recall = f1_scores(scores_NL > 0, true)
    df = pd.DataFrame({
        "letter": list(LETTERS[: scores_NL.shape[1]]),
        "n_test": true.sum(0).numpy(),
        "probe_f1": f1.numpy(),
        "probe_precision": precision.numpy(),
        "probe_recall": recall.numpy(),
    })
    if y_train_N is not None:
        df.insert(1, "n_train", np.bincount(y_train_N.numpy(), minlength=scores_NL.shape[1]))
    return df


# =====================================================================================================
# SAE latents (sparse, encoded once per SAE and residual set)
# =====================================================================================================
@dataclass
class SparseLatents:
    """SAE activations as padded rows of (index, value): ``idx_NM`` uses ``d_sae`` for padding."""

    idx_NM: Tensor
    """Active latent ids per row (int64), padded with ``d_sae``."""
    val_NM: Tensor
    """Their activations (float32), 0 at padding."""
    d_sae: int
    """Number of latents F."""

    @property
    def n(self) -> int:
        return int(self.idx_NM.shape[0])

    def dense(self, rows: Tensor | np.ndarray | None = None) -> Tensor:
        """Dense ``f_NF`` for ``rows`` (all rows if None)."""
        idx, val = (self.idx_NM, self.val_NM) if rows is None else (self.idx_NM[rows], self.val_NM[rows])
        out = torch.zeros(idx.shape[0], self.d_sae + 1, dtype=torch.float32)
        out.scatter_(1, idx, val)
        return out[:, : self.d_sae]

    def columns(self, ids_LK: Tensor) -> Tensor:
        """Activations of a few latents per class: ``(L, N, K)`` with ``[l, n, j] = f[n, ids_LK[l, j]]``."""
        L, K = ids_LK.shape
        out = torch.zeros(L, self.n, K, dtype=torch.float32)
        for l in range(L):
            lookup = torch.full((self.d_sae + 1,), K, dtype=torch.int64)
            lookup[ids_LK[l]] = torch.arange(K)
            pos_NM = lookup[self.idx_NM]
            buf = torch.zeros(self.n, K + 1)
            buf.scatter_add_(1, pos_NM, self.val_NM)
            out[l] = buf[:, :K]
        return out


def _sae_dims(sae) -> tuple[int, int]:
    W = sae.W_dec
    if W.ndim != 2:
        raise ValueError(f"sae.W_dec must be (d_sae, d_in), got shape {tuple(W.shape)}")
    return int(W.shape[0]), int(W.shape[1])


@torch.inference_mode()
def encode_latents(sae, x_ND: Tensor, *, batch_size: int = 2048) -> SparseLatents:
    """Encode residuals once with ``sae.encode`` and keep only the non-zero activations."""
    F, D = _sae_dims(sae)
    if x_ND.ndim != 2 or x_ND.shape[1] != D:
        raise ValueError(f"residuals are {tuple(x_ND.shape)} but the SAE reads d_in={D}")
    device = sae.W_dec.device
    idx_chunks, val_chunks = [], []
    for s in range(0, x_ND.shape[0], batch_size):
        f_BF = sae.encode(x_ND[s : s + batch_size].to(device).float()).float().cpu()
        if f_BF.shape != (min(batch_size, x_ND.shape[0] - s), F):
            raise ValueError(f"sae.encode returned shape {tuple(f_BF.shape)}, expected (batch, {F})")
        if not torch.isfinite(f_BF).all():
            raise ValueError("sae.encode returned NaN or inf")
        m = max(1, int((f_BF != 0).sum(1).max()))
        top = f_BF.abs().topk(m, dim=1).indices
        val = f_BF.gather(1, top)
        top = torch.where(val != 0, top, torch.full_like(top, F))
        idx_chunks.append(top)
        val_chunks.append(val)
    M = max(c.shape[1] for c in idx_chunks)
    idx = torch.cat([Fn.pad(c, (0, M - c.shape[1]), value=F) for c in idx_chunks])
    val = torch.cat([Fn.pad(c, (0, M - c.shape[1]), value=0.0) for c in val_chunks])
    return SparseLatents(idx_NM=idx, val_NM=val, d_sae=F)


# =====================================================================================================
# k-sparse probing: split features
# =====================================================================================================
def _activation_scale(lat: SparseLatents, cfg: AbsorptionConfig) -> float:
    """1.0 (SAEBench: raw activations), or with ``ksparse_normalize`` the mean non-zero magnitude."""
    if not cfg.ksparse_normalize:
        return 1.0
    nz = lat.val_NM[lat.val_NM != 0]
    return float(nz.abs().mean()) if nz.numel() else 1.0


def _dataloader_permutation(n: int) -> Tensor:
    """The order in which ``DataLoader(..., shuffle=True)`` visits ``n`` samples in one epoch,
    drawing from torch's global RNG as it does: one draw for the iterator's base seed (unused
    without workers), one that seeds the ``RandomSampler``'s generator."""
    torch.empty((), dtype=torch.int64).random_()
    seed = int(torch.empty((), dtype=torch.int64).random_().item())
    gen = torch.Generator()
    gen.manual_seed(seed)
    return torch.randperm(n, generator=gen)


def rank_latents(lat: SparseLatents, y_N: Tensor, cfg: AbsorptionConfig, n_classes: int = 26) -> Tensor:
    """L1-regularised one-vs-rest logistic probe on all latents; returns its weights ``(L, F)``.

    SAEBench's ``train_k_sparse_probes`` ranking probe (``train_sparse_multi_probe``): a linear
    layer on the **raw** SAE activations with PyTorch's default ``nn.Linear`` initialisation (drawn
    after ``torch.manual_seed(cfg.seed)``), BCE with pos_weight = neg/pos plus
    ``ksparse_l1_decay × mean_L Σ_F |w|``, Adam (weight decay 1e-6) with an exponentially decaying
    learning rate, minibatches in ``DataLoader(shuffle=True)`` order. The global RNG is restored after.
    Named alternative ``ksparse_normalize=True`` (this repo's first ranking): activations divided by
    their mean non-zero magnitude, zero init (ranking independent of the activation scale).
    """
    scale = _activation_scale(lat, cfg)
    val = lat.val_NM / scale
    Y = Fn.one_hot(y_N.long(), n_classes).float()
    pw = _pos_weight(Y)
    F = lat.d_sae
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        init = torch.nn.Linear(F, n_classes)
        w0_LF, b0_L = init.weight.detach(), init.bias.detach()
        if cfg.ksparse_normalize:
            w0_LF, b0_L = torch.zeros_like(w0_LF), torch.zeros_like(b0_L)
        # sparse rows: weight is (F + 1, L) with a zero padding row for embedding_bag
        weight = torch.cat([w0_LF.T, torch.zeros(1, n_classes)]).contiguous().requires_grad_(True)
        bias = b0_L.clone().requires_grad_(True)
        opt = torch.optim.Adam([weight, bias], lr=cfg.ksparse_lr, weight_decay=1e-6)
        gamma = math.exp(math.log(cfg.ksparse_end_lr / cfg.ksparse_lr) / cfg.ksparse_epochs)
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma)
        with torch.enable_grad():
            for _ in range(cfg.ksparse_epochs):
                perm = _dataloader_permutation(lat.n)
                for s in range(0, lat.n, cfg.ksparse_batch_size):
                    b = perm[s : s + cfg.ksparse_batch_size]
                    logits = Fn.embedding_bag(lat.idx_NM[b], weight, per_sample_weights=val[b], mode="sum", padding_idx=F) + bias
                    loss = Fn.binary_cross_entropy_with_logits(logits, Y[b], pos_weight=pw)
                    loss = loss + cfg.ksparse_l1_decay * weight[:F].abs().sum(0).mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                sched.step()
    return weight.detach()[:F].T.contiguous()


def fit_logistic_batched(X_LNK: Tensor, Y_LN: Tensor, *, C: float = 1.0, max_iter: int = 100) -> tuple[Tensor, Tensor]:
    """L independent binary logistic regressions with class-balanced sample weights (sklearn's
    ``LogisticRegression(C=C, class_weight="balanced")`` objective), solved together by L-BFGS.

    Returns weights ``(L, K)`` and biases ``(L,)``.
    """
    L, N, K = X_LNK.shape
    X_LNK = X_LNK.double()  # float64: at raw activation scales float32 stalls short of the optimum
    Yf = Y_LN.double()
    n_pos = Yf.sum(1, keepdim=True)
    w_pos = N / (2 * n_pos.clamp_min(1))
    w_neg = N / (2 * (N - n_pos).clamp_min(1))
    sw = torch.where(Y_LN.bool(), w_pos, w_neg)
    W = torch.zeros(L, K, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(L, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-14)

    def closure():
        opt.zero_grad()
        logits = torch.einsum("lnk,lk->ln", X_LNK, W) + b[:, None]
        loss = (sw * Fn.binary_cross_entropy_with_logits(logits, Yf, reduction="none")).sum() / N
        loss = loss + 0.5 * (W * W).sum() / (C * N)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return W.detach().float(), b.detach().float()


@dataclass
class SplitFeatures:
    """Per-letter k-sparse probing result."""

    ranked_LK: Tensor
    """The ``max_k`` best latents per letter by the ranking probe (best first)."""
    f1_LK: Tensor
    """Test F1 of the k-sparse probe for k = 1..max_k."""
    k_L: Tensor
    """Chosen k per letter (number of split features)."""
    weights: list[Tensor]
    """``weights[k-1]``: (L, k) weights of the k-sparse probes."""
    biases: list[Tensor]
    """``biases[k-1]``: (L,) biases of the k-sparse probes."""
    scale: float
    """Activations were divided by this before the k-sparse probes (1.0 unless ``ksparse_normalize``)."""

    @property
    def split_feats(self) -> list[list[int]]:
        """The chosen latents of each letter."""
        return [self.ranked_LK[l, : int(self.k_L[l])].tolist() for l in range(self.ranked_LK.shape[0])]

    def scores(self, lat: SparseLatents) -> Tensor:
        """Score ``(N, L)`` of each letter's k-sparse probe at its chosen k."""
        X_LNK = lat.columns(self.ranked_LK) / self.scale
        out = torch.empty(lat.n, X_LNK.shape[0])
        for l in range(X_LNK.shape[0]):
            k = int(self.k_L[l])
            out[:, l] = X_LNK[l, :, :k] @ self.weights[k - 1][l] + self.biases[k - 1][l]
        return out


def choose_k(f1_K: list[float] | Tensor, threshold: float) -> int:
    """SAEBench's rule: accept k = 1, then k+1 while its F1 beats the best so far by > ``threshold``."""
    best, chosen = -math.inf, 0
    for k, f1 in enumerate([float(v) for v in f1_K], start=1):
        if f1 > best + threshold:
            best, chosen = f1, k
        else:
            break
    return chosen


def select_split_features(lat_train: SparseLatents, y_train_N: Tensor, lat_test: SparseLatents, y_test_N: Tensor,
                          cfg: AbsorptionConfig, *, ranking_LF: Tensor | None = None, n_classes: int = 26) -> SplitFeatures:
    """k-sparse probing: rank latents per letter, fit k-sparse probes on train, F1 on test, pick k.

    As SAEBench's ``train_k_sparse_probes`` + ``add_feature_splits_to_metrics_df``: the k-sparse
    probes are class-balanced L2 logistic regressions (sklearn's objective, C = ``ksparse_C``) on the
    raw activations of each letter's top-k ranked latents (``ksparse_normalize``: divided by the
    same scale as the ranking)."""
    if ranking_LF is None:
        ranking_LF = rank_latents(lat_train, y_train_N, cfg, n_classes)
    K = min(cfg.max_k, lat_train.d_sae)
    ranked_LK = ranking_LF.topk(K, dim=1).indices
    scale = _activation_scale(lat_train, cfg)
    Xtr = lat_train.columns(ranked_LK) / scale
    Xte = lat_test.columns(ranked_LK) / scale
    Ytr = Fn.one_hot(y_train_N.long(), n_classes).T.contiguous()
    Yte = Fn.one_hot(y_test_N.long(), n_classes).T.contiguous()
    f1s, weights, biases = [], [], []
    for k in range(1, K + 1):
        w, b = fit_logistic_batched(Xtr[:, :, :k], Ytr, C=cfg.ksparse_C, max_iter=cfg.ksparse_max_iter)
        s_LN = torch.einsum("lnk,lk->ln", Xte[:, :, :k], w) + b[:, None]
        f1, _, _ = f1_scores((s_LN > 0).T, Yte.T)
        f1s.append(f1)
        weights.append(w)
        biases.append(b)
    f1_LK = torch.stack(f1s, dim=1)
    k_L = torch.tensor([choose_k(f1_LK[l], cfg.f1_jump_threshold) for l in range(n_classes)])
    return SplitFeatures(ranked_LK=ranked_LK, f1_LK=f1_LK, k_L=k_L, weights=weights, biases=biases, scale=scale)


# =====================================================================================================
# Absorption scores
# =====================================================================================================
def word_absorption(f_CF: Tensor, x_CD: Tensor, W_dec_FD: Tensor, probe_D: Tensor, main_ids: list[int],
                    cfg: AbsorptionConfig) -> dict[str, Tensor]:
    """Absorption of one letter on C words (SAEBench's per-word rules, vectorised).

    ``proj_i = f_i · (W_dec[i] · p)`` (or ``f_i · cos_i`` without folding), ``act = x · p`` with
    ``p`` the unit probe direction, ``main`` = the letter's split features.
    * fraction: 0 if ``main_proj >= act`` or the top ≤3 positive projections of latents with
      cos ≥ 0.1 (main excluded) supply < 40% of ``act``; 1 if ``main_proj <= 0``; else
      ``a / (a + main_proj)`` with ``a = min(top sum, act - main_proj)``.
    * full: every main latent is off, the top-projection latent has cos ≥ 0.025, ``act > 0`` and
      it supplies ≥ 40% of ``act``.
    """
    W = W_dec_FD.float()
    p = probe_D.float() / probe_D.float().norm().clamp_min(1e-12)
    row_norm_F = W.norm(dim=1).clamp_min(1e-12)
    dot_F = W @ p
    cos_F = dot_F / row_norm_F
    proj_CF = f_CF * (dot_F if cfg.fold_decoder_norm else cos_F)
    act_C = x_CD.float() @ p
    main = torch.as_tensor(list(main_ids), dtype=torch.int64)
    main_mask_F = torch.zeros(W.shape[0], dtype=torch.bool)
    main_mask_F[main] = True
    main_proj_C = proj_CF[:, main].sum(1)
    main_act_CM = f_CF[:, main]
    # absorption fraction (partial absorption, up to max_absorbing_latents latents)
    allowed_F = ~main_mask_F & (cos_F >= cfg.absorption_fraction_cos_threshold)
    pot_CF = torch.where(allowed_F & (proj_CF > 0), proj_CF, torch.zeros_like(proj_CF))
    top_sum_C = pot_CF.topk(min(cfg.max_absorbing_latents, pot_CF.shape[1]), dim=1).values.sum(1)
    pos_act = act_C > 0
    safe_act = torch.where(pos_act, act_C, torch.ones_like(act_C))
    share_C = torch.where(pos_act, top_sum_C / safe_act, torch.full_like(act_C, -math.inf))
    zero = ~pos_act | (main_proj_C >= act_C) | (share_C < cfg.projection_proportion_threshold)
    one = ~zero & (main_proj_C <= 0)
    absorbed = torch.minimum(top_sum_C, act_C - main_proj_C)
    mid = (absorbed / (absorbed + main_proj_C).clamp_min(1e-30)).clamp(0.0, 1.0)
    fraction_C = torch.where(zero, torch.zeros_like(mid), torch.where(one, torch.ones_like(mid), mid))
    # full absorption by a single latent
    top_idx_C = proj_CF.argmax(1)
    top_proj_C = proj_CF.gather(1, top_idx_C[:, None])[:, 0]
    top_cos_C = cos_F[top_idx_C]
    main_off_C = (main_act_CM.abs() < EPS).all(1)
    full_C = (main_off_C & (top_cos_C >= cfg.full_absorption_cos_threshold) & pos_act
              & (top_proj_C / safe_act >= cfg.projection_proportion_threshold))
    return {
        "absorption_fraction": fraction_C,
        "is_full_absorption": full_C,
        "probe_projection": act_C,
        "main_projection": main_proj_C,
        "main_act_sum": main_act_CM.sum(1),
        "top_latent": top_idx_C,
        "top_projection": top_proj_C,
        "top_cos": top_cos_C,
    }


@dataclass
class AbsorptionResult:
    """What ``evaluate_sae`` returns."""

    summary: dict[str, Any]
    """Scores with SAEBench key names (lower absorption is better)."""
    per_letter: pd.DataFrame
    """One row per letter."""
    words: pd.DataFrame
    """One row per probe true-positive test word (candidates), with its absorption numbers."""


def _stats(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else float("nan")


def absorption_scores(*, y_test_N: Tensor, probe_scores_NL: Tensor, ksparse_scores_NL: Tensor, split_feats: list[list[int]],
                      lat_abs: SparseLatents, x_abs_ND: Tensor, W_dec_FD: Tensor, probe_W_LD: Tensor, probe_f1_L: Tensor,
                      cfg: AbsorptionConfig, words: list[str] | None = None) -> AbsorptionResult:
    """Legacy and current absorption scores from the per-word rules of ``word_absorption``.

    Candidates of letter L: test words of L on which the ground-truth probe fires (true positives).
    * legacy (early-2025 SAEBench, the papers): candidates whose k-sparse probe (split features) is
      silent; rate = fully absorbed / true positives; mean over letters with a candidate whose split
      features are all off on the absorption prompt.
    * current: every true positive; ``mean_absorption_fraction_score`` and
      ``mean_full_absorption_score`` averaged over letters with probe F1 > ``min_probe_f1``.
    """
    n_classes = probe_W_LD.shape[0]
    rows, word_rows = [], []
    for l in range(n_classes):
        pos = y_test_N == l
        tp = pos & (probe_scores_NL[:, l] > 0)
        tp_idx = torch.nonzero(tp).flatten()
        n_tp = int(tp_idx.numel())
        main = split_feats[l]
        row = {"letter": LETTERS[l], "n_test": int(pos.sum()), "probe_f1": float(probe_f1_L[l]),
               "num_probe_true_positives": n_tp, "num_split_features": len(main),
               "split_feats": " ".join(str(i) for i in main)}
        if n_tp:
            r = word_absorption(lat_abs.dense(tp_idx), x_abs_ND[tp_idx], W_dec_FD, probe_W_LD[l], main, cfg)
            legacy_cand = ksparse_scores_NL[tp_idx, l] <= 0
            legacy_kept = legacy_cand & (r["main_act_sum"] < EPS)
            legacy_abs = legacy_cand & r["is_full_absorption"]
            row.update({
                "num_legacy_candidates": int(legacy_cand.sum()),
                "num_absorption": int(legacy_abs.sum()),
                "absorption_rate": float(legacy_abs.sum()) / n_tp,
                "legacy_included": bool(legacy_kept.any()),
                "sum_absorption_fraction": float(r["absorption_fraction"].sum()),
                "mean_absorption_fraction": float(r["absorption_fraction"].sum()) / n_tp,
                "num_full_absorption": int(r["is_full_absorption"].sum()),
                "full_absorption_rate": float(r["is_full_absorption"].sum()) / n_tp,
            })
            for j, n in enumerate(tp_idx.tolist()):
                word_rows.append({
                    "letter": LETTERS[l], "word": words[n] if words is not None else n, "test_row": n,
                    "legacy_candidate": bool(legacy_cand[j]), "absorption_fraction": float(r["absorption_fraction"][j]),
                    "is_full_absorption": bool(r["is_full_absorption"][j]),
                    "probe_projection": float(r["probe_projection"][j]), "main_projection": float(r["main_projection"][j]),
                    "top_latent": int(r["top_latent"][j]), "top_projection": float(r["top_projection"][j]),
                    "top_cos": float(r["top_cos"][j]),
                })
        else:
            row.update({"num_legacy_candidates": 0, "num_absorption": 0, "absorption_rate": float("nan"),
                        "legacy_included": False, "sum_absorption_fraction": 0.0, "mean_absorption_fraction": float("nan"),
                        "num_full_absorption": 0, "full_absorption_rate": float("nan")})
        row["current_included"] = bool(n_tp > 0 and row["probe_f1"] > cfg.min_probe_f1)
        rows.append(row)
    per = pd.DataFrame(rows)
    leg = per[per["legacy_included"]]
    cur = per[per["current_included"]]
    n_cur = int(len(cur))
    frac_mean, frac_std = _stats(cur["mean_absorption_fraction"].tolist())
    full_mean, full_std = _stats(cur["full_absorption_rate"].tolist())
    split_mean, split_std = _stats(cur["num_split_features"].astype(float).tolist())
    legacy_mean, legacy_std = _stats(leg["absorption_rate"].tolist())
    summary = {
        "mean_absorption_fraction_score": frac_mean,
        "mean_full_absorption_score": full_mean,
        "mean_num_split_features": split_mean,
        "std_dev_absorption_fraction_score": frac_std,
        "std_dev_full_absorption_score": full_std,
        "std_dev_num_split_features": split_std,
        "n_letters_current": n_cur,
        "current_valid": bool(n_cur >= cfg.min_letters_for_eval),
        "mean_absorption_score": legacy_mean,
        "std_dev_absorption_score": legacy_std,
        "mean_num_split_features_legacy": _stats(leg["num_split_features"].astype(float).tolist())[0],
        "n_letters_legacy": int(len(leg)),
        "mean_num_split_features_all_letters": float(per["num_split_features"].mean()),
    }
    if not summary["current_valid"]:
        summary["note"] = (
            f"only {n_cur} letters have a ground-truth probe with test F1 > {cfg.min_probe_f1}; SAEBench needs "
            f"{cfg.min_letters_for_eval} and would not score this model/layer. The current scores average over these {n_cur}."
        )
    return AbsorptionResult(summary=summary, per_letter=per, words=pd.DataFrame(word_rows))


# =====================================================================================================
# Orchestration
# =====================================================================================================
@dataclass
class AbsorptionData:
    """Everything the per-SAE step needs; it depends only on the model, the layer and the prompts."""

    x_train_ND: Tensor
    """Residuals of the training prompts at the query token."""
    y_train_N: Tensor
    """First-letter class of each training word."""
    x_test_ND: Tensor
    """Residuals of the test prompts (probe evaluation, candidate selection)."""
    y_test_N: Tensor
    """First-letter class of each test word."""
    x_abs_ND: Tensor
    """Residuals of the absorption prompts (the test words with fresh in-context examples)."""
    probes: LetterProbes
    """Ground-truth letter probes."""
    probe_table: pd.DataFrame
    """Per-letter probe metrics on the test prompts."""
    test_words: list[str] | None = None
    """The test words (for the per-word table)."""
    prompt_accuracy: dict[str, Any] | None = None
    """The model's own first-letter accuracy on the prompts (summary)."""
    accuracy_table: pd.DataFrame | None = None
    """The model's accuracy per letter."""
    vocab: pd.DataFrame | None = None
    """The vocabulary frame."""
    info: dict[str, Any] = field(default_factory=dict)
    """Model, layer, cache folder, counts, timings."""

    @classmethod
    def from_residuals(cls, x_train_ND: Tensor, y_train_N: Tensor, x_test_ND: Tensor, y_test_N: Tensor,
                       cfg: AbsorptionConfig, *, x_abs_ND: Tensor | None = None, probes: LetterProbes | None = None,
                       **extra) -> "AbsorptionData":
        """Train (or take) the letter probes and tabulate them; ``x_abs`` defaults to ``x_test``."""
        if x_abs_ND is None:
            x_abs_ND = x_test_ND
        if x_abs_ND.shape != x_test_ND.shape:
            raise ValueError(f"absorption residuals {tuple(x_abs_ND.shape)} must match test residuals {tuple(x_test_ND.shape)}")
        if probes is None:
            with _threads(cfg.probe_threads):
                probes = train_letter_probes(x_train_ND, y_train_N, l2=cfg.probe_l2, max_iter=cfg.probe_max_iter)
        table = probe_metrics(probes.scores(x_test_ND), y_test_N, y_train_N)
        return cls(x_train_ND=x_train_ND, y_train_N=y_train_N.long(), x_test_ND=x_test_ND, y_test_N=y_test_N.long(),
                   x_abs_ND=x_abs_ND, probes=probes, probe_table=table, **extra)

    def n_letters_probe_f1(self, threshold: float = 0.6) -> int:
        """Letters whose ground-truth probe has test F1 above ``threshold``."""
        return int((self.probe_table["probe_f1"] > threshold).sum())


def prepare_absorption_data(model, layer: int, cfg: AbsorptionConfig, cache_dir: str | Path, *,
                            progress: bool = False) -> AbsorptionData:
    """Model side of the eval, cached under ``cache_dir/absorption/...``: vocabulary, prompts,
    residuals (train, test, absorption), prompt accuracy and the ground-truth probes."""
    from saelib.io import atomic_save_safetensors, atomic_write_json, read_json

    t0 = time.perf_counter()
    tok = model.tokenizer
    vocab = build_vocab(tok, cfg)
    prompts = {"train": build_prompts(vocab, tok, cfg, "train"), "test": build_prompts(vocab, tok, cfg, "test")}
    prompts["absorption"] = (build_prompts(vocab, tok, cfg, "test", variant=1, pool="all")
                             if cfg.fresh_absorption_prompts else prompts["test"])
    mismatch = check_prompt_tokenization(prompts["test"], tok)
    folder = cache_folder(cache_dir, model.name, layer, cfg)
    folder.mkdir(parents=True, exist_ok=True)
    x = {}
    for name, ps in prompts.items():
        if name == "absorption" and not cfg.fresh_absorption_prompts:
            x[name] = x["test"]
            continue
        x[name] = _cached_residuals(model, layer, ps, folder / f"residuals_{name}.safetensors", cfg, progress)
    t_res = time.perf_counter() - t0
    # prompt accuracy (cached; depends on the prompts and the subsample size)
    acc_path = folder / f"prompt_accuracy_{cfg.accuracy_prompts}.json"
    acc = read_json(acc_path) if acc_path.exists() else None
    if acc is None or acc.get("tokens_sha256") != prompts["test"].sha256():
        summary, per = prompt_accuracy(model, prompts["test"], max_prompts=cfg.accuracy_prompts,
                                       batch_size=max(1, cfg.llm_batch_size // 2), seed=cfg.seed,
                                       letter_ids=answer_token_ids(tok, cfg), progress=progress)
        acc = {"summary": summary, "per_letter": per.to_dict(orient="records"), "tokens_sha256": prompts["test"].sha256()}
        atomic_write_json(acc_path, acc)
    t_acc = time.perf_counter() - t0 - t_res
    # ground-truth probes (cached; depend on the residuals and the probe settings)
    y_train = prompts["train"].letter_idx_N
    y_test = prompts["test"].letter_idx_N
    probe_path = folder / f"probes_l2{cfg.probe_l2:g}_it{cfg.probe_max_iter}.safetensors"
    probes = None
    if probe_path.exists():
        from safetensors import safe_open

        with safe_open(str(probe_path), framework="pt") as fh:
            if (fh.metadata() or {}).get("tokens_sha256") == prompts["train"].sha256():
                probes = LetterProbes(W_LD=fh.get_tensor("W_LD"), b_L=fh.get_tensor("b_L"))
    if probes is None:
        with _threads(cfg.probe_threads):
            probes = train_letter_probes(x["train"], y_train, l2=cfg.probe_l2, max_iter=cfg.probe_max_iter)
        atomic_save_safetensors(probe_path, {"W_LD": probes.W_LD, "b_L": probes.b_L},
                                metadata={"tokens_sha256": prompts["train"].sha256()})
    t_probe = time.perf_counter() - t0 - t_res - t_acc
    test_words = list(vocab["text"].to_numpy()[prompts["test"].rows_N])
    info = {
        "model": model.name, "layer": layer, "cache_folder": str(folder), "n_vocab": int(len(vocab)),
        "n_train": len(prompts["train"]), "n_test": len(prompts["test"]), "prompt_length": int(prompts["test"].tokens_NS.shape[1]),
        "query_pos": prompts["test"].query_pos, "example_prompt": prompts["test"].text(tok, 0),
        "tokenization_mismatch": mismatch,
        "seconds_residuals": t_res, "seconds_accuracy": t_acc, "seconds_probes": t_probe,
    }
    return AbsorptionData.from_residuals(
        x["train"], y_train, x["test"], y_test, cfg, x_abs_ND=x["absorption"], probes=probes,
        test_words=test_words, prompt_accuracy=acc["summary"], accuracy_table=pd.DataFrame(acc["per_letter"]),
        vocab=vocab, info=info,
    )


def evaluate_sae(sae, data: AbsorptionData, cfg: AbsorptionConfig) -> AbsorptionResult:
    """Per-SAE step: encode the cached residuals once, select split features, score absorption."""
    t0 = time.perf_counter()
    F, D = _sae_dims(sae)
    if D != data.x_train_ND.shape[1]:
        raise ValueError(f"SAE reads d_in={D} but the residuals have width {data.x_train_ND.shape[1]}")
    lat_train = encode_latents(sae, data.x_train_ND, batch_size=cfg.sae_batch_size)
    lat_test = encode_latents(sae, data.x_test_ND, batch_size=cfg.sae_batch_size)
    lat_abs = lat_test if data.x_abs_ND is data.x_test_ND else encode_latents(sae, data.x_abs_ND, batch_size=cfg.sae_batch_size)
    t_enc = time.perf_counter() - t0
    with torch.no_grad():
        W_dec = sae.W_dec.detach().float().cpu()
    with _threads(cfg.probe_threads):
        split = select_split_features(lat_train, data.y_train_N, lat_test, data.y_test_N, cfg)
        t_split = time.perf_counter() - t0 - t_enc
        result = absorption_scores(
            y_test_N=data.y_test_N, probe_scores_NL=data.probes.scores(data.x_test_ND), ksparse_scores_NL=split.scores(lat_test),
            split_feats=split.split_feats, lat_abs=lat_abs, x_abs_ND=data.x_abs_ND, W_dec_FD=W_dec,
            probe_W_LD=data.probes.W_LD, probe_f1_L=torch.tensor(data.probe_table["probe_f1"].to_numpy()), cfg=cfg,
            words=data.test_words,
        )
    per = result.per_letter
    per.insert(per.columns.get_loc("num_split_features") + 1, "k_sparse_f1",
               [float(split.f1_LK[l, int(split.k_L[l]) - 1]) for l in range(len(per))])
    per["k_sparse_f1_by_k"] = [" ".join(f"{v:.3f}" for v in split.f1_LK[l].tolist()) for l in range(len(per))]
    if data.accuracy_table is not None:
        acc = data.accuracy_table.set_index("letter")
        per["prompt_accuracy"] = per["letter"].map(acc["prompt_accuracy"])
    l0 = float((lat_test.val_NM != 0).sum(1).float().mean())
    result.summary.update({
        "n_letters_probe_f1_above_min": data.n_letters_probe_f1(cfg.min_probe_f1),
        "l0_on_test_prompts": l0,
        "seconds_encode": t_enc, "seconds_split_features": t_split, "seconds_total": time.perf_counter() - t0,
    })
    if data.prompt_accuracy is not None:
        result.summary.update({k: v for k, v in data.prompt_accuracy.items()})
    return result


def save_results(result: AbsorptionResult, out_dir: str | Path, name: str, cfg: AbsorptionConfig,
                 extra: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.json`` (SAEBench-shaped) and ``<out_dir>/<name>_per_letter.csv``."""
    from saelib.io import atomic_write_json, atomic_write_text

    out_dir = Path(out_dir)
    s = result.summary
    mean_keys = ("mean_absorption_fraction_score", "mean_full_absorption_score", "mean_num_split_features",
                 "std_dev_absorption_fraction_score", "std_dev_full_absorption_score", "std_dev_num_split_features",
                 "mean_absorption_score", "std_dev_absorption_score", "mean_num_split_features_legacy")
    payload = {
        "eval_type_id": EVAL_TYPE_ID,
        "variant": name,
        "lower_is_better": True,
        "eval_config": asdict(cfg),
        "eval_result_metrics": {"mean": {k: s[k] for k in mean_keys}},
        "summary": s,
        "eval_result_details": result.per_letter.to_dict(orient="records"),
        **(extra or {}),
    }
    json_path = atomic_write_json(out_dir / f"{name}.json", payload)
    csv_path = atomic_write_text(out_dir / f"{name}_per_letter.csv", result.per_letter.to_csv(index=False))
    return json_path, csv_path
