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
    for profile in ("smoke", "default", "paper"):
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


def test_runner_executes_py_percent_notebook_with_parameters(tmp_path, monkeypatch):
    nb = tmp_path / "nb.py"
    out = tmp_path / "out.json"
    nb.write_text(
        textwrap.dedent(
            f"""\
            # %% tags=["parameters"]
            value = 1

            # %%
            import json
            json.dump({{"value": value * 2}}, open({str(out)!r}, "w"))
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    assert runner_main([str(nb), "-p", "value", "21", "--out-dir", str(tmp_path / "ex")]) == 0
    assert json.loads(out.read_text()) == {"value": 42}
    assert (tmp_path / "ex" / "nb-21.ipynb").exists()


def test_runner_fails_on_cell_error(tmp_path, monkeypatch):
    nb = tmp_path / "bad.py"
    nb.write_text("# %%\nraise RuntimeError('boom')\n")
    monkeypatch.chdir(tmp_path)
    assert runner_main([str(nb), "--out-dir", str(tmp_path / "ex")]) == 1
