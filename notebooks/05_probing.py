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
# # 05 · Sparse probing
#
# **Higher is better.** Can a handful of SAE latents tell the classes of a labelled text apart?
# For every task and class (class against an equal number of texts of the other classes), the
# SAE latents are averaged over the text's non-special tokens (context 128), the k latents with the
# largest |mean on the class − mean on the rest| are picked on the train split, and an L2 logistic
# regression (C = 1) is scored on the test split, for k ∈ {1, 2, 5, 10, 20, 50}
# (SAEBench's `sae_top_{k}_test_accuracy`). The probe on **all** latents (`sae_test_accuracy`, "SPall")
# is SAEBench's own torch probe: AdamW, BCE loss, batch 250, lr 1e-2, up to 100 epochs with patience
# 10, reported at the best test epoch (`saelib.evals.probing.SPALL_PROBE`; the named alternative
# `all_probe: sklearn` uses the L2 regression above). The same probes on residual dimensions give the
# baselines `llm_top_{k}_test_accuracy` and `llm_test_accuracy` (full residual).
#
# Tasks of the offline default profile (`saelib/data/tasks.py`; the paper profile uses SAEBench's
# eight hub datasets, `saelib/data/hub_tasks.py`):
#
# | task | classes | data | stands for (SAEBench) |
# |---|---|---|---|
# | `sp_ag_news` | World, Sports, Business | SAEBench's AG News records (sae-probes files 161-163) | ag_news (real) |
# | `sp_amazon_sentiment` | 1 vs 5 stars | SAEBench's Amazon reviews (sae-probes file 157) | amazon_sentiment (real) |
# | `sp_github_code` | C, Python, HTML | SAEBench's GitHub code (sae-probes files 158-160) | github_code (real) |
# | `bbc_topic` | 5 BBC news topics | BBC news articles | amazon_category (substitute) |
# | `mmlu_subject` | 5 MMLU subjects | MMLU questions | bias_in_bios (substitute) |
# | `lang_id` | 6 languages | fortunes in six languages (optional) | europarl (substitute) |
#
# The first three are SAEBench's own records, read from the per-class files the PyPI package
# `sae-probes==0.4.2` ships (Sci/Tech, Java and PHP have no file there, so those classes are missing);
# the other three stand in where nothing real is available offline. The second probing protocol,
# sae-probes' own (last token, C grid, binary datasets), is `05b_sae_probes`, reported separately.
#
# The model side (residuals of every text, and the residual baselines) is computed once per
# model/layer/dataset and cached in `eval_cache`; each SAE then only encodes the cached tokens.

# %% tags=["parameters"]
profile = None
variant = None  # None: the model side only (stage probing_prep); a variant name: that SAE (stage probing@<name>)

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from saelib import stages
from saelib.stages import probing as stage
from saelib.config import load_params
from saelib.plotting import set_style

set_style()
P = load_params(profile)
print(f"profile={P['profile']}  model={P['run']['model']}  layer={P['run']['layer']}  variant={variant}")

# %% [markdown]
# ## Model side (once per model, layer and dataset; cached)
# Built by the `probing_prep` stage into `data/<profile>/eval_cache/probing`; each SAE's stage reads it back.

# %%
prep = stages.prepare_eval(P, stage) if variant is None else stages.load_prepared(P, stage)
for line in prep.data.skipped:
    print("skipped:", line)
tables = stage.model_side_tables(prep)
tables["tasks"]

# %% [markdown]
# Residual-stream baselines (mean over each task's classes).

# %%
tables["residual_baselines"].round(3)

# %% [markdown]
# ## SAE side (one variant per stage)
# The SAE probes beside the residual baselines, mean over tasks. The table over all variants is in
# `07_figures` (`results/<profile>/tables/probing_summary.csv`).

# %%
if variant is not None:
    headline = stages.evaluate_variant(P, stage, variant, prep=prep)
    display(pd.Series(headline, name=variant).to_frame().round(3))  # noqa: F821 - IPython

# %%
if variant is not None:
    per_task = pd.read_csv(stages.results_dir(P, stage) / f"{variant}_per_task.csv")
    top = [c for c in per_task.columns if c.endswith("_test_accuracy") and c.startswith(("sae_top_", "llm_top_"))]
    long = per_task.melt(id_vars=[per_task.columns[0]], value_vars=top, var_name="key", value_name="accuracy")
    long["features"] = long["key"].str.split("_").str[0].map({"sae": "SAE latents", "llm": "residual dims"})
    long["k"] = long["key"].str.extract(r"top_(\d+)_")[0].astype(int)
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.pointplot(data=long, x="k", y="accuracy", hue="features", ax=ax)
    ax.set(xlabel="k (latents or residual dimensions)", ylabel="test accuracy (mean over tasks)",
           title=f"Sparse probing: {variant}, {P['run']['model']} layer {prep.layer} (higher is better)")
    fig.tight_layout()
    plt.show()

# %% [markdown]
# Per-task numbers are in `results/<profile>/probing/<variant>_per_task.csv`, per-class accuracies and
# the config in `results/<profile>/probing/<variant>.json` (SAEBench key names).
