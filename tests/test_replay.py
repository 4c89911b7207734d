"""saelib.replay: the decoder stack run from a cached residual equals the full forward, bit for bit."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from saelib.evals import unlearning as U
from saelib.hooks import final_hidden, residuals, special_mask
from saelib.replay import final_hidden_from


def _tokens(model, n: int, s: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens_NS = torch.randint(500, 5000, (n, s), generator=g)
    tokens_NS[:, 0] = model.tokenizer.bos_token_id
    return tokens_NS


def _shift(x_ND: torch.Tensor) -> torch.Tensor:
    return 0.5 * x_ND + 3.0


@pytest.mark.parametrize("layer", [0, 1, 3])
@pytest.mark.parametrize("patch", [None, _shift], ids=["clean", "patched"])
def test_replay_equals_the_full_forward(tiny_model, layer, patch):
    """From the clean residual of ``layer`` (taken in batches of 4), the later layers give exactly the
    final hidden states of the full traced forward, for the whole batch and for a row subset."""
    tokens_NS = _tokens(tiny_model, 6, 24, seed=layer)
    keep_NS = special_mask(tiny_model, tokens_NS)
    x_NSD = residuals(tiny_model, tokens_NS, layer, batch_size=4)
    full = final_hidden(tiny_model, tokens_NS, layer, patch, keep_NS, None)
    fast = final_hidden_from(tiny_model, tokens_NS, layer, x_NSD, patch, keep_NS)
    assert torch.equal(fast, full)
    rows = torch.tensor([1, 4, 5])
    sub = final_hidden_from(tiny_model, tokens_NS[rows], layer, x_NSD[rows], patch, keep_NS[rows])
    assert torch.equal(sub, final_hidden(tiny_model, tokens_NS[rows], layer, patch, keep_NS[rows], None))
    if patch is not None:  # the patch reaches the output
        assert (fast - final_hidden(tiny_model, tokens_NS, layer, None, keep_NS, None)).abs().max() > 1e-3


def test_layers_are_put_back_also_after_an_error(tiny_model):
    layers = tiny_model.layers()
    before = list(layers)
    tokens_NS = _tokens(tiny_model, 2, 16, seed=7)
    keep_NS = special_mask(tiny_model, tokens_NS)
    x_NSD = residuals(tiny_model, tokens_NS, 2, batch_size=2)
    final_hidden_from(tiny_model, tokens_NS, 2, x_NSD, None, keep_NS)
    assert all(a is b for a, b in zip(layers, before, strict=True))
    with pytest.raises(ValueError, match="same \\(sequences, positions\\)"):
        final_hidden_from(tiny_model, tokens_NS, 2, x_NSD[:, :8], None, keep_NS)
    with pytest.raises(ValueError, match="out of range"):
        final_hidden_from(tiny_model, tokens_NS, tiny_model.n_layers, x_NSD, None, keep_NS)
    assert all(a is b for a, b in zip(layers, before, strict=True))
    # a forward that fails inside the swapped stack (wrong residual width) restores the layers too
    with pytest.raises(Exception):
        final_hidden_from(tiny_model, tokens_NS, 2, x_NSD[..., :-1], None, keep_NS)
    assert all(a is b for a, b in zip(layers, before, strict=True))


def test_unlearning_ce_sums_from_the_cache_equal_the_full_forward(tiny_model):
    """The unlearning loss sums with the replayed layers equal those of the full forward from the tokens
    (which the eval falls back to when the cached residual's dtype is not the model's)."""
    layer, d = 1, tiny_model.d_model
    tokens_NS = _tokens(tiny_model, 6, 20, seed=3)
    clean = U.clean_eval(tiny_model, layer, tokens_NS, batch_size=4, token_chunk=16)
    g = torch.Generator().manual_seed(5)
    W_enc_DF, W_dec_FD = torch.randn(d, 3, generator=g), torch.randn(3, d, generator=g)
    sae = SimpleNamespace(encode=lambda x_ND: torch.relu(x_ND.float() @ W_enc_DF),
                          decode=lambda f_NF: f_NF @ W_dec_FD)
    patch = U.clamp_patch(sae, [0, 2], 20.0)
    keep_NS = special_mask(tiny_model, tokens_NS)
    first_N = U.first_fired(sae, clean["x_NSD"], keep_NS, [0, 2])
    assert (first_N < 20).all()
    cfg = U.UnlearningConfig(model_batch_size=4, token_chunk=16)
    fast = U.patched_ce_sums(tiny_model, layer, tokens_NS, clean, patch, first_N, cfg)
    other_dtype = {**clean, "x_NSD": clean["x_NSD"].double()}  # not the model's dtype: the full forward
    full = U.patched_ce_sums(tiny_model, layer, tokens_NS, other_dtype, patch, first_N, cfg)
    assert torch.equal(fast, full)
    clean_sums = (clean["ce_NS"].double() * clean["score_NS"]).sum(1)
    assert (fast - clean_sums).abs().max() > 1e-3
