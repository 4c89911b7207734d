"""saelib.stages: each eval's model side (the <eval>_prep stage) and one SAE (the <eval>@<variant> stage).

The slow test runs every eval end to end on the random 4-layer tiny-gemma3 with tiny settings and checks
the contract the DVC graph relies on: the SAE side writes exactly its declared files and never writes
into the model-side cache (the prep stage's output).
"""
from pathlib import Path

import pytest
import torch
import yaml

from saelib import stages, summaries
from saelib.config import load_params
from saelib.sae import TopKConfig, make_sae

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def P(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    sm = params["profiles"]["smoke"]
    sm.update(model="tiny-gemma3", layer=1, context=32)
    sm["absorption"] = {"max_words": 200, "n_shot": 1, "accuracy_prompts": 16, "ksparse_epochs": 5}
    sm["unlearning"] = {"freq_sequences": 8, "eval_sequences": 2, "retain_thresholds": [0.01], "n_features_list": [5],
                        "multipliers": [50]}
    sm["tasks"] = {"n_train": 6, "n_test": 4}
    sm["probing"] = {"tasks": ["bbc_topic"], "k_values": [1, 5]}
    sm["sae_probes"] = {"tasks": ["87_glue_cola"], "n_train": 24, "n_test": 16, "context": 32, "ks": [1, 2]}
    params["run_variants"] = ["topk"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return load_params("smoke", tmp_path / "params.yaml")


def test_names_paths_and_clear_errors(P):
    assert [stages.impl(n).NAME for n in stages.EVALS] == list(stages.EVALS)
    assert stages.impl(stages.impl("scr")) is stages.impl("scr")
    with pytest.raises(ValueError, match="unknown eval 'core'"):
        stages.impl("core")
    assert stages.eval_cache_dir(P, "probing") == P["paths"]["root"] / "data" / "smoke" / "eval_cache" / "probing"
    assert stages.results_dir(P, "unlearning") == P["paths"]["root"] / "results" / "smoke" / "unlearning"
    with pytest.raises(stages.MissingPrepError, match="dvc repro absorption_prep"):
        stages.load_prepared(P, "absorption")
    with pytest.raises(FileNotFoundError, match=r"dvc repro train@topk"):
        stages.load_variant_sae(P, "topk")
    with pytest.raises(KeyError, match="unknown SAE variant 'nope'"):
        stages.evaluate_variant(P, "scr", "nope")


@pytest.mark.slow
@pytest.mark.parametrize("name", stages.EVALS)
def test_prep_then_one_sae_writes_declared_files_and_leaves_the_cache_alone(P, name):
    torch.manual_seed(0)
    make_sae("topk", TopKConfig(d_in=64, d_sae=128, k=8, model_name="tiny-gemma3",
                                hook_name="blocks.1.hook_resid_post")).save(stages.sae_dir(P, "topk"))
    stages.prepare_eval(P, name, progress=False)
    assert any((P["paths"]["model_side"] / name).glob("*.csv"))
    cache = stages.eval_cache_dir(P, name)
    before = sorted((p, p.stat().st_mtime_ns) for p in cache.rglob("*") if p.is_file())
    assert before
    headline = stages.evaluate_variant(P, name, "topk", progress=False)
    assert sorted((p, p.stat().st_mtime_ns) for p in cache.rglob("*") if p.is_file()) == before
    written = sorted(p.name for p in stages.results_dir(P, name).iterdir())
    assert written == sorted(stages.impl(name).output_files("topk"))
    assert headline and all(isinstance(v, float) for v in headline.values())
    if name in ("probing", "sae_probes"):  # the figures stage's summary table reads back the same numbers
        row = summaries.eval_summary(P["paths"]["results"], name, ["topk", "never_run"])
        assert list(row.index) == ["topk"]
        shared = [k for k in row.columns if k in headline]
        assert shared and all(row.at["topk", k] == pytest.approx(headline[k]) for k in shared)
