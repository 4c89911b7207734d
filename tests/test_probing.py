"""Sparse probing and the pooled-activation cache, on inputs with known answers."""
import hashlib
import math
from collections import Counter

import numpy as np
import pytest
import torch

from saelib.evals import pooled as pooled_mod
from saelib.evals.pooled import PooledActs, PooledConfig, pooled_latents, segment_mean
from saelib.evals.probing import (ProbeTrainConfig, ProbingConfig, ProbingEvalConfig, logistic_accuracy, one_vs_rest,
                                  prepare_probing, sparse_probe, top_k_mean_diff, train_torch_probe)
from saelib.sae import TopKConfig, make_sae


def test_top_k_mean_diff_matches_naive_reference():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 12))
    y = np.array([0, 1] * 20)
    naive = []
    for j in range(12):
        pos = [X[i, j] for i in range(40) if y[i] == 1]
        neg = [X[i, j] for i in range(40) if y[i] == 0]
        naive.append(abs(sum(pos) / len(pos) - sum(neg) / len(neg)))
    expect = sorted(range(12), key=lambda j: -naive[j])[:5]
    assert top_k_mean_diff(X, y, 5).tolist() == expect
    assert top_k_mean_diff(X, y, 50).shape == (12,)


def test_one_vs_rest_is_balanced_and_spreads_negatives():
    labels = np.array(["a"] * 30 + ["b"] * 30 + ["c"] * 30)
    splits = np.array((["train"] * 20 + ["test"] * 10) * 3)
    sets = one_vs_rest(labels, splits, "a", seed=1)
    for split, n in (("train", 20), ("test", 10)):
        idx, y = sets[split]
        assert (y == 1).sum() == n and (y == 0).sum() == n
        assert set(labels[idx[y == 1]]) == {"a"} and set(splits[idx]) == {split}
        neg = Counter(labels[idx[y == 0]])
        assert set(neg) == {"b", "c"} and max(neg.values()) <= math.ceil(n / 2)
    again = one_vs_rest(labels, splits, "a", seed=1)
    assert all((sets[s][0] == again[s][0]).all() for s in ("train", "test"))


