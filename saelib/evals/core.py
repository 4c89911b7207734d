"""Core SAE metrics (SAEBench definitions; ``*_legacy`` = what the papers reported).

Pure functions on tensors of **kept** (non-special) tokens. Reference: SAEBench 0.6.0
(``sae_bench.evals.core.main``, run as its README does: ``ignore_tokens`` = {BOS, EOS, PAD},
``exclude_special_tokens_from_reconstruction``); ``tests/test_saebench_core.py`` feeds SAEBench's
functions and these the same model, SAE and tokens and asserts agreement. This repo masks every
special token of the tokenizer (a superset of SAEBench's three; the same on ordinary text).

- ``l0``: mean number of non-zero latents per token; ``l1``: mean sum of latent activations.
- ``mse``: per-element mean squared error over the eval set (Σ‖x − x̂‖² / (N·d)).
- ``mse_legacy``: per token ‖x − x̂‖² divided by the number of kept tokens in its batch, averaged
  over tokens (SAEBench's ``mse``, both in Jan 2025 and in 0.6.0; depends on the batch size).
- ``ev``: 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖² with x̄ the eval-set mean (the correct pooled value).
- ``ev_legacy``: mean over tokens of 1 − ‖x − x̂‖² / ‖x − x̄_batch‖² (per-batch mean): SAEBench
  0.6.0's ``explained_variance_legacy`` = Jan 2025's ``explained_variance``, what the papers report.
  Not reproduced: 0.6.0's new batched ``explained_variance``, whose total variance is
  E‖x‖² − (E‖x‖²/d)² (not Σ‖x − x̄‖²/N) and so is wrong on data with a large mean.
- ``cossim``: mean cosine(x, x̂) (0 where x̂ = 0; SAEBench gives NaN there); ``l2_ratio``: mean
  ‖x̂‖/‖x‖.
- ``relative_reconstruction_bias``: Σ‖x̂‖² / Σ x·x̂ over the eval set (``_legacy``: the per-batch
  ratio averaged over batches, SAEBench's value).
- ``feature_density``: firing fraction of each latent; ``frac_alive``: fraction that fired at all.
- Splice metrics, the layer's output replaced by the SAE reconstruction ("sae", at kept positions
  only) or by zeros ("zero"): ``kl_score`` = (KL_zero − KL_sae) / KL_zero and ``ce_score`` =
  (CE_zero − CE_sae) / (CE_zero − CE_clean), SAEBench's definition (default): the zero baseline
  zeroes *every* position, BOS included; KL is averaged over every kept input position including
  the last; CE over every kept input position but the last, whatever its target.
  Named alternative ``kl_score_keep_bos`` / ``ce_score_keep_bos`` (this repo's first definition):
  the zero baseline keeps special positions clean; KL skips the last position; CE only scores
  positions whose target is kept too. Zeroing BOS (an attention sink) changes KL_zero and CE_zero,
  so the two definitions give different scores for the same SAE.

``evaluate_core`` runs all of them on a model through ``saelib.hooks`` (special tokens excluded).
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from ..devices import module_device

__all__ = ["CoreAccumulator", "GROUP_KEYS", "reconstruction_metrics", "feature_density", "kl_score", "ce_score", "splice_rows",
           "splice_scores", "evaluate_core"]


def kl_score(kl_sae: float, kl_zero: float) -> float:
    """(KL_zero − KL_sae) / KL_zero; NaN when zero-ablation changes nothing (KL_zero = 0)."""
    if kl_zero == 0:
        return float("nan")
    return (kl_zero - kl_sae) / kl_zero


def ce_score(ce_sae: float, ce_zero: float, ce_clean: float) -> float:
    """(CE_zero − CE_sae) / (CE_zero − CE_clean); NaN when CE_zero = CE_clean."""
    if ce_zero == ce_clean:
        return float("nan")
    return (ce_zero - ce_sae) / (ce_zero - ce_clean)


def feature_density(f_NF: Tensor) -> Tensor:
    """Fraction of tokens on which each latent is non-zero, ``(F,)`` float64."""
    if f_NF.ndim != 2 or f_NF.shape[0] == 0:
        raise ValueError(f"feature_density needs a non-empty (tokens, latents) tensor, got {tuple(f_NF.shape)}")
    return (f_NF != 0).sum(0, dtype=torch.float64) / f_NF.shape[0]


class CoreAccumulator:
    """Streams batches of kept tokens into the core reconstruction/sparsity metrics.

    Call ``update(x_ND, x_hat_ND, f_NF)`` once per eval batch (a batch is the unit of the legacy
    per-batch statistics); ``result()`` gives the metrics. Sums are float64.
    """

    def __init__(self, d_sae: int | None = None):
        self.d_sae = d_sae
        self.n = 0
        self.n_batches = 0
        self.sse = 0.0
        self.sum_sq_x = 0.0
        self.sum_x_D: Tensor | None = None
        self.sum_xhat_sq = 0.0
        self.sum_x_dot_xhat = 0.0
        self.sum_l0 = 0.0
        self.sum_l1 = 0.0
        self.sum_cos = 0.0
        self.sum_l2_ratio = 0.0
        self.sum_mse_legacy = 0.0
        self.sum_ev_legacy = 0.0
        self.sum_rrb_legacy = 0.0
        self.count_F: Tensor | None = None
        self.d_in: int | None = None

    def update(self, x_ND: Tensor, x_hat_ND: Tensor, f_NF: Tensor) -> None:
        """Add one batch of kept tokens."""
        if x_ND.ndim != 2 or x_hat_ND.shape != x_ND.shape:
            raise ValueError(f"x and x_hat must both be (tokens, d), got {tuple(x_ND.shape)} and {tuple(x_hat_ND.shape)}")
        if f_NF.ndim != 2 or f_NF.shape[0] != x_ND.shape[0]:
            raise ValueError(f"f must be (tokens={x_ND.shape[0]}, latents), got {tuple(f_NF.shape)}")
        if self.d_sae is not None and f_NF.shape[1] != self.d_sae:
            raise ValueError(f"f has {f_NF.shape[1]} latents, expected {self.d_sae}")
        if self.d_in is not None and x_ND.shape[1] != self.d_in:
            raise ValueError(f"x has width {x_ND.shape[1]}, expected {self.d_in}")
        n = x_ND.shape[0]
        if n == 0:
            return
        self.d_sae, self.d_in = f_NF.shape[1], x_ND.shape[1]
        x = x_ND.double()
        xh = x_hat_ND.double()
        f = f_NF.double()
        sse_N = (x - xh).pow(2).sum(1)
        x_norm_N = x.norm(dim=1)
        xh_norm_N = xh.norm(dim=1)
        dot_N = (x * xh).sum(1)
        sst_batch_N = (x - x.mean(0)).pow(2).sum(1)

        self.n += n
        self.n_batches += 1
        self.sse += float(sse_N.sum())
        self.sum_sq_x += float(x.pow(2).sum())
        self.sum_x_D = x.sum(0) if self.sum_x_D is None else self.sum_x_D + x.sum(0)
        self.sum_xhat_sq += float(xh_norm_N.pow(2).sum())
        self.sum_x_dot_xhat += float(dot_N.sum())
        self.sum_l0 += float((f != 0).sum())
        self.sum_l1 += float(f.sum())
        self.sum_cos += float((dot_N / (x_norm_N * xh_norm_N).clamp_min(1e-30)).sum())  # 0 when x̂ = 0
        self.sum_l2_ratio += float((xh_norm_N / x_norm_N.clamp_min(1e-30)).sum())
        self.sum_mse_legacy += float((sse_N / n).sum())
        self.sum_ev_legacy += float((1.0 - sse_N / sst_batch_N).sum())
        self.sum_rrb_legacy += float(xh_norm_N.pow(2).mean() / dot_N.mean())
        counts = (f_NF != 0).sum(0, dtype=torch.float64)
        self.count_F = counts if self.count_F is None else self.count_F + counts

    def density(self) -> Tensor:
        """Per-latent firing fraction ``(F,)`` over all tokens seen."""
        if self.count_F is None or self.n == 0:
            raise ValueError("no tokens accumulated")
        return self.count_F / self.n

    def result(self) -> dict[str, float]:
        """The scalar metrics (see module docstring)."""
        if self.n == 0 or self.sum_x_D is None:
            raise ValueError("no tokens accumulated: every position was a special token?")
        n, d = self.n, self.d_in
        sst = self.sum_sq_x - float(self.sum_x_D.pow(2).sum()) / n
        density = self.density()
        return {
            "l0": self.sum_l0 / n,
            "l1": self.sum_l1 / n,
            "mse": self.sse / (n * d),
            "mse_legacy": self.sum_mse_legacy / n,
            "ev": 1.0 - self.sse / sst if sst > 0 else float("nan"),
            "ev_legacy": self.sum_ev_legacy / n,
            "cossim": self.sum_cos / n,
            "l2_ratio": self.sum_l2_ratio / n,
            "relative_reconstruction_bias": self.sum_xhat_sq / self.sum_x_dot_xhat if self.sum_x_dot_xhat else float("nan"),
            "relative_reconstruction_bias_legacy": self.sum_rrb_legacy / self.n_batches,
            "frac_alive": float((density > 0).double().mean()),
            "n_tokens": float(n),
        }


def reconstruction_metrics(x_ND: Tensor, x_hat_ND: Tensor, f_NF: Tensor, *, batch_sizes: Sequence[int] | None = None) -> dict[str, float]:
    """Core metrics of kept tokens; rows are grouped into consecutive batches of ``batch_sizes``
    (default: one batch) for the legacy per-batch statistics."""
    n = x_ND.shape[0]
    sizes = [n] if batch_sizes is None else [int(s) for s in batch_sizes]
    if sum(sizes) != n or any(s < 1 for s in sizes):
        raise ValueError(f"batch_sizes {sizes} must be positive and sum to the number of tokens {n}")
    acc = CoreAccumulator(f_NF.shape[-1])
    start = 0
    for size in sizes:
        sl = slice(start, start + size)
        acc.update(x_ND[sl], x_hat_ND[sl], f_NF[sl])
        start += size
    return acc.result()


def splice_scores(s: dict[str, dict[str, float]]) -> dict[str, float]:
    """Core splice metrics from ``saelib.hooks.spliced_kl_ce`` results with patches ``sae``,
    ``zero`` (patched everywhere) and ``zero_keep_bos`` (kept positions only), scored with
    ``saebench_positions``: SAEBench's ``kl_*``/``ce_*`` and the ``*_keep_bos`` alternative."""
    sae, zero, zkb, clean = s["sae"], s["zero"], s["zero_keep_bos"], s["clean"]
    return {
        "kl_sae": sae["kl_saebench"], "kl_zero": zero["kl_saebench"],
        "kl_score": kl_score(sae["kl_saebench"], zero["kl_saebench"]),
        "ce_clean": clean["ce_saebench"], "ce_sae": sae["ce_saebench"], "ce_zero": zero["ce_saebench"],
        "ce_score": ce_score(sae["ce_saebench"], zero["ce_saebench"], clean["ce_saebench"]),
        "n_tokens_splice": float(sae["n_kl_saebench"]),
        "kl_sae_keep_bos": sae["kl"], "kl_zero_keep_bos": zkb["kl"],
        "kl_score_keep_bos": kl_score(sae["kl"], zkb["kl"]),
        "ce_clean_keep_bos": clean["ce"], "ce_sae_keep_bos": sae["ce"], "ce_zero_keep_bos": zkb["ce"],
        "ce_score_keep_bos": ce_score(sae["ce"], zkb["ce"], clean["ce"]),
        "n_tokens_splice_keep_bos": float(sae["n_tokens"]),
    }


