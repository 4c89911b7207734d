"""SCR and TPP on planted data with known answers, and the pooled ablation identity."""
import numpy as np
import pytest
import torch

from saelib.evals.probing import ProbeTrainConfig
from saelib.evals.pooled import PooledActs, PooledConfig, ablate_pooled, check_affine_decoder, pooled_latents
from saelib.evals.scr import (ScrConfig, ScrEvalConfig, ablation_accuracies, latent_effects, make_scr_sets,
                              scr_for_sae, scr_model_side, scr_score, top_n_latents)
from saelib.evals.tpp import TppConfig, TppEvalConfig, tpp_for_sae, tpp_model_side
from saelib.sae import TopKConfig, make_sae


def test_pooled_ablation_equals_per_token_ablation_with_error_term():
    torch.manual_seed(0)
    sae = make_sae("topk", TopKConfig(d_in=16, d_sae=40, k=6))
    with torch.no_grad():
        sae.b_dec.normal_()
    counts = [5, 2, 8]
    acts = torch.randn(sum(counts), 16).bfloat16()
    offsets = torch.tensor([0, *np.cumsum(counts)])
    pooled = PooledActs(acts, offsets)
    fbar = pooled_latents(sae, pooled, cfg=PooledConfig(autocast_bf16=False))
    latents = [3, 17, 22, 39]
    got = ablate_pooled(pooled.xbar_ND, fbar, sae.W_dec.detach(), latents)
    for n in range(3):
        x = acts[offsets[n]:offsets[n + 1]].float()
        f = sae.encode(x)
        err = x - sae.decode(f)
        f_abl = f.clone()
        f_abl[:, latents] = 0
        naive = (sae.decode(f_abl) + err).mean(0)
        assert torch.allclose(got[n], naive, atol=1e-4)
    assert check_affine_decoder(sae, fbar) < 1e-4


def test_non_affine_decoder_is_rejected():
    class Bent:
        W_dec = torch.randn(8, 4)

        def decode(self, f):
            return torch.relu(f @ self.W_dec)

    with pytest.raises(ValueError, match="not affine"):
        check_affine_decoder(Bent(), torch.rand(16, 8))


def test_scr_score_and_top_n():
    assert scr_score(0.9, 0.6, 0.9) == pytest.approx(1.0)
    assert scr_score(0.6, 0.6, 0.9) == 0.0
    assert scr_score(0.75, 0.6, 0.9) == pytest.approx(0.5)
    assert scr_score(0.7, 0.9, 0.9005) == 0.0  # denominator below 0.001
    eff = torch.tensor([0.0, 3.0, 0.0, 1.0, 2.0])
    assert top_n_latents(eff, 2).tolist() == [1, 4]
    assert sorted(top_n_latents(eff, 5).tolist()) == [1, 3, 4]  # only the non-zero effects
    with pytest.raises(ValueError, match="cannot ablate 6"):
        top_n_latents(eff, 6)


def test_scr_sets_follow_saebench_composition():
    quads = {"train": {k: np.arange(10) + 100 * i for i, k in enumerate(("pp", "pn", "np", "nn"))},
             "test": {"pp": np.arange(8) + 1000, "pn": np.arange(3) + 1100, "np": np.arange(5) + 1200, "nn": np.arange(8) + 1300}}
    sets = make_scr_sets(quads, seed=0)
    assert sets.q == {"train": 5, "test": 3}
    rows, y = sets.rows["train"], sets.labels["train"]
    assert sorted(rows["biased"][y["biased"] == 1]) == list(range(10))  # 2q of (A+, B+)
    assert sorted(rows["biased"][y["biased"] == 0]) == list(range(300, 310))  # 2q of (A-, B-)
    assert sorted(rows["a"][y["a"] == 1]) == [*range(5), *range(100, 105)]  # A+: (A+,B+) and (A+,B-)
    assert sorted(rows["b"][y["b"] == 1]) == [*range(5), *range(200, 205)]  # B+: (A+,B+) and (A-,B+)
    assert sorted(rows["b"][y["b"] == 0]) == [*range(100, 105), *range(300, 305)]
    assert len(sets.rows["test"]["biased"]) == 12


