"""Core metrics against hand-computed values, and the splice scores on a tiny model."""
import math

import pytest
import torch

from saelib.evals.core import CoreAccumulator, ce_score, evaluate_core, feature_density, kl_score, reconstruction_metrics
from saelib.sae import ReLUConfig, make_sae

# three kept tokens, d = 2, three latents
X = torch.tensor([[1.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
X_HAT = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 2.0]])
FEATS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])


def test_hand_computed_values_one_batch():
    m = reconstruction_metrics(X, X_HAT, FEATS)
    # per-token squared errors: 0, 1, 1
    assert m["mse"] == pytest.approx(2 / 6)
    assert m["mse_legacy"] == pytest.approx((0 / 3 + 1 / 3 + 1 / 3) / 3)
    # eval-set mean (1, 4/3); Σ‖x − x̄‖² = 16/9 + 13/9 + 13/9 = 14/3
    assert m["ev"] == pytest.approx(1 - 2 / (14 / 3))
    # per token: 1 − 0/(16/9), 1 − 1/(13/9), 1 − 1/(13/9)
    assert m["ev_legacy"] == pytest.approx((1 + 2 * (1 - 9 / 13)) / 3)
    assert m["cossim"] == pytest.approx((1 + 1 + 6 / (math.sqrt(8) * math.sqrt(5))) / 3)
    assert m["l2_ratio"] == pytest.approx((1 + 0.5 + math.sqrt(5) / math.sqrt(8)) / 3)
    # Σ‖x̂‖² / Σ x·x̂ = (1 + 1 + 5) / (1 + 2 + 6)
    assert m["relative_reconstruction_bias"] == pytest.approx(7 / 9)
    assert m["relative_reconstruction_bias_legacy"] == pytest.approx(7 / 9)
    assert m["l0"] == pytest.approx(2 / 3) and m["l1"] == pytest.approx(1.0)
    assert m["frac_alive"] == pytest.approx(2 / 3) and m["n_tokens"] == 3


def test_legacy_metrics_depend_on_batches_and_clean_ones_do_not():
    m = reconstruction_metrics(X, X_HAT, FEATS, batch_sizes=[1, 2])
    # batch 1: token 1 alone (error 0); batch 2: tokens 2, 3 with 2 kept tokens each
    assert m["mse_legacy"] == pytest.approx((0 + 1 / 2 + 1 / 2) / 3)
    # a one-token batch has ‖x − batch mean‖² = 0: its legacy EV is 0/0, as in SAEBench
    assert math.isnan(m["ev_legacy"])
    # batch-1 ratio 1/1, batch-2 ratio ((1 + 5)/2) / ((2 + 6)/2)
    assert m["relative_reconstruction_bias_legacy"] == pytest.approx((1 + 6 / 8) / 2)
    one = reconstruction_metrics(X, X_HAT, FEATS)
    for key in ("mse", "ev", "cossim", "l2_ratio", "relative_reconstruction_bias", "l0", "l1"):
        assert m[key] == pytest.approx(one[key])
    with pytest.raises(ValueError, match="sum to the number of tokens"):
        reconstruction_metrics(X, X_HAT, FEATS, batch_sizes=[1, 1])


def test_ev_legacy_two_batches_hand_value():
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 0.0], [0.0, 4.0]])
    x_hat = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 4.0]])
    f = torch.ones(4, 2)
    m = reconstruction_metrics(x, x_hat, f, batch_sizes=[2, 2])
    # batch means (1, 0) and (0, 2): every ‖x − m‖² is 1 resp. 4; errors 0, 1, 1, 0
    assert m["ev_legacy"] == pytest.approx((1 + 0 + (1 - 1 / 4) + 1) / 4)
    assert m["mse_legacy"] == pytest.approx((0 + 1 / 2 + 1 / 2 + 0) / 4)


def test_streaming_equals_one_shot_and_density():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g)
    x_hat = x + 0.1 * torch.randn(50, 6, generator=g)
    f = torch.relu(torch.randn(50, 9, generator=g) - 0.5)
    acc = CoreAccumulator(9)
    for sl in (slice(0, 20), slice(20, 50)):
        acc.update(x[sl], x_hat[sl], f[sl])
    one = reconstruction_metrics(x, x_hat, f, batch_sizes=[20, 30])
    assert acc.result() == pytest.approx(one)
    torch.testing.assert_close(acc.density(), (f != 0).double().mean(0))
    torch.testing.assert_close(feature_density(f), (f != 0).double().mean(0))
    ev = 1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert one["ev"] == pytest.approx(float(ev), rel=1e-6)


