"""Run the full pipeline one SAE at a time, headline rows first, then ``dvc repro`` for the rest.

    python scripts/repro_in_order.py                 # the active profile's run_variants
    python scripts/repro_in_order.py --dry           # print the dvc commands only
    python scripts/repro_in_order.py --skip '_matched'   # leave out variants whose name matches (a regex)
    python scripts/repro_in_order.py --unfinished-only   # on a fresh machine: only the rows dvc.lock lacks

Same stages, same results as a plain ``dvc repro`` (DVC skips whatever dvc.lock already records),
only in an order that is useful when a long run is interrupted: every SAE finished so far has all of
its evals (train@, then absorption@, scr@, probing@, sae_probes@, and unlearning@ when the variant is
in unlearning_variants.yaml),
and the headline rows (the Makefile's ``QUICK_VARIANTS``) finish first, then the other rows the unlearning eval
scores (the headline rows' seeds), then the rest (sweeps, other runs). DVC writes dvc.lock after
every stage, so re-running this script resumes where the last run stopped.

On a fresh machine (a new clone of a repository whose dvc.lock already records finished rows), the
uncommitted outputs -- the activation and eval caches under ``data/`` and the SAEs under ``checkpoints/``
-- are missing, so DVC treats every finished row as changed and a plain resume would retrain each SAE
(bit-identically) before it reaches new work. ``--unfinished-only`` asks ``dvc status`` once and leaves out
every row whose stages differ from dvc.lock only by such missing uncommitted paths; the final step is then
``dvc repro --single-item figures`` (the figures stage alone, from the committed results) instead of a
plain ``dvc repro``, which would retrain those SAEs. Before anything else it re-extracts the activations
and compares their shard SHA-256s with the committed extract summary: a machine of the other precision
class (bf16 on GPUs and AVX-512/AMX CPUs, fp32 on AVX2-only CPUs) extracts different activations, on which
the finished rows cannot be reproduced, so the script stops and says what to do. ``--allow-new-activations``
goes on regardless: it keeps every row that dvc.lock records as finished on the current code, even where its
data/ inputs were made on the other machine, and runs the rest from this machine's extraction (an SAE
retrained here always gets its evals re-run). The result then mixes machines; ``scripts/run_provenance.py``
says which row ran where, from the md5s in dvc.lock and docs/run_machines.yaml.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PER_SAE = ("train", "absorption", "scr", "probing", "sae_probes", "unlearning")
UNCOMMITTED = ("data/", "checkpoints/")
"""Output roots that are never committed (dvc.yaml: ``cache: false``, .gitignore): a fresh clone lacks them."""
MISSING = ("deleted", "not in cache")


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


def finished_stages(stages: list[str], status: dict, uncommitted: tuple[str, ...] = UNCOMMITTED,
                    other_data: bool = False) -> set[str]:
    """The ``stages`` that dvc.lock records as done on the current code and params: absent from ``dvc status
    --json``'s answer ``status``, or reported only with missing (deleted / not in cache) paths under the
    ``uncommitted`` roots. Any other entry (a modified dependency, a changed command or params, a missing
    result file, a stage never run) leaves the stage unfinished.

    ``other_data`` (``--allow-new-activations``): also count a stage as done when its data/ inputs were made on
    another machine (``modified``: this machine's extraction or eval cache differs from the one dvc.lock
    records). A checkpoint that is on disk but differs from the one an eval stage recorded still leaves that
    eval unfinished: its SAE was retrained here, so the eval must follow it."""
    def settled(path: str, state: str) -> bool:
        if not path.startswith(uncommitted):
            return False
        return state in MISSING or (other_data and state == "modified" and path.startswith("data/"))

    def only_uncommitted(entry) -> bool:
        if not isinstance(entry, dict):  # "changed command", "always changed", ...
            return False
        for kind, paths in entry.items():
            if kind not in ("changed deps", "changed outs") or not isinstance(paths, dict):
                return False
            if not all(settled(path, state) for path, state in paths.items()):
                return False
        return True
    return {st for st in stages if all(only_uncommitted(e) for e in status.get(st, []))}


def activation_fingerprint(summary: dict) -> dict[str, list[str]]:
    """Per activation split, the SHA-256 of each shard, as ``results/<profile>/extract/summary.json``
    records them: what the finished rows' SAEs were trained on."""
    return {split: list(part["shard_sha256"]) for split, part in summary.items()
            if isinstance(part, dict) and "shard_sha256" in part}


def read_fingerprint(profile: str, rev: str | None = None) -> dict[str, list[str]]:
    """:func:`activation_fingerprint` of the profile's extract summary, in the working tree or, with ``rev``,
    as committed there (``HEAD``: what the committed dvc.lock rows were trained on); empty when absent."""
    rel = f"results/{profile}/extract/summary.json"
    if rev is not None:
        out = subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=ROOT, capture_output=True, text=True)
        return activation_fingerprint(json.loads(out.stdout)) if out.returncode == 0 else {}
    path = ROOT / rel
    return activation_fingerprint(json.loads(path.read_text())) if path.exists() else {}


