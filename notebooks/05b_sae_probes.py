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
# # 05b · Sparse probing, sae-probes protocol
#
# **Higher is better.** The second sparse-probing eval (Kantamneni et al. 2025, "Are Sparse
# Autoencoders Useful? A Case Study in Sparse Probing"; SAEBench's `sparse_probing_sae_probes`),
# reported *beside* the SAEBench sparse probing of `05_probing`, never averaged with it.
#
# How it differs from `05_probing`: one binary dataset per task (sae-probes' numbered files), the
# residual at the prompt's **last token** (not the mean over tokens), latents ranked by
# |mean on y=1 − mean on y=0| after normalising each latent by its mean non-zero activation, and
# logistic-regression probes whose C is picked from a 10-value grid by validation ROC AUC (L1 for
# the SAE probes, L2 for the full-residual baseline `llm_test_*`). Reported per k ∈ {1, 2, 5}:
# test accuracy, ROC AUC and weighted F1 (`sae_top_{k}_test_{accuracy,auc,f1}`), averaged over
# datasets. For dataset files the SAE training corpus also reads, only their eval-side rows are used.
# Protocol details and departures: `saelib/evals/sae_probes.py`.
#
# The model side (last-token residuals of every prompt and the residual baselines) is computed once
# per model/layer/dataset and cached in `eval_cache/sae_probes`; each SAE only encodes the cached vectors.

# %% tags=["parameters"]
profile = None
variant = None  # None: the model side only (stage sae_probes_prep); a variant name: that SAE (stage sae_probes@<name>)

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from saelib import stages
from saelib.stages import sae_probes as stage
from saelib.config import load_params
from saelib.plotting import set_style

set_style()
P = load_params(profile)
print(f"profile={P['profile']}  model={P['run']['model']}  layer={P['run']['layer']}  variant={variant}")

# %% [markdown]
# ## Model side (once per model, layer and dataset; cached)
# Built by the `sae_probes_prep` stage into `data/<profile>/eval_cache/sae_probes`. Per dataset: the two
# classes (labels 0 and 1), the split sizes and the L2 residual baseline.

# %%
prep = stages.prepare_eval(P, stage) if variant is None else stages.load_prepared(P, stage)
for line in prep.data.skipped:
    print("skipped:", line)
prep.cfg

# %%
stage.model_side_tables(prep)["tasks"].round(3)

# %% [markdown]
# ## SAE side (one variant per stage)
# Mean over datasets; the table over all variants is in `07_figures`
# (`results/<profile>/tables/sae_probes_summary.csv`).

# %%
if variant is not None:
    headline = stages.evaluate_variant(P, stage, variant, prep=prep)
    display(pd.Series(headline, name=variant).to_frame().round(3))  # noqa: F821 - IPython

# %%
if variant is not None:
    per_task = pd.read_csv(stages.results_dir(P, stage) / f"{variant}_per_task.csv")
    cols = [c for c in per_task.columns if c.startswith("sae_top_") and c.endswith("_test_auc")]
    long = per_task.melt(id_vars=["dataset_name"], value_vars=cols, var_name="key", value_name="auc")
    long["k"] = long["key"].str.extract(r"top_(\d+)_")[0].astype(int)
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.pointplot(data=long, x="k", y="auc", ax=ax, label="SAE latents")
    if "llm_test_auc" in per_task:
        ax.axhline(per_task["llm_test_auc"].mean(), ls="--", color="gray", label="full residual (L2)")
    ax.set(xlabel="k (top latents)", ylabel="test ROC AUC (mean over datasets)",
           title=f"sae-probes: {variant}, {P['run']['model']} layer {prep.layer} (higher is better)")
    ax.legend()
    fig.tight_layout()
    plt.show()

# %% [markdown]
# Per-dataset numbers: `results/<profile>/sae_probes/<variant>_per_task.csv`; the JSON beside it has
# SAEBench's `sparse_probing_sae_probes` layout with the chosen latents and C per dataset and k.
