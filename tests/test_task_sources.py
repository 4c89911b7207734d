"""Task sources added for issue 17: sae-probes files in SAEBench's layout, WordNet person glosses,
shrink-to-fit sampling, and the one-way imports between task modules."""
import ast
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from saelib.data import sae_probes_data, tasks, wordnet_people
from saelib.data.split import is_eval_doc
from saelib.data.task_types import SourceError, TaskUnavailable, sample_balanced, shrunk_counts

FIX = Path(__file__).parent / "fixtures"
SP = FIX / "sae_probes"
HAS_SAE_PROBES = sae_probes_data.package_dir("sae_probes") is not None
HAS_WORDNET = (wordnet_people.WORDNET_DIR / "data.noun").exists()


# ---- sae-probes readers (fixtures cut from the real files: 12 rows per target, prompts cut to 400 chars) --
def test_saebench_layout_sources_from_fixture():
    # the corpus trains on these files, so only rows on the eval side of the document split are read
    assert all(sae_probes_data.shared_with_training(f) for f in ("161_agnews_0", "157_amazon_5star", "158_code_C"))
    raw = sae_probes_data.read_dataset_frame("161_agnews_0", data_dir=SP, eval_side_only=False)
    assert len(raw) == 24
    ag = sae_probes_data.read_saebench_source("sp_ag_news", data_dir=SP)
    assert Counter(r["label"] for r in ag) == {"0": 3, "1": 8, "2": 5}  # positives only: negatives are code
    assert all(is_eval_doc(r["text"]) for r in ag)
    assert not any("GNU General Public License" in r["text"] for r in ag)
    world = {str(p) for p, t in zip(raw["prompt"], raw["target"]) if t == 1 and is_eval_doc(str(p))}
    assert {r["text"] for r in ag if r["label"] == "0"} == world
    code = sae_probes_data.read_saebench_source("sp_github_code", data_dir=SP)
    assert Counter(r["label"] for r in code) == {"C": 7, "Python": 5, "HTML": 3}
    amazon = sae_probes_data.read_saebench_source("sp_amazon_sentiment", data_dir=SP)
    assert Counter(r["label"] for r in amazon) == {"5.0": 6, "1.0": 5}
    assert all(r["text"].startswith("Title: ") and "\nReview: " in r["text"] for r in amazon)
    with pytest.raises(KeyError, match="unknown sae-probes source"):
        sae_probes_data.read_saebench_source("sp_nope", data_dir=SP)


def test_binary_dataset_labels_and_master_table():
    names = sae_probes_data.binary_dataset_names(data_dir=SP)
    # the master table's binary rows, in order; continuous ones (birth year, yelp, amzn_rev) are left out
    assert names == ["5_hist_fig_ismale", "157_amazon_5star", "158_code_C", "159_code_Python", "160_code_HTML",
                     "161_agnews_0", "162_agnews_1", "163_agnews_2"]
    ds = sae_probes_data.read_binary_dataset("5_hist_fig_ismale", data_dir=SP)
    assert ds.classes == ("0", "1") and len(ds.texts) == 24 and ds.y.dtype == np.int64
    assert ds.y.sum() == 12
    assert sae_probes_data.read_binary_dataset("5_hist_fig_ismale", data_dir=SP, max_rows=5).y.shape == (5,)
    with pytest.raises(SourceError, match="5 target values"):
        sae_probes_data.read_binary_dataset("112_amzn_rev", data_dir=SP)  # Yelp's five ratings
    with pytest.raises(SourceError, match="does not exist"):
        sae_probes_data.read_dataset_frame("999_missing", data_dir=SP)
    with pytest.raises(SourceError, match="no cleaned_data"):
        sae_probes_data.sae_probes_data_dir(FIX)


