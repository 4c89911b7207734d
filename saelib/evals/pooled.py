"""Model-side cache of per-token residuals for labelled texts, and mean-pooled SAE latents from it.

Probing, SCR and TPP (SAEBench) read the residual stream at the SAE layer for each text (context
128, truncated), drop special tokens (BOS/EOS/PAD) and average over the kept tokens. An SAE's
encoder is non-linear, so its mean-pooled latents need the per-token residuals: the cache keeps
them (bf16, kept tokens only, concatenated in row order, with ``offsets``) plus the mean-pooled
residual ``xbar`` (float32). It depends only on model, layer, context and the texts, so it is built
once and reused by every SAE; the file name carries a fingerprint of all of these.

For ablations with the SAE error term kept, x' = x − Σ_{i∈S} f_i W_dec[i] per token (decode is
affine), so the mean-pooled x' = x̄ − Σ_{i∈S} f̄_i W_dec[i]: mean-pooled latents are enough
(:func:`ablate_pooled`; :func:`check_affine_decoder` verifies the assumption for an SAE).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..data.tasks import load_eval_source
from ..devices import autocast_context, module_device
from ..hooks import padded_residual_batches, special_mask
from .common import content_key, load_cached, save_cached, stored_key


@dataclass
class PooledConfig:
    """How the model-side cache is built."""

    context: int = 128
    """Tokens per text including BOS (longer texts are truncated), as in SAEBench."""
    batch_size: int = 32
    """Texts per forward pass (texts are sorted by length so padding stays small)."""
    sae_batch_tokens: int = 8192
    """Tokens per SAE encode call when computing mean-pooled latents."""
    autocast_bf16: bool = True
    """Encode under bf16 autocast on the SAE's device where bf16 is fast (GPU, AVX-512/AMX CPU; else fp32:
    :func:`saelib.devices.autocast_context`); the pooled means are accumulated in float32."""


class PooledActs:
    """Per-token residuals of N texts (kept tokens only) and their means.

    ``acts_TD`` (bf16, T kept tokens), ``offsets_N1`` (int64, N + 1; text n owns rows
    ``offsets[n]:offsets[n+1]``), ``xbar_ND`` (float32 means), ``meta`` (dict)."""

    def __init__(self, acts_TD: Tensor, offsets_N1: Tensor, xbar_ND: Tensor | None = None, meta: dict | None = None):
        if acts_TD.ndim != 2:
            raise ValueError(f"acts must be (tokens, d_model), got {tuple(acts_TD.shape)}")
        if offsets_N1.ndim != 1 or int(offsets_N1[0]) != 0 or int(offsets_N1[-1]) != acts_TD.shape[0]:
            raise ValueError("offsets must start at 0 and end at the number of tokens")
        counts_N = offsets_N1[1:] - offsets_N1[:-1]
        if bool((counts_N <= 0).any()):
            raise ValueError("every text needs at least one kept (non-special) token")
        self.acts_TD = acts_TD
        self.offsets_N1 = offsets_N1.long()
        self.meta = dict(meta or {})
        self.xbar_ND = segment_mean(acts_TD, self.offsets_N1) if xbar_ND is None else xbar_ND.float()

    @property
    def n_examples(self) -> int:
        return self.offsets_N1.shape[0] - 1

    @property
    def n_tokens(self) -> int:
        return self.acts_TD.shape[0]

    @property
    def d_model(self) -> int:
        return self.acts_TD.shape[1]

    def counts(self) -> Tensor:
        """Kept tokens per text (int64, N)."""
        return self.offsets_N1[1:] - self.offsets_N1[:-1]

    def save(self, path: str | Path) -> Path:
        """Write the cache atomically, keyed by ``meta["fingerprint"]`` (see :func:`load_or_build`)."""
        key = self.meta.get("fingerprint")
        if not key:
            raise ValueError("PooledActs.save needs meta['fingerprint'] (the cache key); use load_or_build")
        meta = {k: v for k, v in self.meta.items() if k not in RUN_ONLY_META}
        return save_cached(path, key, {"acts_TD": self.acts_TD, "offsets_N1": self.offsets_N1,
                                       "xbar_ND": self.xbar_ND}, meta)

    @classmethod
    def load(cls, path: str | Path, fingerprint: str | None = None) -> "PooledActs | None":
        """The cache at ``path`` if it was saved under ``fingerprint`` (None: the one in the file); None
        when the file is missing or keyed differently."""
        path = Path(path)
        if fingerprint is None:
            if not path.exists():
                raise FileNotFoundError(f"pooled activation cache {path} does not exist")
            fingerprint = stored_key(path)
        found = load_cached(path, fingerprint) if fingerprint else None
        if found is None:
            return None
        tensors, meta = found
        return cls(tensors["acts_TD"], tensors["offsets_N1"], tensors["xbar_ND"], meta)


def segment_mean(x_TD: Tensor, offsets_N1: Tensor) -> Tensor:
    """Float32 mean of each segment ``x[offsets[n]:offsets[n+1]]`` → ``(N, D)``."""
    counts_N = (offsets_N1[1:] - offsets_N1[:-1]).long()
    seg_T = torch.repeat_interleave(torch.arange(counts_N.shape[0]), counts_N)
    out_ND = torch.zeros(counts_N.shape[0], x_TD.shape[1], dtype=torch.float32)
    out_ND.index_add_(0, seg_T, x_TD.float())
    return out_ND / counts_N[:, None].clamp_min(1).float()


def texts_fingerprint(texts: Sequence[str], *, model: str, layer: int, context: int) -> str:
    """Cache key (:func:`saelib.evals.common.content_key`) of the model name, layer, context and
    every text (order matters)."""
    return content_key({"kind": "pooled", "model": model, "layer": int(layer), "context": int(context)}, list(texts))


def tokenize_texts(tokenizer, texts: Sequence[str], context: int) -> list[list[int]]:
    """Token ids of each text with the tokenizer's special tokens (BOS), truncated to ``context``."""
    if context < 2:
        raise ValueError(f"context must be >= 2, got {context}")
    return [list(ids) for ids in tokenizer(list(texts), truncation=True, max_length=context,
                                           add_special_tokens=True)["input_ids"]]


