"""Residual-stream extraction into an :class:`~saelib.activations.ActivationCache` (resumable).

``extract_activations`` does the work for given token ids; ``build_activation_cache`` is what
notebook 01 calls: corpus → tokens → cache for one split, returning at once (without loading the
model or tokenising) when a complete cache with the same settings already exists.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from .activations import MANIFEST, ActivationCache, ActivationWriter, CorruptShardError, MissingCacheError, tokens_sha256
from .hooks import residuals_batch, special_mask
from .io import atomic_write_json, read_json
from .models import LoadedModel, load_model
from .threads import limit_threads


def cache_settings(model: LoadedModel, tokens_NS: Tensor, layer: int, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest fields that identify a cache: a cache with equal settings is reused or resumed."""
    settings = {
        "model": model.name,
        "layer": int(layer),
        "hook_name": model.hook_name(layer),
        "d_model": int(model.d_model),
        "context": int(tokens_NS.shape[1]),
        "n_sequences": int(tokens_NS.shape[0]),
        "special_ids": [int(i) for i in model.special_ids],
        "tokens_sha256": tokens_sha256(tokens_NS),
        "meta": dict(meta or {}),
    }
    return settings


def _check_tokens(model: LoadedModel, tokens_NS: Tensor) -> None:
    if not isinstance(tokens_NS, Tensor) or tokens_NS.ndim != 2:
        shape = tuple(tokens_NS.shape) if isinstance(tokens_NS, Tensor) else type(tokens_NS).__name__
        raise ValueError(f"tokens_NS must be a 2-D (sequences, positions) tensor, got {shape}")
    if tokens_NS.dtype.is_floating_point or tokens_NS.dtype == torch.bool:
        raise ValueError(f"tokens_NS must hold integer token ids, got dtype {tokens_NS.dtype}")
    if tokens_NS.numel() == 0:
        raise ValueError("tokens_NS is empty: nothing to extract")
    vocab = model.hf_model.get_input_embeddings().weight.shape[0]
    lo, hi = int(tokens_NS.min()), int(tokens_NS.max())
    if lo < 0 or hi >= vocab:
        raise ValueError(f"token ids must lie in [0, {vocab}), got range [{lo}, {hi}]")


def _norm_stats(x_NSD: Tensor, keep_NS: Tensor) -> dict[str, float]:
    """Sums for the manifest's residual-norm statistics (kept vs special positions)."""
    norms_NS = x_NSD.float().norm(dim=-1)
    kept, special = norms_NS[keep_NS], norms_NS[~keep_NS]
    return {
        "kept_sum": float(kept.sum()),
        "kept_max": float(kept.max()) if kept.numel() else 0.0,
        "special_sum": float(special.sum()),
        "special_min": float(special.min()) if special.numel() else math.inf,
        "n_special": int(special.numel()),
    }


def summarize_norms(manifest: dict[str, Any]) -> dict[str, float]:
    """Residual-norm summary over the whole cache from the per-shard sums in the manifest."""
    shards = manifest["shards"]
    n_kept = sum(s["n_tokens"] for s in shards)
    n_special = sum(s["norms"]["n_special"] for s in shards)
    return {
        "kept_mean": sum(s["norms"]["kept_sum"] for s in shards) / max(n_kept, 1),
        "kept_max": max((s["norms"]["kept_max"] for s in shards), default=0.0),
        "special_mean": sum(s["norms"]["special_sum"] for s in shards) / max(n_special, 1),
        "special_min": min((s["norms"]["special_min"] for s in shards), default=math.inf),
        "n_kept": n_kept,
        "n_special": n_special,
    }


