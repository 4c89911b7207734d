"""``params.yaml`` → one resolved dict for the active profile.

``params.yaml`` holds ``profile`` (the active profile's name), ``profiles`` (one block per scale:
smoke / default / paper), ``sae_variants`` (SAE configurations by name) and ``run_variants`` (the
names that ``dvc repro`` trains and evaluates; DVC's ``foreach`` needs a top-level list). Notebooks
call ``load_params()`` and read ``P["run"]`` (the active profile's block), ``P["variants"]`` (the
variants to run, name → definition), ``P["paths"]`` (where the profile's files live) and
``P["device"]`` (the resolved torch device string: ``device: auto`` in ``params.yaml`` becomes
``cuda`` when a GPU is visible, else ``cpu``).

Profile blocks are checked: a key that no other profile uses and that is not one of the documented
optional keys (:data:`OPTIONAL_PROFILE_KEYS`, :data:`OPTIONAL_CORE_KEYS`) is a typo until proven
otherwise, and raises :class:`ConfigError` with the closest known key.
"""
from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .devices import DEVICE_CHOICES, DeviceError, resolve_device

PROFILES = ("smoke", "default", "gpu", "paper")

OPTIONAL_PROFILE_KEYS = {
    "model": "registry name of the language model (saelib.models.REGISTRY)",
    "layer": "decoder layer whose residual output the SAEs read",
    "corpus": "offline | pile",
    "context": "sequence length in tokens",
    "train_tokens": "kept tokens in the training activation cache",
    "heldout_sequences": "sequences in the held-out activation cache",
    "extract_batch": "sequences per forward pass during extraction",
    "shard_tokens": "token positions per activation shard file (ExtractConfig)",
    "seed": "document-order seed of the corpus (ExtractConfig)",
    "threads": "torch threads during extraction (ExtractConfig)",
    "width_mult": "F = width_mult * d",
    "batch_size": "SAE batch in tokens",
    "sae_tokens": "tokens each SAE trains on",
    "warmup_scale": "multiplier of paper-scale warmup/ramp steps",
    "checkpoint_every": "steps between resumable training checkpoints",
    "test_variants": "run_variants the smoke test uses",
    "device": "auto | cpu | cuda | cuda:N (overrides the top-level device for this profile)",
    "core": "core-metric settings (see OPTIONAL_CORE_KEYS)",
    "absorption": "saelib.evals.absorption.AbsorptionConfig fields",
    "unlearning": "saelib.evals.unlearning.UnlearningConfig fields",
    "tasks": "labelled-record counts for probing/SCR/TPP (TaskDataConfig)",
    "probing": "sparse-probing settings",
    "scr": "SCR settings",
    "tpp": "TPP settings",
    "sae_probes": "settings of the second probing eval (SAE-probes tasks)",
}
"""Profile keys accepted even when no other profile uses them (key → what it sets)."""

OPTIONAL_CORE_KEYS = {
    "batch_size": "sequences per forward pass of the KL/CE splice",
    "n_kl_sequences": "held-out sequences the KL/CE splice scores (None: all)",
}
"""``core:`` keys accepted even when no other profile uses them."""

TOP_LEVEL_KEYS = ("profile", "device", "profiles", "run_variants", "sae_variants", "l1_calibration")
"""Top-level ``params.yaml`` keys saelib reads. Other top-level keys are allowed (DVC and other tools
may add their own) unless they look like a misspelling of one of these."""

CHECKED_BLOCKS = {"core": OPTIONAL_CORE_KEYS}
"""Nested profile blocks whose keys load_params checks (the eval blocks are checked by their
config dataclasses, which reject unknown keys when the eval reads them)."""


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


def _unknown_keys(keys: Iterable[str], allowed: set[str], *, where: str, path: Path) -> None:
    unknown = sorted(set(keys) - allowed)
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, sorted(allowed), n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise ConfigError(
        f"{path}: {where} has unknown key(s) {', '.join(hints)}; allowed: {', '.join(sorted(allowed))}. "
        "Fix the spelling in params.yaml (a misspelt key would silently fall back to its default); a new "
        "setting used by one profile only is declared in saelib/config.py (OPTIONAL_PROFILE_KEYS / OPTIONAL_CORE_KEYS)."
    )


def check_profile(name: str, profiles: Mapping[str, Any], path: Path) -> None:
    """Reject typos in profile ``name``: each key must be used by another profile or be documented
    (:data:`OPTIONAL_PROFILE_KEYS`); the same for the keys of :data:`CHECKED_BLOCKS` blocks."""
    block = profiles[name]
    if block is None:
        return
    if not isinstance(block, Mapping):
        raise ConfigError(f"{path}: profile {name!r} must be a mapping of settings, got {type(block).__name__}")
    others = [b for n, b in profiles.items() if n != name and isinstance(b, Mapping)]
    allowed = set(OPTIONAL_PROFILE_KEYS).union(*(set(b) for b in others))
    _unknown_keys(block, allowed, where=f"profile {name!r}", path=path)
    for sub, documented in CHECKED_BLOCKS.items():
        inner = block.get(sub)
        if inner is None:
            continue
        if not isinstance(inner, Mapping):
            raise ConfigError(f"{path}: profiles.{name}.{sub} must be a mapping, got {type(inner).__name__}")
        allowed_inner = set(documented).union(*(set(b.get(sub) or {}) for b in others))
        _unknown_keys(inner, allowed_inner, where=f"profiles.{name}.{sub}", path=path)


def check_top_level(raw: Mapping[str, Any], path: Path) -> None:
    """Reject a top-level key that is a near-miss of one saelib reads (``devise``, ``run_variant``)."""
    for key in raw:
        if key in TOP_LEVEL_KEYS:
            continue
        close = difflib.get_close_matches(str(key), TOP_LEVEL_KEYS, n=1, cutoff=0.8)
        if close:
            raise ConfigError(f"{path}: top-level key {key!r} is not a setting; did you mean {close[0]!r}?")


def resolve_device_setting(value: Any, path: Path, where: str = "device") -> str:
    """``params.yaml``'s ``device`` value → a torch device string; :class:`ConfigError` otherwise."""
    try:
        return str(resolve_device(value))
    except DeviceError as err:
        raise ConfigError(f"{path}: {where}: {err}. Allowed values: {', '.join(DEVICE_CHOICES)}") from None


def load_params(profile: str | None = None, path: str | Path | None = None) -> dict[str, Any]:
    """Read ``params.yaml`` and resolve the active profile.

    ``profile`` overrides the file's ``profile`` key (notebooks get it from papermill). The profile
    block's keys are checked for typos (:func:`check_profile`) and ``device`` (top level, or the
    profile's own) is resolved into ``P["device"]``.
    """
    path = Path(path) if path is not None else repo_root() / "params.yaml"
    if not path.exists():
        raise ConfigError(f"{path} does not exist")
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path} must hold a mapping (profile, profiles, run_variants, sae_variants, ...)")
    check_top_level(raw, path)
    name = profile or raw.get("profile")
    profiles = raw.get("profiles", {})
    if name not in profiles:
        raise ConfigError(f"unknown profile {name!r}; params.yaml defines: {', '.join(profiles)}")
    check_profile(name, profiles, path)
    run = copy.deepcopy(profiles[name] or {})
    if "device" in run:
        device = resolve_device_setting(run.pop("device"), path, f"profiles.{name}.device")
    else:
        device = resolve_device_setting(raw.get("device", "auto"), path)
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
        "l1_calibration": copy.deepcopy(raw.get("l1_calibration") or {}),
        "paths": _paths(path.parent, name),
        "device": device,
    }
