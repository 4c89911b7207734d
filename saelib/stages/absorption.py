"""Absorption (first-letter task) as a pipeline stage: model side and one SAE (see :mod:`saelib.stages`)."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from ..evals import absorption as ab
from ..models import LoadedModel
from . import Prepared, model_loader, series_table

NAME = "absorption"
LAZY_MODEL = False
"""The model side needs the model's tokenizer even when every cache entry exists."""
HEADLINE = ("mean_absorption_score", "mean_absorption_fraction_score", "mean_full_absorption_score",
            "mean_num_split_features")


def prepare(run: dict[str, Any], cache_dir: str | Path, *, model: LoadedModel | Callable[[], LoadedModel] | None = None,
            progress: bool = False) -> Prepared:
    """Vocabulary, prompts, residuals, prompt accuracy and letter probes (cached under ``cache_dir``)."""
    cfg = ab.AbsorptionConfig.from_params(run.get("absorption", {}))
    get = model_loader(model, run["model"], run.get("device", "auto"))
    data = ab.prepare_absorption_data(get(), int(run["layer"]), cfg, cache_dir, progress=progress)
    return Prepared(NAME, cfg, data, run["model"], int(run["layer"]), get)


def model_side_tables(prep: Prepared) -> dict[str, pd.DataFrame]:
    d = prep.data
    info = {k: v for k, v in d.info.items() if k not in ("example_prompt", "cache_folder")}
    return {"letter_probes": d.probe_table.merge(d.accuracy_table, on="letter"), "info": series_table(info)}


def output_files(sae_name: str) -> list[str]:
    return [f"{sae_name}.json", f"{sae_name}_per_letter.csv"]


def evaluate(prep: Prepared, sae, out_dir: str | Path, sae_name: str, *, extra: dict[str, Any] | None = None,
             progress: bool = False) -> dict[str, float]:
    result = ab.evaluate_sae(sae, prep.data, prep.cfg)
    model_side = {k: v for k, v in prep.data.info.items() if k != "cache_folder"}  # no machine paths in results
    ab.save_results(result, out_dir, sae_name, prep.cfg,
                    extra={"model": prep.model_name, "layer": prep.layer, **(extra or {}), "model_side": model_side})
    return {k: float(result.summary[k]) for k in HEADLINE}
