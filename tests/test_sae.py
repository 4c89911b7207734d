"""SAE architectures: shapes, encode/decode consistency, TopK code and gradients against a naive
reference, decoder constraints, geometric median, SAELens-format save/load."""
import json
import math

import pytest
import torch

from saelib.sae import (
    SAE_REGISTRY, BatchTopKConfig, JumpReLUConfig, ReLUConfig, SAEFormatError, TopKConfig, TopKSAE,
    ReLUSAE, geometric_median, load_sae, make_sae,
)
from saelib.sae.jumprelu import JumpReLUFn, StepFn
from saelib.sae.topk_reference import topk_reference

D, F, B = 16, 96, 48


def _cfg(arch, **kw):
    base = dict(d_in=D, d_sae=F, hook_name="model.layers.1", model_name="tiny")
    if arch == "topk":
        return TopKConfig(**base, k=5, **kw)
    if arch == "batchtopk":
        return BatchTopKConfig(**base, k=5, **kw)
    if arch == "relu":
        return ReLUConfig(**base, **kw)
    return JumpReLUConfig(**base, target_l0=5, **kw)


def _x(n=B, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D, generator=g) * 2.0 + 0.5


def _sae(arch, **kw):
    sae = make_sae(arch, _cfg(arch, **kw))
    sae.init_from_batch_(_x(seed=1))
    return sae


ARCHS = ["topk", "batchtopk", "relu", "jumprelu"]


def test_registry_lists_archs_and_rejects_unknown():
    assert set(SAE_REGISTRY) == set(ARCHS)
    with pytest.raises(ValueError, match="known: .*batchtopk.*jumprelu.*relu.*topk"):
        make_sae("gated", _cfg("relu"))
    with pytest.raises(TypeError, match="TopKConfig"):
        make_sae("topk", _cfg("relu"))
    sae = make_sae("topk", {"d_in": D, "d_sae": F, "k": 3})
    assert isinstance(sae, TopKSAE) and sae.cfg.k == 3


def test_topk_backward_impl_auto_rule():
    from saelib.sae.topk import auto_sparse_rule
    # with fast bf16 matmuls (CUDA, AMX): sparse iff k <= F/64
    assert auto_sparse_rule(28, 5120, True) and auto_sparse_rule(80, 5120, True)
    assert not auto_sparse_rule(88, 5120, True) and not auto_sparse_rule(320, 18432, True)
    # without (AVX2 CPU, fp32): always sparse
    assert auto_sparse_rule(88, 5120, False) and auto_sparse_rule(320, 18432, False)
    from saelib.devices import bf16_matmul_is_fast
    fast = bf16_matmul_is_fast("cpu")
    assert TopKConfig(d_in=640, d_sae=5120, k=28).sparse_backward
    assert TopKConfig(d_in=640, d_sae=5120, k=88).sparse_backward == (not fast)
    assert TopKConfig(d_in=640, d_sae=5120, k=88, backward_impl="dense").sparse_backward_on("cpu") is False
    assert TopKConfig(d_in=640, d_sae=5120, k=5000, backward_impl="sparse").sparse_backward_on("cuda") is True
    with pytest.raises(ValueError, match="backward_impl"):
        TopKConfig(d_in=D, d_sae=F, backward_impl="fast")


def test_config_validation():
    with pytest.raises(ValueError, match="k must be"):
        TopKConfig(d_in=D, d_sae=F, k=F + 1)
    with pytest.raises(ValueError, match="dtype"):
        ReLUConfig(d_in=D, d_sae=F, dtype="float8")
    with pytest.raises(ValueError, match="sparsity_mode"):
        JumpReLUConfig(d_in=D, d_sae=F, sparsity_mode="l2")


