"""Device plumbing: the ``device`` setting, host→device streaming, models and extraction on a device.

The CUDA tests run only where ``torch.cuda.is_available()``; on the CPU-only CI they are skipped.
"""
from types import SimpleNamespace

import pytest
import torch

from saelib.activations import ActivationCache, ActivationWriter, tokens_sha256
from saelib import devices
from saelib.devices import DeviceError, autocast_context, module_device, resolve_device, to_device
from saelib.extract import extract_activations
from saelib.hooks import residuals, special_mask, spliced_kl_ce
from saelib.models import load_model

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_resolve_device_names(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device(None)
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        resolve_device("cuda:0")
    for bad in ("gpu", "cuda:x", "cpu:1", "mps", 3):
        with pytest.raises(DeviceError):
            resolve_device(bad)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


def test_autocast_context_uses_the_device_type(monkeypatch):
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    monkeypatch.setattr(devices, "bf16_matmul_is_fast", lambda kind: True)
    with autocast_context("cpu"):
        out = a @ b
    assert out.dtype == torch.bfloat16
    with autocast_context(torch.device("cpu"), enabled=False):
        assert (a @ b).dtype == torch.float32
    # where bf16 matmuls are slow (an AVX2-only CPU) the context keeps fp32
    monkeypatch.setattr(devices, "bf16_matmul_is_fast", lambda kind: False)
    with autocast_context("cpu"):
        assert (a @ b).dtype == torch.float32
    assert devices.compute_dtype("cpu") == torch.float32


def test_bf16_detection_matches_the_cpu_flags():
    """bf16 counts as fast on a CPU exactly when torch reports AVX-512 or AMX support."""
    devices.bf16_matmul_is_fast.cache_clear()
    flags = [getattr(torch.cpu, n, lambda: False)() for n in
             ("_is_amx_tile_supported", "_is_avx512_bf16_supported", "_is_avx512_supported")]
    assert devices.bf16_matmul_is_fast("cpu") == any(flags)
    assert devices.compute_dtype("cpu") == (torch.bfloat16 if any(flags) else torch.float32)


def test_to_device_cpu_is_identity():
    x = torch.randn(3, 2)
    assert to_device(x, None) is x and to_device(x, "cpu") is x


def _small_cache(path, n_seq=6, ctx=5, d=4):
    tokens = torch.arange(n_seq * ctx).reshape(n_seq, ctx) + 3
    keep = torch.ones_like(tokens, dtype=torch.bool)
    settings = {"model": "fake", "layer": 0, "d_model": d, "context": ctx, "n_sequences": n_seq, "special_ids": [2],
                "tokens_sha256": tokens_sha256(tokens)}
    writer = ActivationWriter(path, settings)
    for s0 in range(0, n_seq, 2):
        writer.write_shard(torch.randn(2 * ctx, d), tokens[s0 : s0 + 2], keep[s0 : s0 + 2])
    return writer.finish()


def test_iter_batches_on_cpu_device_is_unchanged(tmp_path):
    cache = _small_cache(tmp_path / "c")
    host = list(cache.iter_batches(4, seed=2, buffer_shards=2))
    on_cpu = list(cache.iter_batches(4, seed=2, buffer_shards=2, device="cpu"))
    assert len(host) == len(on_cpu) == cache.n_batches(4)
    assert all(torch.equal(a, b) and b.device.type == "cpu" for a, b in zip(host, on_cpu))


def test_load_model_places_the_model_on_the_device(tiny_model):
    model = load_model("tiny-gemma3", dtype=torch.float32, device="cpu")
    assert model.device == torch.device("cpu") == module_device(model.hf_model)
    assert load_model("tiny-gemma3", dtype=torch.float32, device="cpu") is model  # reused per (name, dtype, device)
    if not torch.cuda.is_available():
        assert model is tiny_model  # auto = cpu here: the session's model, no second load


@cuda
def test_cuda_streaming_is_pinned_and_exact(tmp_path):
    cache = _small_cache(tmp_path / "c")
    host = list(cache.iter_batches(4, seed=2, buffer_shards=2))
    dev = list(cache.iter_batches(4, seed=2, buffer_shards=2, device="cuda"))
    assert all(b.device.type == "cuda" and torch.equal(a, b.cpu()) for a, b in zip(host, dev))


@cuda
def test_cuda_extraction_and_splice_with_the_tiny_model(tmp_path):
    cpu_model = load_model("tiny-gemma3", dtype=torch.float32, device="cpu")
    gpu_model = load_model("tiny-gemma3", dtype=torch.float32, device="cuda")
    assert gpu_model.device.type == "cuda"
    g = torch.Generator().manual_seed(0)
    toks = torch.randint(10, 5000, (6, 9), generator=g)
    toks[:, 0] = gpu_model.tokenizer.bos_token_id
    cache = extract_activations(gpu_model, toks, 2, tmp_path / "c", batch_size=3, shard_tokens=27, progress=False)
    keep = special_mask(cpu_model, toks)
    expected = residuals(cpu_model, toks, 2)[keep].to(torch.bfloat16)
    torch.testing.assert_close(cache.activations(), expected, rtol=0.05, atol=5e-2)
    ActivationCache(tmp_path / "c").verify()
    out = spliced_kl_ce(gpu_model, toks, 2, {"same": lambda x: x, "zero": torch.zeros_like}, batch_size=3)
    assert out["same"]["kl"] == pytest.approx(0.0, abs=1e-4) and out["zero"]["kl"] > 0


def test_extract_config_takes_the_device_and_keeps_it_out_of_the_summary(monkeypatch, tmp_path):
    import saelib.extract as ex

    cfg = ex.ExtractConfig.from_run({"model": "tiny-gemma3", "layer": 1, "unrelated": 3}, device="cpu")
    assert cfg.device == "cpu" and cfg.layer == 1
    asked = []

    def fake_load_model(name, **kw):
        asked.append((name, kw))
        raise RuntimeError("stop after the model load")

    monkeypatch.setattr(ex, "load_model", fake_load_model)
    with pytest.raises(RuntimeError, match="stop after"):
        ex.build_activation_cache(cfg, "train", tmp_path / "c", progress=False)
    assert asked == [("tiny-gemma3", {"device": "cpu"})]
    norms = {"kept_sum": 1.0, "kept_max": 1.0, "special_sum": 0.0, "special_min": 0.0, "n_special": 0}
    manifest = {"hook_name": "blocks.1.hook_resid_post", "n_sequences": 1, "n_tokens": 1, "context": 1, "meta": {},
                "tokens_sha256": "x", "shards": [{"bytes": 1, "sha256": "y", "n_tokens": 1, "norms": norms}]}
    summary = ex.extraction_summary(cfg, {"train": SimpleNamespace(manifest=manifest)})
    assert "device" not in summary["config"] and summary["config"]["layer"] == 1  # machine-local, not a result
