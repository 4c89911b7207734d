"""One entry point per evaluation, on top of the eval modules' public API.

Every eval has two halves, and the pipeline runs them as two kinds of DVC stage:

* the **model side** (``prepare``): everything that depends only on the language model, its layer and
  the eval's settings (prompts, residuals, ground-truth probes, task data). It is built once per
  profile into the eval's own cache folder (``data/<profile>/eval_cache/<eval>``, the output of the
  ``<eval>_prep`` stage) and read back by every SAE;
* the **SAE side** (``evaluate``): one SAE against that prepared data, writing the eval's
  SAEBench-shaped JSON (and its CSVs) for that SAE into a results folder (the ``<eval>@<variant>``
  stages, and ``python -m saelib.evaluate`` for an SAE trained elsewhere).

Each eval has its own submodule (``saelib.stages.absorption``, ``.scr`` (with TPP), ``.probing``,
``.unlearning``, ``.sae_probes``) with the same four functions: ``prepare(run, cache_dir, *, model, progress)``,
``model_side_tables(prep)``, ``output_files(sae_name)`` and ``evaluate(prep, sae, out_dir, sae_name, *,
extra, progress)``. A notebook imports only its eval's submodule, so a DVC stage depends only on the eval
module it runs (``tests/test_dvc_deps.py``). This package holds what they share and the pipeline's
per-profile wrappers (``prepare_eval``, ``load_prepared``, ``evaluate_variant``), which take the eval as
its submodule or by name.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd

from ..io import atomic_write_text
from ..models import LoadedModel, load_model
from ..sae import load_sae

EVALS = ("absorption", "scr", "probing", "unlearning", "sae_probes")
"""The evals that run per SAE after training (``core`` runs inside the train stage). ``scr`` also runs TPP;
``sae_probes`` is the second sparse-probing protocol (sae-probes', reported beside SAEBench's)."""


class MissingPrepError(FileNotFoundError):
    """An SAE-side stage found no model-side cache (its ``<eval>_prep`` stage has not run)."""


@dataclass
class Prepared:
    """The model side of one eval, ready for any number of SAEs."""

    eval: str
    """Which eval (one of :data:`EVALS`)."""
    cfg: Any
    """The eval's config (for ``scr``: ``(ScrEvalConfig, TppEvalConfig)``)."""
    data: Any
    """What the eval module's ``prepare`` returned (for ``scr``: ``(ScrPrep, TppPrep)``)."""
    model_name: str
    """The model the eval runs on (unlearning's may differ from the SAE's: the paper profile uses the instruct model)."""
    layer: int
    """The hooked layer."""
    model: Callable[[], LoadedModel]
    """Zero-argument loader of the model (only unlearning needs it on the SAE side)."""
    extra: Any = None
    """Eval-specific additions (unlearning's WMDP/MMLU questions for the paper metric)."""


def check_eval(name: str) -> str:
    """``name`` if it is a known per-SAE eval, else a clear error listing them."""
    if name not in EVALS:
        raise ValueError(f"unknown eval {name!r}; the per-SAE evals are: {', '.join(EVALS)} (core runs with training)")
    return name


def impl(which: str | ModuleType) -> ModuleType:
    """The stage submodule of an eval given by name (``"scr"``) or as the module itself."""
    if isinstance(which, ModuleType):
        return which
    return importlib.import_module(f"{__name__}.{check_eval(which)}")


def model_loader(model: LoadedModel | Callable[[], LoadedModel] | None, name: str,
                 device: str = "auto") -> Callable[[], LoadedModel]:
    """A zero-argument loader: of ``model`` itself, of the given loader, or ``load_model(name, device=device)``."""
    if isinstance(model, LoadedModel):
        return lambda: model
    if model is not None:
        return model
    return lambda: load_model(name, device=device)


def stage_run(P: dict[str, Any]) -> dict[str, Any]:
    """The profile block handed to an eval's ``prepare``, with ``device`` (``P["device"]``) added: where
    the model is loaded when a cache entry has to be filled."""
    return {**P["run"], "device": P.get("device", "auto")}


