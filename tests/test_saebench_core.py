"""Differential tests: SAEBench 0.6.0's core-eval functions and ``saelib.evals.core`` on identical inputs.

SAEBench drives a TransformerLens ``HookedTransformer`` and a SAELens ``SAE`` through an
``ActivationsStore``. The adapters below give SAEBench exactly the interface it calls
(``model(...)``, ``run_with_hooks``, ``run_with_cache``, ``sae.encode/decode``, ``get_batch_tokens``)
on top of the tiny random Gemma-3 and one of our SAEs, so both sides see the same logits, the same
residuals and the same SAE. SAEBench is run as its README runs it: ``ignore_tokens`` = the special
tokens, ``exclude_special_tokens_from_reconstruction=True``.
"""
from types import SimpleNamespace

import pytest
import torch
from sae_bench.evals.core.main import get_downstream_reconstruction_metrics, get_sparsity_and_variance_metrics

from saelib.evals.core import evaluate_core, reconstruction_metrics
from saelib.sae import ReLUConfig, make_sae

LAYER = 1
HOOK = f"blocks.{LAYER}.hook_resid_post"
SEQ, BATCH = 16, 2


class TLModel:
    """The TransformerLens calls SAEBench's core eval makes, served by a Hugging Face model."""

    def __init__(self, loaded, layer):
        self.loaded, self.layer = loaded, layer

    def _logits(self, tokens, hook=None):
        handle = None
        if hook is not None:
            handle = self.loaded.layers()[self.layer].register_forward_hook(lambda m, i, out: hook(out, None))
        try:
            with torch.no_grad():
                return self.loaded.hf_model(tokens).logits.float()
        finally:
            if handle is not None:
                handle.remove()

    @staticmethod
    def _both(logits, tokens):
        lp = torch.log_softmax(logits, -1)
        return logits, -lp[:, :-1].gather(2, tokens[:, 1:, None])[..., 0]

    def __call__(self, tokens, return_type="both", loss_per_token=True, **kw):
        assert return_type == "both" and loss_per_token
        return self._both(self._logits(tokens), tokens)

    def run_with_hooks(self, tokens, return_type="both", fwd_hooks=(), loss_per_token=True, **kw):
        assert return_type == "both" and loss_per_token and len(fwd_hooks) == 1 and fwd_hooks[0][0] == HOOK
        return self._both(self._logits(tokens, fwd_hooks[0][1]), tokens)

    def run_with_cache(self, tokens, prepend_bos=False, names_filter=(), stop_at_layer=None, **kw):
        assert list(names_filter) == [HOOK] and stop_at_layer == self.layer + 1
        seen = {}
        self._logits(tokens, lambda out, hook: seen.setdefault("x", out.detach().clone()))
        return None, {HOOK: seen["x"]}


class TableModel:
    """``run_with_cache`` that looks activations up in a table: token i at a position -> row i."""

    def __init__(self, table_TD):
        self.table_TD = table_TD

    def run_with_cache(self, tokens, prepend_bos=False, names_filter=(), stop_at_layer=None, **kw):
        return None, {HOOK: self.table_TD[tokens]}


class SAELensLike:
    """The SAELens ``SAE`` attributes SAEBench reads, around one of our SAEs (any leading dims)."""

    def __init__(self, sae):
        self.sae = sae
        self.cfg = SimpleNamespace(hook_name=HOOK, hook_head_index=None, hook_layer=LAYER, d_sae=sae.cfg.d_sae)
        self.device = torch.device("cpu")

    def encode(self, x):
        return self.sae.encode(x.reshape(-1, x.shape[-1]).float()).reshape(*x.shape[:-1], -1)

    def decode(self, f):
        return self.sae.decode(f.reshape(-1, f.shape[-1])).reshape(*f.shape[:-1], -1)


class Store:
    """``ActivationsStore.get_batch_tokens``: the next ``n`` rows of a fixed token tensor."""

    def __init__(self, tokens_NS):
        self.tokens_NS, self.at = tokens_NS, 0

    def get_batch_tokens(self, n):
        out = self.tokens_NS[self.at : self.at + n]
        self.at += n
        return out


