"""Activation cache: round trip, streaming/shuffling, resume after interruption, corruption."""
import json

import pytest
import torch

from saelib.activations import (
    ActivationCache,
    ActivationWriter,
    CorruptShardError,
    MissingCacheError,
    tokens_sha256,
)
from saelib.extract import extract_activations, summarize_norms
from saelib.hooks import residuals, special_mask

D = 8


def _settings(tokens_NS, **extra):
    return {
        "model": "fake",
        "layer": 1,
        "d_model": D,
        "context": tokens_NS.shape[1],
        "n_sequences": tokens_NS.shape[0],
        "special_ids": [2],
        "tokens_sha256": tokens_sha256(tokens_NS),
        **extra,
    }


def _fake_cache(path, n_seq=12, ctx=6, per_shard=4, seed=0):
    """A cache whose activation rows encode (sequence, position): x[:, 0] = seq, x[:, 1] = pos."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(3, 100, (n_seq, ctx), generator=g)
    tokens[:, 0] = 2
    tokens[1, 3] = 2  # a special token mid-sequence
    keep = tokens != 2
    writer = ActivationWriter(path, _settings(tokens))
    rows = []
    for s0 in range(0, n_seq, per_shard):
        sl = slice(s0, s0 + per_shard)
        seq, pos = torch.nonzero(keep[sl], as_tuple=True)
        acts = torch.zeros(len(seq), D)
        acts[:, 0] = seq + s0
        acts[:, 1] = pos
        acts[:, 2:] = torch.randn(len(seq), D - 2, generator=g)
        rows.append(acts.to(torch.bfloat16))
        writer.write_shard(rows[-1], tokens[sl], keep[sl])
    return writer.finish(), tokens, keep, torch.cat(rows)


def test_round_trip_manifest_tokens_and_rows(tmp_path):
    cache, tokens, keep, rows = _fake_cache(tmp_path / "c")
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert m["complete"] is True and m["n_tokens"] == int(keep.sum()) == 12 * 5 - 1
    assert [s["n_sequences"] for s in m["shards"]] == [4, 4, 4]
    assert m["dtype"] == "bfloat16"
    reopened = ActivationCache(tmp_path / "c")
    assert torch.equal(reopened.tokens(), tokens)
    assert torch.equal(reopened.keep_mask(), keep)
    torch.testing.assert_close(reopened.activations(), rows, rtol=0, atol=0)
    torch.testing.assert_close(reopened.activations(max_tokens=7), rows[:7], rtol=0, atol=0)
    reopened.verify()


def test_iter_batches_covers_every_row_once_and_is_seeded(tmp_path):
    cache, _, keep, rows = _fake_cache(tmp_path / "c", n_seq=20, per_shard=3)
    n = int(keep.sum())
    batches = list(cache.iter_batches(7, seed=3, buffer_shards=2, drop_last=False))
    assert all(b.shape == (7, D) for b in batches[:-1]) and batches[-1].shape[0] == n - 7 * (len(batches) - 1)
    got = torch.cat(batches)
    key = lambda x: (x[:, 0] * 1000 + x[:, 1]).float()  # noqa: E731  (seq, pos) identifies a row
    assert torch.equal(key(got).sort().values, key(rows).sort().values)
    assert not torch.equal(key(got), key(rows))  # shuffled
    again = torch.cat(list(cache.iter_batches(7, seed=3, buffer_shards=2, drop_last=False)))
    assert torch.equal(again, got)
    other = torch.cat(list(cache.iter_batches(7, seed=4, buffer_shards=2, drop_last=False)))
    assert not torch.equal(other, got)
    assert len(list(cache.iter_batches(7, seed=3, buffer_shards=2))) == n // 7 == cache.n_batches(7)
    ordered = torch.cat(list(cache.iter_batches(5, shuffle=False, drop_last=False)))
    assert torch.equal(ordered, rows)


def test_iter_batches_streams_a_few_shards_at_a_time(tmp_path, monkeypatch):
    cache, *_ = _fake_cache(tmp_path / "c", n_seq=24, per_shard=3)  # 8 shards
    loaded = []
    original = ActivationCache.load_shard
    monkeypatch.setattr(ActivationCache, "load_shard", lambda self, i: loaded.append(i) or original(self, i))
    it = cache.iter_batches(4, seed=0, buffer_shards=2)
    next(it)
    assert len(loaded) == 2  # only the first pool was read
    list(it)
    assert sorted(loaded) == list(range(8))


def test_start_batch_resumes_the_same_stream(tmp_path):
    cache, *_ = _fake_cache(tmp_path / "c", n_seq=20, per_shard=3)
    full = list(cache.iter_batches(6, seed=1, buffer_shards=2))
    tail = list(cache.iter_batches(6, seed=1, buffer_shards=2, start_batch=5))
    assert len(tail) == len(full) - 5
    assert all(torch.equal(a, b) for a, b in zip(full[5:], tail))


def test_missing_and_incomplete_cache_errors_name_the_command(tmp_path):
    with pytest.raises(MissingCacheError, match="01_extract.py -p profile smoke"):
        ActivationCache(tmp_path / "nothing", profile="smoke")
    tokens = torch.full((4, 3), 5)
    writer = ActivationWriter(tmp_path / "half", _settings(tokens))
    writer.write_shard(torch.zeros(6, D), tokens[:2], torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(MissingCacheError, match="incomplete"):
        ActivationCache(tmp_path / "half")


def test_corrupt_shard_is_detected(tmp_path):
    cache, *_ = _fake_cache(tmp_path / "c")
    shard = cache.shard_path(1)
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the tensor payload
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptShardError, match="shard_00001"):
        ActivationCache(tmp_path / "c").verify()
    shard.write_bytes(b"garbage")
    with pytest.raises(CorruptShardError):
        ActivationCache(tmp_path / "c").load_shard(1)


def test_writer_rejects_bad_shapes_and_nan(tmp_path):
    tokens = torch.full((2, 3), 5)
    writer = ActivationWriter(tmp_path / "c", _settings(tokens))
    keep = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="expected \\(6, 8\\)"):
        writer.write_shard(torch.zeros(5, D), tokens, keep)
    bad = torch.zeros(6, D)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        writer.write_shard(bad, tokens, keep)


# ---------------------------------------------------------------- extraction with the tiny model


def _tiny_tokens(model, n=10, s=9):
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(10, 5000, (n, s), generator=g)
    toks[:, 0] = model.tokenizer.bos_token_id
    toks[3, 4] = model.tokenizer.bos_token_id  # document separator inside a row
    return toks


def test_extract_matches_residuals_at_kept_positions(tiny_model, tmp_path):
    toks = _tiny_tokens(tiny_model)
    cache = extract_activations(tiny_model, toks, 2, tmp_path / "c", batch_size=3, shard_tokens=40, progress=False)
    keep = special_mask(tiny_model, toks)
    expected = residuals(tiny_model, toks, 2, batch_size=4)[keep].to(torch.bfloat16)
    assert cache.n_tokens == int(keep.sum()) == 10 * 8 - 1
    assert cache.n_shards == 2  # 40 positions / 9 per sequence -> 2 batches of 3 per shard; 10 seqs -> 2 shards
    torch.testing.assert_close(cache.activations(), expected, rtol=0.02, atol=1e-2)
    assert torch.equal(cache.tokens(), toks)
    assert cache.manifest["hook_name"] == "blocks.2.hook_resid_post"
    cache.verify()
    full = residuals(tiny_model, toks, 2, batch_size=4).float().norm(dim=-1)
    stats = summarize_norms(cache.manifest)
    assert stats["n_special"] == 11 and stats["n_kept"] == 79
    assert stats["kept_mean"] == pytest.approx(float(full[keep].mean()), rel=1e-4)
    assert stats["special_mean"] == pytest.approx(float(full[~keep].mean()), rel=1e-4)
    assert stats["kept_max"] == pytest.approx(float(full[keep].max()), rel=1e-4)


def test_extract_resumes_after_interruption(tiny_model, tmp_path, monkeypatch):
    import saelib.extract as ex

    toks = _tiny_tokens(tiny_model, n=12)
    calls = []
    real = ex.residuals_batch

    def flaky(model, tokens, layer):
        calls.append(tokens.shape[0])
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while computing the third shard
        return real(model, tokens, layer)

    monkeypatch.setattr(ex, "residuals_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        ex.extract_activations(tiny_model, toks, 1, tmp_path / "c", batch_size=4, shard_tokens=36, progress=False)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["complete"] is False and len(manifest["shards"]) == 2
    with pytest.raises(MissingCacheError):
        ActivationCache(tmp_path / "c")
    calls.clear()
    monkeypatch.setattr(ex, "residuals_batch", real)
    counted = []
    monkeypatch.setattr(ex, "residuals_batch", lambda m, t, l: counted.append(t.shape[0]) or real(m, t, l))
    cache = ex.extract_activations(tiny_model, toks, 1, tmp_path / "c", batch_size=4, shard_tokens=36, progress=False)
    assert counted == [4]  # only the missing third shard was computed
    fresh = extract_activations(tiny_model, toks, 1, tmp_path / "fresh", batch_size=4, shard_tokens=36, progress=False)
    assert torch.equal(cache.activations(), fresh.activations())
    counted.clear()
    ex.extract_activations(tiny_model, toks, 1, tmp_path / "c", batch_size=4, shard_tokens=36, progress=False)
    assert counted == []  # complete cache with the same settings: no model call
    ex.extract_activations(tiny_model, toks, 2, tmp_path / "c", batch_size=4, shard_tokens=36, progress=False)
    assert sum(counted) == 12 and ActivationCache(tmp_path / "c").manifest["layer"] == 2  # new settings rebuild


def test_extract_rejects_bad_inputs(tiny_model, tmp_path):
    toks = _tiny_tokens(tiny_model)
    with pytest.raises(ValueError, match="out of range"):
        extract_activations(tiny_model, toks, 4, tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="2-D"):
        extract_activations(tiny_model, toks[0], 1, tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="token ids"):
        extract_activations(tiny_model, toks + 10**6, 1, tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="integer"):
        extract_activations(tiny_model, toks.float(), 1, tmp_path / "c", progress=False)


def test_build_activation_cache_is_a_noop_when_complete(tiny_model, tmp_path, monkeypatch):
    import datasets

    import saelib.data.corpus as corpus
    from saelib.extract import ExtractConfig, build_activation_cache, extraction_summary, read_sequence_labels

    docs = [f"Plain sentence number {i} about the weather and the sea." for i in range(200)]
    fake = datasets.Dataset.from_dict({"text": docs, "source": ["x", "y"] * 100, "genre": ["news", "code"] * 100,
                                       "split": ["train"] * 200})
    monkeypatch.setattr(corpus, "load_corpus", lambda name, split, seed=0, **kw: fake)
    loads = []

    def load(name):
        loads.append(name)
        return tiny_model

    cfg = ExtractConfig(model="tiny-gemma3", layer=1, context=16, train_tokens=100, heldout_sequences=3, extract_batch=4, shard_tokens=64)
    first = build_activation_cache(cfg, "train", tmp_path / "train", progress=False, load=load)
    assert loads == ["tiny-gemma3"] and first.n_tokens >= 100 and first.n_tokens - 100 < 15  # one extra row at most
    assert first.manifest["meta"]["max_tokens"] == 100 and first.manifest["meta"]["split"] == "train"
    again = build_activation_cache(cfg, "train", tmp_path / "train", progress=False, load=load)
    assert loads == ["tiny-gemma3"] and again.manifest == first.manifest  # no model load, nothing rewritten
    held = build_activation_cache(cfg, "heldout", tmp_path / "held", progress=False, load=load)
    assert held.n_sequences == 3 and len(loads) == 2
    labels = read_sequence_labels(tmp_path / "held")  # held-out rows packed one genre each, labelled
    assert labels is not None and len(labels["genre"]) == 3 and set(labels["genre"]) == {"news", "code"}
    assert read_sequence_labels(tmp_path / "train") is None
    summary = extraction_summary(cfg, {"train": again, "heldout": held})
    assert summary["train"]["n_tokens"] == first.n_tokens and summary["heldout"]["n_positions"] == 3 * 16
    assert summary["train"]["norms"]["n_special"] + summary["train"]["norms"]["n_kept"] == summary["train"]["n_positions"]
    assert json.dumps(summary) == json.dumps(extraction_summary(cfg, {"train": first, "heldout": held}))
    bigger = ExtractConfig(**{**cfg.__dict__, "train_tokens": 150})
    rebuilt = build_activation_cache(bigger, "train", tmp_path / "train", progress=False, load=load)
    assert len(loads) == 3 and rebuilt.n_tokens >= 150


# ------------------------------------------------------------------------------------------------
# byte-reproducible safetensors files (DVC hashes the folders that hold them)
# ------------------------------------------------------------------------------------------------
_SAVE_IN_FRESH_PROCESS = """
import sys, torch
from saelib.io import atomic_save_safetensors
g = torch.Generator().manual_seed(0)
atomic_save_safetensors(sys.argv[1], {"acts_ND": torch.randn(64, 8, generator=g).to(torch.bfloat16),
                                      "tokens_NS": torch.arange(32, dtype=torch.int32).view(4, 8)},
                        metadata={"model": "m", "layer": "8", "shard": "3", "zeta": "z", "alpha": "a"})
