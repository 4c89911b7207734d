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
# regression (C = 1) is scored on the test split, for k ∈ {1, 2, 5, 10, 20, 50} and for all latents
# (SAEBench's `sae_top_{k}_test_accuracy`, `sae_test_accuracy`). The same probes on residual
# dimensions give the baselines `llm_top_{k}_test_accuracy` and `llm_test_accuracy` (full residual).
#
# Tasks in the offline default profile (real text and labels from installed packages, see
# `saelib/data/tasks.py`): BBC news topic (5), movie-review sentiment (Rotten Tomatoes), food-review
# sentiment (Amazon fine foods), programming language of source files shipped by the environment
# (5), MMLU subject (5), and language identification over fortunes (6 languages, optional). The
# paper profile uses SAEBench's eight hub datasets (`saelib/data/hub_tasks.py`).
#
# The model side (residuals of every text, and the residual baselines) is computed once per
# model/layer/dataset and cached in `eval_cache`; each SAE then only encodes the cached tokens.

# %% tags=["parameters"]
profile = None
skip_missing = False

# %%
from saelib.config import load_params

P = load_params(profile)
P["profile"], P["run"]["model"], P["run"]["layer"], list(P["variants"])

# %%
import time

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from saelib.evals import probing
from saelib.evals.pooled import sae_config_dict
from saelib.io import atomic_write_text
from saelib.models import load_model
from saelib.plotting import set_style
from saelib.sae import load_sae

set_style()
cfg = probing.ProbingEvalConfig.from_params(P["run"])
layer = P["run"]["layer"]
results_dir = P["paths"]["results"] / "probing"
cfg

# %% [markdown]
# ## Model side (once per model, layer and dataset; cached)

# %%
t0 = time.perf_counter()
prep = probing.prepare_probing(cfg, model=lambda: load_model(P["run"]["model"]), model_name=P["run"]["model"],
                               layer=layer, cache_dir=P["paths"]["eval_cache"], progress=True)
print(f"model side ready in {time.perf_counter() - t0:.0f} s")
for line in prep.skipped:
    print("skipped:", line)
probing.tasks_summary(prep)

# %% [markdown]
# Residual-stream baselines (mean over each task's classes).

# %%
probing.llm_table(prep).round(3)

# %% [markdown]
# ## SAE side (every variant)

# %%
results = {}
for variant in P["variants"]:
    folder = P["paths"]["checkpoints"] / variant / "sae"
    if skip_missing and not folder.exists():
        print(f"{variant}: no SAE at {folder}, skipped (skip_missing=True)")
        continue
    sae = load_sae(folder)
    result = probing.probe_sae(prep, sae)
    probing.save_probing_results(prep, result, results_dir, variant, sae_cfg=sae_config_dict(sae),
                                 extra={"model": P["run"]["model"], "layer": layer, "profile": P["profile"]})
    results[variant] = result
    overall = probing.average_over_tasks(result["per_task"])
    print(f"{variant}: sae top-1 {overall['sae_top_1_test_accuracy']:.3f} (residual top-1 "
          f"{overall['llm_top_1_test_accuracy']:.3f}), all latents {overall['sae_test_accuracy']:.3f} "
          f"(full residual {overall['llm_test_accuracy']:.3f}) in {result['seconds']:.0f} s")

# %% [markdown]
# Summary: SAE probes beside the residual baselines, mean over tasks.

# %%
keys = ["sae_top_1_test_accuracy", "llm_top_1_test_accuracy", "sae_top_5_test_accuracy", "llm_top_5_test_accuracy",
        "sae_top_20_test_accuracy", "llm_top_20_test_accuracy", "sae_test_accuracy", "llm_test_accuracy"]
summary = pd.DataFrame({v: probing.average_over_tasks(r["per_task"]) for v, r in results.items()}).T
summary["eval_seconds"] = [r["seconds"] for r in results.values()]
atomic_write_text(results_dir / "summary.csv", summary.to_csv())
summary[[k for k in keys if k in summary] + ["eval_seconds"]].round(3)

# %%
per_task = pd.concat([probing.per_task_table(r).assign(variant=v) for v, r in results.items()], ignore_index=True)
per_task.pivot(index="task", columns="variant", values="sae_top_1_test_accuracy").assign(
    residual=per_task.groupby("task")["llm_top_1_test_accuracy"].first()).round(3)

# %%
curves = pd.concat([probing.k_curve(r).assign(variant=v) for v, r in results.items()], ignore_index=True)
curves["series"] = curves["variant"].where(curves["features"] == "sae", "residual")
curves = curves.drop_duplicates(["series", "k"])
fig, ax = plt.subplots(figsize=(7, 4))
sns.pointplot(data=curves, x="k", y="accuracy", hue="series", ax=ax)
ax.set_xlabel("k (latents or residual dimensions; 'all' = every one)")
ax.set_ylabel("test accuracy (mean over tasks)")
ax.set_title(f"Sparse probing — {P['run']['model']} layer {layer} (higher is better)")
fig.tight_layout()

# %% [markdown]
# Per-task numbers are in `results/probing/<variant>_per_task.csv`, per-class accuracies and the
# config in `results/probing/<variant>.json` (SAEBench key names).
