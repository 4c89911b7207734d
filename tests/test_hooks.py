"""nnsight hooks: residual read-out and the KL/CE splice, checked against plain PyTorch."""
import math

import pytest
import torch

from saelib.hooks import residuals, special_mask, spliced_kl_ce


def _tokens(model, n=3, s=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    toks = torch.randint(10, 5000, (n, s), generator=g)
    toks[:, 0] = model.tokenizer.bos_token_id
    return toks


def test_residuals_match_plain_forward_hook(tiny_model):
    toks = _tokens(tiny_model)
    layer = 2
    got = residuals(tiny_model, toks, layer, batch_size=2)
    captured = {}
    handle = tiny_model.layers()[layer].register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
    with torch.no_grad():
        tiny_model.hf_model(toks)
    handle.remove()
    assert got.shape == (3, 12, tiny_model.d_model)
    torch.testing.assert_close(got, captured["x"])


def test_special_mask_drops_bos_and_pad(tiny_model):
    tok = tiny_model.tokenizer
    toks = torch.tensor([[tok.bos_token_id, 100, 200, tok.pad_token_id]])
    assert special_mask(tiny_model, toks).tolist() == [[False, True, True, False]]


def _naive_kl_ce(model, toks, layer, patch):
    """Full-logit reference: patch via a forward hook, compare with the clean run."""
    keep = special_mask(model, toks)

    def hook(mod, inp, out):
        new = out.clone()
        new[keep] = patch(out[keep].float()).to(out.dtype)
        return new

    with torch.no_grad():
        clean = torch.log_softmax(model.hf_model(toks).logits.float(), -1)
        h = model.layers()[layer].register_forward_hook(hook)
        patched = torch.log_softmax(model.hf_model(toks).logits.float(), -1)
        h.remove()
    score = keep.clone()
    score[:, -1] = False
    ce_mask = score.clone()
    ce_mask[:, :-1] &= keep[:, 1:]
    kl = (clean.exp() * (clean - patched)).sum(-1)[score].mean()
    tgt = toks[:, 1:]
    ce_p = -patched[:, :-1].gather(2, tgt[..., None])[..., 0][ce_mask[:, :-1]].mean()
    ce_c = -clean[:, :-1].gather(2, tgt[..., None])[..., 0][ce_mask[:, :-1]].mean()
    return float(kl), float(ce_p), float(ce_c)


def test_splice_matches_full_logit_reference(tiny_model):
    toks = _tokens(tiny_model, n=4, s=10, seed=1)
    patch = lambda x: 0.5 * x + 0.1  # noqa: E731
    res = spliced_kl_ce(tiny_model, toks, 1, {"half": patch, "identity": lambda x: x}, batch_size=3, token_chunk=7)
    kl, ce_p, ce_c = _naive_kl_ce(tiny_model, toks, 1, patch)
    assert res["half"]["kl"] == pytest.approx(kl, rel=1e-4, abs=1e-6)
    assert res["half"]["ce"] == pytest.approx(ce_p, rel=1e-4)
    assert res["clean"]["ce"] == pytest.approx(ce_c, rel=1e-4)
    assert res["identity"]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert res["identity"]["ce"] == pytest.approx(res["clean"]["ce"], rel=1e-6)
    assert res["half"]["kl"] > 0 and math.isfinite(res["half"]["kl"])


def test_splice_rejects_reserved_name_and_all_special(tiny_model):
    toks = _tokens(tiny_model, n=1, s=4)
    with pytest.raises(ValueError, match="reserved"):
        spliced_kl_ce(tiny_model, toks, 1, {"clean": None})
    only_bos = torch.full((1, 4), tiny_model.tokenizer.bos_token_id)
    with pytest.raises(ValueError, match="no non-special tokens"):
        spliced_kl_ce(tiny_model, only_bos, 1, {"x": lambda x: x})
