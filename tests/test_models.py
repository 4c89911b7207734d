"""Model registry: clear errors for bad names/layers/offline hub models, shapes of the tiny model."""
import pytest
import torch

from saelib.devices import compute_dtype
from saelib.hooks import residuals, special_mask
from saelib.models import REGISTRY, HubUnavailableError, UnknownModelError, get_spec, load_model


def test_unknown_model_lists_known_names():
    with pytest.raises(UnknownModelError, match="unknown model 'gemma-9b'.*gemma-3-270m.*tiny-gemma3"):
        load_model("gemma-9b")
    with pytest.raises(ValueError):  # UnknownModelError is a ValueError for callers that catch broadly
        get_spec("")


@pytest.mark.parametrize("layer", [-1, 4, 100, "2"])
def test_layer_out_of_range(tiny_model, layer):
    with pytest.raises(ValueError, match="out of range for tiny-gemma3: it has 4 layers"):
        tiny_model.check_layer(layer)
    with pytest.raises(ValueError, match="out of range"):
        tiny_model.hook_name(layer)


def test_tiny_model_shapes_and_specials(tiny_model):
    tok = tiny_model.tokenizer
    assert (tiny_model.n_layers, tiny_model.d_model, tiny_model.default_layer) == (4, 64, 2)
    assert len(tiny_model.layers()) == 4
    assert tiny_model.hook_name(3) == "blocks.3.hook_resid_post"
    assert {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id} <= set(tiny_model.special_ids)
    ids = tok("The cat sat on the mat.", add_special_tokens=True, return_tensors="pt")["input_ids"]
    assert ids[0, 0].item() == tok.bos_token_id
    x = residuals(tiny_model, ids.repeat(3, 1), 1, batch_size=2)
    assert x.shape == (3, ids.shape[1], 64) and x.dtype == torch.float32
    assert special_mask(tiny_model, ids)[0].tolist() == [False] + [True] * (ids.shape[1] - 1)


def test_registry_layers_match_the_paper_depth():
    # default SAE layer sits at the same relative depth as the paper's Gemma-2-2B layer 12 of 26
    for spec in REGISTRY.values():
        assert 0 <= spec.default_layer < spec.n_layers
    assert get_spec("gemma-2-2b").default_layer == 12 and get_spec("gemma-3-270m").default_layer == 8


def test_hub_model_offline_gives_clear_error(monkeypatch):
    import transformers

    def no_network(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_network)
    with pytest.raises(HubUnavailableError, match="gemma-2-2b-it \\(google/gemma-2-2b-it\\).*`hf auth login`.*HF_HUB_OFFLINE=0.*offline default uses 'gemma-3-270m'"):
        load_model("gemma-2-2b-it", reuse=False)


@pytest.mark.slow
def test_gemma_270m_layer8_residual_norms(gemma):
    tok = gemma.tokenizer
    assert (gemma.n_layers, gemma.d_model, gemma.default_layer) == (18, 640, 8)
    ids = tok(["The quick brown fox jumps over the lazy dog near the river bank."], return_tensors="pt")["input_ids"]
    x = residuals(gemma, ids, 8)
    # bf16 where bf16 matmuls are fast on this CPU (AVX-512/AMX), else fp32 (saelib.devices.compute_dtype)
    assert x.dtype == compute_dtype("cpu") == next(gemma.hf_model.parameters()).dtype
    assert x.shape == (1, ids.shape[1], 640)
    norms = x.float().norm(dim=-1)[0]
    # BOS is an outlier (~8e4) next to ordinary tokens (~5e3): why special tokens are always masked
    assert norms[0] > 5 * norms[1:].max()
    assert 1e3 < norms[1:].median() < 2e4
