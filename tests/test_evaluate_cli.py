"""``python -m saelib.evaluate``: any SAELens-format SAE, checked against the profile, SAEBench-format JSON.

Runs on a copy of the smoke profile pointed at the 4-layer random ``tiny-gemma3`` (same tokenizer, so the
same offline corpus) with a tiny held-out set, on an SAE saved by ``saelib`` and one saved by SAELens.
"""
import json
from pathlib import Path

import pytest
import torch
import yaml

from saelib import evaluate as E
from saelib.config import load_params
from saelib.hooks import residuals, special_mask
from saelib.models import load_model
from saelib.sae import TopKConfig, load_sae, make_sae
ROOT = Path(__file__).resolve().parents[1]

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def params_path(tmp_path_factory):
    """params.yaml whose smoke profile runs tiny-gemma3 at layer 1 on 4 held-out sequences of 32 tokens."""
    folder = tmp_path_factory.mktemp("cli")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profiles"]["smoke"].update(model="tiny-gemma3", layer=1, context=32, heldout_sequences=4,
                                       core={"batch_size": 2, "n_kl_sequences": 2})
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def our_sae(tmp_path_factory):
    torch.manual_seed(0)
    sae = make_sae("topk", TopKConfig(d_in=64, d_sae=128, k=8, model_name="tiny-gemma3", hook_name=HOOK))
    folder = tmp_path_factory.mktemp("ours") / "mine" / "sae"
    sae.save(folder)
    return folder


@pytest.fixture(scope="module")
def saelens_sae(tmp_path_factory, our_sae):
    """The same weights, written by SAELens's own ``save_model``."""
    sae_lens = pytest.importorskip("sae_lens")
    cfg = sae_lens.TopKSAEConfig(d_in=64, d_sae=128, k=8)
    cfg.metadata.model_name = "tiny-gemma3"
    cfg.metadata.hook_name = HOOK
    theirs = sae_lens.TopKSAE(cfg)
    ours = load_sae(our_sae)
    theirs.load_state_dict({k: v.clone() for k, v in ours.state_dict().items()})
    folder = tmp_path_factory.mktemp("theirs") / "saelens_topk"
    theirs.save_model(str(folder))
    assert "saelib_architecture" not in json.loads((folder / "cfg.json").read_text()).get("metadata", {})
    return folder


def _flat(path) -> dict[str, float]:
    doc = json.loads(path.read_text())["eval_result_metrics"]
    return {f"{g}.{k}": v for g, sub in doc.items() for k, v in sub.items()}


def test_core_on_our_sae_and_on_a_saelens_sae(params_path, our_sae, saelens_sae, tmp_path):
    out = tmp_path / "out"
    assert E.main([str(our_sae), "--evals", "core", "--out", str(out), "--profile", "smoke", "--params", str(params_path),
                   "--heldout-sequences", "4"]) == 0
    assert E.main([str(saelens_sae), "--evals", "core", "--out", str(out), "--profile", "smoke",
                   "--params", str(params_path), "--heldout-sequences", "4"]) == 0
    ours = json.loads((out / "core" / "mine.json").read_text())  # named after the folder holding `sae/`
    theirs = json.loads((out / "core" / "saelens_topk.json").read_text())
    assert ours["eval_type_id"] == "core" and ours["profile"] == "smoke" and ours["hook_name"] == HOOK
    assert set(ours["eval_result_metrics"]) == {"model_behavior_preservation", "model_performance_preservation",
                                                "reconstruction_quality", "shrinkage", "sparsity", "misc_metrics"}
    # same weights, two writers: identical numbers
    assert _flat(out / "core" / "mine.json") == pytest.approx(_flat(out / "core" / "saelens_topk.json"), rel=1e-5)
    # known answer: mse and L0 recomputed naively on the same held-out tokens
    P = load_params("smoke", params_path)
    model = load_model("tiny-gemma3")
    tokens = E.heldout_tokens(P, model, 4)
    assert tokens.shape == (4, 32)
    x_ND = residuals(model, tokens, 1)[special_mask(model, tokens)].float()
    sae = load_sae(saelens_sae)
    with torch.no_grad():
        f_NF = sae.encode(x_ND)
        mse = float((sae.decode(f_NF) - x_ND).pow(2).mean())
        l0 = float((f_NF != 0).sum(-1).float().mean())
    rq, sp = theirs["eval_result_metrics"]["reconstruction_quality"], theirs["eval_result_metrics"]["sparsity"]
    assert rq["mse"] == pytest.approx(mse, rel=1e-4)
    assert sp["l0"] == pytest.approx(l0, rel=1e-6) and 0 < sp["l0"] <= 8
    kl = theirs["eval_result_metrics"]["model_behavior_preservation"]
    assert kl["kl_div_with_sae"] >= 0 and kl["kl_div_with_ablation"] > 0


def test_model_or_layer_mismatch_is_a_clear_error(params_path, tmp_path, capsys):
    for model_name, hook, expect in (("gemma-3-270m", HOOK, "choose the profile of that model"),
                                     ("tiny-gemma3", "blocks.3.hook_resid_post", "use a profile with layer: 3"),
                                     ("tiny-gemma3", "blocks.1.attn.hook_z", "not a residual-stream hook")):
        folder = tmp_path / model_name / hook
        make_sae("topk", TopKConfig(d_in=64, d_sae=128, k=8, model_name=model_name, hook_name=hook)).save(folder)
        assert E.main([str(folder), "--out", str(tmp_path / "o"), "--profile", "smoke", "--params", str(params_path)]) == 2
        err = capsys.readouterr().err
        assert expect in err and str(folder / "cfg.json") in err
    assert E.main([str(folder), "--evals", "core,nope", "--out", str(tmp_path / "o"), "--params", str(params_path)]) == 2
    assert "unknown evals ['nope']" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