@torch.inference_mode()
def build_pooled(model, texts: Sequence[str], layer: int, *, cfg: PooledConfig | None = None,
                 progress: bool = False) -> PooledActs:
    """Run ``model`` up to ``layer`` on every text and keep the non-special tokens' residuals.

    Texts are sorted by token count and right-padded within a batch (causal attention: padding
    after a text does not change its residuals)."""
    cfg = cfg or PooledConfig()
    if not texts:
        raise ValueError("no texts to encode")
    model.check_layer(layer)
    start = time.time()
    ids = tokenize_texts(model.tokenizer, texts, cfg.context)
    per_text: list[Tensor | None] = [None] * len(ids)
    for batch, tokens_NS, attn_NS, x_NSD in padded_residual_batches(model, ids, layer, cfg.batch_size, progress=progress,
                                                                    desc=f"pooled L{layer}"):
        keep_NS = (special_mask(model, tokens_NS) & attn_NS.bool()).to(x_NSD.device)
        for row, i in enumerate(batch):
            kept = x_NSD[row][keep_NS[row]].cpu()
            if kept.shape[0] == 0:
                raise ValueError(f"text {i} has no non-special tokens: {texts[i][:60]!r}")
            per_text[i] = kept.to(torch.bfloat16).clone()
    counts = torch.tensor([t.shape[0] for t in per_text], dtype=torch.long)
    offsets_N1 = torch.zeros(len(per_text) + 1, dtype=torch.long)
    offsets_N1[1:] = torch.cumsum(counts, 0)
    acts_TD = torch.cat(per_text)
    meta = {"model": model.name, "layer": layer, "context": cfg.context, "n_examples": len(texts),
            "n_tokens": int(acts_TD.shape[0]), "n_truncated": int(sum(len(x) >= cfg.context for x in ids)),
            "build_seconds": round(time.time() - start, 2)}
    return PooledActs(acts_TD, offsets_N1, None, meta)


RUN_ONLY_META = ("cache_hit", "build_seconds")
"""Meta keys that describe this process's run (was the cache hit, how long the build took), not the
activations: kept in memory, never written, so a rebuild on any machine writes a byte-identical file
when the activations are identical (DVC compares caches by md5)."""


