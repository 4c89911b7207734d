"""Orchestration: the model side once per model/layer (cached), the SAE side per SAE, results files."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from ...io import repo_relative
from ..common import content_key, limit_threads, load_cached, save_cached
from .config import EVAL_TYPE_ID, AbsorptionConfig
from .ksparse import select_split_features
from .latents import _sae_dims, encode_latents
from .model_io import _cached_residuals, cache_folder, prompt_accuracy
from .probes import LetterProbes, probe_metrics, train_letter_probes
from .prompts import answer_token_ids, build_prompts, check_prompt_tokenization
from .scoring import AbsorptionResult, absorption_scores
from .vocab import build_vocab


@dataclass
class AbsorptionData:
    """Everything the per-SAE step needs; it depends only on the model, the layer and the prompts."""

    x_train_ND: Tensor
    """Residuals of the training prompts at the query token."""
    y_train_N: Tensor
    """First-letter class of each training word."""
    x_test_ND: Tensor
    """Residuals of the test prompts (probe evaluation, candidate selection)."""
    y_test_N: Tensor
    """First-letter class of each test word."""
    x_abs_ND: Tensor
    """Residuals of the absorption prompts (the test words with fresh in-context examples)."""
    probes: LetterProbes
    """Ground-truth letter probes."""
    probe_table: pd.DataFrame
    """Per-letter probe metrics on the test prompts."""
    test_words: list[str] | None = None
    """The test words (for the per-word table)."""
    prompt_accuracy: dict[str, Any] | None = None
    """The model's own first-letter accuracy on the prompts (summary)."""
    accuracy_table: pd.DataFrame | None = None
    """The model's accuracy per letter."""
    vocab: pd.DataFrame | None = None
    """The vocabulary frame."""
    info: dict[str, Any] = field(default_factory=dict)
    """Model, layer, cache folder, counts, timings."""

    @classmethod
    def from_residuals(cls, x_train_ND: Tensor, y_train_N: Tensor, x_test_ND: Tensor, y_test_N: Tensor,
                       cfg: AbsorptionConfig, *, x_abs_ND: Tensor | None = None, probes: LetterProbes | None = None,
                       **extra) -> "AbsorptionData":
        """Train (or take) the letter probes and tabulate them; ``x_abs`` defaults to ``x_test``."""
        if x_abs_ND is None:
            x_abs_ND = x_test_ND
        if x_abs_ND.shape != x_test_ND.shape:
            raise ValueError(f"absorption residuals {tuple(x_abs_ND.shape)} must match test residuals {tuple(x_test_ND.shape)}")
        if probes is None:
            with limit_threads(cfg.probe_threads):
                probes = train_letter_probes(x_train_ND, y_train_N, l2=cfg.probe_l2, max_iter=cfg.probe_max_iter)
        table = probe_metrics(probes.scores(x_test_ND), y_test_N, y_train_N)
        return cls(x_train_ND=x_train_ND, y_train_N=y_train_N.long(), x_test_ND=x_test_ND, y_test_N=y_test_N.long(),
                   x_abs_ND=x_abs_ND, probes=probes, probe_table=table, **extra)

    def n_letters_probe_f1(self, threshold: float = 0.6) -> int:
        """Letters whose ground-truth probe has test F1 above ``threshold``."""
        return int((self.probe_table["probe_f1"] > threshold).sum())


