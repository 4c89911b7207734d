"""The DVC graph: per-SAE eval stages, profile isolation, and what adding one variant re-runs.

No model runs here: the pipeline's outputs are faked (empty files) and recorded with ``dvc commit``, so
``dvc status`` answers for the real dvc.yaml in a few seconds.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from saelib import stages
from scripts_module import load_script

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent / "dvc")
SPEC = yaml.safe_load((ROOT / "dvc.yaml").read_text())


def _resolve(text: str, profile: str, item: str | None = None) -> str:
    out = text.replace("${profile}", profile)
    return out.replace("${item}", item) if item is not None else out


def _paths(entries) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def _stage_files(profile: str, variants: list[str]) -> dict[str, dict[str, list[str]]]:
    """Stage name → resolved deps and outs (metrics included), as DVC would resolve them."""
    out = {}
    for name, spec in SPEC["stages"].items():
        body = spec.get("do", spec)
        for item in (variants if "foreach" in spec else [None]):
            key = name if item is None else f"{name}@{item}"
            out[key] = {"deps": [_resolve(d, profile, item) for d in body.get("deps", [])],
                        "outs": [_resolve(o, profile, item) for o in _paths(body.get("outs")) + _paths(body.get("metrics"))]}
    return out


def test_each_eval_has_a_prep_stage_and_a_per_variant_stage_on_that_sae_only():
    files = _stage_files("smoke", ["topk"])
    for name in stages.EVALS:
        prep, per_sae = files[f"{name}_prep"], files[f"{name}@topk"]
        cache = f"data/smoke/eval_cache/{name}"
        assert cache in prep["outs"], name
        assert cache in per_sae["deps"], name
        assert "checkpoints/smoke/topk/sae" in per_sae["deps"], name
        assert not any(d in ("checkpoints/smoke", "checkpoints/${profile}") for d in per_sae["deps"]), name
        # the stage declares exactly the files the eval writes for that SAE
        assert sorted(per_sae["outs"]) == sorted(f"results/smoke/{name}/{f}" for f in stages.impl(name).output_files("topk"))
        assert SPEC["stages"][name]["foreach"] == ("${unlearning_variants}" if name == "unlearning" else "${run_variants}")
        assert "-p variant ${item}" in SPEC["stages"][name]["do"]["cmd"]
        assert "run_variants" not in SPEC["stages"][f"{name}_prep"].get("params", [])


def test_every_output_lives_under_its_profile():
    """Profile isolation: nothing a smoke or paper run writes can land on the default profile's files."""
    for stage, f in _stage_files("smoke", ["topk"]).items():
        for out in f["outs"]:
            assert out == "README.md" or "/smoke" in out.split("/", 2)[0] + "/" + out.split("/", 2)[1], (stage, out)
            assert "/default" not in out, (stage, out)


