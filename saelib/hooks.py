"""Reading and writing the residual stream through nnsight.

``residuals`` runs the model only up to the hooked layer. ``spliced_kl_ce`` replaces the layer's
output (at non-special positions, or everywhere for patches named in ``patch_everywhere``) by a patch
function and measures next-token KL and CE against the clean run, on this repo's positions and,
optionally, on SAEBench's, computing logits in token chunks from the final hidden state (one batch of fp32 logits
over Gemma-3's 262k vocabulary would be gigabytes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Collection, Iterator, Sequence

import torch
from torch import Tensor

from .models import LoadedModel

Patch = Callable[[Tensor], Tensor]
"""Maps kept residual vectors ``x_ND`` (float32) to their replacement ``x'_ND``."""


def special_mask(model_or_ids, tokens_NS: Tensor) -> Tensor:
    """``keep_NS``: True where the token is not special (BOS/EOS/PAD...).

    ``model_or_ids`` is a ``LoadedModel`` or an iterable of special token ids.
    """
    ids = model_or_ids.special_ids if isinstance(model_or_ids, LoadedModel) else list(model_or_ids)
    if tokens_NS.ndim != 2:
        raise ValueError(f"tokens must be (sequences, positions), got shape {tuple(tokens_NS.shape)}")
    special = torch.tensor(sorted(set(int(i) for i in ids)), dtype=tokens_NS.dtype, device=tokens_NS.device)
    return ~torch.isin(tokens_NS, special)


def _batches(n: int, batch_size: int) -> Iterator[slice]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(n, start + batch_size))


@torch.inference_mode()
def residuals_batch(model: LoadedModel, tokens_NS: Tensor, layer: int, attention_mask_NS: Tensor | None = None) -> Tensor:
    """Residual output of ``layer`` for one batch, ``x_NSD`` in the model's dtype; stops after the layer."""
    model.check_layer(layer)
    lm = model.lm
    device = model.hf_model.device
    kwargs = {} if attention_mask_NS is None else {"attention_mask": attention_mask_NS.to(device)}
    with lm.trace(tokens_NS.to(device), **kwargs) as tracer:
        out = lm.model.layers[layer].output.save()
        tracer.stop()
    return out.detach().cpu()


def padded_residual_batches(model: LoadedModel, ids: list[list[int]], layer: int, batch_size: int, *,
                            progress: bool = False, desc: str = "residuals"):
    """Residuals of token-id lists of different lengths, longest first, right-padded per batch.

    Yields ``(rows, tokens_NS, attn_NS, x_NSD)``: ``rows`` are the indices into ``ids`` of the batch's
    rows, ``attn_NS`` marks the real tokens (1) against padding (0). Causal attention keeps every real
    token's residual independent of the padding after it."""
    from tqdm.auto import tqdm

    pad_id = model.tokenizer.pad_token_id
    pad_id = 0 if pad_id is None else int(pad_id)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    for rows in tqdm(batches, desc=desc, disable=not progress):
        width = max(len(ids[i]) for i in rows)
        tokens_NS = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attn_NS = torch.zeros((len(rows), width), dtype=torch.long)
        for row, i in enumerate(rows):
            tokens_NS[row, : len(ids[i])] = torch.tensor(ids[i])
            attn_NS[row, : len(ids[i])] = 1
        yield rows, tokens_NS, attn_NS, residuals_batch(model, tokens_NS, layer, attn_NS)


def residuals(
    model: LoadedModel,
    tokens_NS: Tensor,
    layer: int,
    *,
    batch_size: int = 32,
    attention_mask_NS: Tensor | None = None,
    progress: bool = False,
) -> Tensor:
    """Residual output of ``layer`` for all sequences, ``x_NSD`` (model dtype), batched."""
    from tqdm.auto import tqdm

    chunks = []
    slices = list(_batches(tokens_NS.shape[0], batch_size))
    for sl in tqdm(slices, desc=f"residuals L{layer}", disable=not progress):
        mask = None if attention_mask_NS is None else attention_mask_NS[sl]
        chunks.append(residuals_batch(model, tokens_NS[sl], layer, mask))
    return torch.cat(chunks)