def test_score_formulas():
    assert kl_score(0.0, 2.0) == 1.0 and kl_score(2.0, 2.0) == 0.0 and kl_score(0.5, 2.0) == 0.75
    assert ce_score(3.0, 5.0, 3.0) == 1.0 and ce_score(5.0, 5.0, 3.0) == 0.0 and ce_score(4.5, 5.0, 3.0) == 0.25
    assert math.isnan(kl_score(0.1, 0.0)) and math.isnan(ce_score(1.0, 2.0, 2.0))


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError, match="x and x_hat"):
        reconstruction_metrics(X, X_HAT[:2], FEATS)
    with pytest.raises(ValueError, match="no tokens"):
        CoreAccumulator().result()


def _identity_and_zero_saes(d):
    """ReLU SAEs with x̂ = ReLU(x) − ReLU(−x) = x exactly, and with x̂ = 0."""
    ident = make_sae("relu", ReLUConfig(d_in=d, d_sae=2 * d))
    zero = make_sae("relu", ReLUConfig(d_in=d, d_sae=2 * d))
    eye = torch.eye(d)
    with torch.no_grad():
        ident.W_enc.copy_(torch.cat([eye, -eye], 1))
        ident.W_dec.copy_(torch.cat([eye, -eye], 0))
        ident.b_enc.zero_()
        ident.b_dec.zero_()
        zero.W_dec.zero_()
        zero.b_dec.zero_()
    return ident, zero


def test_splice_scores_identity_one_zero_zero(tiny_model):
    tok = tiny_model.tokenizer(
        ["The quick brown fox jumps over the lazy dog again and again.", "Sparse autoencoders read the residual stream."],
        return_tensors="pt", padding="max_length", max_length=20, truncation=True,
    )["input_ids"]
    ident, zero = _identity_and_zero_saes(tiny_model.d_model)
    r_id = evaluate_core(ident, tiny_model, tok, 1, batch_size=2)
    assert r_id["kl_zero"] > 0
    assert r_id["kl_sae"] == pytest.approx(0.0, abs=1e-7)
    assert r_id["kl_score"] == pytest.approx(1.0, abs=1e-6)
    assert r_id["ce_score"] == pytest.approx(1.0, abs=1e-5)
    assert r_id["mse"] == pytest.approx(0.0, abs=1e-10) and r_id["ev"] == pytest.approx(1.0)
    keep = ~torch.isin(tok, torch.tensor(tiny_model.special_ids))
    assert r_id["n_tokens"] == int(keep.sum())  # special tokens excluded
    r_zero = evaluate_core(zero, tiny_model, tok, 1, batch_size=2)
    # the keep-BOS alternative zeroes exactly what the zero SAE zeroes: score 0
    assert r_zero["kl_score_keep_bos"] == pytest.approx(0.0, abs=1e-6)
    assert r_zero["ce_score_keep_bos"] == pytest.approx(0.0, abs=1e-6)
    assert r_zero["kl_zero_keep_bos"] == pytest.approx(r_id["kl_zero_keep_bos"], rel=1e-6)
    # SAEBench's baseline also zeroes BOS, which the zero SAE (kept positions only) leaves clean
    assert r_zero["kl_zero"] == pytest.approx(r_id["kl_zero"], rel=1e-6)
    assert r_zero["kl_score"] == pytest.approx(kl_score(r_zero["kl_sae"], r_zero["kl_zero"]), rel=1e-9)
    assert r_zero["kl_zero"] != pytest.approx(r_zero["kl_zero_keep_bos"], rel=1e-3)
    assert r_zero["l2_ratio"] == 0.0


def test_splice_rows_first_n_plus_each_missing_group():
    from saelib.evals.core import splice_rows
    assert splice_rows(5, None) == [0, 1, 2, 3, 4]
    assert splice_rows(5, 2) == [0, 1] and splice_rows(3, 10) == [0, 1, 2]
    assert splice_rows(6, 2, ["a", "a", "b", "c", "b", "a"]) == [0, 1, 2, 3]
    assert splice_rows(4, 3, ["a", "b", "a", "b"]) == [0, 1, 2]
    with pytest.raises(ValueError, match="3 group labels for 4 sequences"):
        splice_rows(4, 2, ["a", "b", "a"])


