"""Settings dataclasses from ``params.yaml`` blocks: one checked path from a YAML mapping to keyword
arguments, so every eval config rejects a misspelt key the same way.

YAML gives lists where the dataclasses hold tuples; values are converted on the way in.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping, TypeVar

T = TypeVar("T")


def field_names(cls: type) -> set[str]:
    """Names of the dataclass ``cls``'s fields."""
    return {f.name for f in dataclasses.fields(cls)}


def _tuplify(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def split_block(block: Mapping[str, Any] | None, groups: Mapping[str, Iterable[str]], *, what: str) -> dict[str, dict[str, Any]]:
    """Share the keys of ``block`` out among ``groups`` (name -> accepted keys; a key goes to the first
    group that accepts it). Lists become tuples. A key no group accepts raises ``ValueError`` naming
    ``what`` and every accepted key. Every group is present in the result (possibly empty)."""
    accepted = {name: set(keys) for name, keys in groups.items()}
    out: dict[str, dict[str, Any]] = {name: {} for name in accepted}
    unknown = []
    for key, value in dict(block or {}).items():
        home = next((name for name, keys in accepted.items() if key in keys), None)
        if home is None:
            unknown.append(key)
        else:
            out[home][key] = _tuplify(value)
    if unknown:
        known = sorted(set().union(*accepted.values()))
        raise ValueError(f"unknown {what} settings {sorted(unknown)}; known: {', '.join(known)}")
    return out


def from_block(cls: type[T], block: Mapping[str, Any] | None, *, what: str) -> T:
    """``cls(**block)`` for the dataclass ``cls``, lists as tuples; unknown keys raise ``ValueError``."""
    return cls(**split_block(block, {"own": field_names(cls)}, what=what)["own"])