def other_activations_message(profile: str) -> str:
    """Why a resume stops when this machine's extraction differs from the one dvc.lock's rows used."""
    try:
        from saelib.devices import compute_dtype
        here = f" (this machine computes in {str(compute_dtype('cpu')).replace('torch.', '')})"
    except Exception:  # noqa: BLE001 - only decorates the message
        here = ""
    return (
        f"stopped: the activations extracted here differ from those the finished rows were trained on (shard SHA-256s "
        f"in results/{profile}/extract/summary.json, as committed and after `dvc repro extract`). The usual cause is another "
        f"kind of machine: GPUs and AVX-512/AMX CPUs run the model in bf16, AVX2-only CPUs in fp32{here} "
        "(saelib.devices.compute_dtype), and the bf16 kernels of different CPU families (AMX, AVX-512 BF16) round "
        "differently. The finished rows cannot be reproduced on this machine. Either redo "
        "every row here (`python scripts/repro_in_order.py`, then commit all of it), or keep the finished rows "
        "and add the missing ones from these activations (`--unfinished-only --allow-new-activations`; the "
        "tables then mix SAEs trained on the two extractions, `dvc status` lists the finished rows as changed, and "
        "scripts/run_provenance.py says which row ran where; add this machine's md5s to docs/run_machines.yaml).")


def lock_problem(path: Path) -> str | None:
    """Why ``path`` (dvc.lock) cannot be trusted, or None. A missing file is fine (nothing recorded yet); an
    empty or unparsable one is not: a machine that stops hard while DVC rewrites the lock can leave it
    truncated, and resuming from it would silently re-run every finished stage (seen in session 14)."""
    if not path.exists():
        return None
    try:
        text = path.read_text()
        lock = yaml.safe_load(text) if text.strip() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        return f"{path} cannot be read ({type(err).__name__}: {err})"
    if not isinstance(lock, dict) or not isinstance(lock.get("stages"), dict):
        return f"{path} is empty or has no `stages:` mapping ({len(text)} bytes)"
    return None


def run_and_sync(cmd: list[str]) -> int:
    """Run one dvc command in the repository and flush the file system afterwards, so the dvc.lock it
    rewrote is on disk before the next stage starts (a hard stop then costs at most the running stage)."""
    rc = subprocess.call(cmd, cwd=ROOT)
    if hasattr(os, "sync"):
        os.sync()
    return rc


def dvc_status(stages: list[str]) -> dict:
    """``dvc status --json`` for ``stages`` (one call, so the caches are hashed once)."""
    out = subprocess.run(["dvc", "status", "--json", *stages], cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.stdout or "{}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry", action="store_true", help="print the commands, run nothing")
    ap.add_argument("--skip", metavar="REGEX", help="leave out the variants whose name matches REGEX (re.search) and "
                    "the final plain `dvc repro` (which would run them): for holding back rows whose code is changing")
    ap.add_argument("--unfinished-only", action="store_true", help="leave out the rows dvc.lock records as "
                    "finished on the current code (missing data/ and checkpoints/ aside), and end with the figures "
                    "stage alone: for resuming on a fresh clone without retraining the finished SAEs")
    ap.add_argument("--allow-new-activations", action="store_true", help="with --unfinished-only: go on when the "
                    "activations extracted here differ from those of the finished rows (another kind of machine), "
                    "keep those rows and run the missing ones here (scripts/run_provenance.py lists which ran where)")
    args = ap.parse_args(argv)
    if problem := lock_problem(ROOT / "dvc.lock"):
        print(f"stopped: {problem}. Restore the committed lock with `git checkout dvc.lock` and re-run this "
              "script: DVC then re-runs only the stages whose outputs differ from it.", file=sys.stderr)
        return 2
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    lists = foreach_lists(yaml.safe_load((ROOT / "dvc.yaml").read_text()), params)
    per_sae = [s for s in PER_SAE if s in lists]
    rows = {v: [f"{s}@{v}" for s in per_sae if v in lists[s]]
            for v in ordered_variants(list(params["run_variants"]), headline_variants() + lists.get("unlearning", []))
            if not (args.skip and re.search(args.skip, v))}
    if args.unfinished_only:
        every = [st for row in rows.values() for st in row]
        done = finished_stages(every, dvc_status(every), other_data=args.allow_new_activations)
        for v in [v for v, row in rows.items() if set(row) <= done]:
            print(f"# finished (dvc.lock, current code): {v}", flush=True)
            del rows[v]
        if done and not args.dry:
            # finished rows are kept only if this machine extracts the same activations they were trained on
            before = read_fingerprint(params["profile"], rev="HEAD")
            print("+ dvc repro extract", flush=True)
            if run_and_sync(["dvc", "repro", "extract"]) != 0:
                print("stopped: `dvc repro extract` failed; fix it and re-run this script to resume", file=sys.stderr)
                return 1
            if before and before != read_fingerprint(params["profile"]) and not args.allow_new_activations:
                print(other_activations_message(params["profile"]), file=sys.stderr)
                return 3
    commands = [["dvc", "repro", *row] for row in rows.values()]
    if not args.skip:
        commands.append(["dvc", "repro", "--single-item", "figures"] if args.unfinished_only else ["dvc", "repro"])
    for cmd in commands:
        print("+", " ".join(cmd), flush=True)
        if not args.dry and run_and_sync(cmd) != 0:
            print(f"stopped: `{' '.join(cmd)}` failed; fix it and re-run this script to resume", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