def _sae(d_in, d_sae, seed):
    """A ReLU SAE that reconstructs part of x: ±identity latents with noisy decoder rows, plus
    random latents; a negative encoder bias switches some off on some tokens (0 < L0 < d_sae)."""
    torch.manual_seed(seed)
    sae = make_sae("relu", ReLUConfig(d_in=d_in, d_sae=d_sae))
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc[:, : 2 * d_in] = torch.cat([eye, -eye], 1)
        sae.W_dec[: 2 * d_in] = torch.cat([eye, -eye], 0) + 0.05 * torch.randn(2 * d_in, d_in)
        sae.b_enc.fill_(-0.05)
    return sae.eval()


@pytest.fixture(scope="module")
def peaky_model():
    """The tiny random Gemma-3 (own copy) with its final norm scaled up: a random model's next-token
    distribution is nearly uniform, so KL/CE differences would sit at float32 rounding; ×30 logits
    make them large enough for score comparisons at 1e-5."""
    from saelib.models import load_model

    m = load_model("tiny-gemma3", dtype=torch.float32, reuse=False)
    with torch.no_grad():
        m.hf_model.model.norm.weight.add_(29.0)  # Gemma RMSNorm scales by (1 + weight)
    return m


@pytest.fixture(scope="module")
def text_tokens(peaky_model):
    """BOS + text, with an EOS inside one row and right PAD on another: every special-token case."""
    tok = peaky_model.tokenizer
    texts = ["The quick brown fox jumps over the lazy dog again and again, all day long.",
             "Sparse autoencoders read the residual stream",
             "Attention sinks sit on the first token of every sequence in most models.",
             "Short text."]
    ids = torch.full((len(texts), SEQ), tok.pad_token_id)
    for i, text in enumerate(texts):
        row = tok(text, add_special_tokens=True)["input_ids"][:SEQ]
        ids[i, : len(row)] = torch.tensor(row)
    ids[0, 9] = tok.eos_token_id
    assert (ids[:, 0] == tok.bos_token_id).all() and (ids == tok.pad_token_id).any()
    return ids


@pytest.fixture(scope="module")
def both_core(peaky_model, text_tokens):
    tiny_model = peaky_model
    sae = _sae(tiny_model.d_model, 160, seed=0)
    ignore = set(tiny_model.special_ids)
    n_batches = text_tokens.shape[0] // BATCH
    with torch.no_grad():
        ref_kl, (ref_sv, ref_feat) = _saebench_core(sae, tiny_model, text_tokens, ignore, n_batches)
    ours = evaluate_core(sae, tiny_model, text_tokens, LAYER, batch_size=BATCH, token_chunk=5)
    return ref_kl, ref_sv, ref_feat, ours


def _saebench_core(sae, tiny_model, text_tokens, ignore, n_batches):
    ref_kl = get_downstream_reconstruction_metrics(
        SAELensLike(sae), TLModel(tiny_model, LAYER), Store(text_tokens), compute_kl=True, compute_ce_loss=True,
        n_batches=n_batches, eval_batch_size_prompts=BATCH, ignore_tokens=ignore,
        exclude_special_tokens_from_reconstruction=True)
    ref_sv, ref_feat = get_sparsity_and_variance_metrics(
        SAELensLike(sae), TLModel(tiny_model, LAYER), Store(text_tokens), n_batches=n_batches, compute_l2_norms=True,
        compute_sparsity_metrics=True, compute_variance_metrics=True, compute_featurewise_density_statistics=True,
        eval_batch_size_prompts=BATCH, model_kwargs={}, ignore_tokens=ignore)
    return ref_kl, (ref_sv, ref_feat)


def test_kl_ce_match_saebench_zero_baseline(both_core):
    ref, _, _, ours = both_core
    pairs = {"kl_div_with_sae": "kl_sae", "kl_div_with_ablation": "kl_zero", "kl_div_score": "kl_score",
             "ce_loss_with_sae": "ce_sae", "ce_loss_without_sae": "ce_clean", "ce_loss_with_ablation": "ce_zero",
             "ce_loss_score": "ce_score"}
    for theirs, mine in pairs.items():
        assert ours[mine] == pytest.approx(ref[theirs], rel=2e-5, abs=1e-6), (theirs, mine)
    assert 0 < ours["kl_sae"] < ours["kl_zero"]


