"""saelib.pipeline's pieces that need no training: variant resolution against the activation cache."""
import math
from pathlib import Path

import pytest
import torch
import yaml

from saelib import pipeline
from saelib.activations import ActivationWriter, tokens_sha256
from saelib.config import load_params
from saelib.variants import PAPER_ACTIVATION_RMS

ROOT = Path(__file__).resolve().parents[1]
D = 16


@pytest.fixture
def P(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return load_params("smoke", tmp_path / "params.yaml")


def _write_cache(path: Path, radius: float, centre: float = 3.0) -> None:
    """Rows centre ± radius·e_(i mod D), half each sign: mean = centre·1, centred RMS norm = radius."""
    n_seq, ctx = 8, 4
    tokens = torch.arange(n_seq * ctx).reshape(n_seq, ctx) + 10
    writer = ActivationWriter(path, {"model": "fake", "layer": 1, "d_model": D, "context": ctx, "n_sequences": n_seq,
                                     "special_ids": [2], "tokens_sha256": tokens_sha256(tokens)})
    rows = torch.full((n_seq * ctx, D), centre)
    for i in range(n_seq * ctx):
        rows[i, (i // 2) % D] += radius * (1 if i % 2 == 0 else -1)
    writer.write_shard(rows.to(torch.bfloat16), tokens, torch.ones(n_seq, ctx, dtype=torch.bool))
    writer.finish()


def test_matched_l1_variant_gets_lambda_rescaled_by_the_cache_norm(P):
    radius = 12.0
    _write_cache(P["paths"]["activations_train"], radius)
    P["all_variants"] = {**P["all_variants"], "relu_norm": {**P["all_variants"]["relu_l1_matched"], "l1_rule": "norm_matched"}}
    rv = pipeline.resolve(P, "relu_norm")
    # documented rule (saelib.variants.matched_l1_coef): λ = 0.04 · 2304 · act_rms / PAPER_ACTIVATION_RMS
    assert rv.sae_cfg.d_in == D
    assert rv.sae_cfg.l1_coef == pytest.approx(0.04 * 2304 * radius / PAPER_ACTIVATION_RMS, rel=1e-6)
    assert PAPER_ACTIVATION_RMS == pytest.approx(math.sqrt(2304 * 4.438 / (1 - 0.293)))
    # a literal entry (same λ, no l1_rule) keeps 0.04 whatever the norm
    assert pipeline.resolve(P, "relu_l1").sae_cfg.l1_coef == pytest.approx(0.04)


def test_calibrated_variant_reads_the_calibrate_l1_stage_record(P):
    """``l1_rule: l0_calibrated`` (the params' matched rows) reads results/<p>/calibration/l1.json; without
    it the error names the stage to run."""
    from saelib.l1_calibration import L1Calibration, L1CalibrationConfig, calibration_path, save_calibration

    _write_cache(P["paths"]["activations_train"], 12.0)
    with pytest.raises(FileNotFoundError, match="dvc repro calibrate_l1"):
        pipeline.resolve(P, "relu_l1_matched")
    save_calibration(calibration_path(P["paths"]["results"]), L1Calibration(0.12, 40.0, 0.3), L1CalibrationConfig())
    rv = pipeline.resolve(P, "relu_l1_matched")
    assert rv.sae_cfg.units == "normalized" and rv.sae_cfg.l1_coef == pytest.approx(0.12)


def test_read_sequence_genres_missing_file_is_a_note_and_a_wrong_file_an_error(tmp_path, capsys):
    from saelib import extract

    assert pipeline.SEQUENCE_LABELS == extract.SEQUENCE_LABELS  # the file extraction writes
    assert pipeline.read_sequence_genres(tmp_path, 3) is None
    assert "per-genre core metrics skipped" in capsys.readouterr().out
    (tmp_path / pipeline.SEQUENCE_LABELS).write_text('{"genre": ["news", "code", "news"], "source": ["a", "b", "a"]}')
    assert pipeline.read_sequence_genres(tmp_path, 3) == ["news", "code", "news"]
    with pytest.raises(ValueError, match=r"sequence_labels\.json.*one genre per held-out sequence \(4\), got 3"):
        pipeline.read_sequence_genres(tmp_path, 4)


def test_per_genre_core_scores_each_genre_on_its_own_rows(tiny_model):
    from saelib.evals.core import evaluate_core
    from saelib.sae import TopKConfig, make_sae

    torch.manual_seed(0)
    sae = make_sae("topk", TopKConfig(d_in=tiny_model.d_model, d_sae=2 * tiny_model.d_model, k=4))
    g = torch.Generator().manual_seed(1)
    base = torch.randint(10, 200, (2, 12), generator=g)
    base[:, 0] = tiny_model.tokenizer.bos_token_id
    tokens = base[[0, 0, 1, 1]]  # rows 0/1 and 2/3 are copies
    # "a" and "b" each hold one copy of both texts: identical scores, equal to the two texts alone
    dup = pipeline.per_genre_core(sae, tiny_model, tokens, ["a", "b", "a", "b"], 1, batch_size=2)
    assert list(dup) == ["a", "b"]
    alone = evaluate_core(sae, tiny_model, base, 1, batch_size=2)
    for key in ("ev", "kl_score", "ce_score"):
        assert dup["a"][key] == pytest.approx(dup["b"][key], rel=1e-5)
        assert dup["a"][key] == pytest.approx(alone[key], rel=1e-5)
    assert dup["a"]["n_sequences"] == dup["b"]["n_sequences"] == 2
    # grouped by text instead, each genre sees one text only: the rows really are selected per genre
    split = pipeline.per_genre_core(sae, tiny_model, tokens, ["x", "x", "y", "y"], 1, batch_size=2)
    assert split["x"]["ev"] == pytest.approx(evaluate_core(sae, tiny_model, base[:1], 1)["ev"], rel=1e-5)
    assert split["x"]["ev"] != pytest.approx(split["y"]["ev"], rel=1e-3)
    # n_kl_sequences: each genre's splice uses its rows among the first n (here: row 0 for "x", none -> 1 for "y")
    capped = pipeline.per_genre_core(sae, tiny_model, tokens, ["x", "y", "x", "y"], 1, batch_size=2, n_kl_sequences=1)
    # the reference splices the same batch (rows 0/1: "y" needs row 1) and scores row 0: a lone row 0 runs
    # the model on a batch of one, which rounds differently in float32 (CI saw 2.5e-5 relative)
    first = evaluate_core(sae, tiny_model, tokens[:2], 1, batch_size=2, groups=["x", "y"])["per_group"]["x"]
    assert capped["x"]["kl_score"] == pytest.approx(first["kl_score"], rel=1e-5)
    assert capped["x"]["ev"] == pytest.approx(alone["ev"], rel=1e-5)  # reconstruction still on every row
    with pytest.raises(ValueError, match="3 genre labels for 4 sequences"):
        pipeline.per_genre_core(sae, tiny_model, tokens, ["a", "b", "a"], 1)


def test_train_stage_refuses_a_cache_extracted_for_other_settings(P):
    from saelib.activations import ActivationCache, CacheMismatchError

    _write_cache(P["paths"]["activations_train"], 1.0)  # model "fake", layer 1, context 4
    expect = pipeline.cache_expectation(P)
    assert expect == {"model": P["run"]["model"], "layer": int(P["run"]["layer"]), "context": int(P["run"]["context"])}
    with pytest.raises(CacheMismatchError, match=r"model: cache has 'fake'.*dvc repro extract"):
        ActivationCache(P["paths"]["activations_train"], expect=expect)