def test_splice_sums_subsets_equal_separate_runs():
    from saelib.hooks import splice_sums, spliced_kl_ce
    from saelib.models import load_model

    # float64: the subset and the separate run batch (and chunk) the same tokens differently, and fp32 GEMMs
    # of other shapes sum in another order on some CPUs (CI's gave KL 0.00232006 vs 0.00232014); in float64
    # that noise is far below the tolerance, so the comparison tests row selection only
    tiny_model = load_model("tiny-gemma3", dtype=torch.float64, device="cpu")

    g = torch.Generator().manual_seed(3)
    tok = torch.randint(10, 200, (5, 10), generator=g)
    tok[:, 0] = tiny_model.tokenizer.bos_token_id
    patches = {"half": lambda x: 0.5 * x, "zero": torch.zeros_like}
    kw = dict(patch_everywhere=("zero",), saebench_positions=True, batch_size=2, token_chunk=7)
    ss = splice_sums(tiny_model, tok, 1, patches, **kw)
    whole = spliced_kl_ce(tiny_model, tok, 1, patches, **kw)
    sub = spliced_kl_ce(tiny_model, tok[[1, 3]], 1, patches, **kw)
    for got, want in ((ss.result(), whole), (ss.rows([1, 3]).result(), sub)):
        for name in ("clean", "half", "zero"):
            for key, value in want[name].items():
                assert got[name][key] == pytest.approx(value, rel=1e-5), (name, key)
    # per-sequence KL sums are sums over that sequence's positions: 9 KL positions each (BOS input kept? no)
    assert ss.counts["kl_saebench"].tolist() == [9] * 5 and ss.counts["kl"].tolist() == [8] * 5
    assert (ss.sums["half"]["kl"] > 0).all()


def test_core_baseline_gives_the_same_numbers_and_refuses_other_tokens(tiny_model, tmp_path):
    from saelib.evals.core_baseline import compute_core_baseline, load_core_baseline, save_core_baseline
    from saelib.sae import TopKConfig, make_sae

    torch.manual_seed(0)
    sae = make_sae("topk", TopKConfig(d_in=tiny_model.d_model, d_sae=2 * tiny_model.d_model, k=4))
    g = torch.Generator().manual_seed(4)
    tok = torch.randint(10, 200, (6, 12), generator=g)
    tok[:, 0] = tiny_model.tokenizer.bos_token_id
    groups = ["news", "code", "news", "code", "web", "news"]
    plain = evaluate_core(sae, tiny_model, tok, 1, batch_size=4, n_kl_sequences=3, groups=groups)
    base = compute_core_baseline(tiny_model, tok, 1, n_kl_sequences=3, groups=groups, batch_size=4)
    settings = {"n_kl_sequences": 3}
    save_core_baseline(tmp_path, base, settings)
    loaded = load_core_baseline(tmp_path, settings)
    fast = evaluate_core(sae, tiny_model, tok, 1, batch_size=4, n_kl_sequences=3, groups=groups, baseline=loaded)
    for key in ("kl_score", "ce_score", "kl_zero", "ce_zero", "kl_sae", "ce_clean", "kl_score_keep_bos", "n_tokens_splice"):
        assert fast[key] == pytest.approx(plain[key], rel=1e-6), key
    assert list(fast["per_group"]) == ["news", "code", "web"]
    for g_ in fast["per_group"]:
        for key in ("ev", "kl_score", "ce_score", "n_sequences"):
            assert fast["per_group"][g_][key] == pytest.approx(plain["per_group"][g_][key], rel=1e-6)
    # "web" is only row 4, outside the first 3: its KL comes from that row alone
    web = evaluate_core(sae, tiny_model, tok[[4]], 1, batch_size=4)
    assert fast["per_group"]["web"]["kl_score"] == pytest.approx(web["kl_score"], rel=1e-5)
    assert fast["per_group"]["news"]["n_sequences"] == 3
    with pytest.raises(ValueError, match="other held-out sequences"):
        evaluate_core(sae, tiny_model, tok.flip(0), 1, batch_size=4, n_kl_sequences=3, groups=groups, baseline=loaded)
    with pytest.raises(ValueError, match="dvc repro extract"):
        load_core_baseline(tmp_path, {"n_kl_sequences": 4})
    with pytest.raises(FileNotFoundError, match="dvc repro extract"):
        load_core_baseline(tmp_path / "missing")
