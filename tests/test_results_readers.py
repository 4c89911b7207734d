"""Result readers: the unlearning reader takes the bootstrap SDs and the area score when present."""
import json
import math

from saelib.results import read_unlearning


def _write(path, block):
    path.write_text(json.dumps({"eval_result_metrics": {"unlearning": block}}))
    return path


def test_unlearning_reader_takes_sds_and_area(tmp_path):
    got = read_unlearning(_write(tmp_path / "new.json", {"unlearning_score": 0.25, "unlearning_score_sd": 0.03,
                                                         "unlearning_auc": 0.1, "unlearning_auc_sd": 0.02}))
    assert got == {"unlearning_score": 0.25, "unlearning_score_sd": 0.03, "unlearning_auc": 0.1, "unlearning_auc_sd": 0.02}


def test_unlearning_reader_reads_older_files(tmp_path):
    got = read_unlearning(_write(tmp_path / "old.json", {"unlearning_score": 0.5}))
    assert got == {"unlearning_score": 0.5} and not any(math.isnan(v) for v in got.values())
