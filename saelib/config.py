"""``params.yaml`` → one resolved dict for the active profile.

``params.yaml`` holds ``profile`` (the active profile's name), ``profiles`` (one block per scale:
smoke / default / paper), ``sae_variants`` (SAE configurations by name) and ``run_variants`` (the
names that ``dvc repro`` trains and evaluates; DVC's ``foreach`` needs a top-level list). Notebooks
call ``load_params()`` and read ``P["run"]`` (the active profile's block), ``P["variants"]`` (the
variants to run, name → definition) and ``P["paths"]`` (where the profile's files live).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import yaml

PROFILES = ("smoke", "default", "paper")


class ConfigError(ValueError):
    """params.yaml is missing something or names something unknown."""


def repo_root() -> Path:
    """The repository root: ``$SAELIB_ROOT`` or the nearest parent holding ``params.yaml``."""
    env = os.environ.get("SAELIB_ROOT")
    if env:
        return Path(env)
    here = Path.cwd()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").exists():
            return folder
    raise ConfigError(f"no params.yaml in {here} or its parents; run from inside the repository")


def _paths(root: Path, profile: str) -> dict[str, Path]:
    """Where ``profile``'s files live. Everything a run writes is under a folder named after the
    profile, so running ``smoke`` or ``paper`` never touches the committed ``default`` outputs."""
    act = root / "data" / profile / "activations"
    results = root / "results" / profile
    return {
        "root": root,
        "activations_train": act / "train",
        "activations_heldout": act / "heldout",
        "eval_cache": root / "data" / profile / "eval_cache",
        "checkpoints": root / "checkpoints" / profile,
        "results": results,
        "tables": results / "tables",
        "metrics": results / "metrics",
        "model_side": results / "model_side",
        "figures": root / "figures" / profile,
        "readme_block": results / "README_results.md",
    }


def load_params(profile: str | None = None, path: str | Path | None = None) -> dict[str, Any]:
    """Read ``params.yaml`` and resolve the active profile.

    ``profile`` overrides the file's ``profile`` key (notebooks get it from papermill).
    """
    path = Path(path) if path is not None else repo_root() / "params.yaml"
    if not path.exists():
        raise ConfigError(f"{path} does not exist")
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    name = profile or raw.get("profile")
    profiles = raw.get("profiles", {})
    if name not in profiles:
        raise ConfigError(f"unknown profile {name!r}; params.yaml defines: {', '.join(profiles)}")
    run = copy.deepcopy(profiles[name])
    all_variants = raw.get("sae_variants", {})
    wanted = raw.get("run_variants")
    if wanted is None:
        wanted = list(all_variants)
    missing = [v for v in wanted if v not in all_variants]
    if missing:
        raise ConfigError(f"run_variants names unknown SAE variants {missing}; known: {', '.join(all_variants)}")
    variants = {v: copy.deepcopy(all_variants[v]) for v in wanted}
    return {
        "profile": name,
        "run": run,
        "variants": variants,
        "all_variants": all_variants,
        "paths": _paths(path.parent, name),
    }
