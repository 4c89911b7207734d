"""SCR and TPP as a pipeline stage: model side and one SAE (see :mod:`saelib.stages`)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from ..evals import scr, tpp
from ..evals.pooled import sae_config_dict
from ..models import LoadedModel
from . import Prepared, model_loader

NAME = "scr"
LAZY_MODEL = True
"""The model is loaded only to fill a missing cache entry."""


def prepare(run: dict[str, Any], cache_dir: str | Path, *, model: LoadedModel | Callable[[], LoadedModel] | None = None,
            progress: bool = False) -> Prepared:
    """Pooled residuals of every SCR and TPP text and the clean probes (cached under ``cache_dir``)."""
    scr_cfg, tpp_cfg = scr.ScrEvalConfig.from_params(run), tpp.TppEvalConfig.from_params(run)
    get = model_loader(model, run["model"], run.get("device", "auto"))
    layer = int(run["layer"])
    scr_prep = scr.prepare_scr(scr_cfg, model=get, model_name=run["model"], layer=layer, cache_dir=cache_dir,
                               progress=progress)
    tpp_prep = tpp.prepare_tpp(tpp_cfg, model=get, model_name=run["model"], layer=layer, cache_dir=cache_dir,
                               progress=progress)
    return Prepared(NAME, (scr_cfg, tpp_cfg), (scr_prep, tpp_prep), run["model"], layer, get)


def model_side_tables(prep: Prepared) -> dict[str, pd.DataFrame]:
    scr_prep, tpp_prep = prep.data
    return {"scr_clean": scr.clean_table(scr_prep), "scr_headroom": scr.headroom_table(scr_prep),
            "tpp_clean": pd.DataFrame({n: side.clean for n, (_, side) in tpp_prep.tasks.items()})}


def output_files(sae_name: str) -> list[str]:
    return [f"{sae_name}.json", f"{sae_name}_per_task.csv", f"{sae_name}_tpp.json", f"{sae_name}_tpp_per_class.csv"]


def evaluate(prep: Prepared, sae, out_dir: str | Path, sae_name: str, *, extra: dict[str, Any] | None = None,
             progress: bool = False) -> dict[str, float]:
    """SCR and TPP of one SAE; returns every ``<metric>@<n>`` averaged over tasks."""
    scr_prep, tpp_prep = prep.data
    extra = {"model": prep.model_name, "layer": prep.layer, **(extra or {})}
    shared: dict = {}  # mean-pooled latents of the sources both evals use
    scr_res = scr.scr_sae(scr_prep, sae, fbar_cache=shared)
    tpp_res = tpp.tpp_sae(tpp_prep, sae, fbar_cache=shared)
    cfg_dict = sae_config_dict(sae)
    scr.save_scr_results(scr_prep, scr_res, out_dir, sae_name, sae_cfg=cfg_dict, extra=extra)
    tpp.save_tpp_results(tpp_prep, tpp_res, out_dir, sae_name, sae_cfg=cfg_dict, extra=extra)
    curves = [scr.n_curve(per_task) for per_task in (scr.with_alternative(scr_res), tpp_res["per_task"]) if per_task]
    both = pd.concat(curves) if curves else pd.DataFrame(columns=["metric", "n", "value"])
    return {f"{m}@{n}": float(v) for m, n, v in both.itertuples(index=False)}
