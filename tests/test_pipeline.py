"""Smoke run of the whole DVC pipeline on the `smoke` profile, in a copy of the repository.

This is the end-to-end test: real Gemma-3-270M, real corpus, every notebook through papermill,
then a second `dvc repro` that must do nothing.
"""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _repo_files():
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    return [f for f in out if f and (ROOT / f).is_file()]


@pytest.fixture(scope="module")
def smoke_repo(tmp_path_factory):
    dest = tmp_path_factory.mktemp("smoke") / "repo"
    for rel in _repo_files():
        if rel.startswith(("results/", "figures/")) or rel == "dvc.lock":
            continue  # the committed default-profile outputs must be regenerated, not reused
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["profile"] = "smoke"
    params["run_variants"] = params["profiles"]["smoke"]["test_variants"]
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dest / "unlearning_variants.yaml").write_text(yaml.safe_dump({"unlearning_variants": params["run_variants"]}))
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    env = {k: v for k, v in os.environ.items() if k != "SAELIB_ROOT"}
    env["HF_HUB_OFFLINE"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    dvc = str(Path(sys.executable).parent / "dvc")
    first = subprocess.run([dvc, "repro"], cwd=dest, env=env, capture_output=True, text=True)
    (dest.parent / "first_repro.log").write_text(first.stdout + "\n" + first.stderr)
    assert first.returncode == 0, f"dvc repro failed:\n{first.stdout[-6000:]}\n{first.stderr[-6000:]}"
    second = subprocess.run([dvc, "repro"], cwd=dest, env=env, capture_output=True, text=True)
    return dest, params, first, second


@pytest.mark.slow
def test_smoke_pipeline_writes_core_metrics(smoke_repo):
    dest, params, _, _ = smoke_repo
    for variant in params["run_variants"]:
        core = json.loads((dest / "results" / "smoke" / "core" / f"{variant}.json").read_text())
        for key in ("l0", "mse", "ev", "kl_score", "ce_score", "frac_alive"):
            assert math.isfinite(core[key]), (variant, key, core[key])
        assert core["l0"] > 0
        assert core["ev"] <= 1.0
        # the offline held-out split is packed one genre per row: core metrics per genre, rows adding up
        labels = json.loads((dest / "data" / "smoke" / "activations" / "heldout" / "sequence_labels.json").read_text())
        per_genre = core["per_genre"]
        assert set(per_genre) == set(labels["genre"]), variant
        assert sum(g["n_sequences"] for g in per_genre.values()) == core["n_sequences"]
        assert all(math.isfinite(g[k]) for g in per_genre.values() for k in ("ev", "kl_score", "ce_score"))


@pytest.mark.slow
def test_smoke_pipeline_second_repro_is_noop(smoke_repo):
    _, _, _, second = smoke_repo
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Running stage" not in second.stdout, second.stdout[-3000:]


@pytest.mark.slow
def test_smoke_pipeline_writes_every_eval_and_the_ledger(smoke_repo):
    from saelib import claims
    from saelib.results import read_absorption, read_probing, read_scr, read_unlearning

    dest, params, _, _ = smoke_repo
    res = dest / "results" / "smoke"
    smoke = params["profiles"]["smoke"]
    for variant in params["run_variants"]:
        absorption = read_absorption(res / "absorption" / f"{variant}.json")
        assert 0.0 <= absorption["mean_absorption_score"] <= 1.0, variant
        scr_doc = json.loads((res / "scr" / f"{variant}.json").read_text())
        if scr_doc["skipped_tasks"] and not scr_doc["eval_result_details"]:
            # the offline SCR task needs the optional food reviews (Debian r-cran-modeldata)
            assert "optional package is missing" in " ".join(scr_doc["skipped_tasks"]), scr_doc["skipped_tasks"]
        else:
            scr = read_scr(res / "scr" / f"{variant}.json")
            for n in smoke["scr"]["n_values"]:
                assert math.isfinite(scr[f"scr_metric_threshold_{n}"]), (variant, n)
        tpp = read_scr(res / "scr" / f"{variant}_tpp.json")
        assert all(math.isfinite(tpp[f"tpp_threshold_{n}_total_metric"]) for n in smoke["tpp"]["n_values"])
        probing, per_task = read_probing(res / "probing" / f"{variant}.json")
        for key in ("sae_top_1_test_accuracy", "llm_top_1_test_accuracy", "sae_test_accuracy", "llm_test_accuracy"):
            assert 0.0 <= probing[key] <= 1.0, (variant, key)
        assert set(per_task["task"]) == set(smoke["probing"]["tasks"])
        assert math.isfinite(read_unlearning(res / "unlearning" / f"{variant}.json")["unlearning_score"])
        sae_probes = json.loads((res / "sae_probes" / f"{variant}.json").read_text())
        assert sae_probes["eval_type_id"] == "sparse_probing_sae_probes"
        assert {d["dataset_name"] for d in sae_probes["eval_result_details"]} | {
            line.split()[1] for line in sae_probes["skipped_tasks"]} == set(smoke["sae_probes"]["tasks"])
        for k in smoke["sae_probes"]["ks"]:
            if sae_probes["eval_result_details"]:
                assert 0.0 <= sae_probes["eval_result_metrics"]["sae"][f"sae_top_{k}_test_accuracy"] <= 1.0
    import pandas as pd

    ledger = pd.read_csv(res / "claims_ledger.csv")
    assert sorted(ledger["claim_id"]) == sorted(claims.claim_ids())
    assert (dest / "figures" / "smoke" / "effects.png").stat().st_size > 5000


@pytest.mark.slow
def test_smoke_pipeline_keeps_to_its_profile_and_fills_dvc_metrics(smoke_repo):
    """A smoke run writes only under results/smoke and figures/smoke, leaves README.md alone, and
    `dvc metrics show` lists every variant with flat headline keys."""
    dest, params, _, _ = smoke_repo
    assert sorted(p.name for p in (dest / "results").iterdir()) == ["smoke"]
    assert sorted(p.name for p in (dest / "figures").iterdir()) == ["smoke"]
    assert (dest / "README.md").read_text() == (ROOT / "README.md").read_text()
    assert "Profile **`smoke`**" in (dest / "results" / "smoke" / "README_results.md").read_text()
    for variant in params["run_variants"]:
        metrics = json.loads((dest / "results" / "smoke" / "metrics" / f"{variant}.json").read_text())
        assert all(isinstance(v, float) for v in metrics.values()) and {"l0", "mse", "mean_absorption_score"} <= set(metrics)
    env = {k: v for k, v in os.environ.items() if k != "SAELIB_ROOT"}
    shown = subprocess.run([str(Path(sys.executable).parent / "dvc"), "metrics", "show", "--json"], cwd=dest, env=env,
                           capture_output=True, text=True, check=True)
    files = next(iter(json.loads(shown.stdout).values()))["data"]
    assert {f"results/smoke/metrics/{v}.json" for v in params["run_variants"]} <= set(files)