def final_hidden(model: LoadedModel, tokens_NS: Tensor, layer: int, patch: Patch | None, keep_NS: Tensor, attention_mask_NS: Tensor | None) -> Tensor:
    """Final-norm hidden states ``h_NSD`` with ``layer``'s output patched at kept positions."""
    lm = model.lm
    device = model.hf_model.device
    keep_NS = keep_NS.to(device)
    kwargs = {} if attention_mask_NS is None else {"attention_mask": attention_mask_NS.to(device)}
    with lm.trace(tokens_NS.to(device), **kwargs) as tracer:
        if patch is not None:
            x_NSD = lm.model.layers[layer].output
            x_ND = x_NSD[keep_NS].float()
            new_ND = patch(x_ND).to(x_NSD.dtype)
            patched_NSD = x_NSD.clone()
            patched_NSD[keep_NS] = new_ND
            lm.model.layers[layer].output = patched_NSD
        h = lm.model.norm.output.save()
        tracer.stop()
    return h.detach()


def logprobs(model: LoadedModel, h_TD: Tensor) -> Tensor:
    """Log-softmax over the vocabulary for hidden states ``h_TD`` (float32)."""
    hf = model.hf_model
    logits_TV = hf.lm_head(h_TD.to(hf.lm_head.weight.dtype)).float()
    cap = getattr(hf.config, "final_logit_softcapping", None)
    if cap:
        logits_TV = torch.tanh(logits_TV / cap) * cap
    return torch.log_softmax(logits_TV, dim=-1)


