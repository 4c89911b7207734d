"""Unlearning as a pipeline stage: model side and one SAE (see :mod:`saelib.stages`)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from ..evals import unlearning as U
from ..io import atomic_write_json
from ..models import LoadedModel
from . import Prepared, model_loader, series_table

NAME = "unlearning"
LAZY_MODEL = False
"""The SAE side runs the model (the clamped SAE is spliced into it)."""


def prepare(run: dict[str, Any], cache_dir: str | Path, *, model: LoadedModel | Callable[[], LoadedModel] | None = None,
            progress: bool = False) -> Prepared:
    """Residuals of the frequency corpora and the loss sequences (or the paper's questions), cached under ``cache_dir``."""
    cfg = U.UnlearningConfig.from_params(run.get("unlearning", {}))
    model_name = cfg.model or run["model"]
    get = model_loader(model if model_name == run["model"] else None, model_name, run.get("device", "auto"))
    layer = int(run["layer"])
    data = U.build_data(get(), layer, cfg, cache_dir, progress=progress)
    questions = U.paper_questions(get(), layer, cfg, cache_dir) if cfg.metric == "wmdp" else None
    return Prepared(NAME, cfg, data, model_name, layer, get, questions)


def model_side_tables(prep: Prepared) -> dict[str, pd.DataFrame]:
    return {"data": series_table({**prep.data.meta, "mean_norm": prep.data.mean_norm})}


def output_files(sae_name: str) -> list[str]:
    return [f"{sae_name}.json"]


def evaluate(prep: Prepared, sae, out_dir: str | Path, sae_name: str, *, extra: dict[str, Any] | None = None,
             progress: bool = False) -> dict[str, float]:
    result = U.evaluate(prep.model(), sae, prep.layer, prep.data, prep.cfg, prep.extra, progress=progress)
    doc = U.results_document(sae_name, prep.cfg.metric, result, prep.cfg,
                             {"model": prep.model_name, "layer": prep.layer, **(extra or {})})
    atomic_write_json(Path(out_dir) / f"{sae_name}.json", doc)
    return {"unlearning_score": float(result["unlearning_score"])}