@pytest.mark.parametrize("arch", ARCHS)
def test_shapes_and_forward_equals_decode_encode(arch):
    sae = _sae(arch)
    x = _x()
    for training in (True, False):
        sae.train(training)
        with torch.no_grad():
            out = sae(x, step=3)
            f = sae.encode(x)
            x_hat = sae.decode(f)
        assert out.x_hat_BD.shape == (B, D) and out.x_hat_BD.dtype == torch.float32
        assert out.f_BF.shape == (B, F) and f.shape == (B, F)
        torch.testing.assert_close(out.f_BF.float(), f.float(), rtol=0, atol=0)
        torch.testing.assert_close(out.x_hat_BD, x_hat, rtol=1e-5, atol=1e-5)
        assert set(out.losses) >= {"mse", "loss"}
        torch.testing.assert_close(out.losses["mse"], (x_hat - x).pow(2).sum(1).mean(), rtol=1e-5, atol=1e-5)
    # leading dims are accepted by encode/decode
    with torch.no_grad():
        f3 = sae.encode(x.reshape(4, B // 4, D))
        assert f3.shape == (4, B // 4, F)
        assert sae.decode(f3).shape == (4, B // 4, D)
    with pytest.raises(ValueError, match=f"\\(..., {D}\\)"):
        sae.encode(torch.zeros(3, D + 1))


def _naive_topk_loss(sae, x, dead_mask):
    """The package's float64 reference (saelib.sae.topk_reference): values and parameter gradients."""
    p = {n: t.detach().double().requires_grad_(True) for n, t in sae.named_parameters()}
    ref = topk_reference(p, x.double(), sae.cfg.k, dead_F=dead_mask, aux_k=sae.cfg.resolved_aux_k,
                         aux_coef=sae.cfg.aux_coef, normalize=sae.cfg.aux_normalize)
    ref.loss.backward()
    return ref.f_BF, ref.x_hat_BD, ref.loss, {n: t.grad for n, t in p.items()}


def test_topk_reference_matches_a_direct_transcription():
    """The reference module against the equations typed out once more (no shared code)."""
    g = torch.Generator().manual_seed(4)
    x, W_enc, b_enc = torch.randn(6, 5, generator=g).double(), torch.randn(5, 12, generator=g).double(), torch.randn(12, generator=g).double()
    W_dec, b_dec = torch.randn(12, 5, generator=g).double(), torch.randn(5, generator=g).double()
    ref = topk_reference({"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": b_dec}, x, 3)
    for b in range(6):
        pre = [float(sum((x[b, d] - b_dec[d]) * W_enc[d, i] for d in range(5)) + b_enc[i]) for i in range(12)]
        keep = sorted(range(12), key=lambda i: -max(pre[i], 0.0))[:3]
        f = [max(pre[i], 0.0) if i in keep else 0.0 for i in range(12)]
        assert ref.f_BF[b].tolist() == pytest.approx(f)
        x_hat = [sum(f[i] * float(W_dec[i, d]) for i in range(12)) + float(b_dec[d]) for d in range(5)]
        assert ref.x_hat_BD[b].tolist() == pytest.approx(x_hat)
    assert float(ref.auxk) == 0.0 and float(ref.loss) == pytest.approx(float((ref.x_hat_BD - x).pow(2).sum(1).mean()))


@pytest.mark.parametrize("impl", ["sparse", "dense"])
@pytest.mark.parametrize("with_dead", [False, True])
def test_topk_matches_naive_reference_values_and_gradients(with_dead, impl):
    sae = _sae("topk", backward_impl=impl)
    assert sae.cfg.sparse_backward == (impl == "sparse")
    x = _x()
    dead = (torch.arange(F) % 3 == 0) if with_dead else None
    out = sae(x, dead_mask_F=dead)
    out.losses["loss"].backward()
    f_ref, x_hat_ref, loss_ref, grads_ref = _naive_topk_loss(sae, x, dead)
    assert ((out.f_BF != 0).sum(1) == sae.cfg.k).all()  # exactly k active per token
    torch.testing.assert_close(out.f_BF.double(), f_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.x_hat_BD.double(), x_hat_ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.losses["loss"].double(), loss_ref.detach(), rtol=1e-5, atol=1e-5)
    if with_dead:
        assert float(out.losses["auxk"].detach()) > 0
    for name, param in sae.named_parameters():
        torch.testing.assert_close(param.grad.double(), grads_ref[name], rtol=1e-4, atol=1e-4 * float(grads_ref[name].abs().max()))


@pytest.mark.parametrize("impl", ["sparse", "dense"])
def test_topk_bf16_autocast_close_to_fp32(impl):
    sae = _sae("topk", backward_impl=impl)
    x = _x()
    with torch.no_grad():
        ref = sae(x).x_hat_BD
        ref_code = sae(x).idx_BK
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = sae(x.bfloat16())
    assert out.x_hat_BD.dtype == torch.float32
    rel = float((out.x_hat_BD - ref).norm() / ref.norm())
    assert rel < 5e-2  # bf16 inputs/weights (3 significant digits) and a few top-k swaps
    same = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(out.idx_BK, ref_code))
    assert same >= 0.9 * ref_code.numel()


def test_batchtopk_keeps_k_times_batch_and_tracks_threshold():
    sae = _sae("batchtopk")
    x = _x()
    sae.train()
    with torch.no_grad():
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        out = sae(x)
    assert int((out.f_BF != 0).sum()) == sae.cfg.k * B
    kth = pre.relu().flatten().topk(sae.cfg.k * B).values
    torch.testing.assert_close(out.f_BF.flatten().sort().values[-sae.cfg.k * B:], kth.sort().values, rtol=1e-5, atol=1e-5)
    # threshold EMA from 0: r · (smallest kept activation)
    assert float(sae.threshold) == pytest.approx(sae.cfg.threshold_ema * float(kth.min()), rel=1e-5)
    sae.eval()
    with torch.no_grad():
        f_eval = sae.encode(x)
    thr = float(sae.threshold)
    torch.testing.assert_close(f_eval, pre.relu() * (pre > thr), rtol=1e-5, atol=1e-5)


def test_relu_l1_and_sparsity_warmup():
    sae = _sae("relu", l1_warmup_steps=10)
    x = _x()
    with torch.no_grad():
        f = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).relu()
        for step, scale in ((0, 0.0), (4, 0.4), (10, 1.0), (50, 1.0), (None, 1.0)):
            out = sae(x, step=step)
            l1 = f.sum(1).mean()
            torch.testing.assert_close(out.losses["l1"], l1, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(out.losses["loss"], out.losses["mse"] + 0.04 * scale * l1, rtol=1e-5, atol=1e-4)


def test_jumprelu_ste_gradients_match_formula():
    g = torch.Generator().manual_seed(3)
    pre = torch.rand(40, 6, generator=g)
    theta = torch.full((6,), 0.5, requires_grad=True)
    eps = 0.2
    in_window = ((pre - 0.5).abs() < eps / 2).double()
    JumpReLUFn.apply(pre, theta, eps).sum().backward()
    torch.testing.assert_close(theta.grad.double(), -(0.5 / eps) * in_window.sum(0), rtol=1e-6, atol=1e-6)
    theta.grad = None
    StepFn.apply(pre, theta, eps).sum().backward()
    torch.testing.assert_close(theta.grad.double(), -(1 / eps) * in_window.sum(0), rtol=1e-6, atol=1e-6)
    f = JumpReLUFn.apply(pre, theta.detach(), eps)
    torch.testing.assert_close(f, pre * (pre > 0.5))


def test_jumprelu_threshold_init_hits_target_l0_and_target_penalty():
    sae = make_sae("jumprelu", _cfg("jumprelu"))
    x = _x(n=200, seed=4)
    sae.init_from_batch_(x)
    assert sae.cfg.threshold_init > 0 and sae.cfg.bandwidth == sae.cfg.threshold_init
    with torch.no_grad():
        out = sae(x)
    assert float(out.losses["l0"]) == pytest.approx(5.0, abs=0.05)
    expected = (out.losses["l0"] / 5.0 - 1) ** 2
    torch.testing.assert_close(out.losses["sparsity"], expected)
    with torch.no_grad():
        sae.threshold[:3] = -1.0
    sae.after_step_()
    assert float(sae.threshold.detach().min()) >= 0.0


def test_geometric_median_matches_brute_force():
    pts = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 3.0], [1.0, 2.5], [3.0, 3.0]])
    gm = geometric_median(pts).double()
    xs = torch.linspace(0, 4, 801, dtype=torch.float64)
    ys = torch.linspace(0, 3, 601, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
    cost = torch.cdist(grid, pts.double()).sum(1)
    best = grid[cost.argmin()]
    assert float((gm - best).norm()) < 0.01
    own_cost = float((pts.double() - gm).norm(dim=1).sum())
    assert own_cost <= float(cost.min()) + 1e-9
    # odd number of collinear points: the middle one (the mean, 11/3, is not)
    line = torch.tensor([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    torch.testing.assert_close(geometric_median(line), torch.tensor([1.0, 0.0]), rtol=0, atol=1e-4)


def test_init_from_batch_sets_b_dec_to_geometric_median():
    sae = make_sae("topk", _cfg("topk"))
    x = _x(seed=7)
    sae.init_from_batch_(x)
    torch.testing.assert_close(sae.b_dec.detach(), geometric_median(x))


def test_init_is_kaiming_uniform_with_tied_unit_decoder():
    sae = make_sae("topk", _cfg("topk"))
    bound = 1 / math.sqrt(D)
    w_max = float(sae.W_enc.detach().abs().max())
    assert 0.9 * bound < w_max <= bound
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(F))
    torch.testing.assert_close(sae.W_dec.detach(), (sae.W_enc.T / sae.W_enc.T.norm(dim=1, keepdim=True)).detach())
    assert float(sae.b_enc.detach().abs().max()) == 0.0
    again = make_sae("topk", _cfg("topk"))
    assert torch.equal(again.W_enc, sae.W_enc)  # seeded


def test_decoder_gradient_projection_preserves_norm_to_first_order():
    sae = _sae("topk")
    sae.normalize_decoder_()
    sae(_x()).losses["loss"].backward()
    g_raw = sae.W_dec.grad.clone().double()
    sae.remove_parallel_decoder_grad_()
    g = sae.W_dec.grad.double()
    w = sae.W_dec.detach().double()
    assert float((g * w).sum(1).abs().max()) < 1e-6 * float(g_raw.abs().max())
    eta = 1e-3
    # ‖w − ηg⊥‖² = 1 + η²‖g⊥‖² (no first-order term); the raw gradient changes norms at first order
    norm2 = w.pow(2).sum(1)
    change = (w - eta * g).pow(2).sum(1) - norm2
    second_order = eta**2 * g.pow(2).sum(1)
    torch.testing.assert_close(change, second_order, rtol=1e-3, atol=1e-3 * float(second_order.max()))
    raw_change = (w - eta * g_raw).pow(2).sum(1) - norm2
    assert float(raw_change.abs().max()) > 100 * float(change.abs().max())


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip_bit_identical(arch, tmp_path):
    sae = _sae(arch)
    sae.train()
    sae(_x()).losses["loss"].backward()  # BatchTopK: moves the threshold off 0
    sae.eval()
    sae.save(tmp_path / "sae")
    back = load_sae(tmp_path / "sae")
    assert type(back) is type(sae) and back.cfg == sae.cfg
    assert back.state_dict().keys() == sae.state_dict().keys()
    for name, t in sae.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name
    x = _x(seed=9)
    with torch.no_grad():
        assert torch.equal(back.decode(back.encode(x)), sae.decode(sae.encode(x)))
    assert type(sae).load(tmp_path / "sae").cfg == sae.cfg


SAELENS_KEYS = {"architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations", "metadata"}


@pytest.mark.parametrize("arch,sl_arch,extra", [("topk", "topk", {"threshold": False}), ("batchtopk", "jumprelu", {"threshold": True}),
                                               ("relu", "standard", {"threshold": False}), ("jumprelu", "jumprelu", {"threshold": True})])
def test_saved_folder_has_saelens_format(arch, sl_arch, extra, tmp_path):
    from safetensors.torch import load_file

    _sae(arch).save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert SAELENS_KEYS <= set(cfg) and cfg["architecture"] == sl_arch
    assert cfg["d_in"] == D and cfg["d_sae"] == F and cfg["apply_b_dec_to_input"] is True
    assert cfg["normalize_activations"] == "none" and cfg["metadata"]["hook_name"] == "model.layers.1"
    if sl_arch == "topk":
        assert cfg["k"] == 5 and cfg["rescale_acts_by_decoder_norm"] is False
    w = load_file(str(tmp_path / "sae_weights.safetensors"))
    shapes = {"W_enc": (D, F), "b_enc": (F,), "W_dec": (F, D), "b_dec": (D,)}
    if extra["threshold"]:
        shapes["threshold"] = (F,)
    assert {k: tuple(v.shape) for k, v in w.items()} == shapes


def test_loads_plain_saelens_topk_folder(tmp_path):
    """A folder written the way SAELens writes a TopK SAE (no saelib metadata) loads and encodes the same."""
    from safetensors.torch import save_file

    src = _sae("topk")
    save_file({k: v.detach().contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "sae_weights.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({
        "architecture": "topk", "d_in": D, "d_sae": F, "k": 5, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "rescale_acts_by_decoder_norm": False,
        "metadata": {"sae_lens_version": "6.5.0", "hook_name": "blocks.1.hook_resid_post", "model_name": "m"},
    }))
    back = load_sae(tmp_path)
    assert isinstance(back, TopKSAE) and back.cfg.k == 5 and back.cfg.hook_name == "blocks.1.hook_resid_post"
    x = _x(seed=2)
    with torch.no_grad():
        assert torch.equal(back.encode(x), src.encode(x))


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(SAEFormatError, match="does not exist"):
        load_sae(tmp_path / "missing")
    _sae("topk").save(tmp_path / "a")
    (tmp_path / "a" / "sae_weights.safetensors").unlink()
    with pytest.raises(SAEFormatError, match="sae_weights.safetensors"):
        load_sae(tmp_path / "a")
    _sae("topk").save(tmp_path / "b")
    with pytest.raises(SAEFormatError, match="not a ReLUSAE"):
        ReLUSAE.load(tmp_path / "b")


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_saelens_loads_our_sae_with_same_reconstruction(arch, tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    sae = _sae(arch)
    sae.train()
    sae(_x()).losses["loss"].backward()
    sae.eval()
    sae.save(tmp_path)
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path))
    x = _x(seed=5)
    with torch.no_grad():
        ours = sae.decode(sae.encode(x))
        recon = theirs.decode(theirs.encode(x))
    torch.testing.assert_close(recon, ours, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("shape,k", [((64, 512), 64), ((33, 1024), 100), ((8, 96), 5), ((5, 260), 65)])
def test_fast_topk_is_exact(shape, k):
    from saelib.sae.topk import fast_topk

    g = torch.Generator().manual_seed(k)
    pre = torch.randn(*shape, generator=g)
    pre[0, :] = torch.arange(shape[1], dtype=torch.float32)  # all maxima in the last blocks
    val, idx = fast_topk(pre, k)
    ref = pre.topk(k, dim=1).values
    torch.testing.assert_close(val.sort(1).values, ref.sort(1).values, rtol=0, atol=0)
    torch.testing.assert_close(pre.gather(1, idx), val, rtol=0, atol=0)
    assert all(len(set(row.tolist())) == k for row in idx)


def test_topk_config_rejects_bad_aux_k():
    with pytest.raises(ValueError, match="aux_k"):
        TopKConfig(d_in=8, d_sae=32, k=2, aux_k=0)
    assert TopKConfig(d_in=8, d_sae=32, k=2, aux_k=3).resolved_aux_k == 3
    assert TopKConfig(d_in=8, d_sae=32, k=2).resolved_aux_k == 4


def test_lr_travel_and_jumprelu_threshold_report():
    from saelib.sae.jumprelu import threshold_report
    from saelib.train import lr_travel
    assert lr_travel(100, 1.0, decay_frac=0.0) == pytest.approx(100.0)
    # 50 steps at 1, then (100 - t) / 50 for t = 50..99: 50 + 1275 / 50
    assert lr_travel(100, 1.0, decay_frac=0.5) == pytest.approx(75.5)
    assert lr_travel(10, 2.0, warmup_steps=4, decay_frac=0.0) == pytest.approx(2.0 * (0.25 + 0.5 + 0.75 + 1 + 6))
    sae = make_sae("jumprelu", JumpReLUConfig(d_in=4, d_sae=6, target_l0=2, threshold_init=2.0, units="raw"))
    with torch.no_grad():
        sae.threshold.copy_(torch.tensor([2.0, 2.5, 1.0, 2.0, 2.0, 3.0]))
    rep = threshold_report(sae, l0=1.5, travel=0.5)
    assert rep["threshold_moved_max"] == pytest.approx(1.0) and rep["threshold_moved_median"] == pytest.approx(0.0)
    assert rep["travel_over_init"] == pytest.approx(0.25) and rep["target_l0"] == 2 and rep["l0"] == 1.5
    # normalised units: θ learns at s·lr, so it can travel s times as far
    sae.cfg.units, sae.cfg.input_scale = "normalized", 8.0
    rep = threshold_report(sae, l0=1.5, travel=0.5)
    assert rep["adam_travel_bound"] == pytest.approx(4.0) and (rep["units"], rep["input_scale"]) == ("normalized", 8.0)
    sae.cfg.input_scale = None
    with pytest.raises(RuntimeError, match="input scale"):
        threshold_report(sae, l0=1.5, travel=0.5)


def test_relu_normalized_units_train_as_on_unit_norm_inputs():
    """ReLU units="normalized" on x is the raw-units SAE trained on x/s (saelib.sae.units): the L1 term is
    weighted by s (the latents scale with the input), the biases learn at s·lr; W lands on the same values."""
    from saelib.sae import ReLUConfig
    from saelib.train import TrainConfig, make_optimizer, train_step
    x = _x(n=64, seed=11) * 40.0 + 3.0
    cfg = TrainConfig(total_tokens=192, batch_size=64, grad_clip=0.0, autocast_bf16=False, adam_eps=1e-30)
    norm = make_sae("relu", ReLUConfig(d_in=D, d_sae=F, l1_coef=0.3, l1_warmup_steps=0, units="normalized", seed=5))
    raw = make_sae("relu", ReLUConfig(d_in=D, d_sae=F, l1_coef=0.3, l1_warmup_steps=0, seed=5))
    assert raw.cfg.units == "raw" and not raw.uses_lr_multipliers() and norm.uses_lr_multipliers()
    norm.init_from_batch_(x)
    s = norm.cfg.input_scale
    raw.init_from_batch_(x / s)
    with torch.no_grad():  # start both from live latents: b_enc chosen so that most pre-activations are > 0
        raw.b_enc.fill_(0.05)
        norm.b_enc.fill_(0.05 * s)
    opt_n, opt_r = make_optimizer(norm, cfg, 1e-2), make_optimizer(raw, cfg, 1e-2)
    assert len(opt_r.param_groups) == 1  # raw units: one group, as the literal rows always trained
    for step in range(3):
        rn = train_step(norm, opt_n, x, step=step, lr=1e-2, cfg=cfg)
        rr = train_step(raw, opt_r, x / s, step=step, lr=1e-2, cfg=cfg)
        torch.testing.assert_close(rn.loss.detach().double(), rr.loss.detach().double() * s**2, rtol=1e-4, atol=0)
    assert {g["name"]: g["lr"] for g in opt_n.param_groups}["b_enc"] == pytest.approx(1e-2 * s)
    torch.testing.assert_close(norm.W_enc.detach(), raw.W_enc.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(norm.W_dec.detach(), raw.W_dec.detach(), rtol=1e-4, atol=1e-6)
    for name in ("b_enc", "b_dec"):
        torch.testing.assert_close(getattr(norm, name).detach() / s, getattr(raw, name).detach(), rtol=1e-4, atol=1e-5)
    assert float((norm.W_enc.detach() - raw.W_enc.detach()).abs().max()) < 1e-4
    # the L1 weight is u = s (not s², the L0-type term's): with u = 1 the losses would differ by far more
    out = norm(x, step=None)
    torch.testing.assert_close(out.losses["loss"], out.losses["mse"] + 0.3 * s * out.losses["l1"], rtol=1e-6, atol=0)
    old = {k: v for k, v in norm.cfg.to_dict().items() if k not in ("units", "input_scale")}
    assert ReLUConfig.from_saved(old).units == "raw" and ReLUConfig.from_saved(norm.cfg.to_dict()) == norm.cfg


def test_jumprelu_normalized_units_train_as_on_unit_norm_inputs():
    """units="normalized" on x is the raw-units SAE trained on x/s, with biases and θ scaled by s (the
    module docstring's equivalence): three Adam steps (no clipping, fp32) land on the same weights."""
    from saelib.train import TrainConfig, make_optimizer, train_step
    x = _x(n=64, seed=7) * 40.0
    cfg = TrainConfig(total_tokens=192, batch_size=64, grad_clip=0.0, autocast_bf16=False, adam_eps=1e-30)
    norm = make_sae("jumprelu", _cfg("jumprelu", sparsity_coef=0.5))
    norm.init_from_batch_(x)
    s = norm.cfg.input_scale
    assert s == pytest.approx(float(x.double().pow(2).sum(1).mean().sqrt()), rel=1e-9)
    raw = make_sae("jumprelu", _cfg("jumprelu", sparsity_coef=0.5, units="raw"))
    raw.init_from_batch_(x / s)
    assert raw.cfg.threshold_init == pytest.approx(norm.cfg.threshold_init / s, rel=1e-5)
    assert raw.eps == pytest.approx(norm.eps / s, rel=1e-5)
    # a different lr per group only where the multiplier differs from 1
    opt_n, opt_r = make_optimizer(norm, cfg, 1e-2), make_optimizer(raw, cfg, 1e-2)
    for step in range(3):
        rn = train_step(norm, opt_n, x, step=step, lr=1e-2, cfg=cfg)
        rr = train_step(raw, opt_r, x / s, step=step, lr=1e-2, cfg=cfg)
        torch.testing.assert_close(rn.loss.detach().double(), rr.loss.detach().double() * s**2, rtol=1e-4, atol=0)
    lrs = {g["name"]: g["lr"] for g in opt_n.param_groups}
    assert lrs["threshold"] == pytest.approx(1e-2 * s) and lrs["W_enc"] == pytest.approx(1e-2)
    assert {g["lr"] for g in opt_r.param_groups} == {1e-2}
    torch.testing.assert_close(norm.W_enc.detach(), raw.W_enc.detach(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(norm.W_dec.detach(), raw.W_dec.detach(), rtol=1e-4, atol=1e-6)
    for name in ("b_enc", "b_dec", "threshold"):
        torch.testing.assert_close(getattr(norm, name).detach() / s, getattr(raw, name).detach(), rtol=1e-4, atol=1e-5)
    # a config saved before the field existed was trained in raw units; one built from a params entry
    # without the field (from_dict) gets the default; a saved one round-trips
    old = {k: v for k, v in norm.cfg.to_dict().items() if k not in ("units", "input_scale")}
    assert JumpReLUConfig.from_saved(old).units == "raw" and JumpReLUConfig.from_dict(old).units == "normalized"
    assert JumpReLUConfig.from_saved(norm.cfg.to_dict()) == norm.cfg
    # and the thresholds did move (by about s·lr per step, not lr)
    assert float((norm.threshold.detach() - norm.cfg.threshold_init).abs().max()) > 0.5 * 1e-2 * s
