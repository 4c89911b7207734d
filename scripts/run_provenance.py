"""Say, per result row, on which machine its stages ran: the md5s dvc.lock records for the data/ directories
each stage read, looked up in docs/run_machines.yaml.

    python scripts/run_provenance.py              # a Markdown table, one line per run_variants row
    python scripts/run_provenance.py --check-code # also ask `dvc status` which stages ran on older code/params

Why it exists: the model and SAE matmuls run in bf16 on AVX-512/AMX CPUs and in fp32 on AVX2-only CPUs, and
bf16 kernels of different CPU families round differently, so two machine kinds extract different activations.
The full default run spans several sessions on whatever machine each one gets; a resume on another machine
kind (``scripts/repro_in_order.py --unfinished-only --allow-new-activations``) keeps the finished rows and adds
new ones from its own extraction. This script makes that mix visible instead of leaving it to commit messages.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from repro_in_order import PER_SAE, ROOT  # noqa: E402 - the per-SAE stages, one definition
DATA_KEY = {"activations": "activations", "core": "eval_cache/core", "absorption": "eval_cache/absorption",
            "scr": "eval_cache/scr", "probing": "eval_cache/probing", "sae_probes": "eval_cache/sae_probes",
            "unlearning": "eval_cache/unlearning"}
"""Registry key (docs/run_machines.yaml ``md5:``) -> directory under ``data/<profile>/``."""


def machine_index(registry: dict) -> dict[str, str]:
    """``{md5: machine name}`` over every directory md5 the registry lists; an md5 listed twice is an error
    (it would make the answer ambiguous)."""
    out: dict[str, str] = {}
    for m in registry.get("machines", []):
        for key, md5 in (m.get("md5") or {}).items():
            if key not in DATA_KEY:
                raise ValueError(f"docs/run_machines.yaml: machine {m['name']!r} lists unknown key {key!r}; "
                                 f"use one of {sorted(DATA_KEY)}")
            if md5 in out and out[md5] != m["name"]:
                raise ValueError(f"docs/run_machines.yaml: md5 {md5} is listed for both {out[md5]!r} and {m['name']!r}")
            out[md5] = m["name"]
    return out


def stage_machines(entry: dict, profile: str, index: dict[str, str]) -> set[str]:
    """The machines of the data/ directories one dvc.lock stage entry read (``unrecorded <md5 prefix>`` for an
    md5 the registry lacks)."""
    names = set()
    for dep in entry.get("deps", []):
        path, md5 = dep.get("path", ""), dep.get("md5")
        if path.startswith(f"data/{profile}/") and md5:
            names.add(index.get(md5, f"unrecorded {md5[:8]}"))
    return names


def code_current(status_entries: list) -> bool:
    """True when a stage's ``dvc status --json`` entries change nothing but paths under data/ and checkpoints/
    (the machine-made inputs): it ran on the current code, command and params."""
    for entry in status_entries:
        if not isinstance(entry, dict):
            return False
        for kind, paths in entry.items():
            if kind not in ("changed deps", "changed outs") or not isinstance(paths, dict):
                return False
            if not all(p.startswith(("data/", "checkpoints/")) for p in paths):
                return False
    return True


def provenance(lock: dict, variants: list[str], profile: str, index: dict[str, str],
               status: dict | None = None) -> list[dict]:
    """One record per variant: ``{"variant", "stages": {stage: "machine[, machine]" | None}}``; with
    ``status`` (``dvc status --json``), a stage that ran on older code or params reads ``"... (stale)"``."""
    stages = lock.get("stages", {})
    rows = []
    for v in variants:
        cells = {}
        for st in PER_SAE:
            entry = stages.get(f"{st}@{v}")
            if entry is None:
                cells[st] = None
                continue
            cell = ", ".join(sorted(stage_machines(entry, profile, index))) or "?"
            if status is not None and not code_current(status.get(f"{st}@{v}", [])):
                cell += " (stale)"
            cells[st] = cell
        rows.append({"variant": v, "stages": cells})
    return rows


def markdown(rows: list[dict]) -> str:
    """The records as a Markdown table (``-`` where dvc.lock has no entry)."""
    lines = ["| row | " + " | ".join(PER_SAE) + " |", "|---|" + "---|" * len(PER_SAE)]
    for r in rows:
        lines.append(f"| {r['variant']} | " + " | ".join(r["stages"][s] or "-" for s in PER_SAE) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check-code", action="store_true", help="ask `dvc status` (minutes) and mark stages that "
                    "ran on older code or params as stale")
    ap.add_argument("--json", action="store_true", help="print JSON records instead of a table")
    args = ap.parse_args(argv)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())
    index = machine_index(yaml.safe_load((ROOT / "docs/run_machines.yaml").read_text()))
    variants = list(params["run_variants"])
    status = None
    if args.check_code:
        names = [f"{s}@{v}" for v in variants for s in PER_SAE if f"{s}@{v}" in lock.get("stages", {})]
        out = subprocess.run(["dvc", "status", "--json", *names], cwd=ROOT, check=True, capture_output=True, text=True)
        status = json.loads(out.stdout or "{}")
    rows = provenance(lock, variants, params["profile"], index, status)
    print(json.dumps(rows, indent=1) if args.json else markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
