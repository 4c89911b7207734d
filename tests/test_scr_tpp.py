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


def test_zero_input_latent_collapses_the_biased_probe_only_under_saebench_ablation():
    """The mechanism behind SCR's ±0.25 jumps for TopK SAEs: a latent that fires on the zero vector moves
    every text's zeroed BOS/PAD positions when SAEBench's ablation encodes them. If its decoder row leans on
    the biased probe, every text lands on one side (positive rate 0 or 1) and the balanced accuracy is 0.5,
    whatever the latent carries on the kept tokens; kept-tokens-only ablation leaves the probe as it was."""
    from saelib.evals.pooled import SpecialPositions
    from saelib.evals.scr import n_fire_on_zero

    quads, fbar, xbar, W_dec = _planted_scr()
    fbar[:, 11] = 0.0  # latent 11 is silent on every kept token ...
    sets = make_scr_sets(quads, seed=0)
    cfg = ScrConfig(n_values=(1,), probe=ProbeTrainConfig(select_on_test=False, min_steps=0))
    side = scr_model_side(xbar, sets, cfg)
    w = side.probes["biased"].weight_D
    logits = side.probes["biased"].logits(xbar)
    f0_F = torch.zeros(12)
    # ... but fires on a zero input, enough to push every logit past the largest margin
    f0_F[11] = float(10 * logits.abs().max() / (W_dec[11] @ w).abs())
    special = SpecialPositions(f0_F, torch.ones(len(xbar)))
    kept = ablation_accuracies(side, xbar, fbar, W_dec, [11], direction=1)
    clean = ablation_accuracies(side, xbar, fbar, W_dec, [], direction=1)
    assert kept == clean  # nothing on the kept tokens to remove
    theirs = ablation_accuracies(side, xbar, fbar, W_dec, [11], direction=1, special=special)
    assert theirs["biased_probe_positive_rate"] in (0.0, 1.0)
    assert theirs["biased_probe_acc"] == 0.5  # the balanced A test set has as many positives as negatives
    assert 0.0 < clean["biased_probe_positive_rate"] < 1.0
    assert n_fire_on_zero(special, torch.tensor([11, 3])) == 1 and n_fire_on_zero(None, torch.tensor([11])) is None


def test_scr_sae_writes_both_definitions_side_by_side(tmp_path):
    """``scr_sae`` scores the chosen special-position definition as ``scr_metrics`` and the other one beside it
    with suffixed keys; each equals ``scr_for_sae`` run directly with that definition, and the readers see both."""
    from types import SimpleNamespace

    from saelib.evals.pooled import special_positions
    from saelib.evals.scr import ScrPrep, ScrTaskData, save_scr_results, scr_sae
    from saelib.results import read_scr

    torch.manual_seed(0)
    D, F = 16, 40
    sae = make_sae("topk", TopKConfig(d_in=D, d_sae=F, k=5))
    with torch.no_grad():
        sae.b_enc.copy_(torch.rand(F) * 3 + 2)  # fires k latents on a zero input, as trained TopK SAEs do
    g = torch.Generator().manual_seed(1)
    counts = torch.randint(2, 9, (160,), generator=g)
    acts = (torch.randn(int(counts.sum()), D, generator=g) * 2).bfloat16()
    pooled = PooledActs(acts, torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)]))
    a, b = pooled.xbar_ND[:, 0] > 0, pooled.xbar_ND[:, 1] > 0
    rows = np.arange(160)
    quads = {split: {q: rows[(rows % 2 == (split == "test")) & (a == (q[0] == "p")).numpy() & (b == (q[1] == "p")).numpy()]
                     for q in ("pp", "pn", "np", "nn")} for split in ("train", "test")}
    data_cfg = PooledConfig(context=16, autocast_bf16=False)
    eval_cfg = ScrEvalConfig(scr=ScrConfig(n_values=(1, 4), probe=ProbeTrainConfig(epochs=5, select_on_test=False)))
    eval_cfg.data.pooled = data_cfg
    side = scr_model_side(pooled.xbar_ND, make_scr_sets(quads), eval_cfg.scr)
    prep = ScrPrep(eval_cfg, {"toy": ScrTaskData(SimpleNamespace(name="toy", pooled=pooled), side, {})}, [], {})
    res = scr_sae(prep, sae)
    fbar = pooled_latents(sae, pooled, cfg=data_cfg)
    W = sae.W_dec.detach().float()
    theirs = scr_for_sae(side, pooled.xbar_ND, fbar, W, eval_cfg.scr, special_positions(sae, pooled, data_cfg))["metrics"]
    kept = scr_for_sae(side, pooled.xbar_ND, fbar, W, eval_cfg.scr, None)["metrics"]
    assert theirs != kept  # the two definitions really differ on this SAE
    assert res["per_task"]["toy"] == theirs
    assert res["alternative"]["per_task"]["toy"] == {f"{k}_kept_only": v for k, v in kept.items()}
    assert res["details"]["toy"]["n_latents_firing_on_zero"] == 5
    assert sorted(res["details"]["toy"]["greedy_S"]) == ["dir1_n1", "dir1_n4", "dir2_n1", "dir2_n4"]
    assert sorted(res["details"]["toy"]["alternative"]["greedy_S"]) == ["dir1_n1", "dir1_n4", "dir2_n1", "dir2_n4"]
    save_scr_results(prep, res, tmp_path, "toy_sae")
    got = read_scr(tmp_path / "toy_sae.json")
    for n in (1, 4):
        assert got[f"scr_metric_threshold_{n}"] == pytest.approx(theirs[f"scr_metric_threshold_{n}"])
        assert got[f"scr_metric_threshold_{n}_kept_only"] == pytest.approx(kept[f"scr_metric_threshold_{n}"])
    # the other way round: kept_only chosen, SAEBench's definition reported beside it
    eval_cfg.scr.special_positions = "kept_only"
    flipped = scr_sae(prep, sae)
    assert flipped["per_task"]["toy"] == kept
    assert flipped["alternative"]["per_task"]["toy"] == {f"{k}_saebench": v for k, v in theirs.items()}
    eval_cfg.scr.report_alternative, eval_cfg.scr.greedy_max_n = False, 2
    single = scr_sae(prep, sae)
    assert "alternative" not in single and sorted(single["details"]["toy"]["greedy_S"]) == ["dir1_n1", "dir2_n1"]


