"""Differential tests: SCR/TPP latent effects, selection, ablation (special positions included) and
scoring against SAEBench 0.6.0's own functions on identical tensors (``sae-bench`` installed ``--no-deps``)."""
import numpy as np
import pytest
import torch

from saelib.evals.pooled import PooledActs, PooledConfig, ablate_pooled, pooled_latents, special_positions
from saelib.evals.scr import DIRECTIONS, latent_effects, scr_metrics, top_n_latents
from saelib.evals.tpp import tpp_scores
from saelib.sae import TopKConfig, make_sae

scr_main = pytest.importorskip("sae_bench.evals.scr_and_tpp.main")
probe_training = pytest.importorskip("sae_bench.evals.sparse_probing.probe_training")

D, F, K, L = 16, 48, 6, 12
NOBIAS = PooledConfig(context=L, autocast_bf16=False)


@pytest.fixture(scope="module")
def sae():
    """A TopK SAE whose encoder bias makes it fire k latents on a zero input, as trained ones do."""
    torch.manual_seed(0)
    s = make_sae("topk", TopKConfig(d_in=D, d_sae=F, k=K))
    with torch.no_grad():
        s.b_enc.copy_(torch.rand(F) + 0.2)
        s.b_dec.normal_()
    assert int((s.encode(torch.zeros(1, D)) > 0).sum()) == K
    return s


def _padded_texts(counts, seed):
    """SAEBench's input: texts padded to L, BOS at 0, special positions zeroed (``mask_bos_pad_eos_tokens``);
    and this repo's: the kept tokens only, bf16-exact values in both."""
    g = torch.Generator().manual_seed(seed)
    acts_BLD = torch.zeros(len(counts), L, D)
    kept = []
    for i, c in enumerate(counts):
        x = (torch.randn(c, D, generator=g) * 2 + 1).bfloat16().float()
        acts_BLD[i, 1:1 + c] = x
        kept.append(x)
    offsets = torch.tensor([0, *np.cumsum(counts)])
    return acts_BLD, PooledActs(torch.cat(kept).bfloat16(), offsets)


def test_ablation_pools_the_special_positions_like_saebench(sae):
    counts = [11, 3, 6, 1, 8]
    acts_BLD, pooled = _padded_texts(counts, 1)
    fbar = pooled_latents(sae, pooled, cfg=NOBIAS)
    special = special_positions(sae, pooled, NOBIAS)
    torch.testing.assert_close(special.weight_N, torch.tensor([(L - c) / c for c in counts]))
    f0 = sae.encode(torch.zeros(1, D))[0]
    for latents in ([int(i) for i in torch.nonzero(f0).flatten()[:3]] + [5], list(range(0, F, 3))):
        mask_F = torch.zeros(F, dtype=torch.bool)
        mask_F[latents] = True
        with torch.no_grad():
            theirs = scr_main.ablated_precomputed_activations(acts_BLD, sae, mask_F, 2)
        ours = ablate_pooled(pooled.xbar_ND, fbar, sae.W_dec.detach(), latents, special)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
        kept_only = ablate_pooled(pooled.xbar_ND, fbar, sae.W_dec.detach(), latents)
        assert (kept_only - theirs).abs().max() > 0.05  # the named alternative really differs at BOS/PAD


def test_clean_pooling_ignores_special_positions_like_saebench(sae):
    """With nothing ablated SAEBench's mean over the padded text equals the mean over the kept tokens."""
    acts_BLD, pooled = _padded_texts([4, 9, 2], 2)
    with torch.no_grad():
        theirs = scr_main.ablated_precomputed_activations(acts_BLD, sae, torch.zeros(F, dtype=torch.bool), 3)
    special = special_positions(sae, pooled, NOBIAS)
    ours = ablate_pooled(pooled.xbar_ND, pooled_latents(sae, pooled, cfg=NOBIAS), sae.W_dec.detach(), [], special)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def _probe(seed):
    p = probe_training.Probe(D, torch.float32)
    with torch.no_grad():
        p.net.weight.copy_(torch.randn(1, D, generator=torch.Generator().manual_seed(seed)))
    return p