"""


def test_safetensors_files_are_byte_identical_across_processes(tmp_path):
    """safetensors writes its metadata from a per-process randomised hash map: without the canonical header
    two runs of the same extraction gave shards with different SHA-256s (and a different DVC hash for the
    activation cache) while holding the same tensors."""
    import hashlib
    import subprocess
    import sys

    digests = set()
    for i in range(6):
        out = tmp_path / f"s{i}.safetensors"
        subprocess.run([sys.executable, "-c", _SAVE_IN_FRESH_PROCESS, str(out)], check=True)
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1
    from safetensors import safe_open

    with safe_open(str(tmp_path / "s0.safetensors"), "pt") as f:
        assert f.metadata() == {"model": "m", "layer": "8", "shard": "3", "zeta": "z", "alpha": "a"}
        assert f.get_tensor("tokens_NS").tolist() == torch.arange(32, dtype=torch.int32).view(4, 8).tolist()


def test_canonical_safetensors_sorts_metadata_and_keeps_the_data():
    from safetensors.torch import load, save

    from saelib.io import canonical_safetensors

    tensors = {"b": torch.randn(3, 5), "a": torch.arange(7)}
    raw = save(tensors, metadata={"z": "1", "y": "2", "x": "3"})
    canon = canonical_safetensors(raw)
    n = int.from_bytes(canon[:8], "little")
    assert len(canon) == len(raw) and canon[:8] == raw[:8] and canon[8 + n:] == raw[8 + n:]
    header = json.loads(canon[8:8 + n])
    assert list(header["__metadata__"]) == ["x", "y", "z"]
    back = load(canon)
    assert torch.equal(back["b"], tensors["b"]) and torch.equal(back["a"], tensors["a"])
    assert canonical_safetensors(canon) == canon
    assert canonical_safetensors(save(tensors)) == save(tensors)  # no metadata: unchanged
