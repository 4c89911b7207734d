"""params.yaml resolution, the papermill runner, and atomic writes."""
import json
import os
import textwrap

import pytest

from saelib.config import ConfigError, load_params
from saelib.io import atomic_write_json, read_json
from saelib.runner import main as runner_main


def _write_params(tmp_path, body):
    path = tmp_path / "params.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def test_load_params_resolves_profile_and_variants(tmp_path):
    path = _write_params(
        tmp_path,
        """
        profile: small
        profiles:
          small: {model: tiny-gemma3, layer: 1}
          big: {model: gemma-2-2b, layer: 12}
        run_variants: [b]
        sae_variants:
          a: {arch: topk}
          b: {arch: relu}
        """,
    )
    P = load_params(path=path)
    assert P["profile"] == "small" and P["run"]["layer"] == 1
    assert list(P["variants"]) == ["b"] and P["variants"]["b"]["arch"] == "relu"
    assert P["paths"]["activations_train"] == tmp_path / "data" / "small" / "activations" / "train"
    assert load_params("big", path=path)["run"]["model"] == "gemma-2-2b"


def test_load_params_errors(tmp_path):
    path = _write_params(tmp_path, "profile: nope\nprofiles: {a: {}}\n")
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        load_params(path=path)
    path = _write_params(tmp_path, "profile: a\nprofiles: {a: {}}\nrun_variants: [x]\nsae_variants: {y: {}}\n")
    with pytest.raises(ConfigError, match=r"unknown SAE variants \['x'\]"):
        load_params(path=path)


def test_repo_params_are_valid():
    for profile in ("tiny", "smoke", "default", "gpu", "paper"):
        P = load_params(profile)
        assert P["run"]["model"] and isinstance(P["run"]["layer"], int)
        assert P["variants"], "run_variants must not be empty"


def test_atomic_json_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "r.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"a": object()})
    assert read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temp file left behind


def test_runner_executes_py_percent_notebook_with_parameters(tmp_path, monkeypatch, capfd):
    nb = tmp_path / "nb.py"
    out = tmp_path / "out.json"
    nb.write_text(
        textwrap.dedent(
            f"""\
            # %% tags=["parameters"]
            value = 1

            # %%
            import json
            import matplotlib.pyplot as plt
            from tqdm.auto import tqdm
            for _ in tqdm(range(3)):
                pass
            json.dump({{"value": value * 2}}, open({str(out)!r}, "w"))
            print(f"cell says {{value * 2}}")

            # %%
            import pandas as pd
            pd.DataFrame({{"column_a": [7, 8]}})
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    assert runner_main([str(nb), "-p", "value", "21", "--out-dir", str(tmp_path / "ex")]) == 0
    assert json.loads(out.read_text()) == {"value": 42}
    assert (tmp_path / "ex" / "nb-21.ipynb").exists()
    stdout, stderr = capfd.readouterr()
    # cell output reaches the terminal: prints and the text form of a table, in cell order
    assert "cell says 42" in stdout and "column_a" in stdout
    assert stdout.index("Executing Cell 2") < stdout.index("cell says 42") < stdout.index("column_a")
    both = stdout + stderr
    for noise in ("TqdmWarning", "IProgress", "KeyboardInterrupt caught", "[IPKernelApp]", "Ending Cell"):
        assert noise not in both, f"runner output still shows {noise!r}:\n{both}"


def test_runner_fails_on_cell_error(tmp_path, monkeypatch):
    nb = tmp_path / "bad.py"
    nb.write_text("# %%\nraise RuntimeError('boom')\n")
    monkeypatch.chdir(tmp_path)
    assert runner_main([str(nb), "--out-dir", str(tmp_path / "ex")]) == 1


# ---------------------------------------------------------------- device setting and profile typos


def _two_profiles(tmp_path, default_extra="", core_extra="", device_line=""):
    return _write_params(
        tmp_path,
        f"""
        profile: default
        {device_line}
        profiles:
          smoke: {{model: tiny-gemma3, layer: 1, train_tokens: 10, core: {{batch_size: 4, n_kl_sequences: 2}}}}
          default: {{model: tiny-gemma3, layer: 1, train_tokens: 20, core: {{batch_size: 4{core_extra}}}{default_extra}}}
        run_variants: [a]
        sae_variants:
          a: {{arch: topk}}
        """,
    )


def test_device_auto_resolves_to_cuda_or_cpu(tmp_path):
    import torch

    P = load_params(path=_two_profiles(tmp_path))  # no device key: auto
    assert P["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    P = load_params(path=_two_profiles(tmp_path, device_line="device: cpu"))
    assert P["device"] == "cpu" and "device" not in P["run"]
    P = load_params(path=_two_profiles(tmp_path, device_line="device: auto", default_extra=", device: cpu"))
    assert P["device"] == "cpu" and "device" not in P["run"]  # a profile's own device wins, then leaves the block


def test_unknown_device_names_params_yaml_and_the_choices(tmp_path):
    path = _two_profiles(tmp_path, device_line="device: gpu0")
    with pytest.raises(ConfigError, match=r"params\.yaml: device: unknown device 'gpu0'.*Allowed values: auto, cpu, cuda, cuda:N"):
        load_params(path=path)


def test_cuda_on_a_cpu_machine_is_a_config_error(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU.*'auto' or 'cpu'"):
        load_params(path=_two_profiles(tmp_path, device_line="device: cuda"))
    assert load_params(path=_two_profiles(tmp_path, device_line="device: auto"))["device"] == "cpu"


def test_profile_key_typo_is_rejected_with_the_close_match(tmp_path):
    path = _two_profiles(tmp_path, default_extra=", train_tokenz: 30")
    with pytest.raises(ConfigError) as err:
        load_params(path=path)
    msg = str(err.value)
    assert "params.yaml" in msg and "profile 'default'" in msg
    assert "'train_tokenz' (did you mean 'train_tokens'?)" in msg
    load_params("smoke", path=path)  # only the active profile is checked


def test_core_block_typo_is_rejected_with_the_close_match(tmp_path):
    path = _two_profiles(tmp_path, core_extra=", n_kl_sequencez: 8")
    with pytest.raises(ConfigError, match=r"profiles\.default\.core has unknown key\(s\) 'n_kl_sequencez' \(did you mean 'n_kl_sequences'\?\)"):
        load_params(path=path)


def test_documented_optional_keys_are_accepted_in_one_profile(tmp_path):
    # shard_tokens / checkpoint_every appear in no other profile but are documented settings
    P = load_params(path=_two_profiles(tmp_path, default_extra=", shard_tokens: 4096, checkpoint_every: 50"))
    assert P["run"]["shard_tokens"] == 4096


def test_misspelt_top_level_key_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"params\.yaml: top-level key 'devise' is not a setting; did you mean 'device'\?"):
        load_params(path=_two_profiles(tmp_path, device_line="devise: cpu"))
    assert load_params(path=_two_profiles(tmp_path, device_line="stages_note: 1"))["profile"] == "default"  # unrelated: allowed
