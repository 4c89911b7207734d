"""Settings of the first-letter absorption eval and the task's constants."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
        from ...params_block import from_block

        return from_block(cls, params, what="absorption")

    def prompt_settings(self) -> dict[str, Any]:
        """The fields that decide the prompts (and hence the cached residuals)."""
        keys = ("n_shot", "max_words", "min_word_letters", "require_leading_space", "train_fraction",
                "group_case_variants", "seed", "template", "answer_template", "separator", "prepend_separator",
                "space_marker", "fresh_absorption_prompts")
        return {k: getattr(self, k) for k in keys}
