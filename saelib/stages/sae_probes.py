"""The sae-probes sparse-probing eval as a pipeline stage: model side and one SAE (see :mod:`saelib.stages`).

Reported beside SAEBench's sparse probing (``saelib.stages.probing``), never mixed into it: its own
results folder (``results/<profile>/sae_probes``) and summary table."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from ..evals import sae_probes
from ..evals.pooled import sae_config_dict
from ..io import atomic_write_text
from ..models import LoadedModel
from . import Prepared, model_loader

NAME = "sae_probes"
LAZY_MODEL = True
"""The model is loaded only to fill a missing residual cache entry."""


def prepare(run: dict[str, Any], cache_dir: str | Path, *, model: LoadedModel | Callable[[], LoadedModel] | None = None,
            progress: bool = False) -> Prepared:
    """Last-token residuals of every dataset's train/test prompts and the L2 residual baselines (cached
    under ``cache_dir``)."""
    cfg = sae_probes.SaeProbesConfig.from_params(run)
    get = model_loader(model, run["model"], run.get("device", "auto"))
    layer = int(run["layer"])
    data = sae_probes.prepare_sae_probes(cfg, model=get, model_name=run["model"], layer=layer, cache_dir=cache_dir)
    return Prepared(NAME, cfg, data, run["model"], layer, get)


def tasks_table(prep: Prepared) -> pd.DataFrame:
    """One row per prepared dataset: classes (labels 0 and 1), split sizes, the residual baseline (no cache
    hit flag: the saved table must not depend on whether the cache existed)."""
    rows = {}
    for name, td in prep.data.tasks.items():
        row = {"class_0": td.classes[0], "class_1": td.classes[1], "n_train": int(len(td.y_train)),
               "n_test": int(len(td.y_test)), "positives_train": int(td.y_train.sum())}
        if td.llm is not None:
            row.update({"llm_test_accuracy": td.llm["test_acc"], "llm_test_auc": td.llm["test_auc"],
                        "llm_test_f1": td.llm["test_f1"], "llm_C": td.llm["C"]})
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("dataset_name")


def model_side_tables(prep: Prepared) -> dict[str, pd.DataFrame]:
    return {"tasks": tasks_table(prep)}


def output_files(sae_name: str) -> list[str]:
    return [f"{sae_name}.json", f"{sae_name}_per_task.csv"]


def evaluate(prep: Prepared, sae, out_dir: str | Path, sae_name: str, *, extra: dict[str, Any] | None = None,
             progress: bool = False) -> dict[str, float]:
    """sae-probes of one SAE; returns the dataset-averaged ``sae_top_{k}_test_*`` and ``llm_test_*``."""
    result = sae_probes.sae_probes_sae(prep.data, sae)
    path = sae_probes.save_sae_probes_results(prep.data, result, out_dir, sae_name, sae_cfg=sae_config_dict(sae),
                                              extra={"model": prep.model_name, "layer": prep.layer, **(extra or {})})
    output = sae_probes.sae_probes_output(prep.data, result, variant=sae_name)
    table = sae_probes.per_task_table(output) if output["eval_result_details"] else pd.DataFrame()
    atomic_write_text(Path(path).parent / f"{sae_name}_per_task.csv", table.to_csv())
    metrics = output["eval_result_metrics"]
    return {k: float(v) for side in ("sae", "llm") for k, v in metrics[side].items() if v is not None}
