"""Feature absorption on the first-letter task (Chanin et al. 2024, as SAEBench computes it).

The task: a prompt of in-context lines ``" cat has the first letter: C"`` ending with a query word
``" fish has the first letter:"``. The residual at the SAE layer on the query word's token carries
"starts with F"; a linear probe (one per letter) finds that direction. An SAE latent that represents
the letter should fire on every such word; *absorption* is when it stays silent and a token-specific
latent, whose decoder row carries the letter direction, fires instead.

Modules: ``config`` (settings), ``vocab``, ``prompts``, ``model_io`` (residuals, prompt accuracy,
cache), ``probes`` (ground truth), ``latents``, ``ksparse`` (split features), ``scoring``, ``run``
(orchestration); every public name is re-exported here.

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
from .config import EPS, EVAL_TYPE_ID, LETTERS, AbsorptionConfig
from .ksparse import SplitFeatures, choose_k, fit_logistic_batched, rank_latents, select_split_features
from .latents import SparseLatents, encode_latents
from .model_io import cache_folder, collect_residuals, prompt_accuracy, residual_cache_key
from .probes import LetterProbes, f1_scores, probe_metrics, train_letter_probes
from .prompts import PromptSet, answer_token_ids, build_prompts, check_prompt_tokenization, sample_icl_examples
from .run import AbsorptionData, evaluate_sae, prepare_absorption_data, save_results
from .scoring import AbsorptionResult, absorption_scores, word_absorption
from .vocab import ALPHA, build_vocab, is_alpha_word

__all__ = [
    "EPS", "EVAL_TYPE_ID", "LETTERS", "AbsorptionConfig", "ALPHA", "build_vocab", "is_alpha_word",
    "PromptSet", "answer_token_ids", "build_prompts", "check_prompt_tokenization", "sample_icl_examples",
    "cache_folder", "collect_residuals", "prompt_accuracy", "residual_cache_key",
    "LetterProbes", "f1_scores", "probe_metrics", "train_letter_probes", "SparseLatents", "encode_latents",
    "SplitFeatures", "choose_k", "fit_logistic_batched", "rank_latents", "select_split_features",
    "AbsorptionResult", "absorption_scores", "word_absorption",
    "AbsorptionData", "evaluate_sae", "prepare_absorption_data", "save_results",
]
