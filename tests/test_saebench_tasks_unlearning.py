"""Differential tests: unlearning's firing frequencies, latent selection and clamp intervention against
SAEBench 0.6.0's own functions on identical tensors (``sae-bench`` installed ``--no-deps``)."""
import numpy as np
import pytest
import torch

from saelib.evals import unlearning as U
from saelib.sae import ReLUConfig, TopKConfig, make_sae

fa = pytest.importorskip("sae_bench.evals.unlearning.utils.feature_activation")
intervention = pytest.importorskip("sae_bench.evals.unlearning.utils.intervention")
activation_collection = pytest.importorskip("sae_bench.sae_bench_utils.activation_collection")

D, F = 12, 40


def _sae(arch):
    torch.manual_seed(1)
    cfg = TopKConfig(d_in=D, d_sae=F, k=5) if arch == "topk" else ReLUConfig(d_in=D, d_sae=F)
    sae = make_sae(arch, cfg)
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(0.0, 0.3)
    return sae


@pytest.mark.parametrize("seed", range(6))
def test_selection_matches_saebench_including_ties(seed):
    rng = np.random.default_rng(seed)
    n = 300
    # frequencies as SAEBench computes them (float32 counts / tokens): many zeros and many ties
    forget = (rng.integers(0, 6, n) * rng.integers(0, 2, n) / 512).astype(np.float32)
    retain = (rng.integers(0, 12, n) / 1024).astype(np.float32)
    for thr in (0.001, 0.01):
        theirs = fa.get_top_features(forget, retain, retain_threshold=thr)
        ours = U.rank_latents(forget, retain, thr)
        assert ours == [int(i) for i in theirs]
        for n_features in (10, 20):
            assert U.select_latents(forget, retain, thr, n_features) == [int(i) for i in theirs[:n_features]]


@pytest.mark.parametrize("arch", ["relu", "topk"])
@pytest.mark.parametrize("multiplier", [25.0, 200.0])
def test_clamp_matches_saebench_hook(arch, multiplier):
    """SAEBench zeroes every latent at position 0 (BOS) before clamping, which leaves BOS unchanged; this
    repo splices only the non-special positions. Same result at every position."""
    sae = _sae(arch)
    g = torch.Generator().manual_seed(2)
    resid_BLD = torch.randn(3, 7, D, generator=g) * 2
    f = sae.encode(resid_BLD[:, 1:].reshape(-1, D))
    latents = [int(i) for i in torch.argsort((f > 0).float().mean(0), descending=True)[:4]]
    assert 0.0 < float((f[:, latents] > 0).float().mean()) < 1.0  # some positions clamp, some do not
    with torch.no_grad():
        theirs = intervention.anthropic_clamp_resid_SAE_features(resid_BLD.clone(), None, sae, latents, multiplier)
        patch = U.clamp_patch(sae, latents, multiplier)
        ours = resid_BLD.clone()
        ours[:, 1:] = patch(resid_BLD[:, 1:].reshape(-1, D)).reshape(3, 6, D)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert (ours - resid_BLD).abs().max() > 1.0  # the clamp moved something


class _Tok:
    bos_token_id, pad_token_id, eos_token_id = 2, 0, 1


class _MockLM(activation_collection.HookedTransformer):
    """What SAEBench's frequency counter needs of a HookedTransformer: ``run_with_cache`` (the residual
    = a fixed embedding of each token) and a tokenizer's BOS/PAD/EOS ids (no real model is built)."""

    def __init__(self, E_VD):
        torch.nn.Module.__init__(self)
        self.E_VD = E_VD
        self.tokenizer = _Tok()

    def run_with_cache(self, tokens_BL, stop_at_layer, names_filter):
        return None, {names_filter: self.E_VD[tokens_BL]}


def test_firing_frequency_matches_saebench():
    sae = _sae("topk")
    sae.device = torch.device("cpu")
    g = torch.Generator().manual_seed(3)
    E_VD = torch.randn(30, D, generator=g) * 2
    tokens_BL = torch.randint(3, 30, (6, 9), generator=g)
    tokens_BL[:, 0] = 2  # BOS
    tokens_BL[1, 6:] = 0  # right padding
    tokens_BL[4, 8] = 1  # EOS
    theirs = activation_collection.get_feature_activation_sparsity(
        tokens_BL, _MockLM(E_VD), sae, batch_size=4, layer=0, hook_name="h", mask_bos_pad_eos_tokens=True)
    keep_BL = tokens_BL > 2
    ours = U.firing_frequency(sae, E_VD[tokens_BL][keep_BL], bf16=False)
    torch.testing.assert_close(ours.float(), theirs, rtol=1e-6, atol=1e-7)
    assert 0 < int((ours > 0).sum()) < F
