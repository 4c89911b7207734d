"""Model side: residuals at the query token (cached), the model's own first-letter accuracy."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..common import cached, content_key
from .config import LETTERS, AbsorptionConfig
from .prompts import PromptSet


@torch.inference_mode()
def collect_residuals(model, layer: int, prompts: PromptSet, *, batch_size: int = 128, progress: bool = False) -> Tensor:
    """Residual output of ``layer`` on each prompt's query token: ``x_ND`` in the model dtype (bf16).

    Batched forward passes that stop after ``layer`` (``saelib.hooks.residuals_batch``).
    """
    from tqdm.auto import tqdm

    from saelib.hooks import residuals_batch

    model.check_layer(layer)
    out = []
    starts = range(0, len(prompts), batch_size)
    for s in tqdm(starts, desc=f"absorption residuals L{layer}", disable=not progress):
        x_NSD = residuals_batch(model, prompts.tokens_NS[s : s + batch_size], layer)
        out.append(x_NSD[:, prompts.query_pos].clone())
    return torch.cat(out)


@torch.inference_mode()
def prompt_accuracy(model, prompts: PromptSet, *, max_prompts: int = 1000, batch_size: int = 64, seed: int = 0,
                    letter_ids: list[int] | None = None, progress: bool = False) -> tuple[dict[str, Any], pd.DataFrame]:
    """How often the model's own next token after the prompt is the right letter.

    Returns a summary (``prompt_accuracy``: argmax over the whole vocabulary equals the answer token;
    ``prompt_accuracy_letters``: argmax over the answer tokens ``letter_ids`` only — the 26 letters,
    default: the answers present in ``prompts``; ``n_prompts``) and a per-letter frame. Scores a
    deterministic subsample of at most ``max_prompts`` prompts (full forward passes).
    """
    from tqdm.auto import tqdm

    n = len(prompts)
    if max_prompts < n:
        pick = np.sort(np.random.default_rng(seed).choice(n, size=max_prompts, replace=False))
    else:
        pick = np.arange(n)
    hf = model.hf_model
    body = hf.model if hasattr(hf, "model") else hf.base_model
    head = hf.get_output_embeddings()
    all_answers = torch.as_tensor(sorted(set(letter_ids if letter_ids is not None else prompts.answer_ids_N.tolist())))
    correct, correct26 = [], []
    for s in tqdm(range(0, len(pick), batch_size), desc="prompt accuracy", disable=not progress):
        sel = torch.as_tensor(pick[s : s + batch_size])
        h_BD = body(input_ids=prompts.tokens_NS[sel].to(head.weight.device)).last_hidden_state[:, -1]
        logits_BV = head(h_BD.to(head.weight.dtype)).float().cpu()
        answer_B = prompts.answer_ids_N[sel]
        correct.append(logits_BV.argmax(-1) == answer_B)
        pred26 = all_answers[logits_BV[:, all_answers].argmax(-1)]
        correct26.append(pred26 == answer_B)
    ok = torch.cat(correct).numpy()
    ok26 = torch.cat(correct26).numpy()
    letters = prompts.letter_idx_N[torch.as_tensor(pick)].numpy()
    per = pd.DataFrame({"letter_idx": letters, "ok": ok, "ok26": ok26}).groupby("letter_idx").agg(
        n_accuracy_prompts=("ok", "size"), prompt_accuracy=("ok", "mean"), prompt_accuracy_letters=("ok26", "mean")
    )
    per = per.reindex(range(26)).reset_index()
    per.insert(0, "letter", [LETTERS[i] for i in per["letter_idx"]])
    per = per.drop(columns="letter_idx")
    per["n_accuracy_prompts"] = per["n_accuracy_prompts"].fillna(0).astype(int)
    summary = {"prompt_accuracy": float(ok.mean()), "prompt_accuracy_letters": float(ok26.mean()), "n_prompts": int(len(ok))}
    return summary, per


def cache_folder(cache_dir: str | Path, model_name: str, layer: int, cfg: AbsorptionConfig) -> Path:
    """``<cache_dir>/absorption/<model>_L<layer>_<hash of the prompt settings>``."""
    key = json.dumps({"model": model_name, "layer": layer, **cfg.prompt_settings()}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(cache_dir) / "absorption" / f"{model_name}_L{layer}_{digest}"


def residual_cache_key(model_name: str, layer: int, prompts: PromptSet) -> str:
    """Content key of a residual set: the model, the layer and the prompts' token ids."""
    return content_key({"what": "absorption query-token residuals", "model": model_name, "layer": int(layer),
                        "query_pos": int(prompts.query_pos)}, prompts.tokens_NS.to(torch.int64))


def _cached_residuals(model, layer: int, prompts: PromptSet, path: Path, cfg: AbsorptionConfig, progress: bool) -> Tensor:
    """Residuals of ``prompts`` from the cache file at ``path`` if it holds exactly these, else
    collected and saved (``saelib.evals.common.cached``: atomic, content-keyed)."""
    def build():
        x_ND = collect_residuals(model, layer, prompts, batch_size=cfg.llm_batch_size, progress=progress)
        return {"x_ND": x_ND}, {"model": model.name, "layer": int(layer), "n_prompts": len(prompts)}

    tensors, _, _ = cached(path, residual_cache_key(model.name, layer, prompts), build)
    return tensors["x_ND"]