def prepare_absorption_data(model, layer: int, cfg: AbsorptionConfig, cache_dir: str | Path, *,
                            progress: bool = False) -> AbsorptionData:
    """Model side of the eval, cached under ``cache_dir/absorption/...``: vocabulary, prompts,
    residuals (train, test, absorption), prompt accuracy and the ground-truth probes."""
    from saelib.io import atomic_write_json, read_json

    t0 = time.perf_counter()
    tok = model.tokenizer
    vocab = build_vocab(tok, cfg)
    prompts = {"train": build_prompts(vocab, tok, cfg, "train"), "test": build_prompts(vocab, tok, cfg, "test")}
    prompts["absorption"] = (build_prompts(vocab, tok, cfg, "test", variant=1, pool="all")
                             if cfg.fresh_absorption_prompts else prompts["test"])
    mismatch = check_prompt_tokenization(prompts["test"], tok)
    folder = cache_folder(cache_dir, model.name, layer, cfg)
    folder.mkdir(parents=True, exist_ok=True)
    x = {}
    for name, ps in prompts.items():
        if name == "absorption" and not cfg.fresh_absorption_prompts:
            x[name] = x["test"]
            continue
        x[name] = _cached_residuals(model, layer, ps, folder / f"residuals_{name}.safetensors", cfg, progress)
    t_res = time.perf_counter() - t0
    # prompt accuracy (cached; depends on the prompts and the subsample size)
    acc_path = folder / f"prompt_accuracy_{cfg.accuracy_prompts}.json"
    acc = read_json(acc_path) if acc_path.exists() else None
    if acc is None or acc.get("tokens_sha256") != prompts["test"].sha256():
        summary, per = prompt_accuracy(model, prompts["test"], max_prompts=cfg.accuracy_prompts,
                                       batch_size=max(1, cfg.llm_batch_size // 2), seed=cfg.seed,
                                       letter_ids=answer_token_ids(tok, cfg), progress=progress)
        acc = {"summary": summary, "per_letter": per.to_dict(orient="records"), "tokens_sha256": prompts["test"].sha256()}
        atomic_write_json(acc_path, acc)
    t_acc = time.perf_counter() - t0 - t_res
    # ground-truth probes (cached; depend on the residuals and the probe settings)
    y_train = prompts["train"].letter_idx_N
    y_test = prompts["test"].letter_idx_N
    probe_path = folder / f"probes_l2{cfg.probe_l2:g}_it{cfg.probe_max_iter}.safetensors"
    probe_key = content_key({"what": "absorption letter probes", "probe_l2": cfg.probe_l2, "probe_max_iter": cfg.probe_max_iter},
                            x["train"], y_train)
    found = load_cached(probe_path, probe_key)
    if found is not None:
        probes = LetterProbes(W_LD=found[0]["W_LD"], b_L=found[0]["b_L"])
    else:
        with limit_threads(cfg.probe_threads):
            probes = train_letter_probes(x["train"], y_train, l2=cfg.probe_l2, max_iter=cfg.probe_max_iter)
        save_cached(probe_path, probe_key, {"W_LD": probes.W_LD, "b_L": probes.b_L})
    t_probe = time.perf_counter() - t0 - t_res - t_acc
    test_words = list(vocab["text"].to_numpy()[prompts["test"].rows_N])
    info = {
        "model": model.name, "layer": layer, "cache_folder": repo_relative(folder), "n_vocab": int(len(vocab)),
        "n_train": len(prompts["train"]), "n_test": len(prompts["test"]), "prompt_length": int(prompts["test"].tokens_NS.shape[1]),
        "query_pos": prompts["test"].query_pos, "example_prompt": prompts["test"].text(tok, 0),
        "tokenization_mismatch": mismatch,
        "seconds_residuals": t_res, "seconds_accuracy": t_acc, "seconds_probes": t_probe,
    }
    return AbsorptionData.from_residuals(
        x["train"], y_train, x["test"], y_test, cfg, x_abs_ND=x["absorption"], probes=probes,
        test_words=test_words, prompt_accuracy=acc["summary"], accuracy_table=pd.DataFrame(acc["per_letter"]),
        vocab=vocab, info=info,
    )


def evaluate_sae(sae, data: AbsorptionData, cfg: AbsorptionConfig) -> AbsorptionResult:
    """Per-SAE step: encode the cached residuals once, select split features, score absorption."""
    t0 = time.perf_counter()
    F, D = _sae_dims(sae)
    if D != data.x_train_ND.shape[1]:
        raise ValueError(f"SAE reads d_in={D} but the residuals have width {data.x_train_ND.shape[1]}")
    lat_train = encode_latents(sae, data.x_train_ND, batch_size=cfg.sae_batch_size)
    lat_test = encode_latents(sae, data.x_test_ND, batch_size=cfg.sae_batch_size)
    lat_abs = lat_test if data.x_abs_ND is data.x_test_ND else encode_latents(sae, data.x_abs_ND, batch_size=cfg.sae_batch_size)
    t_enc = time.perf_counter() - t0
    with torch.no_grad():
        W_dec = sae.W_dec.detach().float().cpu()
    with limit_threads(cfg.probe_threads):
        split = select_split_features(lat_train, data.y_train_N, lat_test, data.y_test_N, cfg)
        t_split = time.perf_counter() - t0 - t_enc
        result = absorption_scores(
            y_test_N=data.y_test_N, probe_scores_NL=data.probes.scores(data.x_test_ND), ksparse_scores_NL=split.scores(lat_test),
            split_feats=split.split_feats, lat_abs=lat_abs, x_abs_ND=data.x_abs_ND, W_dec_FD=W_dec,
            probe_W_LD=data.probes.W_LD, probe_f1_L=torch.tensor(data.probe_table["probe_f1"].to_numpy()), cfg=cfg,
            words=data.test_words,
        )
    per = result.per_letter
    per.insert(per.columns.get_loc("num_split_features") + 1, "k_sparse_f1",
               [float(split.f1_LK[l, int(split.k_L[l]) - 1]) for l in range(len(per))])
    per["k_sparse_f1_by_k"] = [" ".join(f"{v:.3f}" for v in split.f1_LK[l].tolist()) for l in range(len(per))]
    if data.accuracy_table is not None:
        acc = data.accuracy_table.set_index("letter")
        per["prompt_accuracy"] = per["letter"].map(acc["prompt_accuracy"])
    l0 = float((lat_test.val_NM != 0).sum(1).float().mean())
    result.summary.update({
        "n_letters_probe_f1_above_min": data.n_letters_probe_f1(cfg.min_probe_f1),
        "l0_on_test_prompts": l0,
        "seconds_encode": t_enc, "seconds_split_features": t_split, "seconds_total": time.perf_counter() - t0,
    })
    if data.prompt_accuracy is not None:
        result.summary.update({k: v for k, v in data.prompt_accuracy.items()})
    return result


def save_results(result: AbsorptionResult, out_dir: str | Path, name: str, cfg: AbsorptionConfig,
                 extra: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``<out_dir>/<name>.json`` (SAEBench-shaped) and ``<out_dir>/<name>_per_letter.csv``."""
    from saelib.io import atomic_write_json, atomic_write_text

    out_dir = Path(out_dir)
    s = result.summary
    mean_keys = ("mean_absorption_fraction_score", "mean_full_absorption_score", "mean_num_split_features",
                 "std_dev_absorption_fraction_score", "std_dev_full_absorption_score", "std_dev_num_split_features",
                 "mean_absorption_score", "std_dev_absorption_score", "mean_num_split_features_legacy")
    payload = {
        "eval_type_id": EVAL_TYPE_ID,
        "variant": name,
        "lower_is_better": True,
        "eval_config": asdict(cfg),
        "eval_result_metrics": {"mean": {k: s[k] for k in mean_keys}},
        "summary": s,
        "eval_result_details": result.per_letter.to_dict(orient="records"),
        **(extra or {}),
    }
    json_path = atomic_write_json(out_dir / f"{name}.json", payload)
    csv_path = atomic_write_text(out_dir / f"{name}_per_letter.csv", result.per_letter.to_csv(index=False))
    return json_path, csv_path