def cache_path(cache_dir: str | Path, *, model: str, layer: int, context: int, name: str, fingerprint: str) -> Path:
    """``<cache_dir>/pooled/<model>-L<layer>-ctx<context>/<name>-<fingerprint[:16]>.safetensors``."""
    return Path(cache_dir) / "pooled" / f"{model}-L{layer}-ctx{context}" / f"{name}-{fingerprint[:16]}.safetensors"


def load_or_build(model: "object | Callable[[], object]", texts: Sequence[str], *, model_name: str, layer: int,
                  cache_dir: str | Path, name: str, cfg: PooledConfig | None = None,
                  progress: bool = False) -> PooledActs:
    """The cached :class:`PooledActs` of ``texts`` (built and saved when missing).

    ``model`` is a ``LoadedModel`` or a zero-argument function returning one, called only when the
    cache has to be built."""
    cfg = cfg or PooledConfig()
    fp = texts_fingerprint(texts, model=model_name, layer=layer, context=cfg.context)
    path = cache_path(cache_dir, model=model_name, layer=layer, context=cfg.context, name=name, fingerprint=fp)
    pooled = PooledActs.load(path, fp)
    if pooled is not None:
        pooled.meta["cache_hit"] = True
        return pooled
    loaded = model() if callable(model) else model
    if loaded.name != model_name:
        raise ValueError(f"cache for {model_name!r} requested but the model is {loaded.name!r}")
    pooled = build_pooled(loaded, texts, layer, cfg=cfg, progress=progress)
    pooled.meta.update({"fingerprint": fp, "name": name})
    pooled.save(path)
    pooled.meta["cache_hit"] = False
    return pooled


@torch.no_grad()
def pooled_latents(sae, pooled: PooledActs, *, rows: Sequence[int] | np.ndarray | None = None,
                   cfg: PooledConfig | None = None) -> Tensor:
    """Mean over kept tokens of ``sae.encode(x)`` for each text (float32 ``(N, F)``).

    ``rows`` selects texts (all when None); the result follows that order."""
    cfg = cfg or PooledConfig()
    offsets = pooled.offsets_N1
    rows_N = np.arange(pooled.n_examples) if rows is None else np.asarray(rows, dtype=np.int64)
    if rows_N.size and (rows_N.min() < 0 or rows_N.max() >= pooled.n_examples):
        raise IndexError(f"rows out of range for {pooled.n_examples} texts")
    d_sae = int(sae.cfg.d_sae)
    dev = module_device(sae)
    out_NF = torch.zeros(len(rows_N), d_sae, dtype=torch.float32)
    starts = offsets[:-1][torch.as_tensor(rows_N)].tolist()
    ends = offsets[1:][torch.as_tensor(rows_N)].tolist()
    n = 0
    while n < len(rows_N):
        chunk, tokens = [], 0
        while n < len(rows_N) and (not chunk or tokens + ends[n] - starts[n] <= cfg.sae_batch_tokens):
            chunk.append(n)
            tokens += ends[n] - starts[n]
            n += 1
        x_TD = torch.cat([pooled.acts_TD[starts[j]:ends[j]] for j in chunk]).float().to(dev)
        seg_T = torch.repeat_interleave(torch.arange(len(chunk)), torch.tensor([ends[j] - starts[j] for j in chunk]))
        with autocast_context(dev, enabled=cfg.autocast_bf16):
            f_TF = sae.encode(x_TD)
        block = torch.zeros(len(chunk), d_sae, dtype=torch.float32)
        block.index_add_(0, seg_T, f_TF.float().cpu())
        out_NF[chunk[0]: chunk[-1] + 1] = block
    counts = torch.tensor([e - s for s, e in zip(starts, ends)], dtype=torch.float32)
    return out_NF / counts[:, None]


SPECIAL_POSITIONS = ("saebench", "kept_only")
"""How an ablation treats the special positions: ``saebench`` (default) as SAEBench — every position of
the text padded to ``context`` is encoded, BOS/PAD as zero vectors, and their change is pooled;
``kept_only`` (named alternative) — only the kept tokens change."""