def extract_activations(
    model: LoadedModel,
    tokens_NS: Tensor,
    layer: int,
    out_dir: str | Path,
    *,
    batch_size: int = 32,
    shard_tokens: int = 65_536,
    progress: bool = True,
    meta: dict[str, Any] | None = None,
) -> ActivationCache:
    """Run ``model`` up to ``layer`` on ``tokens_NS`` and cache the residual output of every
    non-special token in ``out_dir``.

    Sequences are grouped into shards of about ``shard_tokens`` positions (a multiple of
    ``batch_size`` sequences). Each finished shard is written atomically and recorded in the
    manifest, so a rerun after an interruption continues at the first missing shard; a rerun on a
    complete cache with the same settings (model, layer, token hash, ``meta``) returns at once.
    Different settings rebuild the folder.
    """
    from tqdm.auto import tqdm

    model.check_layer(layer)
    _check_tokens(model, tokens_NS)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if shard_tokens < 1:
        raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}")
    n_seq, ctx = tokens_NS.shape
    writer = ActivationWriter(out_dir, cache_settings(model, tokens_NS, layer, meta))
    if writer.complete:
        return ActivationCache(out_dir)
    device = next(model.hf_model.parameters()).device
    shard_seqs = max(1, math.ceil(shard_tokens / ctx / batch_size)) * batch_size
    keep_all_NS = special_mask(model, tokens_NS)
    start = writer.sequences_done
    bar = tqdm(
        total=n_seq * ctx, initial=start * ctx, unit="tok", unit_scale=True, desc=f"extract {model.name} L{layer}", disable=not progress
    )
    try:
        for s0 in range(start, n_seq, shard_seqs):
            s1 = min(n_seq, s0 + shard_seqs)
            chunks = []
            stats = {"kept_sum": 0.0, "kept_max": 0.0, "special_sum": 0.0, "special_min": math.inf, "n_special": 0}
            for b0 in range(s0, s1, batch_size):
                b1 = min(s1, b0 + batch_size)
                x_NSD = residuals_batch(model, tokens_NS[b0:b1].to(device), layer).cpu()
                keep_NS = keep_all_NS[b0:b1]
                chunks.append(x_NSD[keep_NS].to(torch.bfloat16))
                batch_stats = _norm_stats(x_NSD, keep_NS)
                for key in ("kept_sum", "special_sum", "n_special"):
                    stats[key] += batch_stats[key]
                stats["kept_max"] = max(stats["kept_max"], batch_stats["kept_max"])
                stats["special_min"] = min(stats["special_min"], batch_stats["special_min"])
                bar.update((b1 - b0) * ctx)
            writer.write_shard(torch.cat(chunks), tokens_NS[s0:s1], keep_all_NS[s0:s1], extra={"norms": stats})
    finally:
        bar.close()
    return writer.finish()


# ------------------------------------------------------------------------------------------------
# corpus -> cache for one split (notebook 01)


@dataclass
class ExtractConfig:
    """What notebook 01 extracts (read from the active profile of ``params.yaml``)."""

    model: str = "gemma-3-270m"
    """Registry name of the model."""
    layer: int = 8
    """Decoder layer whose residual output is cached."""
    corpus: str = "offline"
    """``offline`` (package corpus) or ``pile`` (hub stream, paper profile)."""
    context: int = 128
    """Sequence length in tokens (BOS at position 0)."""
    train_tokens: int = 2_097_152
    """Kept (non-special) tokens in the training cache."""
    heldout_sequences: int = 64
    """Sequences in the held-out cache."""
    extract_batch: int = 32
    """Sequences per forward pass."""
    shard_tokens: int = 65_536
    """Token positions per shard file (65,536 x 640 bf16 = 84 MB for Gemma-3-270M)."""
    seed: int = 0
    """Seed of the document order."""
    threads: int | None = None
    """``torch.set_num_threads`` during extraction (None: torch's default). On a busy 2-core machine
    one thread beat two by 4x (barrier stalls); on an idle one two threads are faster."""
    device: str = "auto"
    """Where the model runs (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``; ``P["device"]``). Not part of
    the cache's identity: a cache extracted on a GPU is reused on the CPU and vice versa."""

    @classmethod
    def from_run(cls, run: dict[str, Any], **overrides: Any) -> "ExtractConfig":
        """Take the fields this config has from a profile block (``P["run"]``), then ``overrides``
        (e.g. ``device=P["device"]``); ignore the rest of the block."""
        names = set(cls.__dataclass_fields__)
        return cls(**{**{k: v for k, v in run.items() if k in names}, **overrides})