def test_sae_probes_fixture_rows_are_real_rows():
    if not HAS_SAE_PROBES:
        pytest.skip("sae-probes not installed")
    real = sae_probes_data.read_dataset_frame("161_agnews_0", eval_side_only=False)
    cut = sae_probes_data.read_dataset_frame("161_agnews_0", data_dir=SP, eval_side_only=False)
    first = {str(p)[:400] for p in real["prompt"].head(40)}
    assert set(cut["prompt"].astype(str)) <= first


@pytest.mark.skipif(not HAS_SAE_PROBES, reason="sae-probes not installed")
def test_real_saebench_layout_counts_and_no_import():
    import sys

    got = {n: Counter(r["label"] for r in tasks.dedupe(sae_probes_data.read_saebench_source(n)))
           for n in sae_probes_data.SAEBENCH_SOURCES}
    # the eval half of each file (2,000 positives per AG News class, 1,000 reviews per rating before the split)
    assert got["sp_ag_news"] == {"0": 988, "1": 993, "2": 1023}
    assert got["sp_amazon_sentiment"] == {"5.0": 495, "1.0": 485}
    assert got["sp_github_code"] == {"C": 977, "Python": 1018, "HTML": 990}
    assert "sae_probes" not in sys.modules  # found with find_spec, never imported (its __init__ needs xgboost)
    ds = tasks.load_source("sp_ag_news", n_train=5, n_test=3, seed=0)
    assert Counter(zip(ds["label"], ds["split"])) == {(c, s): n for c in "012" for s, n in (("train", 5), ("test", 3))}


# ---- WordNet person glosses ----------------------------------------------------------------------
def test_parse_person_gloss():
    p = wordnet_people.parse_person_gloss
    assert p("United States film actor known for tough characters (1899-1986)") == ("United States", "actor")
    assert p("English lyric poet (1795-1821)") == ("English", "poet")
    assert p("French painter who led the cubist movement (1882-1963)") == ("French", "painter")
    assert p("Greek philosopher who developed an atomistic theory") is None  # not in the nationality list
    assert p("English king (1100-1135)") is None
    assert p("United States general and statesman who was a writer") is None  # profession beyond the window
    assert wordnet_people.is_person_gloss("Aiken, Conrad Aiken: United States writer (1889-1973)")
    assert not wordnet_people.is_person_gloss("dog, domestic dog: a member of the genus Canis")


def test_read_wordnet_people_fixture():
    recs = wordnet_people.read_wordnet_people(root=FIX / "wordnet")
    assert [r["text"] for r in recs[:2]] == ["Conrad Potter Aiken: United States writer (1889-1973)",
                                             "Nelson Algren: United States writer (1909-1981)"]
    assert Counter((r["profession_group"], r["nationality_group"]) for r in recs) == {
        ("arts", "american"): 6, ("arts", "european"): 3, ("sciences", "european"): 3, ("sciences", "american"): 3}
    with pytest.raises(FileNotFoundError, match="wordnet-base"):
        wordnet_people.read_wordnet_people(root=FIX)


@pytest.mark.skipif(not HAS_WORDNET, reason="Debian wordnet-base not installed")
def test_wordnet_scr_source_quadrants():
    recs = wordnet_people.read_wordnet_people()
    assert Counter((r["profession_group"], r["nationality_group"]) for r in recs) == {
        ("arts", "american"): 475, ("arts", "european"): 531, ("sciences", "american"): 127, ("sciences", "european"): 271}
    task = tasks.get_scr_task("wordnet_people_profession_nationality")
    ds, name = tasks.load_eval_source(task.source, n_train=100, n_test=50, seed=42, scr_task=task, q_train=100, q_test=50)
    assert name == "wordnet_people"
    counts = tasks.quadrant_counts(ds, task)
    # 2q = 200 train + 100 test asked per quadrant; the 127 American scientists shrink to 84 + 43
    assert counts["train"].to_dict() == {"arts+american": 200, "arts+european": 200, "sciences+american": 84,
                                         "sciences+european": 180}
    assert counts["test"].to_dict() == {"arts+american": 100, "arts+european": 100, "sciences+american": 43,
                                        "sciences+european": 91}
    assert not set(ds.filter(lambda r: r["split"] == "train")["text"]) & set(ds.filter(lambda r: r["split"] == "test")["text"])


