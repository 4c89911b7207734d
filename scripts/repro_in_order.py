"""Run the full pipeline one SAE at a time, headline rows first, then ``dvc repro`` for the rest.

    python scripts/repro_in_order.py                 # the active profile's run_variants
    python scripts/repro_in_order.py --dry           # print the dvc commands only
    python scripts/repro_in_order.py --skip '_matched'   # leave out variants whose name matches (a regex)

Same stages, same results as a plain ``dvc repro`` (DVC skips whatever dvc.lock already records),
only in an order that is useful when a long run is interrupted: every SAE finished so far has all of
its evals (train@, then absorption@, scr@, probing@, sae_probes@, and unlearning@ when the variant is
in unlearning_variants.yaml),
and the headline rows (the Makefile's ``QUICK_VARIANTS``) finish first, then the other rows the unlearning eval
scores (the headline rows' seeds), then the rest (sweeps, other runs). DVC writes dvc.lock after
every stage, so re-running this script resumes where the last run stopped.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PER_SAE = ("train", "absorption", "scr", "probing", "sae_probes", "unlearning")


def headline_variants() -> list[str]:
    """``QUICK_VARIANTS`` from the Makefile (the rows ``make quick`` runs)."""
    m = re.search(r"^QUICK_VARIANTS := (.+)$", (ROOT / "Makefile").read_text(), re.M)
    return [v.strip() for v in m.group(1).split(",")] if m else []


def ordered_variants(run_variants: list[str], first: list[str]) -> list[str]:
    """``first`` (those that are in ``run_variants``), then the rest in ``run_variants`` order."""
    head = [v for v in dict.fromkeys(first) if v in run_variants]
    return head + [v for v in run_variants if v not in head]


def foreach_lists(spec: dict, params: dict) -> dict[str, list[str]]:
    """For each ``foreach`` stage of ``dvc.yaml``, the variants it runs for: ``${run_variants}`` from
    params.yaml, or a list from one of ``vars:``'s files (``unlearning_variants.yaml``)."""
    context = dict(params)
    for entry in spec.get("vars", []):
        if isinstance(entry, str):
            context.update(yaml.safe_load((ROOT / entry).read_text()) or {})
        elif isinstance(entry, dict):
            context.update(entry)
    out = {}
    for name, stage in spec["stages"].items():
        if "foreach" in stage:
            key = re.fullmatch(r"\$\{(\w+)\}", str(stage["foreach"]).strip())
            if not key:
                raise ValueError(f"dvc.yaml: stage {name!r} loops over {stage['foreach']!r}, not a ${{list}} variable")
            out[name] = list(context[key.group(1)])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--skip", metavar="REGEX", help="leave out the variants whose name matches REGEX (re.search) and "
                    "the final plain `dvc repro` (which would run them): for holding back rows whose code is changing")
    args = ap.parse_args(argv)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    lists = foreach_lists(yaml.safe_load((ROOT / "dvc.yaml").read_text()), params)
    per_sae = [s for s in PER_SAE if s in lists]
    commands = [["dvc", "repro", *[f"{s}@{v}" for s in per_sae if v in lists[s]]]
                for v in ordered_variants(list(params["run_variants"]), headline_variants() + lists.get("unlearning", []))
                if not (args.skip and re.search(args.skip, v))]
    if not args.skip:
        commands.append(["dvc", "repro"])
    for cmd in commands:
        print("+", " ".join(cmd), flush=True)
        if not args.dry and subprocess.call(cmd, cwd=ROOT) != 0:
            print(f"stopped: `{' '.join(cmd)}` failed; fix it and re-run this script to resume", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