@dataclass
class SpliceSums:
    """Per-sequence sums behind :func:`spliced_kl_ce`, so that any subset of sequences (a genre) can be
    scored from one pass and SAE-independent patches (the zero-ablation baselines) computed once.

    ``sums[name][key]`` (float64, one entry per sequence) for every patch name and ``"clean"``; keys
    ``kl``/``ce`` (this repo's positions) and, with SAEBench positions, ``kl_saebench``/``ce_saebench``
    (``clean`` has only the ``ce`` keys). ``counts[key]`` (int64 per sequence): the positions scored."""

    sums: dict[str, dict[str, Tensor]]
    counts: dict[str, Tensor]

    @property
    def n_sequences(self) -> int:
        return int(next(iter(self.counts.values())).shape[0])

    def rows(self, rows: Tensor | Sequence[int]) -> "SpliceSums":
        """The same sums for a subset (or reordering) of the sequences."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        return SpliceSums({n: {k: v[idx] for k, v in d.items()} for n, d in self.sums.items()},
                          {k: v[idx] for k, v in self.counts.items()})

    def with_patches(self, other: "SpliceSums") -> "SpliceSums":
        """These sums plus ``other``'s patches (same sequences and positions; this one's ``clean`` kept)."""
        if other.n_sequences != self.n_sequences or set(other.counts) != set(self.counts) or any(
                not torch.equal(other.counts[k], self.counts[k]) for k in self.counts):
            raise ValueError("SpliceSums.with_patches: the two were scored on different sequences or positions")
        clash = (set(other.sums) & set(self.sums)) - {"clean"}
        if clash:
            raise ValueError(f"SpliceSums.with_patches: patches {sorted(clash)} are in both")
        return SpliceSums({**self.sums, **{n: d for n, d in other.sums.items() if n != "clean"}}, dict(self.counts))

    def result(self) -> dict[str, dict[str, float]]:
        """Means over all positions of all sequences: :func:`spliced_kl_ce`'s return value."""
        counts = {k: int(v.sum()) for k, v in self.counts.items()}
        if any(n == 0 for n in counts.values()):
            raise ValueError("no non-special tokens to score: every position is BOS/EOS/PAD")
        tot = {n: {k: float(v.sum()) for k, v in d.items()} for n, d in self.sums.items()}
        result: dict[str, dict[str, float]] = {"clean": {"ce": tot["clean"]["ce"] / counts["ce"], "n_tokens": counts["ce"]}}
        patches = [n for n in self.sums if n != "clean"]
        for name in patches:
            result[name] = {"kl": tot[name]["kl"] / counts["kl"], "ce": tot[name]["ce"] / counts["ce"], "n_tokens": counts["kl"]}
        if "kl_saebench" in counts:
            result["clean"].update(ce_saebench=tot["clean"]["ce_saebench"] / counts["ce_saebench"],
                                   n_ce_saebench=counts["ce_saebench"])
            for name in patches:
                result[name].update(kl_saebench=tot[name]["kl_saebench"] / counts["kl_saebench"],
                                    ce_saebench=tot[name]["ce_saebench"] / counts["ce_saebench"],
                                    n_kl_saebench=counts["kl_saebench"], n_ce_saebench=counts["ce_saebench"])
        return result

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (lists); :meth:`from_dict` mirrors it."""
        return {"sums": {n: {k: v.tolist() for k, v in d.items()} for n, d in self.sums.items()},
                "counts": {k: v.tolist() for k, v in self.counts.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SpliceSums":
        return cls({n: {k: torch.tensor(v, dtype=torch.float64) for k, v in dd.items()} for n, dd in d["sums"].items()},
                   {k: torch.tensor(v, dtype=torch.long) for k, v in d["counts"].items()})


@torch.inference_mode()
def splice_sums(
    model: LoadedModel,
    tokens_NS: Tensor,
    layer: int,
    patches: dict[str, Patch | None],
    *,
    batch_size: int = 8,
    token_chunk: int = 256,
    attention_mask_NS: Tensor | None = None,
    patch_everywhere: Collection[str] = (),
    saebench_positions: bool = False,
    clean_hidden_NSD: Tensor | None = None,
    progress: bool = False,
) -> SpliceSums:
    """Per-sequence KL/CE sums of :func:`spliced_kl_ce` (same arguments); ``clean_hidden_NSD``, when
    given, is the clean run's final-norm hidden state of these sequences (:func:`final_hidden` with no
    patch), which then is not recomputed."""
    from tqdm.auto import tqdm

    model.check_layer(layer)
    if "clean" in patches:
        raise ValueError("'clean' is reserved for the unpatched run")
    unknown = set(patch_everywhere) - set(patches)
    if unknown:
        raise ValueError(f"patch_everywhere names {sorted(unknown)} that are not patches ({sorted(patches)})")
    if clean_hidden_NSD is not None and tuple(clean_hidden_NSD.shape[:2]) != tuple(tokens_NS.shape):
        raise ValueError(f"clean_hidden_NSD has shape {tuple(clean_hidden_NSD.shape)}, tokens {tuple(tokens_NS.shape)}")
    keep_all_NS = special_mask(model, tokens_NS)
    if attention_mask_NS is not None:
        keep_all_NS &= attention_mask_NS.bool()
    n_seq = tokens_NS.shape[0]
    rules = ("", "_saebench") if saebench_positions else ("",)
    f64 = {"dtype": torch.float64}
    sums = {name: {f"{q}{r}": torch.zeros(n_seq, **f64) for q in ("kl", "ce") for r in rules} for name in patches}
    sums["clean"] = {f"ce{r}": torch.zeros(n_seq, **f64) for r in rules}
    counts = {f"{q}{r}": torch.zeros(n_seq, dtype=torch.long) for q in ("kl", "ce") for r in rules}
    for sl in tqdm(list(_batches(n_seq, batch_size)), desc="splice", disable=not progress):
        tok_NS = tokens_NS[sl]
        keep_NS = keep_all_NS[sl]
        mask = None if attention_mask_NS is None else attention_mask_NS[sl]
        # the prediction at position t is scored when input t is kept (SAEBench: every such t, for
        # KL; "kept pairs": not the last t, and for CE only when target t+1 is kept too)
        not_last_NS = torch.ones_like(keep_NS)
        not_last_NS[:, -1] = False
        target_kept_NS = torch.zeros_like(keep_NS)
        target_kept_NS[:, :-1] = keep_NS[:, 1:]
        flags_NS = {"kl": keep_NS & not_last_NS, "ce": keep_NS & not_last_NS & target_kept_NS}
        if saebench_positions:
            flags_NS.update({"kl_saebench": keep_NS, "ce_saebench": keep_NS & not_last_NS})
        for k in counts:
            counts[k][sl] += flags_NS[k].sum(1)
        target_NS = torch.zeros_like(tok_NS)
        target_NS[:, :-1] = tok_NS[:, 1:]
        everywhere_NS = torch.ones_like(keep_NS)
        dev = model.device
        clean = (final_hidden(model, tok_NS, layer, None, keep_NS, mask) if clean_hidden_NSD is None
                 else clean_hidden_NSD[sl].to(dev))
        hidden = {"clean": clean}
        for name, patch in patches.items():
            where_NS = everywhere_NS if name in patch_everywhere else keep_NS
            hidden[name] = final_hidden(model, tok_NS, layer, patch, where_NS, mask)
        pos = (keep_NS if saebench_positions else flags_NS["kl"]).nonzero(as_tuple=False).to(dev)
        flag = {k: f.to(dev)[pos[:, 0], pos[:, 1]] for k, f in flags_NS.items()}
        tgt = target_NS.to(dev)[pos[:, 0], pos[:, 1]]
        seq_T = pos[:, 0].cpu() + sl.start  # the sequence of every scored position

        def add(acc_N: Tensor, values_T: Tensor, keep_T: Tensor, seq_T: Tensor) -> None:
            acc_N.index_add_(0, seq_T[keep_T.cpu()], values_T[keep_T].double().cpu())

        for start in range(0, pos.shape[0], token_chunk):
            p = pos[start : start + token_chunk]
            fl = {k: f[start : start + token_chunk] for k, f in flag.items()}
            t = tgt[start : start + token_chunk, None]
            sq = seq_T[start : start + token_chunk]
            lp_clean = logprobs(model, hidden["clean"][p[:, 0], p[:, 1]])
            ce_clean_T = -lp_clean.gather(1, t)[:, 0]
            for r in rules:
                add(sums["clean"][f"ce{r}"], ce_clean_T, fl[f"ce{r}"], sq)
            p_clean = lp_clean.exp()
            for name in patches:
                lp = logprobs(model, hidden[name][p[:, 0], p[:, 1]])
                kl_T = (p_clean * (lp_clean - lp)).sum(-1)
                ce_T = -lp.gather(1, t)[:, 0]
                for r in rules:
                    add(sums[name][f"kl{r}"], kl_T, fl[f"kl{r}"], sq)
                    add(sums[name][f"ce{r}"], ce_T, fl[f"ce{r}"], sq)
    return SpliceSums(sums, counts)


@torch.inference_mode()
def clean_final_hidden(model: LoadedModel, tokens_NS: Tensor, layer: int, *, batch_size: int = 8,
                       attention_mask_NS: Tensor | None = None) -> Tensor:
    """The clean run's final-norm hidden states ``h_NSD`` (host memory), the input of
    :func:`splice_sums`' ``clean_hidden_NSD``."""
    keep_all_NS = special_mask(model, tokens_NS)
    out = []
    for sl in _batches(tokens_NS.shape[0], batch_size):
        mask = None if attention_mask_NS is None else attention_mask_NS[sl]
        out.append(final_hidden(model, tokens_NS[sl], layer, None, keep_all_NS[sl], mask).cpu())
    return torch.cat(out)