def _fake_repo(tmp: Path, variants: list[str]) -> tuple[Path, dict]:
    repo = tmp / "repo"
    repo.mkdir()
    shutil.copy2(ROOT / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profile"] = "smoke"
    params["run_variants"] = variants
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / "unlearning_variants.yaml").write_text(yaml.safe_dump({"unlearning_variants": list(variants)}))
    for f in _stage_files("smoke", variants).values():
        for path in f["deps"] + f["outs"]:
            target = repo / path
            if target.exists():
                continue
            if re.search(r"\.(py|json|csv|md)$", path):
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(f"fake {path}\n")
            else:  # a folder (a package, a cache, an SAE)
                target.mkdir(parents=True, exist_ok=True)
                (target / "part").write_text(f"fake {path}\n")
    return repo, params


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    done = subprocess.run([DVC, *args], cwd=repo, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"dvc {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def committed(tmp_path_factory):
    repo, params = _fake_repo(tmp_path_factory.mktemp("graph"), ["topk", "relu_l1"])
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    shutil.copy2(ROOT / ".dvcignore", repo / ".dvcignore")  # the repository's ignore rules, not dvc init's
    _dvc(repo, "commit", "-f", "-q")  # record every faked output as up to date in dvc.lock
    return repo, params


def _changed(repo: Path) -> set[str]:
    return set(json.loads(_dvc(repo, "status", "--json").stdout or "{}"))


def test_adding_a_variant_trains_and_evaluates_only_it_then_redoes_figures(committed):
    repo, params = committed
    assert _changed(repo) == set(), "the faked pipeline should start up to date"
    params = {**params, "run_variants": params["run_variants"] + ["topk_k100"]}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    expected = {"train@topk_k100", *(f"{e}@topk_k100" for e in stages.EVALS if e != "unlearning"), "figures"}
    assert _changed(repo) == expected
    # unlearning runs for the SAEs of unlearning_variants.yaml only: listing it there adds its stage
    (repo / "unlearning_variants.yaml").write_text(yaml.safe_dump({"unlearning_variants": ["topk", "relu_l1", "topk_k100"]}))
    assert _changed(repo) == expected | {"unlearning@topk_k100"}
    (repo / "unlearning_variants.yaml").write_text(yaml.safe_dump({"unlearning_variants": ["topk", "relu_l1"]}))
    # (`dvc repro --dry` cannot stand in here: it stops at absorption@topk_k100, whose SAE folder only
    # exists once train@topk_k100 has really run; the smoke test runs the real thing.)


def test_one_sae_changing_reruns_only_its_evals(committed):
    repo, params = committed
    params = {**params, "run_variants": ["topk", "relu_l1"]}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _changed(repo) == set()
    sae = repo / "checkpoints" / "smoke" / "relu_l1" / "sae" / "part"
    sae.write_text("retrained\n")
    changed = _changed(repo)
    assert changed == {"train@relu_l1", *(f"{e}@relu_l1" for e in stages.EVALS)}, changed
    sae.write_text("fake checkpoints/smoke/relu_l1/sae\n")


def test_bytecode_and_numba_caches_beside_the_sources_change_no_stage(committed):
    """Python (without PYTHONDONTWRITEBYTECODE) and numba (when imported before saelib picks its cache folder)
    write caches into ``__pycache__`` inside the package folders that stages depend on. ``.dvcignore`` keeps
    them out of the dependency hashes, so a user's first import does not make every stage stale; an edit
    of the package itself still does."""
    repo, params = committed
    (repo / "params.yaml").write_text(yaml.safe_dump({**params, "run_variants": ["topk", "relu_l1"]}, sort_keys=False))
    assert _changed(repo) == set()
    pkg = repo / "saelib" / "penalties"
    cache = pkg / "__pycache__"
    cache.mkdir()
    try:
        for name in ("sparse.cpython-311.pyc", "kernel._pair_pass-124.py311.1.nbc", "kernel._pair_pass-124.py311.nbi"):
            (cache / name).write_bytes(b"\0cache")
        (pkg / "stray.cpython-311.pyc").write_bytes(b"\0cache")
        assert _changed(repo) == set()
        (pkg / "part").write_text("edited\n")
        assert {"train@topk", "train@relu_l1"} <= _changed(repo)
    finally:
        shutil.rmtree(cache)
        (pkg / "stray.cpython-311.pyc").unlink(missing_ok=True)
        (pkg / "part").write_text("fake saelib/penalties\n")


def test_repro_in_order_runs_every_per_sae_stage_headline_first():
    mod = load_script("repro_in_order")
    assert mod.ordered_variants(["a", "b", "c", "d"], ["c", "x", "a"]) == ["c", "a", "b", "d"]
    assert mod.ordered_variants(["a", "b", "c"], ["c", "c", "a", "c"]) == ["c", "a", "b"]  # headline ∩ unlearning
    head = mod.headline_variants()
    assert "topk" in head and "relu_l1_matched" in head
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    # every foreach stage of the pipeline is one the script runs per SAE (nothing left to the final repro by accident)
    assert {name for name, st in stages.items() if "foreach" in st} == set(mod.PER_SAE)
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    lists = mod.foreach_lists(spec, yaml.safe_load((ROOT / "params.yaml").read_text()))
    assert lists["train"] == yaml.safe_load((ROOT / "params.yaml").read_text())["run_variants"]
    assert 0 < len(lists["unlearning"]) < len(lists["train"])


def test_repro_in_order_skip_holds_back_matching_rows_and_the_final_repro(capsys):
    mod = load_script("repro_in_order")
    assert mod.main(["--dry"]) == 0
    every = capsys.readouterr().out.splitlines()
    assert every[-1] == "+ dvc repro" and any("train@relu_l1_matched " in c for c in every)
    assert mod.main(["--dry", "--skip", "_matched"]) == 0
    kept = capsys.readouterr().out.splitlines()
    assert kept == [c for c in every[:-1] if "_matched" not in c]
    assert any("train@topk " in c for c in kept) and len(kept) < len(every) - 1


def test_finished_stages_ignores_only_missing_uncommitted_paths():
    mod = load_script("repro_in_order")
    status = {  # the shapes `dvc status --json` gives on a fresh clone (read from a real run)
        "train@a": [{"changed deps": {"data/default/activations": "deleted"}},
                    {"changed outs": {"checkpoints/default/a": "not in cache"}}],
        "scr@a": [{"changed deps": {"data/default/eval_cache/scr": "deleted", "checkpoints/default/a/sae": "deleted"}}],
        "train@b": [{"changed deps": {"saelib/train.py": "modified", "data/default/activations": "deleted"}}],
        "scr@b": [{"changed outs": {"results/default/scr/b.json": "deleted"}}],   # a committed result is missing
        "train@c": ["changed command"],
        "train@d": [{"changed deps": {"data/default/activations": "modified"}}],  # a different cache on disk
        "train@e": [{"changed deps": {"params.yaml": "new"}}],
    }
    stages = ["train@a", "scr@a", "train@b", "scr@b", "train@c", "train@d", "train@e", "train@f"]
    assert mod.finished_stages(stages, status) == {"train@a", "scr@a", "train@f"}  # f: up to date, absent
    assert mod.finished_stages(["train@a"], status, uncommitted=("data/",)) == set()


def test_finished_stages_with_other_data_keeps_rows_made_on_another_machine():
    """--allow-new-activations on a machine that extracted other bytes: data/ inputs read ``modified`` and
    those rows stay finished, but an eval whose SAE was retrained here (checkpoint on disk, modified) does not."""
    mod = load_script("repro_in_order")
    status = {
        "train@a": [{"changed deps": {"data/default/activations": "modified"}},
                    {"changed outs": {"checkpoints/default/a": "deleted"}}],
        "scr@a": [{"changed deps": {"data/default/eval_cache/scr": "modified", "checkpoints/default/a/sae": "deleted"}}],
        "scr@b": [{"changed deps": {"data/default/eval_cache/scr": "modified", "checkpoints/default/b/sae": "modified"}}],
        "train@c": [{"changed deps": {"data/default/activations": "modified", "saelib/train.py": "modified"}}],
        "scr@d": [{"changed outs": {"results/default/scr/d.json": "deleted"}}],
    }
    stages = ["train@a", "scr@a", "scr@b", "train@c", "scr@d"]
    assert mod.finished_stages(stages, status) == set()
    assert mod.finished_stages(stages, status, other_data=True) == {"train@a", "scr@a"}


def test_unfinished_only_drops_finished_rows_and_ends_with_figures_alone(monkeypatch, capsys):
    mod = load_script("repro_in_order")
    monkeypatch.setattr(mod, "dvc_status", lambda stages: {
        st: [{"changed deps": {"saelib/x.py": "modified"}}] for st in stages if not st.endswith("@topk")})
    assert mod.main(["--dry", "--unfinished-only"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "# finished (dvc.lock, current code): topk" in out
    assert not any(c.startswith("+ dvc repro train@topk ") for c in out)
    assert any(c.startswith("+ dvc repro train@topk_s1 ") for c in out)
    assert out[-1] == "+ dvc repro --single-item figures"


def test_activation_fingerprint_reads_the_shard_hashes_of_each_split():
    mod = load_script("repro_in_order")
    summary = {"config": {"model": "m", "layer": 8}, "corpus_composition": {},
               "train": {"n_shards": 2, "shard_sha256": ["aa", "bb"]}, "heldout": {"shard_sha256": ["cc"]}}
    assert mod.activation_fingerprint(summary) == {"train": ["aa", "bb"], "heldout": ["cc"]}
    assert mod.activation_fingerprint({"config": {}}) == {}


def test_unfinished_only_stops_when_this_machine_extracts_other_activations(monkeypatch, capsys):
    """A machine of the other precision class extracts different activations: the finished rows cannot be
    reproduced there, so the resume stops after `dvc repro extract` unless told to mix."""
    mod = load_script("repro_in_order")
    monkeypatch.setattr(mod, "dvc_status", lambda stages: {
        st: [{"changed deps": {"saelib/x.py": "modified"}}] for st in stages if not st.endswith("@topk")})
    calls: list[list[str]] = []
    monkeypatch.setattr(mod.subprocess, "call", lambda cmd, cwd=None: calls.append(list(cmd)) or 0)
    prints = {"HEAD": {"train": ["aa"], "heldout": ["cc"]}, None: {"train": ["ab"], "heldout": ["cc"]}}
    monkeypatch.setattr(mod, "read_fingerprint", lambda profile, rev=None: prints[rev])

    assert mod.main(["--unfinished-only"]) == 3
    assert calls == [["dvc", "repro", "extract"]]  # nothing trained on the new activations
    err = capsys.readouterr().err
    assert "--allow-new-activations" in err and "kind of machine" in err and "run_provenance" in err and "results/default/extract/summary.json" in err

    calls.clear()
    assert mod.main(["--unfinished-only", "--allow-new-activations"]) == 0
    assert calls[0] == ["dvc", "repro", "extract"] and calls[-1] == ["dvc", "repro", "--single-item", "figures"]
    assert not any(c[:3] == ["dvc", "repro", "train@topk"] for c in calls)
    assert any(c[:3] == ["dvc", "repro", "train@topk_s1"] for c in calls)

    prints[None] = dict(prints["HEAD"])  # the same extraction: resumes without the flag
    calls.clear()
    assert mod.main(["--unfinished-only"]) == 0
    assert calls[0] == ["dvc", "repro", "extract"] and len(calls) > 2


def test_truncated_dvc_lock_stops_the_resume_with_the_fix(tmp_path, monkeypatch, capsys):
    """An empty or garbled dvc.lock (a hard stop during DVC's rewrite) must not start a resume that would
    re-run every finished stage; a missing one is a first run."""
    mod = load_script("repro_in_order")
    lock = tmp_path / "dvc.lock"
    assert mod.lock_problem(lock) is None
    lock.write_text("schema: '2.0'\nstages:\n  extract:\n    cmd: python x.py\n")
    assert mod.lock_problem(lock) is None
    for bad in ("", "\n\n", "schema: '2.0'\n", "stages: [\n", "- a\n- b\n"):
        lock.write_text(bad)
        assert mod.lock_problem(lock), repr(bad)
    lock.write_text("")
    monkeypatch.setattr(mod, "ROOT", tmp_path)
    monkeypatch.setattr(mod.subprocess, "call", lambda *a, **k: pytest.fail("nothing may run on a truncated lock"))
    assert mod.main(["--unfinished-only"]) == 2
    err = capsys.readouterr().err
    assert "git checkout dvc.lock" in err and str(lock) in err


def test_unlearning_variants_are_trained_variants():
    """unlearning@<v> needs checkpoints/<p>/<v>/sae, which only train@<v> writes."""
    run = yaml.safe_load((ROOT / "params.yaml").read_text())["run_variants"]
    unl = yaml.safe_load((ROOT / "unlearning_variants.yaml").read_text())["unlearning_variants"]
    assert set(unl) <= set(run), sorted(set(unl) - set(run))
    assert len(unl) == len(set(unl))
    # the ledger's unlearning claims compare these rows over their seeds
    for base in ("topk", "compete_run6", "relu_l1_matched"):
        assert {base, *(f"{base}_s{i}" for i in range(1, 5))} <= set(unl), base
