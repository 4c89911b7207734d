"""Trainer: LR schedule, logs, checkpoints, bit-for-bit resume, NaN errors, decoder constraints."""
import json
import math

import pytest
import torch

from saelib.sae import TopKConfig, ReLUConfig, geometric_median, load_sae, make_sae
from saelib.train import (
    NonFiniteLossError, TrainConfig, default_lr, lr_at, make_optimizer, read_log, train_sae, train_step,
)

D, F, K, BS = 16, 128, 4, 32


class FakeCache:
    """In-memory stand-in for ActivationCache: bf16 rows, seeded shuffle, fixed-size batches."""

    def __init__(self, x_ND: torch.Tensor):
        self.x = x_ND.to(torch.bfloat16)
        self.d_model = x_ND.shape[1]
        self.n_tokens = x_ND.shape[0]

    def iter_batches(self, batch_size, *, seed, shuffle=True, drop_last=True):
        order = torch.randperm(self.n_tokens, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(self.n_tokens)
        stop = self.n_tokens - batch_size + 1 if drop_last else self.n_tokens
        for start in range(0, stop, batch_size):
            yield self.x[order[start:start + batch_size]]


def _data(n=5 * BS, seed=0):
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(24, D, generator=g)
    codes = (torch.rand(n, 24, generator=g) < 0.15).float() * torch.rand(n, 24, generator=g) * 4
    return codes @ dirs + 0.05 * torch.randn(n, D, generator=g) + 1.0


def _topk(impl="auto"):
    return make_sae("topk", TopKConfig(d_in=D, d_sae=F, k=K, hook_name="model.layers.1", backward_impl=impl))


def _cfg(**kw):
    base = dict(total_tokens=12 * BS, batch_size=BS, lr=3e-3, checkpoint_every=3, dead_tokens_threshold=3 * BS)
    base.update(kw)
    return TrainConfig(**base)


def test_default_lr_and_schedule():
    assert default_lr(18432) == pytest.approx(1.8856e-4, rel=1e-4)
    assert default_lr(2**14) == pytest.approx(2e-4)
    n, base = 4882, 1.0  # 10M tokens at B = 2048: decay starts at step 4271
    assert TrainConfig(total_tokens=10_000_000).n_steps == n
    assert lr_at(4270, n, base) == base and lr_at(4271, n, base) == base
    assert lr_at(4272, n, base) == pytest.approx((n - 4272) / (n - 4271))
    assert lr_at(n - 1, n, base) == pytest.approx(1 / 611)
    assert lr_at(0, 100, 2.0, warmup_steps=10) == pytest.approx(0.2)
    assert lr_at(9, 100, 2.0, warmup_steps=10) == pytest.approx(2.0)
    assert lr_at(50, 100, 2.0, decay_frac=0.0) == 2.0


def test_config_errors():
    with pytest.raises(ValueError, match="less than one batch"):
        TrainConfig(total_tokens=10, batch_size=32)
    with pytest.raises(ValueError, match="lr_decay_frac"):
        TrainConfig(total_tokens=100, batch_size=10, lr_decay_frac=2.0)


def test_train_writes_logs_checkpoint_sae_and_summary(tmp_path):
    penalty = lambda out, sae, step: {"penalty": 1e-3 * out.val_BK.float().pow(2).mean(), "penalty_raw": out.val_BK.float().pow(2).mean()}
    res = train_sae(_topk(), FakeCache(_data()), _cfg(), penalty=penalty, out_dir=tmp_path, progress=False)
    log = read_log(tmp_path)
    assert [r["step"] for r in log] == list(range(12))
    need = {"loss", "mse", "auxk", "sae_loss", "penalty", "penalty_raw", "penalty_over_mse", "lr", "l0", "n_dead", "grad_norm", "tokens"}
    assert need <= set(log[0])
    for r in log:
        assert r["loss"] == pytest.approx(r["sae_loss"] + r["penalty"], rel=1e-5)
        assert r["penalty_over_mse"] == pytest.approx(r["penalty"] / r["mse"], rel=1e-9)
        assert r["l0"] == K
    assert log[-1]["mse"] < log[0]["mse"]
    assert any(r["n_dead"] > 0 for r in log) and any(r["auxk"] > 0 for r in log)  # AuxK switches on
    assert all(r["n_dead"] == 0 for r in log[:3])  # nothing can be dead before 3·B tokens
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "train_summary.json").exists()
    summary = json.loads((tmp_path / "train_summary.json").read_text())
    assert summary["n_steps"] == 12 and summary["tokens"] == 12 * BS and summary["final"]["step"] == 11
    tail = [r["penalty"] / r["mse"] for r in log if r["step"] >= 10]  # the last 10% of 12 steps
    assert summary["penalty_over_mse_final"] == pytest.approx(sum(tail) / 2, rel=1e-12)
    assert summary["final_records"] == 2 and "penalty_l1_over_mse_final" not in summary
    saved = load_sae(tmp_path / "sae")
    for name, t in res.sae.state_dict().items():
        assert torch.equal(saved.state_dict()[name], t)
    torch.testing.assert_close(saved.W_dec.detach().norm(dim=1), torch.ones(F))  # unit rows after the run