def spliced_kl_ce(
    model: LoadedModel,
    tokens_NS: Tensor,
    layer: int,
    patches: dict[str, Patch | None],
    *,
    batch_size: int = 8,
    token_chunk: int = 256,
    attention_mask_NS: Tensor | None = None,
    patch_everywhere: Collection[str] = (),
    saebench_positions: bool = False,
    progress: bool = False,
) -> dict[str, dict[str, float]]:
    """Next-token KL(p_clean ‖ p_patched) and CE for each named patch, plus the clean CE.

    A patch replaces the layer's output at kept (non-special, attended) positions only, unless its
    name is in ``patch_everywhere``: then every position is replaced, BOS/EOS/PAD included (SAEBench's
    zero-ablation baseline does this).

    Scored positions, default ("kept pairs"): KL over positions whose input token is kept, the last
    position excluded; CE over positions whose input and target tokens are both kept. Keys
    ``kl``, ``ce``, ``n_tokens`` (KL positions); ``clean`` has ``ce``, ``n_tokens`` (CE positions).

    With ``saebench_positions`` the same runs are also scored as SAEBench 0.6.0's core eval does
    (``get_downstream_reconstruction_metrics``): KL over every position whose input token is kept,
    the last one included; CE over every kept input position but the last, whatever the target.
    Extra keys ``kl_saebench``, ``ce_saebench``, ``n_kl_saebench``, ``n_ce_saebench`` (``clean``:
    ``ce_saebench``, ``n_ce_saebench``).

    The means are over positions pooled across sequences; :func:`splice_sums` gives the per-sequence sums.
    """
    return splice_sums(model, tokens_NS, layer, patches, batch_size=batch_size, token_chunk=token_chunk,
                       attention_mask_NS=attention_mask_NS, patch_everywhere=patch_everywhere,
                       saebench_positions=saebench_positions, progress=progress).result()
