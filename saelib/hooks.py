"""Reading and writing the residual stream through nnsight.

``residuals`` runs the model only up to the hooked layer. ``spliced_kl_ce`` replaces the layer's
output (at non-special positions, or everywhere for patches named in ``patch_everywhere``) by a patch
function and measures next-token KL and CE against the clean run, on this repo's positions and,
optionally, on SAEBench's, computing logits in token chunks from the final hidden state (one batch of fp32 logits
over Gemma-3's 262k vocabulary would be gigabytes).
"""
from __future__ import annotations

from typing import Callable, Collection, Iterator

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


@torch.inference_mode()
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
    """
    from tqdm.auto import tqdm

    model.check_layer(layer)
    if "clean" in patches:
        raise ValueError("'clean' is reserved for the unpatched run")
    unknown = set(patch_everywhere) - set(patches)
    if unknown:
        raise ValueError(f"patch_everywhere names {sorted(unknown)} that are not patches ({sorted(patches)})")
    keep_all_NS = special_mask(model, tokens_NS)
    if attention_mask_NS is not None:
        keep_all_NS &= attention_mask_NS.bool()
    rules = ("", "_saebench") if saebench_positions else ("",)
    sums = {name: {f"{q}{r}": 0.0 for q in ("kl", "ce") for r in rules} for name in patches}
    sums["clean"] = {f"ce{r}": 0.0 for r in rules}
    counts = {f"{q}{r}": 0 for q in ("kl", "ce") for r in rules}
    for sl in tqdm(list(_batches(tokens_NS.shape[0], batch_size)), desc="splice", disable=not progress):
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
        target_NS = torch.zeros_like(tok_NS)
        target_NS[:, :-1] = tok_NS[:, 1:]
        everywhere_NS = torch.ones_like(keep_NS)
        hidden = {"clean": final_hidden(model, tok_NS, layer, None, keep_NS, mask)}
        for name, patch in patches.items():
            where_NS = everywhere_NS if name in patch_everywhere else keep_NS
            hidden[name] = final_hidden(model, tok_NS, layer, patch, where_NS, mask)
        dev = model.device
        pos = (keep_NS if saebench_positions else flags_NS["kl"]).nonzero(as_tuple=False).to(dev)
        flag = {k: f.to(dev)[pos[:, 0], pos[:, 1]] for k, f in flags_NS.items()}
        tgt = target_NS.to(dev)[pos[:, 0], pos[:, 1]]
        for k in counts:
            counts[k] += int(flag[k].sum())
        for start in range(0, pos.shape[0], token_chunk):
            p = pos[start : start + token_chunk]
            fl = {k: f[start : start + token_chunk] for k, f in flag.items()}
            t = tgt[start : start + token_chunk, None]
            lp_clean = logprobs(model, hidden["clean"][p[:, 0], p[:, 1]])
            ce_clean_T = -lp_clean.gather(1, t)[:, 0]
            for r in rules:
                sums["clean"][f"ce{r}"] += float(ce_clean_T[fl[f"ce{r}"]].sum())
            p_clean = lp_clean.exp()
            for name in patches:
                lp = logprobs(model, hidden[name][p[:, 0], p[:, 1]])
                kl_T = (p_clean * (lp_clean - lp)).sum(-1)
                ce_T = -lp.gather(1, t)[:, 0]
                for r in rules:
                    sums[name][f"kl{r}"] += float(kl_T[fl[f"kl{r}"]].sum())
                    sums[name][f"ce{r}"] += float(ce_T[fl[f"ce{r}"]].sum())
    if any(n == 0 for n in counts.values()):
        raise ValueError("no non-special tokens to score: every position is BOS/EOS/PAD")
    result: dict[str, dict[str, float]] = {"clean": {"ce": sums["clean"]["ce"] / counts["ce"], "n_tokens": counts["ce"]}}
    for name in patches:
        result[name] = {"kl": sums[name]["kl"] / counts["kl"], "ce": sums[name]["ce"] / counts["ce"], "n_tokens": counts["kl"]}
    if saebench_positions:
        result["clean"].update(ce_saebench=sums["clean"]["ce_saebench"] / counts["ce_saebench"],
                               n_ce_saebench=counts["ce_saebench"])
        for name in patches:
            result[name].update(kl_saebench=sums[name]["kl_saebench"] / counts["kl_saebench"],
                                ce_saebench=sums[name]["ce_saebench"] / counts["ce_saebench"],
                                n_kl_saebench=counts["kl_saebench"], n_ce_saebench=counts["ce_saebench"])
    return result