def split_meta(cfg: ExtractConfig, split: str) -> dict[str, Any]:
    """The ``meta`` a split's cache is keyed by (corpus identity, budget, seed)."""
    from .data.corpus import CorpusConfig, corpus_fingerprint

    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    meta = {"corpus": cfg.corpus, "split": split, "seed": cfg.seed, "separator": "bos"}
    meta["corpus_fingerprint"] = corpus_fingerprint(CorpusConfig()) if cfg.corpus == "offline" else cfg.corpus
    if split == "train":
        meta["max_tokens"] = cfg.train_tokens
    else:
        meta["max_sequences"] = cfg.heldout_sequences
        if cfg.corpus == "offline":
            meta["packing"] = "per_genre"  # each held-out row stays within one genre (SEQUENCE_LABELS)
    return meta


def find_complete_cache(
    out_dir: str | Path, *, model: str, layer: int, context: int, meta: dict[str, Any], verify: bool = True
) -> ActivationCache | None:
    """The cache in ``out_dir`` if it is complete, was built with these settings and (``verify``)
    every shard still matches its SHA-256; else ``None``, so the caller re-extracts. A corrupt or
    truncated shard is reported here and dropped by :class:`ActivationWriter`, which then rewrites
    it (and the shards after it)."""
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return None
    m = read_json(path)
    same = m.get("complete") and m.get("model") == model and m.get("layer") == layer and m.get("context") == context and m.get("meta") == meta
    if not same:
        return None
    try:
        cache = ActivationCache(out_dir)
        if verify:
            cache.verify()
    except (MissingCacheError, CorruptShardError) as err:
        print(f"activation cache {out_dir} needs repair ({err}); re-extracting from the first bad shard")
        return None
    return cache


SEQUENCE_LABELS = "sequence_labels.json"
"""Side file of a held-out cache packed per genre: ``{"genre": [...], "source": [...]}``, one entry per row."""


def corpus_rows(cfg: ExtractConfig, tokenizer, split: str) -> tuple[Tensor, dict[str, Any] | None]:
    """Token rows of ``split`` for this config (the training budget or the held-out sequence count) and,
    for the offline held-out split, the genre/source label of each row (rows packed one genre each, so
    the core metrics can be read per genre); ``None`` labels otherwise."""
    from .data.corpus import heldout_by_genre, load_corpus, tokenize_corpus

    labels = None
    if split == "heldout" and cfg.corpus == "offline":
        packed = heldout_by_genre(tokenizer, cfg.context, cfg.heldout_sequences, seed=cfg.seed)
        tokens, labels = packed.tokens_NS, packed.labels_json()
    else:
        if split == "train":
            budget = {"max_tokens": cfg.train_tokens}
            hub = {"max_words": cfg.train_tokens}
        else:
            budget = {"max_sequences": cfg.heldout_sequences}
            hub = {"max_words": cfg.heldout_sequences * cfg.context}
        ds = load_corpus(cfg.corpus, split, seed=cfg.seed, **(hub if cfg.corpus == "pile" else {}))
        tokens = tokenize_corpus(tokenizer, ds["text"], context=cfg.context, **budget)
    wanted = cfg.heldout_sequences if split == "heldout" else None
    if tokens.shape[0] == 0 or (wanted is not None and tokens.shape[0] < wanted):
        raise ValueError(f"the {cfg.corpus} corpus's {split} split gave {tokens.shape[0]} sequences of {cfg.context} tokens; need {wanted or 'more'}")
    if split == "train":
        kept = int(special_mask(_special_ids(tokenizer), tokens).sum())
        if kept < cfg.train_tokens:
            raise ValueError(f"the {cfg.corpus} corpus's train split holds only {kept} tokens; train_tokens asks for {cfg.train_tokens}")
    return tokens, labels


