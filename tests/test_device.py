"""Device placement of the SAE, penalty and trainer: CPU always, CUDA when a GPU is present."""
from __future__ import annotations

import pytest
import torch

from saelib.penalties import PenaltyConfig, make_penalty
from saelib.sae import TopKConfig, make_sae
from saelib.train import TrainConfig, read_log, resolve_device, train_sae

D, F, BS = 16, 128, 32


class _Cache:
    def __init__(self, x):
        self.x, self.d_model, self.n_tokens = x.to(torch.bfloat16), x.shape[1], x.shape[0]

    def iter_batches(self, batch_size, *, seed, shuffle=True, drop_last=True):
        order = torch.randperm(self.n_tokens, generator=torch.Generator().manual_seed(seed))
        for s in range(0, self.n_tokens - batch_size + 1, batch_size):
            yield self.x[order[s:s + batch_size]]


def _data(n=4 * BS):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 24, generator=g).relu() @ torch.randn(24, D, generator=g) + 1.0


def _train(tmp_path, device, impl, kind="competition"):
    sae = make_sae("topk", TopKConfig(d_in=D, d_sae=F, k=4 if impl == "sparse" else 8, backward_impl=impl))
    pen = make_penalty(PenaltyConfig(kind=kind, reading="as_described", lam=1.0), F, sae.cfg.k)
    cfg = TrainConfig(total_tokens=2 * BS, batch_size=BS, lr=1e-3, device=device, dead_tokens_threshold=BS)
    res = train_sae(sae, _Cache(_data()), cfg, penalty=pen, out_dir=tmp_path / f"{device}-{impl}", progress=False)
    return res, pen


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.parametrize("impl", ["sparse", "dense"])
def test_two_steps_on_cpu(tmp_path, impl):
    res, pen = _train(tmp_path, "cpu", impl)
    assert res.n_steps == 2 and all(p.device.type == "cpu" for p in res.sae.parameters())
    assert pen.ema.E.device.type == "cpu" and pen.ema.updates == 2
    assert [r["step"] for r in read_log(res.out_dir)] == [0, 1]
    assert res.summary["train_config"]["device"] == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("impl", ["sparse", "dense"])
@pytest.mark.parametrize("kind", ["competition", "orthogonality"])
def test_two_steps_on_cuda_match_cpu(tmp_path, impl, kind):
    cpu, _ = _train(tmp_path, "cpu", impl, kind)
    gpu, pen = _train(tmp_path, "cuda", impl, kind)
    assert all(p.device.type == "cuda" for p in gpu.sae.parameters())
    if pen.ema is not None:
        assert pen.ema.E.device.type == "cuda"
    log_c, log_g = read_log(cpu.out_dir), read_log(gpu.out_dir)
    for rc, rg in zip(log_c, log_g):
        assert rg["mse"] == pytest.approx(rc["mse"], rel=2e-2)
        assert rg["penalty_raw"] == pytest.approx(rc["penalty_raw"], rel=5e-2, abs=1e-9)
    for name, p in cpu.sae.state_dict().items():
        q = gpu.sae.state_dict()[name].cpu()
        assert float((q - p).norm()) <= 2e-2 * float(p.norm()) + 1e-6, name


def test_fp32_fallback_without_fast_bf16(tmp_path, monkeypatch):
    import saelib.train as train_mod

    monkeypatch.setattr(train_mod, "bf16_matmul_is_fast", lambda device_type: False)
    train_mod._warn_no_bf16.cache_clear()
    with pytest.warns(RuntimeWarning, match="no fast bf16 matmul"):
        res, _ = _train(tmp_path, "cpu", "dense")
    assert res.summary["compute_dtype"] == "float32"
    monkeypatch.setattr(train_mod, "bf16_matmul_is_fast", lambda device_type: True)
    res, _ = _train(tmp_path / "b", "cpu", "dense")
    assert res.summary["compute_dtype"] == "bfloat16"
    assert train_mod.step_uses_bf16(TrainConfig(total_tokens=BS, batch_size=BS, autocast_bf16=False), "cpu") is False
