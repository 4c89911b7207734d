#!/usr/bin/env python
"""Retrain one variant twice from scratch on a profile and diff the results (provenance check).

    .venv/bin/python scripts/check_reproducible.py [--profile smoke] [--variant topk]

Each run happens in its own copy of the committed tree (tracked files only, no results, no caches,
no dvc.lock), through `dvc repro train@<variant>` exactly as the pipeline runs it. The two
`results/<profile>/core/<variant>.json` files must agree on every field except timings; the script
prints the fields that differ and exits 1 if any does. Use it before committing results: every
committed number must come from the committed code.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TIMING_WORDS = ("time", "wall", "seconds", "datetime", "timing")


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split("\n")
    return [f for f in out if f and (ROOT / f).is_file() and not f.startswith(("results/", "figures/")) and f != "dvc.lock"]


def make_copy(dest: Path, profile: str, variant: str) -> None:
    for rel in tracked_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["profile"] = profile
    params["run_variants"] = [variant]
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)


def is_timing(key: str) -> bool:
    """Timing fields (wall time, ``*_s`` durations) legitimately differ between two runs."""
    last = key.rsplit(".", 1)[-1]
    return last.endswith("_s") or any(word in part for part in key.split(".") for word in TIMING_WORDS)


def flatten(obj, prefix: str = "") -> dict[str, object]:
    if isinstance(obj, dict):
        out: dict[str, object] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


def differences(a: dict, b: dict) -> list[str]:
    fa, fb = flatten(a), flatten(b)
    keys = sorted(set(fa) | set(fb))
    return [f"{k}: {fa.get(k)!r} vs {fb.get(k)!r}" for k in keys if not is_timing(k) and fa.get(k) != fb.get(k)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="smoke")
    ap.add_argument("--variant", default="topk")
    args = ap.parse_args(argv)
    env = {k: v for k, v in os.environ.items() if k != "SAELIB_ROOT"}
    env["HF_HUB_OFFLINE"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    dvc = str(Path(sys.executable).parent / "dvc")
    results = []
    with tempfile.TemporaryDirectory(prefix="saelib-repro-check-") as tmp:
        for run in ("a", "b"):
            dest = Path(tmp) / run
            make_copy(dest, args.profile, args.variant)
            print(f"run {run}: dvc repro train@{args.variant} (profile {args.profile}) in {dest}", flush=True)
            proc = subprocess.run([dvc, "repro", f"train@{args.variant}"], cwd=dest, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n")
                return 2
            results.append(json.loads((dest / "results" / args.profile / "core" / f"{args.variant}.json").read_text()))
    diff = differences(*results)
    if diff:
        print(f"{len(diff)} fields differ between two fresh runs of {args.variant}:")
        print("\n".join(f"  {d}" for d in diff))
        return 1
    print(f"identical: {len(flatten(results[0]))} fields of results/{args.profile}/core/{args.variant}.json (timings ignored)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
