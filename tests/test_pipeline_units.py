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
    rv = pipeline.resolve(P, "relu_l1_matched")
    # documented rule (saelib.variants.matched_l1_coef): λ = 0.04 · act_rms / PAPER_ACTIVATION_RMS
    assert rv.sae_cfg.d_in == D
    assert rv.sae_cfg.l1_coef == pytest.approx(0.04 * radius / PAPER_ACTIVATION_RMS, rel=1e-6)
    assert PAPER_ACTIVATION_RMS == pytest.approx(math.sqrt(2304 * 4.438 / (1 - 0.293)))
    # a literal entry (same λ, no l1_rule) keeps 0.04 whatever the norm
    assert pipeline.resolve(P, "relu_l1").sae_cfg.l1_coef == pytest.approx(0.04)
