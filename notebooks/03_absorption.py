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

# %%
from saelib.config import load_params

P = load_params(profile)
P["profile"], P["run"]["model"], P["run"]["layer"], list(P["variants"])

# %%
import time

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from saelib.evals import absorption as ab
from saelib.io import atomic_write_text
from saelib.models import load_model
from saelib.sae import load_sae

cfg = ab.AbsorptionConfig.from_params(P["run"].get("absorption", {}))
model = load_model(P["run"]["model"])
layer = P["run"]["layer"]
results_dir = P["paths"]["results"] / "absorption"
cfg

# %% [markdown]
# ## Model side (once per model and layer, cached)
# Residuals of every prompt at the query word, the model's own first-letter accuracy, and the
# ground-truth letter probes. A second run reads them from `eval_cache`.

# %%
t0 = time.perf_counter()
data = ab.prepare_absorption_data(model, layer, cfg, P["paths"]["eval_cache"], progress=True)
print(f"model side ready in {time.perf_counter() - t0:.0f} s")
print("example prompt:", repr(data.info["example_prompt"]))
pd.Series({k: v for k, v in data.info.items() if k != "example_prompt"})

# %% [markdown]
# How often the model itself answers the first letter correctly (next token after the prompt), and
# how well the linear probes read the letter from the residual on the held-out words.

# %%
n_good = data.n_letters_probe_f1(cfg.min_probe_f1)
print(f"prompt accuracy (argmax over the vocabulary): {data.prompt_accuracy['prompt_accuracy']:.3f}; "
      f"among the 26 letter tokens: {data.prompt_accuracy['prompt_accuracy_letters']:.3f} "
      f"({data.prompt_accuracy['n_prompts']} test prompts)")
print(f"letters with probe F1 > {cfg.min_probe_f1}: {n_good} (SAEBench needs {cfg.min_letters_for_eval})")
data.probe_table.merge(data.accuracy_table, on="letter").round(3)

# %% [markdown]
# ## SAE side (every trained variant)

# %%
summaries, per_letter = {}, {}
for variant in P["variants"]:
    folder = P["paths"]["checkpoints"] / variant / "sae"
    sae = load_sae(folder)
    result = ab.evaluate_sae(sae, data, cfg)
    ab.save_results(result, results_dir, variant, cfg,
                    extra={"model": P["run"]["model"], "layer": layer, "profile": P["profile"], "model_side": data.info})
    summaries[variant] = result.summary
    per_letter[variant] = result.per_letter
    print(f"{variant}: legacy {result.summary['mean_absorption_score']:.4f}, "
          f"fraction {result.summary['mean_absorption_fraction_score']:.4f}, "
          f"full {result.summary['mean_full_absorption_score']:.4f}, "
          f"split {result.summary['mean_num_split_features']:.2f} ({result.summary['seconds_total']:.0f} s)")

# %% [markdown]
# Summary (lower absorption is better). `current_valid` is False when fewer than
# `min_letters_for_eval` letters have a usable probe; then the current scores average over the
# letters that do, and SAEBench itself would have refused to score.

# %%
cols = ["mean_absorption_score", "mean_absorption_fraction_score", "mean_full_absorption_score",
        "mean_num_split_features", "mean_num_split_features_legacy", "n_letters_legacy", "n_letters_current",
        "current_valid", "prompt_accuracy", "l0_on_test_prompts", "seconds_total"]
table = pd.DataFrame(summaries).T[cols]
atomic_write_text(results_dir / "summary.csv", table.to_csv())
table

# %%
long = pd.concat([df.assign(variant=v) for v, df in per_letter.items()], ignore_index=True)
fig, axes = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
sns.barplot(data=long, x="letter", y="mean_absorption_fraction", hue="variant", ax=axes[0])
axes[0].set_ylabel("absorption fraction\n(lower is better)")
sns.barplot(data=long, x="letter", y="num_split_features", hue="variant", ax=axes[1], legend=False)
axes[1].set_ylabel("split features")
fig.suptitle(f"First-letter absorption per letter — {P['run']['model']} layer {layer} (lower is better)")
fig.tight_layout()

# %% [markdown]
# Per-letter tables are in `results/absorption/<variant>_per_letter.csv`; the full results (with the
# config and the model-side numbers) in `results/absorption/<variant>.json`.
