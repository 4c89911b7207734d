"""scripts/run_provenance.py: which machine each row's stages ran on, from dvc.lock's data/ md5s."""
from pathlib import Path

import pytest
import yaml

from scripts_module import load_script

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = {"machines": [
    {"name": "box-a", "md5": {"activations": "aaa.dir", "absorption": "a-abs.dir"}},
    {"name": "box-b", "md5": {"activations": "bbb.dir", "absorption": "b-abs.dir"}},
]}


def _dep(path, md5):
    return {"path": path, "md5": md5}


LOCK = {"stages": {
    "train@x": {"deps": [_dep("data/p/activations", "aaa.dir"), _dep("saelib/train.py", "f1")]},
    "absorption@x": {"deps": [_dep("checkpoints/p/x/sae", "c1.dir"), _dep("data/p/eval_cache/absorption", "a-abs.dir")]},
    "train@y": {"deps": [_dep("data/p/activations", "bbb.dir")]},
    # an eval that read box-a's cache for an SAE trained on box-b, and one on an extraction nobody recorded
    "absorption@y": {"deps": [_dep("data/p/eval_cache/absorption", "a-abs.dir")]},
    "train@z": {"deps": [_dep("data/p/activations", "ccc12345678.dir"), _dep("data/p/eval_cache/core", "a-abs.dir")]},
}}


def test_rows_name_the_machine_of_every_stage_and_flag_unrecorded_md5s():
    mod = load_script("run_provenance")
    index = mod.machine_index(REGISTRY)
    rows = {r["variant"]: r["stages"] for r in mod.provenance(LOCK, ["x", "y", "z", "w"], "p", index)}
    assert rows["x"]["train"] == "box-a" and rows["x"]["absorption"] == "box-a" and rows["x"]["scr"] is None
    assert rows["y"]["train"] == "box-b" and rows["y"]["absorption"] == "box-a"
    assert rows["z"]["train"] == "box-a, unrecorded ccc12345"
    assert all(cell is None for cell in rows["w"].values())
    table = mod.markdown(mod.provenance(LOCK, ["x", "w"], "p", index)).splitlines()
    assert table[0] == "| row | train | absorption | scr | probing | sae_probes | unlearning |"
    assert table[2] == "| x | box-a | box-a | - | - | - | - |" and table[3] == "| w | - | - | - | - | - | - |"


def test_stale_marks_stages_whose_code_or_params_changed_not_missing_data():
    mod = load_script("run_provenance")
    index = mod.machine_index(REGISTRY)
    status = {
        "train@x": [{"changed deps": {"data/p/activations": "deleted"}}, {"changed outs": {"checkpoints/p/x": "deleted"}}],
        "absorption@x": [{"changed deps": {"saelib/evals/absorption": "modified"}}],
        "train@y": ["changed command"],
    }
    rows = {r["variant"]: r["stages"] for r in mod.provenance(LOCK, ["x", "y"], "p", index, status)}
    assert rows["x"]["train"] == "box-a" and rows["x"]["absorption"] == "box-a (stale)"
    assert rows["y"]["train"] == "box-b (stale)" and rows["y"]["absorption"] == "box-a"


def test_registry_rejects_unknown_keys_and_one_md5_on_two_machines():
    mod = load_script("run_provenance")
    with pytest.raises(ValueError, match="unknown key 'activation'"):
        mod.machine_index({"machines": [{"name": "m", "md5": {"activation": "x"}}]})
    with pytest.raises(ValueError, match="listed for both 'm' and 'n'"):
        mod.machine_index({"machines": [{"name": "m", "md5": {"activations": "x"}}, {"name": "n", "md5": {"scr": "x"}}]})


def test_committed_registry_names_the_committed_extraction():
    """The md5 that dvc.lock's extract stage records is in docs/run_machines.yaml, so every row trained on the
    committed activations gets a machine name (add an entry when a resume re-extracts elsewhere)."""
    mod = load_script("run_provenance")
    index = mod.machine_index(yaml.safe_load((ROOT / "docs/run_machines.yaml").read_text()))
    extract = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]["extract"]
    acts = [o["md5"] for o in extract["outs"] if o["path"].endswith("/activations")]
    assert acts and all(md5 in index for md5 in acts)
