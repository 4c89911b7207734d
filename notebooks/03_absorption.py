# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Feature absorption (first-letter task)
#
# **Lower is better.** An absorption score of 0 means that, whenever the model's residual stream
# says "this word starts with L", the SAE's own "starts with L" latent(s) fire. Absorption is when
# those latents stay silent and a token-specific latent whose decoder row carries the letter
# direction fires instead — the SAE has folded the letter into the token. Both papers we reproduce
# described their absorption numbers as if higher were better; that is wrong, and every table and
# figure here treats *lower* as better.
#
# Method (Chanin et al. 2024, as SAEBench computes it; see `saelib/evals/absorption/`). The
# default follows **SAEBench 0.6.0** (PyPI `sae-bench==0.6.0`); `tests/test_saebench_absorption.py`
# feeds SAEBench's own functions and ours the same inputs and asserts agreement at every step marked ✓.
# 1. ✓ Vocabulary (`get_alpha_tokens`): every token made only of ASCII letters, leading space
#    optional (139,585 Gemma-3 tokens; this profile uses a fixed random 10,000 of them for CPU
#    time), split 80/20 at random. Named alternative: this repo's first filter `▁[A-Za-z]{2,}`
#    with case variants kept on one side (`min_word_letters: 2, require_leading_space: true,
#    group_case_variants: true`; 86,453 tokens).
# 2. ✓ Prompts (`create_icl_prompt`): 10 in-context lines `"\n cat has the first letter: C"`, then
#    `"\n fish has the first letter:"`; the residual at the SAE layer is read on the query word
#    (position −6). In-context examples come from the word's own split for the probe prompts and
#    from the whole vocabulary for the absorption prompts, never the word itself. The leading
#    newline is 0.6.0's (commit f7b1ad0, 2025-04); `prepend_separator: false` gives the Jan 2025
#    text. The default profile uses fewer words than SAEBench, never a different prompt.
# 3. 26 one-vs-rest linear probes on the residual give each letter's ground-truth direction
#    (BCE with pos_weight = neg/pos; fitted here by full-batch L-BFGS, not SAEBench's Adam).
# 4. ✓ Per SAE, k-sparse probing (`train_k_sparse_probes`): an L1 probe on the **raw** SAE
#    activations (default `nn.Linear` init, Adam, 50 epochs) ranks the latents; class-balanced
#    logistic probes on each letter's top k latents; k grows while test F1 improves by > 0.03; the
#    chosen latents are the letter's *split features*. Named alternative `ksparse_normalize: true`
#    (this repo's first version): activations divided by their mean magnitude and a zero-initialised
#    ranking probe, which makes the split features independent of the SAE's activation scale.
#    With 8,000 training words the ranking minibatch is 288, so that it takes SAEBench's ~28 Adam
#    steps per epoch.
# 5. Scores:
#    * **legacy** `mean_absorption_score` — what both papers report. Not in 0.6.0; it follows the
#      rule of SAEBench commits 293b385 … f026998 / bb8e145 (2024-11-29 to 2025-01-08, unchanged
#      over that range), checked against a hand-worked fixture in `tests/test_absorption.py`: a
#      probe true positive on which the k-sparse probe scores ≤ 0 is a candidate (dropped if a
#      split feature fires); it is absorbed if no split feature fires and one latent with
#      cos ≥ 0.025 to the probe supplies ≥ 40% of a non-negative probe projection; rate = absorbed /
#      true positives, averaged over letters with a kept candidate. Computed here on the 0.6.0
#      prompts (one leading newline more than the Jan 2025 prompts).
#    * ✓ **current** (0.6.0, `FeatureAbsorptionCalculator`) `mean_absorption_fraction_score`
#      (partial absorption by up to 3 latents with cos ≥ 0.1) and `mean_full_absorption_score`,
#      averaged over letters whose probe F1 > 0.6 (SAEBench requires at least 20 such letters).
#      Latent projections use activation × (decoder row · probe), i.e. SAEBench's activation × cos
#      after its decoder-norm folding (commit 511d51a); `fold_decoder_norm: false` uses the cos alone.
#
# Absorption only means something where the model knows the first letter, so the model's own
# accuracy on the same prompts is reported next to the scores.

# %% tags=["parameters"]
profile = None
variant = None  # None: the model side only (stage absorption_prep); a variant name: that SAE (stage absorption@<name>)

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from saelib import stages
from saelib.stages import absorption as stage
from saelib.config import load_params

P = load_params(profile)
print(f"profile={P['profile']}  model={P['run']['model']}  layer={P['run']['layer']}  variant={variant}")

# %% [markdown]
# ## Model side (once per model and layer, cached)
# Residuals of every prompt at the query word, the model's own first-letter accuracy, and the
# ground-truth letter probes. The `absorption_prep` stage builds them into
# `data/<profile>/eval_cache/absorption`; each SAE's stage reads them back.

# %%
prep = stages.prepare_eval(P, stage) if variant is None else stages.load_prepared(P, stage)
data, cfg = prep.data, prep.cfg
print("example prompt:", repr(data.info["example_prompt"]))
cfg

# %% [markdown]
# How often the model itself answers the first letter correctly (next token after the prompt), and
# how well the linear probes read the letter from the residual on the held-out words.

# %%
n_good = data.n_letters_probe_f1(cfg.min_probe_f1)
print(f"prompt accuracy (argmax over the vocabulary): {data.prompt_accuracy['prompt_accuracy']:.3f}; "
      f"among the 26 letter tokens: {data.prompt_accuracy['prompt_accuracy_letters']:.3f} "
      f"({data.prompt_accuracy['n_prompts']} test prompts)")
print(f"letters with probe F1 > {cfg.min_probe_f1}: {n_good} (SAEBench needs {cfg.min_letters_for_eval})")
stage.model_side_tables(prep)["letter_probes"].round(3)

# %% [markdown]
# ## SAE side (one variant per stage)
# Scores of this variant (lower absorption is better). `current_valid` is False when fewer than
# `min_letters_for_eval` letters have a usable probe; then the current scores average over the
# letters that do, and SAEBench itself would have refused to score. The table over all variants is
# in `07_figures` (`results/<profile>/tables/absorption_summary.csv`).

# %%
if variant is not None:
    headline = stages.evaluate_variant(P, stage, variant, prep=prep)
    display(pd.Series(headline, name=variant).to_frame())  # noqa: F821 - IPython

# %%
if variant is not None:
    per_letter = pd.read_csv(stages.results_dir(P, stage) / f"{variant}_per_letter.csv")
    fig, axes = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    sns.barplot(data=per_letter, x="letter", y="mean_absorption_fraction", ax=axes[0], color="#4477aa")
    axes[0].set_ylabel("absorption fraction\n(lower is better)")
    sns.barplot(data=per_letter, x="letter", y="num_split_features", ax=axes[1], color="#4477aa")
    axes[1].set_ylabel("split features")
    fig.suptitle(f"First-letter absorption per letter: {variant}, {P['run']['model']} layer {prep.layer} (lower is better)")
    fig.tight_layout()
    plt.show()

# %% [markdown]
# Per-letter tables are in `results/<profile>/absorption/<variant>_per_letter.csv`; the full results
# (with the config and the model-side numbers) in `results/<profile>/absorption/<variant>.json`.
