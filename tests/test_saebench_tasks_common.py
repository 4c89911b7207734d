"""The shared eval plumbing: content-keyed cache, thread limiter, SAEBench-JSON layout."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from saelib.evals import common


def test_content_key_depends_on_every_setting_and_input():
    base = common.content_key({"model": "m", "layer": 3}, ["a", "b"], torch.arange(4))
    assert base == common.content_key({"layer": 3, "model": "m"}, ["a", "b"], torch.arange(4))  # key order irrelevant
    assert len(base) == 64
    others = [
        common.content_key({"model": "m", "layer": 4}, ["a", "b"], torch.arange(4)),
        common.content_key({"model": "m", "layer": 3}, ["b", "a"], torch.arange(4)),
        common.content_key({"model": "m", "layer": 3}, ["ab"], torch.arange(4)),  # no concatenation collision
        common.content_key({"model": "m", "layer": 3}, ["a", "b"], torch.arange(4).int()),  # dtype counts
        common.content_key({"model": "m", "layer": 3}, ["a", "b"], torch.arange(4).reshape(2, 2)),  # shape counts
        common.content_key({"model": "m", "layer": 3}, ["a", "b"], np.arange(4)),
    ]
    assert len(set(others + [base])) == len(others) + 1


def test_cached_builds_once_and_rebuilds_on_a_new_key(tmp_path):
    calls = []

    def build():
        calls.append(1)
        return {"x_ND": torch.full((2, 3), float(len(calls)))}, {"n": len(calls), "note": "built"}

    path = tmp_path / "sub" / "c.safetensors"
    t1, m1, hit1 = common.cached(path, "k1", build)
    t2, m2, hit2 = common.cached(path, "k1", build)
    assert (hit1, hit2) == (False, True) and calls == [1]
    assert torch.equal(t1["x_ND"], t2["x_ND"]) and m2 == {"n": 1, "note": "built"}
    assert common.stored_key(path) == "k1"
    t3, m3, hit3 = common.cached(path, "k2", build)  # other settings: rebuilt and replaced
    assert not hit3 and calls == [1, 1] and float(t3["x_ND"][0, 0]) == 2.0 and common.stored_key(path) == "k2"
    assert common.load_cached(path, "k1") is None
    assert [p.name for p in path.parent.iterdir()] == ["c.safetensors"]  # no temp file left behind


def test_a_corrupt_cache_file_is_a_miss(tmp_path):
    path = tmp_path / "c.safetensors"
    path.write_bytes(b"not a safetensors file")
    assert common.load_cached(path, "k") is None and common.stored_key(path) is None
    with pytest.raises(ValueError, match="reserved"):
        common.save_cached(path, "k", {"a": torch.zeros(1)}, {common.CACHE_KEY: "x"})


def test_limit_threads_restores_the_thread_counts():
    from threadpoolctl import threadpool_info

    before = torch.get_num_threads()
    with common.limit_threads(1):
        assert torch.get_num_threads() == 1
        assert all(p["num_threads"] == 1 for p in threadpool_info())
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with common.limit_threads(1, blas=False):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with common.limit_threads(None):
        assert torch.get_num_threads() == before
    with pytest.raises(ValueError):
        with common.limit_threads(0):
            pass


def test_document_has_saebench_base_eval_output_fields(tmp_path):
    from sae_bench.evals.base_eval_output import BaseEvalOutput

    saebench_fields = [f.name for f in dataclasses.fields(BaseEvalOutput)]
    assert list(common.SAEBENCH_FIELDS) == saebench_fields
    doc = common.saebench_document("scr", {"n_values": [2]}, {"scr_metrics": {"scr_metric_threshold_2": 0.5}},
                                   [{"dataset_name": "t", "x": 1.0}], sae_cfg_dict={"d_sae": 8},
                                   extra={"variant": "v"}, datetime_epoch_millis=1_700_000_000_000)
    assert list(doc)[: len(saebench_fields)] == saebench_fields and doc["variant"] == "v"
    assert doc["eval_id"] != common.saebench_document("scr", {}, {"a": {"b": 1}})["eval_id"]  # a fresh UUID each run
    path = common.write_saebench_json(tmp_path / "out" / "v.json", doc)
    assert json.loads(path.read_text())["eval_result_metrics"] == {"scr_metrics": {"scr_metric_threshold_2": 0.5}}
    with pytest.raises(ValueError, match="flat"):
        common.saebench_document("scr", {}, {"scr_metrics": {"nested": {"a": 1}}})
    with pytest.raises(ValueError, match="overwrite"):
        common.saebench_document("scr", {}, {"a": {"b": 1}}, extra={"eval_id": "x"})
    with pytest.raises(ValueError, match="missing"):
        common.write_saebench_json(tmp_path / "bad.json", {"eval_type_id": "scr"})