# ---- sampling and registries -----------------------------------------------------------------------
def test_shrink_to_fit_sampling():
    assert shrunk_counts(500, 200, 100) == (200, 100)
    assert shrunk_counts(127, 200, 100) == (84, 43)
    assert shrunk_counts(2, 200, 100) == (1, 1)
    with pytest.raises(SourceError, match="1 record"):
        shrunk_counts(1, 2, 1)
    recs = [{"text": f"a{i}", "g": "a"} for i in range(30)] + [{"text": f"b{i}", "g": "b"} for i in range(9)]
    rows = sample_balanced(recs, ("g",), 10, 5, seed=0, shrink_to_fit=True)
    assert Counter((r["g"], r["split"]) for r in rows) == {("a", "train"): 10, ("a", "test"): 5,
                                                           ("b", "train"): 6, ("b", "test"): 3}
    with pytest.raises(SourceError, match="has 9 records"):
        sample_balanced(recs, ("g",), 10, 5, seed=0)


def test_registries_and_dispatch():
    for name in tasks.DEFAULT_PROBING_TASKS:
        task = tasks.get_probing_task(name)
        assert task.source in tasks.SOURCES
    for name in tasks.DEFAULT_SCR_TASKS:
        assert tasks.get_scr_task(name).source == "wordnet_people"
    assert tasks.get_probing_task("ag_news").source == "ag_news"  # the paper profile's hub task is unchanged
    assert tasks.get_tpp_task("bbc_topic").source == "bbc_news"
    with pytest.raises(KeyError, match="unknown SCR task"):
        tasks.get_scr_task("nope")
    table = tasks.sources_table().set_index("source")
    assert table.loc["sp_ag_news", "real_or_substitute"] == "real"
    assert table.loc["fortunes", "real_or_substitute"] == "substitute"
    assert set(tasks.SAEBENCH_COUNTERPART) <= set(tasks.PROBING_TASKS) | set(tasks.SCR_TASKS)


def _imports(path: Path) -> set[str]:
    """Modules of ``saelib.data`` that ``path`` imports anywhere (function bodies included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            out.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("saelib.data."):
            out.add(node.module.split(".")[2])
    return out


def test_task_modules_import_one_way():
    root = Path(tasks.__file__).parent
    graph = {m: _imports(root / f"{m}.py") for m in ("task_types", "hub_tasks", "sae_probes_data", "wordnet_people", "tasks")}
    assert graph["task_types"] == set()
    for reader in ("hub_tasks", "sae_probes_data", "wordnet_people"):
        assert "tasks" not in graph[reader], reader
    assert {"task_types", "hub_tasks", "sae_probes_data", "wordnet_people"} <= graph["tasks"]


def test_missing_package_is_one_line_unavailable(monkeypatch):
    monkeypatch.setattr(sae_probes_data, "package_dir", lambda name: None)
    with pytest.raises(TaskUnavailable, match=r"pip install --no-deps sae-probes==0\.4\.2"):
        sae_probes_data.sae_probes_data_dir()


def test_wikidata_occupation_gender_join_on_fixture():
    recs = sae_probes_data.read_wikidata_occupation_gender("actor", data_dir=SP)
    assert Counter((r["occupation"], r["gender"]) for r in recs) == {("other", "female"): 2, ("actor", "female"): 3}
    assert all(is_eval_doc(r["text"]) for r in recs)
    assert len({r["text"] for r in recs}) == len(recs)
    with pytest.raises(KeyError, match="unknown occupation"):
        sae_probes_data.read_wikidata_occupation_gender("pilot", data_dir=SP)
    task = tasks.get_scr_task("sp_wikidata_actor_gender")
    assert (task.column_a, task.a_pos, task.column_b, task.b_pos) == ("occupation", "actor", "gender", "male")