def splice_rows(n_sequences: int, n_kl_sequences: int | None, groups: Sequence[str] | None = None) -> list[int]:
    """Sequences the splice metrics run on: the first ``n_kl_sequences`` (all when None), plus, with
    ``groups`` (one label per sequence), the first sequence of every group that has none among them,
    so that each group's KL/CE has at least one sequence. Sorted."""
    n_kl = n_sequences if n_kl_sequences is None else min(int(n_kl_sequences), n_sequences)
    rows = list(range(n_kl))
    if groups is not None:
        if len(groups) != n_sequences:
            raise ValueError(f"{len(groups)} group labels for {n_sequences} sequences")
        present = set(groups[:n_kl])
        for i, g in enumerate(groups):
            if g not in present:
                present.add(g)
                rows.append(i)
    return sorted(rows)


GROUP_KEYS = ("ev", "kl_score", "ce_score", "n_sequences")
"""Core metrics :func:`evaluate_core` reports per group (``per_group``)."""


@torch.no_grad()
def evaluate_core(
    sae: Any,
    model: Any,
    tokens_NS: Tensor,
    layer: int,
    *,
    batch_size: int = 16,
    n_kl_sequences: int | None = None,
    token_chunk: int = 256,
    compute_kl: bool = True,
    groups: Sequence[str] | None = None,
    baseline: Any = None,
    progress: bool = False,
) -> dict[str, Any]:
    """All core metrics of ``sae`` on ``model``'s layer-``layer`` residual over ``tokens_NS``.

    Reconstruction/sparsity metrics use every sequence, in batches of ``batch_size`` sequences
    (the legacy per-batch unit); the splice metrics use the first ``n_kl_sequences`` (default all).
    Special tokens are excluded everywhere. Returns scalars plus ``feature_density_F`` (tensor).

    ``groups`` (a label per sequence, e.g. its genre) adds ``per_group``: ``{label: {ev, kl_score,
    ce_score, n_sequences}}`` from the same pass, EV over the group's sequences and KL/CE over its
    sequences among :func:`splice_rows`. ``baseline`` (a :class:`~saelib.evals.core_baseline.CoreBaseline`
    for these tokens and settings) supplies the SAE-independent runs (clean hidden states, both
    zero-ablation baselines), so that only the SAE's own splice runs here; the numbers are the same.
    """
    from tqdm.auto import tqdm

    from ..hooks import residuals, special_mask, splice_sums

    if tokens_NS.ndim != 2:
        raise ValueError(f"tokens must be (sequences, positions), got {tuple(tokens_NS.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_seq = tokens_NS.shape[0]
    if groups is not None and len(groups) != n_seq:
        raise ValueError(f"{len(groups)} group labels for {n_seq} sequences")
    labels = list(dict.fromkeys(groups)) if groups is not None else []
    group_id_N = torch.tensor([labels.index(g) for g in groups]) if groups is not None else None
    was_training = sae.training
    sae.eval()
    dev = module_device(sae)  # the SAE may sit on another device than the model; tensors follow it
    keep_NS = special_mask(model, tokens_NS)
    acc = CoreAccumulator(sae.cfg.d_sae)
    group_acc = [CoreAccumulator(sae.cfg.d_sae) for _ in labels]
    starts = range(0, n_seq, batch_size)
    for start in tqdm(starts, desc="core metrics", disable=not progress):
        sl = slice(start, start + batch_size)
        x_NSD = residuals(model, tokens_NS[sl], layer, batch_size=batch_size)
        keep = keep_NS[sl].to(x_NSD.device)
        x_ND = x_NSD[keep].float().to(dev)
        if x_ND.shape[0] == 0:
            continue
        f_NF = sae.encode(x_ND)
        x_hat, x_host, f_host = sae.decode(f_NF).cpu(), x_ND.cpu(), f_NF.cpu()
        acc.update(x_host, x_hat, f_host)  # the accumulator lives on the host
        if group_id_N is not None:
            tok_group_N = group_id_N[sl][keep.cpu().nonzero()[:, 0]]
            for gi, gacc in enumerate(group_acc):
                m = tok_group_N == gi
                if bool(m.any()):
                    gacc.update(x_host[m], x_hat[m], f_host[m])
    out: dict[str, Any] = dict(acc.result())
    out["n_sequences"] = int(n_seq)
    per_group: dict[str, dict[str, Any]] = {g: {"ev": group_acc[i].result()["ev"],
                                                "n_sequences": int((group_id_N == i).sum())}
                                            for i, g in enumerate(labels)}
    if compute_kl:
        rows = splice_rows(n_seq, n_kl_sequences, groups)
        kl_tokens = tokens_NS[rows]
        sae_patch = {"sae": lambda x_ND: sae.decode(sae.encode(x_ND.to(dev))).to(x_ND.device)}
        if baseline is None:
            zeros = {"zero": torch.zeros_like, "zero_keep_bos": torch.zeros_like}
            ss = splice_sums(model, kl_tokens, layer, {**sae_patch, **zeros}, batch_size=batch_size,
                             token_chunk=token_chunk, patch_everywhere=("zero",), saebench_positions=True,
                             progress=progress)
        else:
            baseline.check(kl_tokens, layer)
            own = splice_sums(model, kl_tokens, layer, sae_patch, batch_size=batch_size, token_chunk=token_chunk,
                              saebench_positions=True, clean_hidden_NSD=baseline.clean_hidden_NSD, progress=progress)
            ss = baseline.sums.with_patches(own)
        n_kl = n_seq if n_kl_sequences is None else min(int(n_kl_sequences), n_seq)
        out.update(splice_scores(ss.rows([i for i, r in enumerate(rows) if r < n_kl]).result()))
        for gi, g in enumerate(labels):
            sc = splice_scores(ss.rows([i for i, r in enumerate(rows) if groups[r] == g]).result())
            per_group[g].update(kl_score=sc["kl_score"], ce_score=sc["ce_score"])
    if groups is not None:
        out["per_group"] = {g: {k: per_group[g].get(k, float("nan")) for k in GROUP_KEYS} for g in labels}
    out["feature_density_F"] = acc.density()
    if was_training:
        sae.train()
    return out
