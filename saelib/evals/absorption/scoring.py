"""Absorption scores: SAEBench's per-word rules, the legacy and the current aggregates."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .config import EPS, LETTERS, AbsorptionConfig
from .latents import SparseLatents


def word_absorption(f_CF: Tensor, x_CD: Tensor, W_dec_FD: Tensor, probe_D: Tensor, main_ids: list[int],
                    cfg: AbsorptionConfig) -> dict[str, Tensor]:
    """Absorption of one letter on C words (SAEBench's per-word rules, vectorised).

    ``proj_i = f_i · (W_dec[i] · p)`` (or ``f_i · cos_i`` without folding), ``act = x · p`` with
    ``p`` the unit probe direction, ``main`` = the letter's split features.
    * fraction: 0 if ``main_proj >= act`` or the top ≤3 positive projections of latents with
      cos ≥ 0.1 (main excluded) supply < 40% of ``act``; 1 if ``main_proj <= 0``; else
      ``a / (a + main_proj)`` with ``a = min(top sum, act - main_proj)``.
    * full: every main latent is off, the top-projection latent has cos ≥ 0.025, ``act > 0`` and
      it supplies ≥ 40% of ``act``.
    """
    W = W_dec_FD.float()
    p = probe_D.float() / probe_D.float().norm().clamp_min(1e-12)
    row_norm_F = W.norm(dim=1).clamp_min(1e-12)
    dot_F = W @ p
    cos_F = dot_F / row_norm_F
    proj_CF = f_CF * (dot_F if cfg.fold_decoder_norm else cos_F)
    act_C = x_CD.float() @ p
    main = torch.as_tensor(list(main_ids), dtype=torch.int64)
    main_mask_F = torch.zeros(W.shape[0], dtype=torch.bool)
    main_mask_F[main] = True
    main_proj_C = proj_CF[:, main].sum(1)
    main_act_CM = f_CF[:, main]
    # absorption fraction (partial absorption, up to max_absorbing_latents latents)
    allowed_F = ~main_mask_F & (cos_F >= cfg.absorption_fraction_cos_threshold)
    pot_CF = torch.where(allowed_F & (proj_CF > 0), proj_CF, torch.zeros_like(proj_CF))
    top_sum_C = pot_CF.topk(min(cfg.max_absorbing_latents, pot_CF.shape[1]), dim=1).values.sum(1)
    pos_act = act_C > 0
    safe_act = torch.where(pos_act, act_C, torch.ones_like(act_C))
    share_C = torch.where(pos_act, top_sum_C / safe_act, torch.full_like(act_C, -math.inf))
    zero = ~pos_act | (main_proj_C >= act_C) | (share_C < cfg.projection_proportion_threshold)
    one = ~zero & (main_proj_C <= 0)
    absorbed = torch.minimum(top_sum_C, act_C - main_proj_C)
    mid = (absorbed / (absorbed + main_proj_C).clamp_min(1e-30)).clamp(0.0, 1.0)
    fraction_C = torch.where(zero, torch.zeros_like(mid), torch.where(one, torch.ones_like(mid), mid))
    # full absorption by a single latent
    top_idx_C = proj_CF.argmax(1)
    top_proj_C = proj_CF.gather(1, top_idx_C[:, None])[:, 0]
    top_cos_C = cos_F[top_idx_C]
    main_off_C = (main_act_CM.abs() < EPS).all(1)
    full_C = (main_off_C & (top_cos_C >= cfg.full_absorption_cos_threshold) & pos_act
              & (top_proj_C / safe_act >= cfg.projection_proportion_threshold))
    return {
        "absorption_fraction": fraction_C,
        "is_full_absorption": full_C,
        "probe_projection": act_C,
        "main_projection": main_proj_C,
        "main_act_sum": main_act_CM.sum(1),
        "top_latent": top_idx_C,
        "top_projection": top_proj_C,
        "top_cos": top_cos_C,
    }


@dataclass
class AbsorptionResult:
    """What ``evaluate_sae`` returns."""

    summary: dict[str, Any]
    """Scores with SAEBench key names (lower absorption is better)."""
    per_letter: pd.DataFrame
    """One row per letter."""
    words: pd.DataFrame
    """One row per probe true-positive test word (candidates), with its absorption numbers."""


def _stats(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else float("nan")


def absorption_scores(*, y_test_N: Tensor, probe_scores_NL: Tensor, ksparse_scores_NL: Tensor, split_feats: list[list[int]],
                      lat_abs: SparseLatents, x_abs_ND: Tensor, W_dec_FD: Tensor, probe_W_LD: Tensor, probe_f1_L: Tensor,
                      cfg: AbsorptionConfig, words: list[str] | None = None) -> AbsorptionResult:
    """Legacy and current absorption scores from the per-word rules of ``word_absorption``.

    Candidates of letter L: test words of L on which the ground-truth probe fires (true positives).
    * legacy (early-2025 SAEBench, the papers): candidates whose k-sparse probe (split features) is
      silent; rate = fully absorbed / true positives; mean over letters with a candidate whose split
      features are all off on the absorption prompt.
    * current: every true positive; ``mean_absorption_fraction_score`` and
      ``mean_full_absorption_score`` averaged over letters with probe F1 > ``min_probe_f1``.
    """
    n_classes = probe_W_LD.shape[0]
    rows, word_rows = [], []
    for l in range(n_classes):
        pos = y_test_N == l
        tp = pos & (probe_scores_NL[:, l] > 0)
        tp_idx = torch.nonzero(tp).flatten()
        n_tp = int(tp_idx.numel())
        main = split_feats[l]
        row = {"letter": LETTERS[l], "n_test": int(pos.sum()), "probe_f1": float(probe_f1_L[l]),
               "num_probe_true_positives": n_tp, "num_split_features": len(main),
               "split_feats": " ".join(str(i) for i in main)}
        if n_tp:
            r = word_absorption(lat_abs.dense(tp_idx), x_abs_ND[tp_idx], W_dec_FD, probe_W_LD[l], main, cfg)
            legacy_cand = ksparse_scores_NL[tp_idx, l] <= 0
            legacy_kept = legacy_cand & (r["main_act_sum"] < EPS)
            legacy_abs = legacy_cand & r["is_full_absorption"]
            row.update({
                "num_legacy_candidates": int(legacy_cand.sum()),
                "num_absorption": int(legacy_abs.sum()),
                "absorption_rate": float(legacy_abs.sum()) / n_tp,
                "legacy_included": bool(legacy_kept.any()),
                "sum_absorption_fraction": float(r["absorption_fraction"].sum()),
                "mean_absorption_fraction": float(r["absorption_fraction"].sum()) / n_tp,
                "num_full_absorption": int(r["is_full_absorption"].sum()),
                "full_absorption_rate": float(r["is_full_absorption"].sum()) / n_tp,
            })
            for j, n in enumerate(tp_idx.tolist()):
                word_rows.append({
                    "letter": LETTERS[l], "word": words[n] if words is not None else n, "test_row": n,
                    "legacy_candidate": bool(legacy_cand[j]), "absorption_fraction": float(r["absorption_fraction"][j]),
                    "is_full_absorption": bool(r["is_full_absorption"][j]),
                    "probe_projection": float(r["probe_projection"][j]), "main_projection": float(r["main_projection"][j]),
                    "top_latent": int(r["top_latent"][j]), "top_projection": float(r["top_projection"][j]),
                    "top_cos": float(r["top_cos"][j]),
                })
        else:
            row.update({"num_legacy_candidates": 0, "num_absorption": 0, "absorption_rate": float("nan"),
                        "legacy_included": False, "sum_absorption_fraction": 0.0, "mean_absorption_fraction": float("nan"),
                        "num_full_absorption": 0, "full_absorption_rate": float("nan")})
        row["current_included"] = bool(n_tp > 0 and row["probe_f1"] > cfg.min_probe_f1)
        rows.append(row)
    per = pd.DataFrame(rows)
    leg = per[per["legacy_included"]]
    cur = per[per["current_included"]]
    n_cur = int(len(cur))
    frac_mean, frac_std = _stats(cur["mean_absorption_fraction"].tolist())
    full_mean, full_std = _stats(cur["full_absorption_rate"].tolist())
    split_mean, split_std = _stats(cur["num_split_features"].astype(float).tolist())
    legacy_mean, legacy_std = _stats(leg["absorption_rate"].tolist())
    summary = {
        "mean_absorption_fraction_score": frac_mean,
        "mean_full_absorption_score": full_mean,
        "mean_num_split_features": split_mean,
        "std_dev_absorption_fraction_score": frac_std,
        "std_dev_full_absorption_score": full_std,
        "std_dev_num_split_features": split_std,
        "n_letters_current": n_cur,
        "current_valid": bool(n_cur >= cfg.min_letters_for_eval),
        "mean_absorption_score": legacy_mean,
        "std_dev_absorption_score": legacy_std,
        "mean_num_split_features_legacy": _stats(leg["num_split_features"].astype(float).tolist())[0],
        "n_letters_legacy": int(len(leg)),
        "mean_num_split_features_all_letters": float(per["num_split_features"].mean()),
    }
    if not summary["current_valid"]:
        summary["note"] = (
            f"only {n_cur} letters have a ground-truth probe with test F1 > {cfg.min_probe_f1}; SAEBench needs "
            f"{cfg.min_letters_for_eval} and would not score this model/layer. The current scores average over these {n_cur}."
        )
    return AbsorptionResult(summary=summary, per_letter=per, words=pd.DataFrame(word_rows))
