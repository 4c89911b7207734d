"""Smoke run of the whole DVC pipeline on a test profile, in a copy of the repository.

This is the end-to-end test: every notebook through papermill on the real corpus and the real Gemma-3
tokenizer, with the `tiny` profile's 4-layer random Gemma-3 by default (`SAELIB_PIPELINE_PROFILE=smoke`,
`make smoke`: the real Gemma-3-270M), then a second `dvc repro` that must do nothing. The first run starts in
the background when the session begins (conftest.py, pipeline_run.py).
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_run import PIPELINE_RUN, PROFILE, ROOT, PipelineRun


@pytest.fixture(scope="module")
def smoke_repo(request):
    run = request.config.stash.get(PIPELINE_RUN, None) or PipelineRun.start()
    rc, log, wall = run.wait()
    assert rc == 0, f"dvc repro failed (log: {run.log}):\n{log[-12000:]}"
    print(f"\npipeline run on profile {run.profile!r}: {wall:.0f} s")
    second = run.run("repro")
    return run.dest, run.params, log, second


@pytest.mark.slow
def test_smoke_pipeline_writes_core_metrics(smoke_repo):
    dest, params, _, _ = smoke_repo
    for variant in params["run_variants"]:
        core = json.loads((dest / "results" / PROFILE / "core" / f"{variant}.json").read_text())
        for key in ("l0", "mse", "ev", "kl_score", "ce_score", "frac_alive"):
            assert math.isfinite(core[key]), (variant, key, core[key])
        assert core["l0"] > 0
        assert core["ev"] <= 1.0
        # the offline held-out split is packed one genre per row: core metrics per genre, rows adding up
        labels = json.loads((dest / "data" / PROFILE / "activations" / "heldout" / "sequence_labels.json").read_text())
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
    res = dest / "results" / PROFILE
    smoke = params["profiles"][PROFILE]
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
                assert math.isfinite(scr[f"scr_metric_threshold_{n}_kept_only"]), (variant, n)  # the named alternative
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
    assert (dest / "figures" / PROFILE / "effects.png").stat().st_size > 5000


@pytest.mark.slow
def test_smoke_pipeline_keeps_to_its_profile_and_fills_dvc_metrics(smoke_repo):
    """A test-profile run writes only under results/<profile> and figures/<profile>, leaves README.md alone, and
    `dvc metrics show` lists every variant with flat headline keys."""
    dest, params, _, _ = smoke_repo
    assert sorted(p.name for p in (dest / "results").iterdir()) == [PROFILE]
    assert sorted(p.name for p in (dest / "figures").iterdir()) == [PROFILE]
    assert (dest / "README.md").read_text() == (ROOT / "README.md").read_text()
    assert f"Profile **`{PROFILE}`**" in (dest / "results" / PROFILE / "README_results.md").read_text()
    for variant in params["run_variants"]:
        metrics = json.loads((dest / "results" / PROFILE / "metrics" / f"{variant}.json").read_text())
        assert all(isinstance(v, float) for v in metrics.values()) and {"l0", "mse", "mean_absorption_score"} <= set(metrics)
    env = {k: v for k, v in os.environ.items() if k != "SAELIB_ROOT"}
    shown = subprocess.run([str(Path(sys.executable).parent / "dvc"), "metrics", "show", "--json"], cwd=dest, env=env,
                           capture_output=True, text=True, check=True)
    files = next(iter(json.loads(shown.stdout).values()))["data"]
    assert {f"results/{PROFILE}/metrics/{v}.json" for v in params["run_variants"]} <= set(files)
