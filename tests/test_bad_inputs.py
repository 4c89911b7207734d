"""Bad inputs fail loudly (issue 15.6): each error names the file, the variant or model, and the fix;
a corrupt activation shard is rebuilt by re-running extraction instead of needing ``rm -rf``."""
import json

import pytest
import torch

from saelib.activations import ActivationCache, CacheMismatchError, CorruptShardError, MissingCacheError
from saelib.extract import extract_activations, find_complete_cache
from saelib.io import atomic_write_json, repo_relative
from saelib.sae import SAEFormatError, TopKConfig, load_sae, make_sae


def _tokens(model, n=12, s=9):
    g = torch.Generator().manual_seed(1)
    toks = torch.randint(10, 5000, (n, s), generator=g)
    toks[:, 0] = model.tokenizer.bos_token_id
    return toks


def _extract(model, toks, folder):
    return extract_activations(model, toks, 1, folder, batch_size=4, shard_tokens=36, progress=False)


# ---------------------------------------------------------------- activation cache


def test_cache_built_for_another_layer_is_an_error_naming_folder_and_fix(tiny_model, tmp_path):
    folder = tmp_path / "data" / "smoke" / "activations" / "train"
    _extract(tiny_model, _tokens(tiny_model), folder)
    ActivationCache(folder, expect={"model": "tiny-gemma3", "layer": 1, "context": 9})  # matching: fine
    with pytest.raises(CacheMismatchError) as err:
        ActivationCache(folder, expect={"model": "tiny-gemma3", "layer": 3, "context": 9})
    msg = str(err.value)
    assert str(folder) in msg and "layer: cache has 1, the run wants 3" in msg
    assert "dvc repro extract" in msg and "-p profile smoke" in msg and "delete the folder" in msg
    with pytest.raises(CacheMismatchError, match="context: cache has 9, the run wants 128"):
        ActivationCache(folder, expect={"context": 128})


def test_corrupt_shard_is_found_by_hash_and_rebuilt_by_extraction(tiny_model, tmp_path, capsys):
    toks = _tokens(tiny_model)
    folder = tmp_path / "c"
    good = _extract(tiny_model, toks, folder).activations()
    manifest = json.loads((folder / "manifest.json").read_text())
    shard = folder / manifest["shards"][1]["file"]
    data = bytearray(shard.read_bytes())
    data[-7] ^= 0xFF  # same size, different bytes: only the hash can tell
    shard.write_bytes(bytes(data))
    meta = manifest["meta"]
    assert find_complete_cache(folder, model="tiny-gemma3", layer=1, context=9, meta=meta) is None
    assert "needs repair" in capsys.readouterr().out
    with pytest.raises(CorruptShardError, match="shard_00001.*dvc repro extract"):
        ActivationCache(folder).verify()
    rebuilt = _extract(tiny_model, toks, folder)  # what `dvc repro extract` runs
    rebuilt.verify()
    assert torch.equal(rebuilt.activations(), good)
    assert find_complete_cache(folder, model="tiny-gemma3", layer=1, context=9, meta=meta) is not None


def test_truncated_shard_is_caught_on_open_and_rebuilt(tiny_model, tmp_path):
    toks = _tokens(tiny_model)
    folder = tmp_path / "data" / "default" / "activations" / "train"
    good = _extract(tiny_model, toks, folder).activations()
    shard = folder / "shard_00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CorruptShardError) as err:  # what training hits
        ActivationCache(folder)
    assert str(shard) in str(err.value) and "truncated" in str(err.value)
    assert "dvc repro extract" in str(err.value) and "-p profile default" in str(err.value)
    assert torch.equal(_extract(tiny_model, toks, folder).activations(), good)


def test_missing_cache_message_fills_in_the_profile(tmp_path):
    with pytest.raises(MissingCacheError, match="01_extract.py -p profile paper"):
        ActivationCache(tmp_path / "data" / "paper" / "activations" / "heldout")


# ---------------------------------------------------------------- SAE folders


def _saved_sae(tmp_path, d_in=8):
    folder = tmp_path / "checkpoints" / "default" / "topk" / "sae"
    cfg = TopKConfig(d_in=d_in, d_sae=16, k=2, model_name="gemma-3-270m", hook_name="blocks.8.hook_resid_post")
    make_sae("topk", cfg).save(folder)
    return folder


def test_corrupt_weights_name_the_file_and_the_train_stage(tmp_path):
    folder = _saved_sae(tmp_path)
    weights = folder / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(SAEFormatError) as err:
        load_sae(folder)
    msg = str(err.value)
    assert str(weights) in msg and "corrupt or truncated" in msg and "dvc repro train@topk" in msg


def test_edited_d_in_in_cfg_json_is_checked_against_the_weights(tmp_path):
    folder = _saved_sae(tmp_path)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["d_in"] = 640
    atomic_write_json(folder / "cfg.json", cfg)
    with pytest.raises(SAEFormatError, match=r"cfg\.json: d_in=640 disagrees.*d_in=8"):
        load_sae(folder)
    cfg["metadata"]["saelib_config"]["d_in"] = 640  # both edited: the weights still say 8
    atomic_write_json(folder / "cfg.json", cfg)
    with pytest.raises(SAEFormatError, match=r"W_enc has shape \(8, 16\).*d_in=640"):
        load_sae(folder)


def test_sae_width_mismatch_names_folder_model_and_both_widths(tmp_path):
    folder = _saved_sae(tmp_path, d_in=8)
    assert load_sae(folder, expect_d_in=8).cfg.d_in == 8
    with pytest.raises(SAEFormatError) as err:
        load_sae(folder, expect_d_in=64, what="variant topk's tiny-gemma3 layer-1 activations")
    msg = str(err.value)
    assert str(folder) in msg and "d_in=8" in msg and "64-wide" in msg
    assert "gemma-3-270m" in msg and "variant topk's tiny-gemma3" in msg


# ---------------------------------------------------------------- results hold no machine paths


def test_paths_in_json_results_are_repo_relative(tmp_path, monkeypatch):
    monkeypatch.setenv("SAELIB_ROOT", str(tmp_path))
    inside = tmp_path / "data" / "default" / "eval_cache" / "absorption"
    atomic_write_json(tmp_path / "r.json", {"cache_folder": inside, "outside": tmp_path.parent / "x"})
    stored = json.loads((tmp_path / "r.json").read_text())
    assert stored["cache_folder"] == "data/default/eval_cache/absorption"
    assert stored["outside"] == (tmp_path.parent / "x").as_posix()  # outside the repo: left as it is
    assert repo_relative(str(inside)) == "data/default/eval_cache/absorption"
    assert repo_relative("relative/already") == "relative/already"