def corpus_tokens(cfg: ExtractConfig, tokenizer, split: str) -> Tensor:
    """Token rows of ``split`` (see :func:`corpus_rows`, without the labels)."""
    return corpus_rows(cfg, tokenizer, split)[0]


def read_sequence_labels(cache_dir: str | Path) -> dict[str, Any] | None:
    """The per-row genre/source labels of a held-out cache, or ``None`` when it was not packed per genre."""
    path = Path(cache_dir) / SEQUENCE_LABELS
    return read_json(path) if path.exists() else None


def _special_ids(tokenizer) -> list[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    ids.update(i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None)
    return sorted(ids)


def build_activation_cache(
    cfg: ExtractConfig,
    split: str,
    out_dir: str | Path,
    *,
    progress: bool = True,
    load: Callable[[str], LoadedModel] | None = None,
) -> ActivationCache:
    """Corpus → tokens → activation cache for ``split``; returns the existing cache without loading
    the model when it is complete and has the same settings (a rerun is a no-op)."""
    meta = split_meta(cfg, split)
    found = find_complete_cache(out_dir, model=cfg.model, layer=cfg.layer, context=cfg.context, meta=meta)
    if found is not None:
        return found
    if load is None:

        def load(name: str) -> LoadedModel:
            return load_model(name, device=cfg.device)

    model = load(cfg.model)
    model.check_layer(cfg.layer)
    tokens, labels = corpus_rows(cfg, model.tokenizer, split)
    with limit_threads(cfg.threads, blas=False):
        cache = extract_activations(
            model, tokens, cfg.layer, out_dir, batch_size=cfg.extract_batch, shard_tokens=cfg.shard_tokens, progress=progress, meta=meta
        )
        if labels is not None:
            atomic_write_json(Path(out_dir) / SEQUENCE_LABELS, labels)
        return cache


__all__ = [
    "ExtractConfig",
    "build_activation_cache",
    "cache_settings",
    "SEQUENCE_LABELS",
    "corpus_rows",
    "corpus_tokens",
    "read_sequence_labels",
    "extract_activations",
    "extraction_summary",
    "find_complete_cache",
    "split_meta",
    "summarize_norms",
]


def extraction_summary(cfg: ExtractConfig, caches: dict[str, ActivationCache], composition_table=None) -> dict[str, Any]:
    """The small, committed record of an extraction (``results/extract/summary.json``): settings,
    per-split sizes and hashes, residual-norm statistics and the corpus composition. Deterministic:
    a rerun on the same caches gives the same file."""
    machine_local = ("threads", "device")  # how the run was executed, not what it computed
    out: dict[str, Any] = {"config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__ if k not in machine_local}}
    for split, cache in caches.items():
        m = cache.manifest
        out[split] = {
            "hook_name": m["hook_name"],
            "n_sequences": m["n_sequences"],
            "n_tokens": m["n_tokens"],
            "n_positions": m["n_sequences"] * m["context"],
            "n_shards": len(m["shards"]),
            "bytes": sum(s["bytes"] for s in m["shards"]),
            "tokens_sha256": m["tokens_sha256"],
            "shard_sha256": [s["sha256"] for s in m["shards"]],
            "meta": m["meta"],
            "norms": summarize_norms(m),
        }
    if composition_table is not None:
        table = composition_table.drop(columns=[c for c in composition_table.columns if not c.startswith(("documents_", "words_"))])
        out["corpus_composition"] = {str(src): {k: int(v) for k, v in row.items()} for src, row in table.iterrows()}
    return out