def test_b_dec_starts_at_geometric_median_of_first_batch(tmp_path):
    cache = FakeCache(_data())
    first = next(cache.iter_batches(BS, seed=42))
    res = train_sae(_topk(), cache, _cfg(total_tokens=BS, lr=1e-12), out_dir=tmp_path, progress=False)
    torch.testing.assert_close(res.sae.b_dec.detach(), geometric_median(first.float()), rtol=0, atol=1e-6)


def test_decoder_rows_unit_norm_at_each_step():
    sae = _topk()
    with torch.no_grad():
        sae.W_dec.mul_(torch.linspace(0.5, 2.0, F)[:, None])
    cfg = _cfg()
    opt = make_optimizer(sae, cfg, 1e-3)
    x = _data()[:BS]
    train_step(sae, opt, x, step=0, lr=1e-3, cfg=cfg)
    norms = sae.W_dec.detach().norm(dim=1)
    # normalised before the forward, then one Adam step of size ~lr with the parallel gradient removed
    assert float((norms - 1).abs().max()) < 5e-3
    sae.normalize_decoder_()
    torch.testing.assert_close(sae.W_dec.detach().norm(dim=1), torch.ones(F))


def _without_time(log):
    return [{k: v for k, v in r.items() if k != "time_s"} for r in log]


@pytest.mark.parametrize("impl", ["sparse", "dense"])
def test_resume_is_bit_for_bit(tmp_path, impl):
    data = _data(n=5 * BS)  # 5 batches per epoch: 12 steps cross two epoch boundaries
    penalty = lambda out, sae, step: {"penalty": 1e-3 * out.val_BK.float().pow(2).mean(), "penalty_raw": out.val_BK.float().pow(2).mean()}
    straight = train_sae(_topk(impl), FakeCache(data), _cfg(), penalty=penalty, out_dir=tmp_path / "a", progress=False)

    def crashing(out, sae, step):
        if step == 7:
            raise RuntimeError("simulated crash")
        return penalty(out, sae, step)

    with pytest.raises(RuntimeError, match="simulated crash"):
        train_sae(_topk(impl), FakeCache(data), _cfg(), penalty=crashing, out_dir=tmp_path / "b", progress=False)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["step"] == 6
    resumed = train_sae(_topk(impl), FakeCache(data), _cfg(), penalty=penalty, out_dir=tmp_path / "b", progress=False)
    assert resumed.resumed_from == 6
    for name, t in straight.sae.state_dict().items():
        assert torch.equal(resumed.sae.state_dict()[name], t), name
    assert _without_time(read_log(tmp_path / "b")) == _without_time(read_log(tmp_path / "a"))


def test_jumprelu_resume_keeps_its_input_scale_and_groups(tmp_path):
    """A JumpReLU run in normalised units (its own optimizer group per parameter, θ and biases at s·lr,
    ``s`` set on the first batch) resumed after a crash lands bit for bit where the straight run does."""
    from saelib.sae import JumpReLUConfig

    data = _data(n=5 * BS) * 30.0

    def jr():
        return make_sae("jumprelu", JumpReLUConfig(d_in=D, d_sae=F, target_l0=K, hook_name="model.layers.1"))

    penalty = lambda out, sae, step: {"penalty": 0.0 * out.f_BF.sum()}
    straight = train_sae(jr(), FakeCache(data), _cfg(), penalty=penalty, out_dir=tmp_path / "a", progress=False)
    norms = data.double().norm(dim=1)  # s is the RMS norm of the first (shuffled) batch
    assert float(norms.min()) < straight.sae.cfg.input_scale < float(norms.max())

    def crashing(out, sae, step):
        if step == 7:
            raise RuntimeError("simulated crash")
        return penalty(out, sae, step)

    with pytest.raises(RuntimeError, match="simulated crash"):
        train_sae(jr(), FakeCache(data), _cfg(), penalty=crashing, out_dir=tmp_path / "b", progress=False)
    resumed = train_sae(jr(), FakeCache(data), _cfg(), penalty=penalty, out_dir=tmp_path / "b", progress=False)
    assert resumed.resumed_from == 6 and resumed.sae.cfg.input_scale == straight.sae.cfg.input_scale
    for name, t in straight.sae.state_dict().items():
        assert torch.equal(resumed.sae.state_dict()[name], t), name
    assert _without_time(read_log(tmp_path / "b")) == _without_time(read_log(tmp_path / "a"))