def test_keep_bos_alternative_is_a_different_number(both_core):
    """The named alternative keeps BOS clean in the zero baseline: it must not coincide with SAEBench's."""
    ref, _, _, ours = both_core
    assert ours["kl_sae_keep_bos"] > 0 and ours["kl_zero_keep_bos"] > 0
    assert abs(ours["kl_zero_keep_bos"] - ref["kl_div_with_ablation"]) > 1e-3 * ref["kl_div_with_ablation"]
    assert abs(ours["ce_zero_keep_bos"] - ref["ce_loss_with_ablation"]) > 1e-4
    assert ours["kl_score_keep_bos"] != pytest.approx(ours["kl_score"], rel=1e-4)


def test_sparsity_variance_match_saebench(both_core, peaky_model, text_tokens):
    _, ref, ref_feat, ours = both_core
    pairs = {"l0": "l0", "l1": "l1", "l2_ratio": "l2_ratio", "cossim": "cossim", "mse": "mse_legacy",
             "explained_variance_legacy": "ev_legacy", "relative_reconstruction_bias": "relative_reconstruction_bias_legacy"}
    for theirs, mine in pairs.items():
        assert ours[mine] == pytest.approx(ref[theirs], rel=1e-5), (theirs, mine)
    torch.testing.assert_close(ours["feature_density_F"], torch.tensor(ref_feat["feature_density"], dtype=torch.float64),
                               rtol=1e-6, atol=1e-9)
    keep = ~torch.isin(text_tokens, torch.tensor(peaky_model.special_ids))
    assert ours["n_tokens"] == int(keep.sum())
    assert 0 < ours["l0"] < 160


def test_explained_variance_legacy_matches_and_saebench_060_batched_formula_differs():
    """On data with a large mean: our ``ev_legacy`` = SAEBench's ``explained_variance_legacy`` and
    our ``ev`` = the pooled 1 − SSE/SST, while 0.6.0's batched ``explained_variance`` (total variance
    E‖x‖² − (E‖x‖²/d)²) is neither; this is why the default reports the legacy value and ``ev``."""
    g = torch.Generator().manual_seed(3)
    d, n = 8, 24
    table = 20.0 + torch.randn(n, d, generator=g)  # mean 20 in every dimension
    tokens = torch.arange(n).reshape(6, 4)
    sae = _sae(d, 32, seed=1)
    with torch.no_grad():
        ref, _ = get_sparsity_and_variance_metrics(
            SAELensLike(sae), TableModel(table), Store(tokens), n_batches=3, compute_l2_norms=True,
            compute_sparsity_metrics=True, compute_variance_metrics=True, compute_featurewise_density_statistics=False,
            eval_batch_size_prompts=2, model_kwargs={}, ignore_tokens=set())
    with torch.no_grad():
        f = sae.encode(table)
        x_hat = sae.decode(f)
    ours = reconstruction_metrics(table, x_hat, f, batch_sizes=[8, 8, 8])
    assert ours["ev_legacy"] == pytest.approx(ref["explained_variance_legacy"], rel=1e-5)
    assert ours["mse_legacy"] == pytest.approx(ref["mse"], rel=1e-5)
    assert ours["relative_reconstruction_bias_legacy"] == pytest.approx(ref["relative_reconstruction_bias"], rel=1e-5)
    naive = 1 - float((table - x_hat).pow(2).sum() / (table - table.mean(0)).pow(2).sum())
    assert ours["ev"] == pytest.approx(naive, rel=1e-6)
    sq = float(table.pow(2).sum(1).mean())
    batched = 1 - float((table - x_hat).pow(2).sum(1).mean()) / (sq - (sq / d) ** 2)
    assert ref["explained_variance"] == pytest.approx(batched, rel=1e-4)
    assert abs(ref["explained_variance"] - ours["ev"]) > 0.1