def test_ablation_diagnostics_lists_both_definitions():
    from saelib.results import scr_ablation_diagnostics as ablation_diagnostics

    det = {"metric_direction": 2,
           "ablated": {"dir1_n2": {"biased_probe_acc": 0.7, "biased_probe_positive_rate": 0.4, "n_fire_on_zero": 1},
                       "dir2_n2": {"biased_probe_acc": 0.5, "biased_probe_positive_rate": 1.0, "n_fire_on_zero": 2}},
           "alternative": {"special_positions": "kept_only",
                           "ablated": {"dir2_n2": {"biased_probe_acc": 0.6, "biased_probe_positive_rate": 0.5,
                                                   "n_fire_on_zero": None}}},
           "n_latents_firing_on_zero": 9}
    doc = {"eval_config": {"special_positions": "saebench"}, "eval_result_unstructured": {"t": det}}
    t = ablation_diagnostics(doc)
    assert t[["special_positions", "direction", "n", "biased_probe_acc"]].values.tolist() == [
        ["saebench", 2, 2, 0.5], ["kept_only", 2, 2, 0.6]]
    assert t["n_latents_firing_on_zero"].tolist() == [9, 9]
    assert len(ablation_diagnostics(doc, metric_direction_only=False)) == 3
    empty = ablation_diagnostics({"eval_result_metrics": {}})  # e.g. a file written without details
    assert empty.empty and "n" in empty.columns


def test_greedy_latent_scores_match_a_naive_greedy_over_explicit_ablations():
    """Greedy picks on train by the biased probe's log-likelihood, scored on test: the vectorised version
    equals a loop that ablates each candidate with ``ablate_pooled`` (with and without SAEBench's
    zero-input term), and on the planted task the first pick is the spurious latent (S ≈ 1)."""
    import torch.nn.functional as Fn

    from saelib.evals.pooled import SpecialPositions, ablate_pooled
    from saelib.evals.scr import DIRECTIONS, ablation_accuracies, greedy_latent_scores, scr_score

    quads, fbar, xbar, W_dec = _planted_scr()
    side = scr_model_side(xbar, make_scr_sets(quads, seed=0),
                          ScrConfig(n_values=(1,), probe=ProbeTrainConfig(select_on_test=False, min_steps=0)))
    g = torch.Generator().manual_seed(4)
    special = SpecialPositions(torch.rand(fbar.shape[1], generator=g) * 2, torch.rand(len(xbar), generator=g) * 3)
    for spec in (None, special):
        for d in DIRECTIONS:
            _, eval_key = DIRECTIONS[d]
            got = greedy_latent_scores(side, xbar, fbar, W_dec, direction=d, n_values=(1, 3), special=spec)
            rows, y = side.sets.rows["train"][eval_key], side.sets.labels["train"][eval_key]
            sign = torch.as_tensor(y).float() * 2 - 1
            chosen, want = [], {}
            for step in (1, 2, 3):
                def loglik(i):
                    x = ablate_pooled(xbar[rows], fbar[rows], W_dec, chosen + [i], None if spec is None else spec.rows(rows))
                    return float(Fn.logsigmoid(sign * side.probes["biased"].logits(x)).mean())
                chosen.append(max((i for i in range(fbar.shape[1]) if i not in chosen), key=loglik))
                if step in (1, 3):
                    acc = ablation_accuracies(side, xbar, fbar, W_dec, chosen, direction=d, special=spec)["biased_probe_acc"]
                    want[step] = scr_score(acc, side.clean[f"biased_on_{eval_key}"], side.clean[eval_key])
            assert got == pytest.approx(want, abs=1e-6), (spec is not None, d)
    s1 = greedy_latent_scores(side, xbar, fbar, W_dec, direction=1, n_values=(1,))[1]
    assert s1 > 0.9  # removing the loud spurious latent 0 fixes the biased probe on A
