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
# Offline default: WordNet person glosses, A = profession group (arts vs sciences, like SAEBench's
# profession), B = nationality group (American vs European, standing in for gender); the biased set is
# American artists against European scientists (`saelib/data/wordnet_people.py`). Two older
# substitutes (review domain × sentiment, news/exam genre × topic) remain selectable but have no
# headroom (see the oracle table below). Paper profile: Bias in Bios profession × gender and Amazon
# category × rating (SAEBench's pairs).
#
# **TPP** (targeted probe perturbation): one probe per class of a multi-class task; ablating the
# latents that most support class c should hurt c's probe and leave the others alone:
# metric = accuracy drop on c − mean drop on the other classes, averaged over classes (BBC topics
# offline; Bias in Bios and Amazon categories in the paper profile).
#
# Residuals of every text are cached once per model/layer/dataset; for each SAE only the
# mean-pooled latents are computed, and x̄' = x̄ − Σ f̄_i W_dec[i] gives the ablated means exactly.
#
# **Which ablation, at which positions.** The default follows SAEBench 0.6.0
# (`special_positions: saebench`): SAEBench pads each text to the context, zeroes the residual at BOS and
# PAD, runs the SAE on *every* position and pools the ablated result over the whole padded text. A zero
# input still fires latents wherever the encoder has a bias (a TopK SAE fires k of them), so ablating such
# a latent also moves each text's zeroed positions by −f_i(0)·W_dec[i], weighted by how much padding the
# text has. The named alternative `kept_only` changes only the kept tokens, i.e. removes only what the
# latent carries on the text itself. Every SCR result reports both: `scr_metrics` is the chosen
# definition, `scr_metrics_kept_only` (keys suffixed `_kept_only`) the other. The diagnostics table at
# the end of the SAE side shows, per n, how many ablated latents fire on a zero input and the biased
# probe's positive rate after the ablation: a rate of 0 or 1 means every text was pushed to one side of
# the probe (accuracy 0.5 on a balanced set, S_n jumping to a large negative value) by the zero-input
# term, not by removing the spurious attribute.

# %% tags=["parameters"]
profile = None
variant = None  # None: the model side only (stage scr_prep); a variant name: that SAE (stage scr@<name>)

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from saelib import stages
from saelib.stages import scr as stage
from saelib.config import load_params
from saelib.data.tasks import get_scr_task, quadrant_counts
from saelib.evals import scr, scr_headroom
from saelib.io import atomic_write_text, read_json
from saelib.plotting import set_style
from saelib.results import scr_ablation_diagnostics

set_style()
P = load_params(profile)
print(f"profile={P['profile']}  model={P['run']['model']}  layer={P['run']['layer']}  variant={variant}")

# %% [markdown]
# ## Model side (once per model, layer and dataset; cached)
# Built by the `scr_prep` stage into `data/<profile>/eval_cache/scr`; each SAE's stage reads it back.

# %%
prep = stages.prepare_eval(P, stage) if variant is None else stages.load_prepared(P, stage)
scr_prep, tpp_prep = prep.data
for line in scr_prep.skipped + tpp_prep.skipped:
    print("skipped:", line)
prep.cfg

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
# metric direction is the one whose biased accuracy is lower. These tables, and the headroom table
# below, are written to `results/<profile>/model_side/scr/` and discussed in `07_figures`.

# %%
tables = stage.model_side_tables(prep)
tables["scr_clean"]

# %% [markdown]
# How far S_n can move in each direction: from the biased probe's accuracy on the re-tested
# attribute (S = 0) to the oracle probe's (S = 1). `scr_metric` reports the direction in which the
# biased probe did worse.

# %%
tables["scr_headroom"].round(3)

# %% [markdown]
# ### Oracle headroom: can removing B move the biased probe at all?
# S_n only means something if taking the spurious attribute out of the residual *can* fix the biased
# probe. With no SAE, the spurious probe's own direction is mean-ablated from every pooled residual
# and the biased probe is re-tested on the balanced set: `acc_removed`, and S_oracle = (acc_removed −
# acc_biased) / (acc_oracle − acc_biased) is the S an ideal, one-direction removal would score
# (`saelib/evals/scr_headroom.py`). A task-direction is **trusted** when S_oracle ≥ 0.5: below that,
# even perfect removal of the attribute barely moves the probe, so an SAE's S_n there is mostly noise
# (each flipped test text moves S by `S_step`). Untrusted rows are reported but should not be read as
# evidence for or against an SAE. Built in the prep stage only, written to
# `results/<profile>/model_side/scr/oracle_headroom.csv`.

# %%
if variant is None:
    headroom = scr_headroom.headroom_rows(scr_prep)
    atomic_write_text(P["paths"]["model_side"] / stage.NAME / "oracle_headroom.csv", headroom.to_csv(index=False))
    print(f"trusted (S_oracle >= {scr_headroom.MIN_ORACLE_S}): {int(headroom['trusted'].sum())} of {len(headroom)} task-directions")
    display(headroom.round(3))  # noqa: F821 - IPython

# %%
tables["tpp_clean"].round(3)

# %% [markdown]
# ## SAE side (one variant per stage)

# %%
if variant is not None:
    headline = stages.evaluate_variant(P, stage, variant, prep=prep)
    curve = pd.DataFrame([{"metric": k.rsplit("@", 1)[0], "n": int(k.rsplit("@", 1)[1]), "value": v}
                          for k, v in headline.items()])
    display(curve.pivot(index="n", columns="metric", values="value").round(3))  # noqa: F821 - IPython

# %%
if variant is not None:
    panels = [m for m in ("scr_metric", "scr_metric_kept_only", "scr_dir1", "scr_dir2", "tpp_total_metric") if m in set(curve["metric"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), sharex=True, squeeze=False)
    for ax, metric in zip(axes[0], panels):
        sns.lineplot(data=curve[curve["metric"] == metric], x="n", y="value", marker="o", ax=ax)
        ax.set(xscale="log", title=metric, xlabel="ablated latents n")
    fig.suptitle(f"SCR and TPP: {variant}, {P['run']['model']} layer {prep.layer} (higher is better)")
    fig.tight_layout()
    plt.show()

# %% [markdown]
# What each ablation did in the reported direction, under both definitions (`n_fire_on_zero`: ablated
# latents that fire on a zero input; a `biased_probe_positive_rate` of 0 or 1 is the collapse described
# at the top). `greedy_S` is a ranking-free reference: S_n when the n latents are instead picked greedily,
# on the train split, as the ones whose ablation most improves the biased probe on the re-tested attribute
# (`saelib.evals.scr.greedy_latent_scores`). When `greedy_S` is also near 0, no choice of n of
# this SAE's latents moves the probe, whatever the ranking rule; compare it with the task's S_oracle above.

# %%
if variant is not None:
    doc = read_json(stages.results_dir(P, stage) / f"{variant}.json")
    display(scr_ablation_diagnostics(doc).round(3))  # noqa: F821 - IPython

# %% [markdown]
# Results: `results/<profile>/scr/<variant>.json` (SCR, SAEBench keys `scr_dir1_threshold_n`,
# `scr_dir2_threshold_n`, `scr_metric_threshold_n`; the alternative definition's under
# `scr_metrics_kept_only`, suffixed `_kept_only`), `results/<profile>/scr/<variant>_tpp.json` (TPP keys
# `tpp_threshold_n_total_metric`, `…_intended_diff_only`, `…_unintended_diff_only`), per-task and
# per-class CSVs beside them. The curves over n for every variant are drawn in `07_figures`.