def _planted_latents(n_per_class=40, n_classes=3, n_latents=30, seed=0):
    """Non-negative noise latents plus one indicator latent per class (latent 3 + c)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([f"c{c}" for c in range(n_classes)], n_per_class)
    splits = np.tile(np.array(["train"] * (n_per_class * 3 // 4) + ["test"] * (n_per_class - n_per_class * 3 // 4)), n_classes)
    X = np.abs(rng.normal(size=(len(labels), n_latents))) * 0.5
    for c in range(n_classes):
        X[labels == f"c{c}", 3 + c] += 3.0
    return X, labels, splits


def test_probing_recovers_planted_label_latent_at_k1():
    X, labels, splits = _planted_latents()
    out = sparse_probe(torch.tensor(X), labels, splits, cfg=ProbingConfig(k_values=(1, 2)), prefix="sae")
    assert out["sae_top_1_test_accuracy"] == {"c0": 1.0, "c1": 1.0, "c2": 1.0}
    assert set(out) == {"sae_top_1_test_accuracy", "sae_top_2_test_accuracy", "sae_test_accuracy"}
    for c in range(3):
        sets = one_vs_rest(labels, splits, f"c{c}", seed=42)
        assert top_k_mean_diff(X[sets["train"][0]], sets["train"][1], 1).tolist() == [3 + c]


def test_probing_without_signal_is_near_chance():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(800, 20))
    y = rng.integers(0, 2, size=800)
    acc = logistic_accuracy(X[:600], y[:600], X[600:], y[600:])
    assert abs(acc - 0.5) < 0.12
    with pytest.raises(ValueError, match="NaN"):
        logistic_accuracy(np.full((4, 2), np.nan), [0, 1, 0, 1], X[:2, :2], [0, 1])


def test_torch_probe_separates_large_norm_inputs_and_reports_raw_weights():
    rng = np.random.default_rng(2)
    direction = rng.normal(size=64)
    y = rng.integers(0, 2, size=300)
    X = torch.tensor(rng.normal(size=(300, 64)) * 50 + 5000 / 8 + np.outer(2 * y - 1, direction) * 40, dtype=torch.float32)
    probe, acc = train_torch_probe(X[:200], y[:200], X[200:], y[200:], ProbeTrainConfig(epochs=5, normalize_inputs=True, select_on_test=False))
    assert acc == 1.0 and probe.accuracy(X[200:], y[200:]) == 1.0
    assert torch.allclose(probe.logits(X[:5]), X[:5] @ probe.weight_D + probe.bias, rtol=1e-4, atol=1e-2)


# ---- pooled cache --------------------------------------------------------------------------------------
def test_segment_mean_matches_naive():
    x = torch.randn(10, 3)
    offsets = torch.tensor([0, 2, 3, 10])
    naive = torch.stack([x[0:2].mean(0), x[2:3].mean(0), x[3:10].mean(0)])
    assert torch.allclose(segment_mean(x, offsets), naive, atol=1e-6)
    with pytest.raises(ValueError, match="at least one kept"):
        PooledActs(x.bfloat16(), torch.tensor([0, 2, 2, 10]))


def test_pooled_latents_match_per_text_mean_of_encode():
    torch.manual_seed(0)
    sae = make_sae("topk", TopKConfig(d_in=16, d_sae=48, k=5))
    counts = [3, 1, 7, 4, 9]
    acts = torch.randn(sum(counts), 16).bfloat16()
    offsets = torch.tensor([0, *np.cumsum(counts)])
    pooled = PooledActs(acts, offsets)
    rows = [4, 0, 2]
    got = pooled_latents(sae, pooled, rows=rows, cfg=PooledConfig(sae_batch_tokens=8, autocast_bf16=False))
    naive = torch.stack([sae.encode(acts[offsets[r]:offsets[r + 1]].float()).mean(0) for r in rows])
    assert torch.allclose(got, naive, atol=1e-5)
    assert torch.allclose(pooled.xbar_ND[2], acts[4:11].float().mean(0), atol=1e-6)


def test_build_pooled_masks_bos_and_is_padding_invariant(tiny_model):
    texts = ["short text", "a much longer text that needs many more tokens than the first one does"]
    both = pooled_mod.build_pooled(tiny_model, texts, 2, cfg=PooledConfig(batch_size=2))
    alone = pooled_mod.build_pooled(tiny_model, texts[:1], 2, cfg=PooledConfig(batch_size=1))
    ids = pooled_mod.tokenize_texts(tiny_model.tokenizer, texts, 128)
    assert ids[0][0] == tiny_model.tokenizer.bos_token_id
    assert both.counts().tolist() == [len(ids[0]) - 1, len(ids[1]) - 1]
    assert torch.allclose(both.acts_TD[: both.counts()[0]].float(), alone.acts_TD.float(), atol=2e-2)
    cut = pooled_mod.build_pooled(tiny_model, texts[1:], 2, cfg=PooledConfig(context=6))
    assert cut.counts().tolist() == [5] and cut.meta["n_truncated"] == 1


def test_load_or_build_reuses_cache_without_the_model(tiny_model, tmp_path):
    texts = ["one text", "another text"]
    calls = []

    def getter():
        calls.append(1)
        return tiny_model

    kw = dict(model_name=tiny_model.name, layer=1, cache_dir=tmp_path, name="demo")
    first = pooled_mod.load_or_build(getter, texts, **kw)
    second = pooled_mod.load_or_build(getter, texts, **kw)
    assert calls == [1] and second.meta["cache_hit"] and not first.meta["cache_hit"]
    assert torch.equal(first.acts_TD, second.acts_TD) and torch.equal(first.xbar_ND, second.xbar_ND)
    pooled_mod.load_or_build(getter, texts[:1], **kw)
    assert calls == [1, 1] and len(list(tmp_path.rglob("demo-*.safetensors"))) == 2


def test_rebuilt_cache_file_is_byte_identical(tiny_model, tmp_path):
    """A rebuild writes the same bytes (no build time or hit flag in the file), so DVC sees no change."""
    texts = ["one text", "another text", "a third one"]
    digests = []
    for run in ("a", "b"):
        built = pooled_mod.load_or_build(tiny_model, texts, model_name=tiny_model.name, layer=1,
                                         cache_dir=tmp_path / run, name="demo")
        assert not built.meta["cache_hit"] and built.meta["build_seconds"] >= 0
        (path,) = (tmp_path / run).rglob("demo-*.safetensors")
        digests.append(hashlib.md5(path.read_bytes()).hexdigest())
        stored = PooledActs.load(path).meta
        assert not set(pooled_mod.RUN_ONLY_META) & set(stored) and stored["n_examples"] == 3
    assert digests[0] == digests[1]


def test_probing_config_from_params_and_skip_message(monkeypatch, tmp_path):
    cfg = ProbingEvalConfig.from_params({"tasks": {"n_train": 8, "n_test": 4, "context": 64},
                                         "probing": {"tasks": ["lang_id"], "k_values": [1, 3]}})
    assert cfg.tasks == ("lang_id",) and cfg.probing.k_values == (1, 3)
    assert cfg.data.n_train == 8 and cfg.data.pooled.context == 64
    with pytest.raises(ValueError, match="unknown probing settings"):
        ProbingEvalConfig.from_params({"probing": {"k": 3}})
    with pytest.raises(ValueError, match="unknown task-data settings"):
        ProbingEvalConfig.from_params({"tasks": {"n_trian": 3}})
    from saelib.data import tasks

    monkeypatch.setattr(tasks, "FORTUNE_ROOT", str(tmp_path))
    monkeypatch.setitem(tasks.SOURCES, "fortunes", tasks.SourceSpec(
        "fortunes", lambda limit=None: tasks.read_fortunes(limit, root=str(tmp_path)), ("label",), "", "", True))

    def no_model():
        raise AssertionError("the model must not be loaded for a skipped task")

    prep = prepare_probing(cfg, model=no_model, model_name="gemma-3-270m", layer=8, cache_dir=tmp_path)
    assert prep.tasks == {} and len(prep.skipped) == 1
    assert prep.skipped[0].startswith("language identification skipped") and "\n" not in prep.skipped[0]
