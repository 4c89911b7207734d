"""scripts/genre_spread.py: per-genre KL scores from per-sequence splice sums, their gap and its bootstrap."""
import pytest
import torch

from saelib.hooks import SpliceSums
from scripts_module import load_script

gs = load_script("genre_spread")


def _sums(kl_sae, kl_zero, tokens):
    """SpliceSums with the given per-sequence KL sums (SAE, zero ablation) and scored-token counts;
    CE sums set so that every CE score is 0.5 (clean 1, zero 3, SAE 2 per token)."""
    t = torch.tensor(tokens, dtype=torch.float64)
    kl_s, kl_z = torch.tensor(kl_sae, dtype=torch.float64), torch.tensor(kl_zero, dtype=torch.float64)
    counts = {k: t.long() for k in ("kl", "ce", "kl_saebench", "ce_saebench")}
    sums = {"clean": {"ce": 1 * t, "ce_saebench": 1 * t},
            "sae": {"kl": kl_s, "ce": 2 * t, "kl_saebench": kl_s, "ce_saebench": 2 * t},
            "zero": {"kl": kl_z, "ce": 3 * t, "kl_saebench": kl_z, "ce_saebench": 3 * t},
            "zero_keep_bos": {"kl": kl_z, "ce": 3 * t, "kl_saebench": kl_z, "ce_saebench": 3 * t}}
    return SpliceSums(sums, counts)


def test_genre_scores_pool_token_sums_within_each_genre():
    # genre a: rows 0, 2 (KL_sae 1 + 3 over KL_zero 10 + 30 -> score 0.9); genre b: rows 1, 3
    # (2 + 18 over 20 + 20 -> 0.5): pooled sums, not a mean of per-row scores (which would give 0.9 and 0.5 too
    # for a, but 0.45 for b)
    ss = _sums([1, 2, 3, 18], [10, 20, 30, 20], [5, 7, 9, 11])
    rows = gs.genre_rows(["a", "b", "a", "b"])
    assert rows == {"a": [0, 2], "b": [1, 3]}
    scores = gs.genre_scores(ss, rows)
    assert scores["a"]["kl_score"] == pytest.approx(0.9)
    assert scores["b"]["kl_score"] == pytest.approx(0.5)
    assert scores["a"]["ce_score"] == pytest.approx(0.5) and scores["b"]["n_sequences"] == 2
    assert gs.kl_gap(scores) == ("b", "a", pytest.approx(0.4))
    # per source within a genre: the same pooling over rows labelled genre/source
    labels = gs.source_labels(["a", "b", "a", "b"], ["x", "y", "z", "y"])
    assert labels == ["a/x", "b/y", "a/z", "b/y"]
    by_source = gs.genre_scores(ss, gs.genre_rows(labels))
    assert by_source["a/x"]["kl_score"] == pytest.approx(0.9) and by_source["a/z"]["kl_score"] == pytest.approx(0.9)
    assert by_source["b/y"]["kl_score"] == pytest.approx(0.5) and by_source["b/y"]["n_sequences"] == 2
    with pytest.raises(ValueError, match="source labels"):
        gs.source_labels(["a"], [])


def test_bootstrap_of_the_gap_is_exact_when_rows_agree_and_spreads_when_they_do_not():
    rows = gs.genre_rows(["a", "b"] * 4)
    same = _sums([1, 5] * 4, [10, 10] * 4, [4] * 8)  # every row of a genre scores the same: 0.9 and 0.5
    boot = gs.bootstrap_gap(same, rows, n_boot=50)
    assert boot["sd"] == pytest.approx(0.0, abs=1e-12)
    assert boot["lo"] == pytest.approx(0.4) and boot["hi"] == pytest.approx(0.4)
    varied = _sums([0, 5, 2, 5, 1, 5, 3, 5], [10] * 8, [4] * 8)  # a's rows score 1.0, 0.8, 0.9, 0.7; b's 0.5
    boot = gs.bootstrap_gap(varied, rows, n_boot=400, seed=1)
    assert 0.02 < boot["sd"] < 0.1
    assert boot["lo"] < 0.35 < boot["hi"]  # the full-sample gap: a 0.85 - b 0.5
    assert gs.bootstrap_gap(varied, rows, n_boot=400, seed=1) == boot  # seeded
    with pytest.raises(ValueError, match="n_boot"):
        gs.bootstrap_gap(varied, rows, n_boot=1)


def test_missing_checkpoint_is_refused_with_the_command_that_trains_it(capsys):
    assert gs.main(["no_such_variant", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    assert "no_such_variant" in err and "dvc repro train@<variant>" in err


def test_sae_folders_parse_labels_and_refuse_malformed_or_repeated_ones(tmp_path, capsys):
    assert gs.sae_folders([f"mix={tmp_path}/a", "tokens4m = /x/y"]) == {"mix": tmp_path / "a", "tokens4m": gs.Path("/x/y")}
    for bad in (["nolabel"], ["=/x"], ["a="], ["a=/x", "a=/y"]):
        with pytest.raises(ValueError, match="--sae"):
            gs.sae_folders(bad)
    assert gs.main(["--profile", "smoke", "--sae", "broken"]) == 2
    assert "LABEL=FOLDER" in capsys.readouterr().err
    assert gs.main(["topk", "--profile", "smoke", "--sae", f"topk={tmp_path}"]) == 2  # a label that shadows a variant
    assert "also named as variants" in capsys.readouterr().err
    assert gs.main(["--profile", "smoke"]) == 2
    assert "nothing to score" in capsys.readouterr().err
    assert gs.main(["--profile", "smoke", "--sae", f"gone={tmp_path}/none"]) == 2  # a missing folder is refused too
    assert "none" in capsys.readouterr().err