@dataclass
class SpecialPositions:
    """What SAEBench's ablation adds at the zeroed BOS/PAD positions of each text.

    A zero input still fires latents when the encoder has a bias (a TopK SAE always fires k), so
    zero-ablating latent i there moves that position by −f_i(0) W_dec[i]; SAEBench sums every position
    and divides by the kept count."""

    f0_F: Tensor
    """Latents of a zero input, ``sae.encode(0)`` (float32)."""
    weight_N: Tensor
    """Zeroed positions per kept token of each text, (context − kept) / kept (float32)."""

    def rows(self, rows) -> "SpecialPositions":
        """The same for a subset of texts."""
        return SpecialPositions(self.f0_F, self.weight_N[torch.as_tensor(np.asarray(rows), dtype=torch.long)])


@torch.no_grad()
def special_positions(sae, pooled: PooledActs, cfg: PooledConfig | None = None) -> SpecialPositions:
    """:class:`SpecialPositions` of ``sae`` on the texts of ``pooled`` padded to ``cfg.context``."""
    cfg = cfg or PooledConfig()
    counts_N = pooled.counts()
    if int(counts_N.max()) > cfg.context:
        raise ValueError(f"a text has {int(counts_N.max())} kept tokens, more than the context {cfg.context}")
    dev = module_device(sae)
    with autocast_context(dev, enabled=cfg.autocast_bf16):
        f0_F = sae.encode(torch.zeros(1, pooled.d_model, device=dev)).float().cpu()[0]
    return SpecialPositions(f0_F, (cfg.context - counts_N).float() / counts_N.float())


def ablate_pooled(xbar_ND: Tensor, fbar_NF: Tensor, W_dec_FD: Tensor, latents: Sequence[int] | Tensor,
                  special: SpecialPositions | None = None) -> Tensor:
    """Mean-pooled residual after zero-ablating ``latents`` with the SAE error term kept (exact for an
    affine decoder): ``x̄ − f̄[:, S] W_dec[S]`` over the kept tokens only (``special`` None), or, with
    ``special`` (SAEBench), also the zeroed BOS/PAD positions' change:
    ``x̄ − (f̄[:, S] + w_n f⁰[S]) W_dec[S]``."""
    idx = torch.as_tensor(latents, dtype=torch.long).reshape(-1)
    if xbar_ND.shape[0] != fbar_NF.shape[0]:
        raise ValueError(f"xbar has {xbar_ND.shape[0]} rows but fbar has {fbar_NF.shape[0]}")
    if idx.numel() == 0:
        return xbar_ND.float().clone()
    f_NS = fbar_NF[:, idx].float()
    if special is not None:
        if special.weight_N.shape[0] != xbar_ND.shape[0]:
            raise ValueError(f"special positions for {special.weight_N.shape[0]} texts, xbar has {xbar_ND.shape[0]}")
        f_NS = f_NS + special.weight_N[:, None].float() * special.f0_F[idx][None, :].float()
    return xbar_ND.float() - f_NS @ W_dec_FD[idx].float()


@torch.no_grad()
def check_affine_decoder(sae, f_NF: Tensor, *, rtol: float = 2e-2) -> float:
    """Check ``decode(f) − decode(0) == f W_dec`` on ``f_NF``; returns the relative error and raises
    ``ValueError`` above ``rtol`` (an SAE with a non-linear decoder cannot use :func:`ablate_pooled`)."""
    f_NF = f_NF.float()
    lhs = sae.decode(f_NF).float() - sae.decode(torch.zeros_like(f_NF)).float()
    rhs = f_NF @ sae.W_dec.detach().float()
    err = float((lhs - rhs).norm() / rhs.norm().clamp_min(1e-12))
    if err > rtol:
        raise ValueError(f"SAE decoder is not affine (relative error {err:.3g} > {rtol}); "
                         "mean-pooled ablation needs decode(f) = f W_dec + b_dec")
    return err