def test_training_time_adds_up_across_resumes(tmp_path):
    """Every step costs >= 20 ms (a sleeping penalty): a run resumed after a crash at step 7, and a run
    re-entered after its last step (a stage killed after training, before its evals), report the
    time of all 12 steps, and the log's time_s keeps growing across the resume."""
    import time as _time

    def slow(out, sae, step):
        _time.sleep(0.02)
        return {"penalty": 0.0 * out.val_BK.float().sum()}

    def crashing(out, sae, step):
        if step == 7:
            raise RuntimeError("simulated crash")
        return slow(out, sae, step)

    data = _data(n=5 * BS)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_sae(_topk(), FakeCache(data), _cfg(), penalty=crashing, out_dir=tmp_path / "b", progress=False)
    elapsed = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["elapsed_s"]
    assert elapsed >= 6 * 0.02  # the six steps before the checkpoint
    resumed = train_sae(_topk(), FakeCache(data), _cfg(), penalty=slow, out_dir=tmp_path / "b", progress=False)
    assert resumed.resumed_from == 6
    assert resumed.wall_time_s >= 12 * 0.02 and resumed.summary["wall_time_s"] >= 12 * 0.02
    times = [r["time_s"] for r in read_log(tmp_path / "b")]
    assert len(times) == 12 and times == sorted(times) and times[6] >= elapsed
    again = train_sae(_topk(), FakeCache(data), _cfg(), penalty=slow, out_dir=tmp_path / "b", progress=False)
    assert again.resumed_from == 12
    assert again.wall_time_s == pytest.approx(resumed.wall_time_s, abs=0.05)
    assert again.summary["tokens_per_s"] == pytest.approx(12 * BS / again.wall_time_s)


def test_resume_refuses_a_different_config(tmp_path):
    cache = FakeCache(_data())
    train_sae(_topk(), cache, _cfg(total_tokens=3 * BS), out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="lr"):
        train_sae(_topk(), cache, _cfg(total_tokens=3 * BS, lr=1e-2), out_dir=tmp_path, progress=False)
    other = make_sae("topk", TopKConfig(d_in=D, d_sae=F, k=K + 1, hook_name="model.layers.1"))
    with pytest.raises(ValueError, match="k: checkpoint"):
        train_sae(other, cache, _cfg(total_tokens=3 * BS), out_dir=tmp_path, progress=False)


def test_nan_penalty_raises_with_step_and_term(tmp_path):
    def bad(out, sae, step):
        value = out.val_BK.float().mean() * (float("nan") if step == 2 else 0.0)
        return {"penalty": value, "penalty_raw": value}

    with pytest.raises(NonFiniteLossError, match=r"'penalty' = nan at step 2") as err:
        train_sae(_topk(), FakeCache(_data()), _cfg(), penalty=bad, out_dir=tmp_path, progress=False)
    assert err.value.step == 2 and err.value.term == "penalty"


def test_nan_with_a_penalty_names_lambda_and_the_fix(tmp_path):
    class Bad:
        class cfg:  # what CoactivationPenalty exposes: its resolved config
            lam = 0.075

        def __call__(self, out, sae, step):
            value = out.val_BK.float().mean() * (float("inf") if step == 1 else 0.0)
            return {"penalty": value}

    with pytest.raises(NonFiniteLossError) as err:
        train_sae(_topk(), FakeCache(_data()), _cfg(), penalty=Bad(), out_dir=tmp_path, progress=False)
    assert err.value.penalty_lambda == 0.075 and "λ = 0.075" in str(err.value) and "lam_mult" in str(err.value)
    named = err.value.for_variant("ortho_run4")
    assert "variant 'ortho_run4'" in str(named) and "sae_variants.ortho_run4.penalty" in str(named)
    assert "dvc repro train@ortho_run4" in str(named) and named.step == err.value.step == 1


def test_nan_activations_raise_on_mse(tmp_path):
    data = _data()
    data[BS + 3, 0] = float("inf")
    with pytest.raises(NonFiniteLossError) as err:
        train_sae(_topk(), FakeCache(data), _cfg(shuffle=False, init_b_dec=False), out_dir=tmp_path, progress=False)
    assert err.value.step == 1 and err.value.term == "mse" and not math.isfinite(err.value.value)


def test_width_mismatch_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="does not match the SAE's d_in"):
        train_sae(_topk(), FakeCache(torch.randn(64, D + 1)), _cfg(), out_dir=tmp_path, progress=False)


