"""Sparse probing as a pipeline stage: model side and one SAE (see :mod:`saelib.stages`)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from ..evals import probing
from ..evals.pooled import sae_config_dict
from ..models import LoadedModel
from . import Prepared, model_loader

NAME = "probing"
LAZY_MODEL = True
"""The model is loaded only to fill a missing cache entry."""
HEADLINE = ("sae_top_1_test_accuracy", "llm_top_1_test_accuracy", "sae_test_accuracy", "llm_test_accuracy")


def prepare(run: dict[str, Any], cache_dir: str | Path, *, model: LoadedModel | Callable[[], LoadedModel] | None = None,
            progress: bool = False) -> Prepared:
    """Pooled residuals of every task's texts and the residual baselines (cached under ``cache_dir``)."""
    cfg = probing.ProbingEvalConfig.from_params(run)
    get = model_loader(model, run["model"], run.get("device", "auto"))
    data = probing.prepare_probing(cfg, model=get, model_name=run["model"], layer=int(run["layer"]),
                                   cache_dir=cache_dir, progress=progress)
    return Prepared(NAME, cfg, data, run["model"], int(run["layer"]), get)


def model_side_tables(prep: Prepared) -> dict[str, pd.DataFrame]:
    return {"tasks": probing.tasks_summary(prep.data), "residual_baselines": probing.llm_table(prep.data)}


def output_files(sae_name: str) -> list[str]:
    return [f"{sae_name}.json", f"{sae_name}_per_task.csv"]


def evaluate(prep: Prepared, sae, out_dir: str | Path, sae_name: str, *, extra: dict[str, Any] | None = None,
             progress: bool = False) -> dict[str, float]:
    result = probing.probe_sae(prep.data, sae)
    probing.save_probing_results(prep.data, result, out_dir, sae_name, sae_cfg=sae_config_dict(sae),
                                 extra={"model": prep.model_name, "layer": prep.layer, **(extra or {})})
    overall = probing.average_over_tasks(result["per_task"])
    return {k: float(overall[k]) for k in HEADLINE if k in overall}