# --------------------------------------------------------------------------------------------
# labelled sources → cached pooled activations (shared by probing, SCR and TPP)
# --------------------------------------------------------------------------------------------
@dataclass
class TaskDataConfig:
    """Which records of each labelled source the evals use, and how they are encoded."""

    n_train: int = 100
    """Train records per stratum (class, or quadrant for two-attribute sources)."""
    n_test: int = 50
    """Test records per stratum."""
    seed: int = 42
    """Seed of the record sampling."""
    data_dir: str | None = None
    """Paper profile: root of local copies of the hub datasets (``<data_dir>/bias_in_bios/train.jsonl`` …,
    see ``saelib.data.hub_tasks.HUB_LOCAL_NAMES``); None reads the hub."""
    pooled: PooledConfig = field(default_factory=PooledConfig)
    """Encoding settings."""

    @classmethod
    def from_params(cls, block: dict | None) -> "TaskDataConfig":
        """From a ``params.yaml`` block ``{n_train, n_test, seed, data_dir, context, batch_size,
        sae_batch_tokens}``; unknown keys raise."""
        block = dict(block or {})
        pooled_keys = {f.name for f in fields(PooledConfig)}
        own = {f.name for f in fields(cls)} - {"pooled"}
        unknown = sorted(set(block) - pooled_keys - own)
        if unknown:
            raise ValueError(f"unknown task-data settings {unknown}; known: {sorted(own | pooled_keys)}")
        pooled = PooledConfig(**{k: v for k, v in block.items() if k in pooled_keys})
        return cls(**{k: v for k, v in block.items() if k in own}, pooled=pooled)


@dataclass
class TaskEvalConfig:
    """What sparse probing, SCR and TPP share: which tasks, and how their records are drawn and encoded.
    Each eval subclasses it with its own default task list and its own settings block."""

    tasks: tuple[str, ...] = ()
    """Task names (offline: ``saelib.data.tasks``; paper profile: ``saelib.data.hub_tasks``)."""
    data: TaskDataConfig = field(default_factory=TaskDataConfig)
    """Record counts and encoding (``P["run"]["tasks"]``)."""

    def __post_init__(self) -> None:
        if self.data is None:
            self.data = TaskDataConfig()
        self.tasks = tuple(self.tasks)


@dataclass
class SourceData:
    """A labelled source, its rows and their cached activations."""

    name: str
    """Source name."""
    ds: object
    """``datasets.Dataset`` (``text``, ``split``, label columns); row i ↔ cache row i."""
    pooled: PooledActs
    """Per-token and mean-pooled residuals of ``ds["text"]``."""


def load_source_data(source: str, cfg: TaskDataConfig, *, model, model_name: str, layer: int,
                     cache_dir: str | Path, scr_task=None, q_train: int | None = None, q_test: int | None = None,
                     progress: bool = False) -> SourceData:
    """Load a labelled source and its pooled cache (built on first use).

    For a hub SCR task (``scr_task`` given and the source is a hub one) the rows come from
    :func:`saelib.data.hub_tasks.load_scr_source` with quadrant size ``q_train``/``q_test``;
    otherwise from :func:`saelib.data.tasks.load_source` with ``cfg.n_train``/``cfg.n_test`` per stratum.
    Raises ``TaskUnavailable`` for a missing optional source."""
    ds, name = load_eval_source(source, n_train=cfg.n_train, n_test=cfg.n_test, seed=cfg.seed, data_dir=cfg.data_dir,
                                scr_task=scr_task, q_train=q_train, q_test=q_test)
    pooled = load_or_build(model, list(ds["text"]), model_name=model_name, layer=layer, cache_dir=cache_dir,
                           name=name, cfg=cfg.pooled, progress=progress)
    return SourceData(name, ds, pooled)


def sae_config_dict(sae) -> dict:
    """The SAE's config as a JSON-able dict (``cfg.to_dict()`` or its sizes)."""
    cfg = getattr(sae, "cfg", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        return cfg.to_dict()
    return {"d_in": int(getattr(cfg, "d_in", sae.W_dec.shape[1])), "d_sae": int(getattr(cfg, "d_sae", sae.W_dec.shape[0]))}


__all__ = ["TaskDataConfig", "SourceData", "load_source_data", "sae_config_dict", "PooledConfig", "PooledActs", "segment_mean", "texts_fingerprint", "tokenize_texts", "build_pooled",
           "cache_path", "load_or_build", "pooled_latents", "ablate_pooled", "SPECIAL_POSITIONS", "SpecialPositions", "special_positions", "check_affine_decoder"]