def test_relu_sae_trains_with_l1_warmup(tmp_path):
    sae = make_sae("relu", ReLUConfig(d_in=D, d_sae=F, l1_coef=0.04, l1_warmup_steps=4))
    train_sae(sae, FakeCache(_data()), _cfg(total_tokens=6 * BS), out_dir=tmp_path, progress=False)
    log = read_log(tmp_path)
    assert [r["l1_coef"] for r in log] == pytest.approx([0.0, 0.01, 0.02, 0.03, 0.04, 0.04])
    for r in log:
        assert r["loss"] == pytest.approx(r["mse"] + r["l1_coef"] * r["l1"], rel=1e-5)


@pytest.mark.parametrize("scale", [1.0, 1e-4])  # gradient norm above / below the clip threshold
def test_train_step_follows_the_original_order(scale):
    import copy

    sae = _topk()
    with torch.no_grad():
        sae.W_dec.mul_(1.5)  # the step must renormalise first
    ref = copy.deepcopy(sae)
    cfg = _cfg()
    x = _data()[:BS] * scale
    out = train_step(sae, make_optimizer(sae, cfg, 1e-3), x, step=0, lr=1e-3, cfg=cfg)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    with torch.no_grad():
        ref.W_dec.div_(ref.W_dec.norm(dim=1, keepdim=True))
    from saelib.train import step_uses_bf16

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=step_uses_bf16(cfg, "cpu")):  # as the step does
        loss = ref(x).losses["loss"]
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
    assert (float(norm) > 1.0) == (scale == 1.0)
    with torch.no_grad():
        g, w = ref.W_dec.grad, ref.W_dec
        g -= (g * w).sum(1, keepdim=True) * w
    opt.step()
    assert float(out.grad_norm) == pytest.approx(float(norm), rel=1e-6)
    for (name, p), q in zip(sae.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-7, msg=name)


def test_dead_latent_tracker_counts_top_k_membership_not_positive_value():
    """A latent selected by top-k fires even when its ReLU value is 0 (issue 12, finding 5)."""
    from saelib.sae.base import SAEOutput
    from saelib.train import active_latents

    idx = torch.tensor([[0, 3], [3, 5]])
    val = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # latents 3 and 5 are selected but zero-valued
    fired, l0 = active_latents(SAEOutput(torch.zeros(2, 1), None, idx, val, {}), 8)
    assert fired.tolist() == [True, False, False, True, False, True, False, False]
    assert float(l0) == 0.5
    f_BF = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    fired, l0 = active_latents(SAEOutput(torch.zeros(2, 1), f_BF, None, None, {}), 3)
    assert fired.tolist() == [False, True, False] and float(l0) == 0.5


def test_final_penalty_ratios_average_the_last_tenth():
    from saelib.train import final_penalty_ratios

    recs = [{"step": t, "mse": 2.0, "penalty": 0.1 * t, "penalty_coact": 0.05 * t, "penalty_l1": 0.05 * t}
            for t in range(20)]
    out = final_penalty_ratios(recs, 20)
    assert out["penalty_over_mse_final"] == pytest.approx((1.8 + 1.9) / 2 / 2.0)
    assert out["penalty_coact_over_mse_final"] == pytest.approx((0.9 + 0.95) / 2 / 2.0)
    assert out["final_records"] == 2
    assert final_penalty_ratios([{"step": 19, "mse": 1.0}], 20) == {}


def test_prefetch_keeps_items_and_order_and_forwards_errors():
    from saelib.train import _Prefetch

    items = [(0, i, torch.full((2,), float(i))) for i in range(7)]
    got = list(_Prefetch(iter(items), depth=2))
    assert [g[1] for g in got] == list(range(7)) and all(torch.equal(a[2], b[2]) for a, b in zip(got, items))

    def broken():
        yield (0, 0, torch.zeros(1))
        raise OSError("shard unreadable")

    pf = _Prefetch(broken(), depth=1)
    assert next(pf)[1] == 0
    with pytest.raises(OSError, match="shard unreadable"):
        next(pf)
    endless = _Prefetch(((0, i, torch.zeros(1)) for i in range(10**9)), depth=1)
    assert next(endless)[1] == 0
    endless.close()  # the producer is blocked on the full queue: close must still return
    assert not endless._thread.is_alive()


def test_prefetch_gives_the_same_run(tmp_path):
    a = train_sae(_topk(), FakeCache(_data()), _cfg(prefetch=0), out_dir=tmp_path / "a", progress=False)
    b = train_sae(_topk(), FakeCache(_data()), _cfg(prefetch=3), out_dir=tmp_path / "b", progress=False)
    for name, t in a.sae.state_dict().items():
        assert torch.equal(b.sae.state_dict()[name], t), name