@pytest.mark.parametrize("perform_scr", [True, False])
def test_latent_effects_match_saebench(sae, perform_scr):
    counts_pos, counts_neg = [5, 11, 2, 7], [3, 8, 10, 1]
    pos_BLD, pos = _padded_texts(counts_pos, 3)
    neg_BLD, neg = _padded_texts(counts_neg, 4)
    with torch.no_grad():
        pos_BLD[:, 1:] += 0.5 * torch.linspace(-1, 1, D)  # an attribute direction on the kept tokens
        pos_BLD[:, 1:] *= (pos_BLD[:, 1:].abs().sum(-1, keepdim=True) > 0)
    pos = PooledActs(torch.cat([pos_BLD[i, 1:1 + c] for i, c in enumerate(counts_pos)]).bfloat16(), pos.offsets_N1)
    pos_BLD = torch.stack([torch.cat([torch.zeros(1, D), pos.acts_TD[pos.offsets_N1[i]:pos.offsets_N1[i + 1]].float(),
                                      torch.zeros(L - 1 - c, D)]) for i, c in enumerate(counts_pos)])
    probe = _probe(5)
    if perform_scr:  # SAEBench pairs "male / female" with "female_data_only"
        acts = {"male / female": pos_BLD, "female_data_only": neg_BLD}
        cls = "male / female"
    else:  # TPP: one class against the (only) other
        acts = {"c0": pos_BLD, "c1": neg_BLD}
        cls = "c0"
    with torch.no_grad():
        theirs = scr_main.get_effects_per_class_precomputed_acts(sae, probe, cls, acts, perform_scr, 3)
    fbar = torch.cat([pooled_latents(sae, pos, cfg=NOBIAS), pooled_latents(sae, neg, cfg=NOBIAS)])
    y = np.array([1] * len(counts_pos) + [0] * len(counts_neg))
    ours = latent_effects(fbar, y, probe.net.weight.detach()[0], sae.W_dec.detach(),
                          absolute=perform_scr, clamp_positive=not perform_scr)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert int((ours != 0).sum()) > K


def test_top_n_selection_matches_saebench():
    g = torch.Generator().manual_seed(6)
    effects = torch.rand(F, generator=g)
    effects[torch.randperm(F, generator=g)[:30]] = 0.0  # 18 non-zero effects
    for n in (1, 2, 5, 10, 18, 20, 48):
        mask = scr_main.select_top_n_features(effects, n, "demo")
        ours = top_n_latents(effects, n)
        assert set(torch.nonzero(mask).flatten().tolist()) == set(ours.tolist())
    assert top_n_latents(torch.zeros(F), 5).numel() == 0 and not scr_main.select_top_n_features(torch.zeros(F), 5, "d").any()


@pytest.mark.parametrize("case", ["dir1_lower", "dir2_lower", "small_denominator"])
def test_scr_scores_match_saebench(case):
    clean = {"a": 0.93, "b": 0.97, "biased_on_a": 0.61, "biased_on_b": 0.88}
    if case == "dir2_lower":
        clean.update(biased_on_a=0.9, biased_on_b=0.7)
    if case == "small_denominator":
        clean.update(biased_on_a=0.9295)  # a − biased_on_a < 0.001: S = 0
    ablated = {1: {2: 0.65, 20: 0.8, 500: 0.95}, 2: {2: 0.86, 20: 0.7, 500: 0.5}}
    probe_id = "male_professor / female_nurse"
    names = {"a": "professor / nurse", "b": "male / female"}
    llm_clean = {names["a"]: clean["a"], names["b"]: clean["b"],
                 f"{probe_id} probe on {names['a']} data": clean["biased_on_a"],
                 f"{probe_id} probe on {names['b']} data": clean["biased_on_b"]}
    class_acc = {}
    for d, (ablate_key, eval_key) in DIRECTIONS.items():
        class_acc[names[ablate_key]] = {n: {f"{probe_id} probe on {names[eval_key]} data": acc}
                                        for n, acc in ablated[d].items()}
    theirs = scr_main.get_scr_plotting_dict(class_acc, llm_clean)
    ours = scr_metrics(clean, ablated)
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key


def test_tpp_scores_match_saebench():
    rng = np.random.default_rng(7)
    classes = ["c0", "c1", "c2", "c3"]
    clean = {c: float(rng.uniform(0.8, 1.0)) for c in classes}
    ablated = {c: {n: {o: float(rng.uniform(0.4, 1.0)) for o in classes} for n in (2, 10, 50)} for c in classes}
    theirs_overall, theirs_per_class = scr_main.create_tpp_plotting_dict(ablated, clean)
    ours_overall, ours_per_class = tpp_scores(clean, ablated)
    assert ours_overall == pytest.approx(theirs_overall, abs=1e-12)
    for c in classes:
        assert ours_per_class[c] == pytest.approx(theirs_per_class[c], abs=1e-12)