def write_model_side(which: str | ModuleType, prep: Prepared, folder: str | Path) -> list[Path]:
    """Write the eval's model-side tables as ``folder/<stem>.csv`` (read by the figures stage)."""
    folder = Path(folder)
    return [atomic_write_text(folder / f"{stem}.csv", table.to_csv())
            for stem, table in impl(which).model_side_tables(prep).items()]


def series_table(values: dict[str, Any], column: str = "value") -> pd.DataFrame:
    """A one-column table of the scalar entries of ``values``."""
    return pd.Series({k: v for k, v in values.items() if not isinstance(v, (dict, list))}, dtype=object).to_frame(column)


# ---- the pipeline's stages (one profile, SAEs named by variant) ---------------------------------------

def sae_dir(P: dict[str, Any], variant: str) -> Path:
    """Folder of ``variant``'s trained SAE (SAELens layout): ``checkpoints/<profile>/<variant>/sae``."""
    return P["paths"]["checkpoints"] / variant / "sae"


def load_variant_sae(P: dict[str, Any], variant: str):
    """Load the trained SAE of ``variant``; a clear error names the stage that builds it."""
    folder = sae_dir(P, variant)
    if not (folder / "cfg.json").exists():
        raise FileNotFoundError(f"no trained SAE for variant {variant!r} at {folder}; run `dvc repro train@{variant}`")
    return load_sae(folder)


def eval_cache_dir(P: dict[str, Any], which: str | ModuleType) -> Path:
    """The model-side cache of an eval: ``data/<profile>/eval_cache/<eval>`` (its ``<eval>_prep`` stage's output)."""
    return P["paths"]["eval_cache"] / impl(which).NAME


def results_dir(P: dict[str, Any], which: str | ModuleType) -> Path:
    """Where an eval writes its per-SAE results: ``results/<profile>/<eval>``."""
    return P["paths"]["results"] / impl(which).NAME


def prepare_eval(P: dict[str, Any], which: str | ModuleType, *, progress: bool = True) -> Prepared:
    """The ``<eval>_prep`` stage: build the eval's model side into its cache and write its model-side
    tables to ``results/<profile>/model_side/<eval>/``."""
    mod = impl(which)
    prep = mod.prepare(stage_run(P), eval_cache_dir(P, mod), progress=progress)
    write_model_side(mod, prep, P["paths"]["model_side"] / mod.NAME)
    return prep


def load_prepared(P: dict[str, Any], which: str | ModuleType, *, progress: bool = False) -> Prepared:
    """The model side of an eval as its ``<eval>_prep`` stage left it. Never built here: an SAE-side stage
    must not write into another stage's output."""
    mod = impl(which)
    folder = eval_cache_dir(P, mod)
    if not folder.is_dir() or not any(folder.iterdir()):
        raise MissingPrepError(f"no model-side cache for {mod.NAME!r} at {folder}; build it with `dvc repro {mod.NAME}_prep`")

    def refuse() -> LoadedModel:
        raise MissingPrepError(f"the model-side cache at {folder} lacks data the {mod.NAME!r} settings need (settings "
                               f"changed since it was built?); rebuild it with `dvc repro {mod.NAME}_prep`")

    return mod.prepare(stage_run(P), folder, model=refuse if mod.LAZY_MODEL else None, progress=progress)


def evaluate_variant(P: dict[str, Any], which: str | ModuleType, variant: str, *, prep: Prepared | None = None,
                     progress: bool = True) -> dict[str, float]:
    """The ``<eval>@<variant>`` stage: evaluate ``variant``'s trained SAE and write
    ``results/<profile>/<eval>/<variant>.json`` (plus the eval's CSVs); returns the headline numbers.
    The eval-side counterpart of ``pipeline.train_variant``."""
    mod = impl(which)
    if variant not in P["all_variants"]:
        raise KeyError(f"unknown SAE variant {variant!r}; params.yaml defines: {', '.join(P['all_variants'])}")
    sae = load_variant_sae(P, variant)
    prep = prep if prep is not None else load_prepared(P, mod, progress=progress)
    return mod.evaluate(prep, sae, results_dir(P, mod), variant, extra={"profile": P["profile"]}, progress=progress)