def _planted_scr(seed=0, n=64):
    """Signed latents: 0 carries B (±3), 1 carries A (±1), 2..11 small noise; x̄ = f̄ W_dec + b_dec
    with orthonormal decoder rows. On the biased set B and A agree, and B is the louder one."""
    rng = np.random.default_rng(seed)
    F, D = 12, 64
    W_dec = torch.tensor(np.linalg.qr(rng.normal(size=(D, F)))[0].T, dtype=torch.float32)
    b_dec = torch.tensor(rng.normal(size=D) * 5, dtype=torch.float32)
    rows, quads, fbar = 0, {}, []
    for split, size in (("train", n), ("test", n // 2)):
        quads[split] = {}
        for q in ("pp", "pn", "np", "nn"):
            m = size * (2 if q in ("pp", "nn") else 1)
            f = rng.normal(size=(m, F)) * 0.1
            f[:, 1] = (1.0 if q[0] == "p" else -1.0) + rng.normal(size=m) * 0.2
            f[:, 0] = (3.0 if q[1] == "p" else -3.0) + rng.normal(size=m) * 0.5
            fbar.append(f)
            quads[split][q] = np.arange(rows, rows + m)
            rows += m
    fbar = torch.tensor(np.concatenate(fbar), dtype=torch.float32)
    return quads, fbar, fbar @ W_dec + b_dec, W_dec


def test_planted_scr_ablating_the_spurious_latent_scores_one():
    quads, fbar, xbar, W_dec = _planted_scr()
    sets = make_scr_sets(quads, seed=0)
    cfg = ScrConfig(n_values=(1,), probe=ProbeTrainConfig(select_on_test=False, min_steps=0))
    side = scr_model_side(xbar, sets, cfg)
    assert side.clean["a"] > 0.95 and side.clean["b"] > 0.95
    assert side.clean["biased_on_a"] < 0.6 and side.clean["biased_on_b"] > 0.95  # the biased probe follows B
    eff_b = latent_effects(fbar[sets.rows["train"]["b"]], sets.labels["train"]["b"], side.probes["b"].weight_D, W_dec)
    assert top_n_latents(eff_b, 1).tolist() == [0]

    def s_dir1(latents):
        acc = ablation_accuracies(side, xbar, fbar, W_dec, latents, direction=1)["biased_probe_acc"]
        return scr_score(acc, side.clean["biased_on_a"], side.clean["a"])

    assert s_dir1([0]) > 0.9
    assert abs(s_dir1([7])) < 0.1
    out = scr_for_sae(side, xbar, fbar, W_dec, cfg)["metrics"]
    assert out["scr_dir1_threshold_1"] == pytest.approx(s_dir1([0]))
    assert out["scr_metric_threshold_1"] == out["scr_dir1_threshold_1"]  # dir1 has the lower biased accuracy


def test_planted_tpp_intended_drop_only():
    rng = np.random.default_rng(3)
    n_cls, F, D, n = 4, 12, 16, 60
    W_dec = torch.tensor(np.linalg.qr(rng.normal(size=(D, F)))[0].T, dtype=torch.float32)
    labels = np.repeat([f"c{c}" for c in range(n_cls)], n)
    splits = np.tile(np.array(["train"] * 40 + ["test"] * 20), n_cls)
    f = np.abs(rng.normal(size=(len(labels), F))) * 0.2
    for c in range(n_cls):
        f[labels == f"c{c}", c] += 2.0
    fbar = torch.tensor(f, dtype=torch.float32)
    xbar = fbar @ W_dec + 3.0
    # the repo's named alternative probe (centred inputs, last epoch, >= 400 steps): SAEBench's raw-input probe
    # does not converge in 20 epochs on this small offset set, and this test is about the TPP logic
    cfg = TppConfig(n_values=(1,), probe=ProbeTrainConfig(min_steps=400, normalize_inputs=True, select_on_test=False))
    side = tpp_model_side(xbar, labels, splits, cfg=cfg)
    assert min(side.clean.values()) == 1.0
    res = tpp_for_sae(side, xbar, fbar, W_dec, cfg)
    m = res["metrics"]
    assert m["tpp_threshold_1_intended_diff_only"] > 0.35
    assert abs(m["tpp_threshold_1_unintended_diff_only"]) < 0.05
    assert m["tpp_threshold_1_total_metric"] == pytest.approx(
        m["tpp_threshold_1_intended_diff_only"] - m["tpp_threshold_1_unintended_diff_only"])
    # the chosen latent for each class is its own indicator
    for c in range(n_cls):
        tr, ytr = side.sets[f"c{c}"]["train"]
        eff = latent_effects(fbar[tr], ytr, side.probes[f"c{c}"].weight_D, W_dec, absolute=False, clamp_positive=True)
        assert top_n_latents(eff, 1).tolist() == [c]


def test_scr_config_from_params():
    cfg = ScrEvalConfig.from_params({"scr": {"n_values": [2, 5], "epochs": 3, "q_train": 10}, "tasks": {"n_train": 40}})
    assert cfg.scr.n_values == (2, 5) and cfg.scr.probe.epochs == 3 and cfg.q_train == 10 and cfg.data.n_train == 40
    with pytest.raises(ValueError, match="unknown scr settings"):
        ScrEvalConfig.from_params({"scr": {"epoch": 3}})


def test_tpp_config_from_params_routes_each_key():
    cfg = TppEvalConfig.from_params({"tpp": {"tasks": ["bbc_topic"], "n_values": [3], "seed": 5, "lr": 0.01}})
    assert cfg.tasks == ("bbc_topic",)
    assert cfg.tpp.n_values == (3,) and cfg.tpp.seed == 5 and cfg.tpp.probe.lr == 0.01
    assert cfg.data.n_train == 100  # the default data block
    with pytest.raises(ValueError, match=r"unknown tpp settings \['min_denominator'\]"):
        TppEvalConfig.from_params({"tpp": {"min_denominator": 0.1}})  # an SCR-only key


def test_params_block_split_and_tuples():
    from dataclasses import dataclass

    from saelib.params_block import from_block, split_block

    parts = split_block({"a": [1, 2], "b": 3, "c": "x"}, {"g1": {"a"}, "g2": {"b", "c"}, "g3": {"z"}}, what="demo")
    assert parts == {"g1": {"a": (1, 2)}, "g2": {"b": 3, "c": "x"}, "g3": {}}
    with pytest.raises(ValueError, match=r"unknown demo settings \['q'\]; known: a, b, c, z"):
        split_block({"q": 1}, {"g1": {"a"}, "g2": {"b", "c"}, "g3": {"z"}}, what="demo")

    @dataclass
    class Demo:
        xs: tuple[int, ...] = ()
        y: float = 1.0

    assert from_block(Demo, {"xs": [4, 5]}, what="demo") == Demo(xs=(4, 5))
    assert from_block(Demo, None, what="demo") == Demo()
    with pytest.raises(ValueError, match="unknown demo settings"):
        from_block(Demo, {"z": 1}, what="demo")


def test_headroom_table_reads_the_clean_accuracies():
    from types import SimpleNamespace

    from saelib.evals.scr import headroom_table

    quads, fbar, xbar, W_dec = _planted_scr()
    sets = make_scr_sets(quads, seed=0)
    side = scr_model_side(xbar, sets, ScrConfig(n_values=(1,), probe=ProbeTrainConfig(normalize_inputs=True, select_on_test=False)))
    prep = SimpleNamespace(tasks={"planted": SimpleNamespace(side=side)})
    t = headroom_table(prep).set_index("direction")
    c = side.clean
    # dir1 ablates B latents and re-tests on A, where the B-following biased probe is near chance
    assert t.loc["dir1", "gap"] == pytest.approx(c["a"] - c["biased_on_a"]) and t.loc["dir1", "gap"] > 0.3
    assert t.loc["dir2", "gap"] == pytest.approx(c["b"] - c["biased_on_b"]) and abs(t.loc["dir2", "gap"]) < 0.05
    assert t["is_scr_metric"].tolist() == [True, False]
