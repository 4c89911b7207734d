"""Labelled datasets for probing / SCR / TPP: offline sources, sampling, hub loaders on fixtures."""
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from saelib.data import hub_tasks, tasks
from saelib.data.tasks import TaskUnavailable
from saelib.models import HubUnavailableError

FIXTURES = Path(__file__).parent / "fixtures" / "hub"
HAS_MODELDATA = tasks.modeldata_folder() is not None
HAS_FORTUNES = all(tasks._fortune_files(lang, tasks.FORTUNE_ROOT) for lang in tasks.FORTUNE_LANGUAGES)


def _counts(ds, *cols):
    return Counter(zip(*(ds[c] for c in cols)))


# ---- sampling --------------------------------------------------------------------------------
def _records(n_a, n_b):
    return [{"text": f"a {i}", "label": "a"} for i in range(n_a)] + [{"text": f"b {i}", "label": "b"} for i in range(n_b)]


def test_sample_balanced_counts_disjoint_and_deterministic():
    recs = _records(30, 12)
    rows = tasks.sample_balanced(recs, ("label",), 5, 3, seed=7)
    assert Counter((r["label"], r["split"]) for r in rows) == {("a", "train"): 5, ("a", "test"): 3,
                                                               ("b", "train"): 5, ("b", "test"): 3}
    train = {r["text"] for r in rows if r["split"] == "train"}
    test = {r["text"] for r in rows if r["split"] == "test"}
    assert not train & test
    assert rows == tasks.sample_balanced(list(reversed(recs)), ("label",), 5, 3, seed=7)  # input order is irrelevant
    assert rows != tasks.sample_balanced(recs, ("label",), 5, 3, seed=8)


def test_sample_balanced_keeps_own_split_and_names_small_stratum():
    recs = [{"text": f"t{i}", "label": "x", "split": "train" if i < 4 else "test"} for i in range(6)]
    rows = tasks.sample_balanced(recs, ("label",), 3, 2, seed=0)
    assert all(r["split"] == ("train" if int(r["text"][1:]) < 4 else "test") for r in rows)
    with pytest.raises(tasks.SourceError, match=r"\{'label': 'x'\} has 2 test records, need 3"):
        tasks.sample_balanced(recs, ("label",), 1, 3, seed=0)
    with pytest.raises(tasks.SourceError, match="'b'.*has 12 records, need 10 \\+ 3"):
        tasks.sample_balanced(_records(30, 12), ("label",), 10, 3)


def test_dedupe_drops_empty_and_repeated_texts():
    out = tasks.dedupe([{"text": "x"}, {"text": ""}, {"text": "x"}, {"text": "y"}])
    assert [r["text"] for r in out] == ["x", "y"]


# ---- offline sources -----------------------------------------------------------------------------
def test_bbc_counts_and_balanced_split():
    raw = tasks.read_bbc()
    assert Counter(r["label"] for r in raw) == {"business": 510, "entertainment": 386, "politics": 417,
                                                "sport": 511, "tech": 401}
    assert Counter(r["label"] for r in tasks.dedupe(raw)) == {"business": 503, "entertainment": 369,
                                                             "politics": 403, "sport": 505, "tech": 347}
    ds = tasks.load_source("bbc_news", n_train=7, n_test=3, seed=1)
    assert len(ds) == 50 and set(ds.column_names) == {"text", "split", "label"}
    counts = _counts(ds, "label", "split")
    assert all(counts[(t, "train")] == 7 and counts[(t, "test")] == 3 for t in tasks.BBC_TOPICS.values())
    assert ds["text"] == tasks.load_source("bbc_news", n_train=7, n_test=3, seed=1)["text"]


def test_rotten_tomatoes_labels():
    recs = tasks.read_rotten_tomatoes()
    assert Counter(r["sentiment"] for r in recs) == {"positive": 2455, "negative": 2411}
    assert {r["domain"] for r in recs} == {"movie"}


@pytest.mark.skipif(not HAS_MODELDATA, reason="Debian r-cran-modeldata not installed")
def test_fine_foods_from_r_lazyload_database():
    df = tasks._r_lazyload_object(tasks.modeldata_folder(), "testing_data")
    assert df.shape == (1000, 3) and list(df.columns) == ["product", "review", "score"]
    recs = tasks.read_fine_foods()
    assert len(recs) == 5000
    assert Counter(r["sentiment"] for r in recs) == {"positive": 3258, "negative": 1742}
    assert not any("<br" in r["text"] for r in recs)


@pytest.mark.skipif(not HAS_MODELDATA, reason="Debian r-cran-modeldata not installed")
def test_reviews_scr_quadrants_and_views():
    ds = tasks.load_source("reviews", n_train=6, n_test=4, seed=0)
    task = tasks.SCR_TASKS["reviews_domain_sentiment"]
    table = tasks.quadrant_counts(ds, task)
    assert table.loc["movie+positive", "train"] == 6 and table.loc["food+negative", "test"] == 4
    assert (table.values == np.array([[6, 4]] * 4)).all()
    rows, labels, splits = tasks.probing_view(ds, tasks.PROBING_TASKS["food_sentiment"])
    assert set(np.asarray(ds["domain"])[rows]) == {"food"}
    assert Counter(zip(labels, splits)) == {("positive", "train"): 6, ("negative", "train"): 6,
                                            ("positive", "test"): 4, ("negative", "test"): 4}


def test_missing_food_half_skips_food_tasks_with_one_line(monkeypatch):
    def no_food(limit=None):
        raise TaskUnavailable("fine-food reviews need the Debian package r-cran-modeldata")

    monkeypatch.setattr(tasks, "read_fine_foods", no_food)
    ds = tasks.load_source("reviews", n_train=3, n_test=2, seed=0)
    assert set(ds["domain"]) == {"movie"}
    rows, labels, _ = tasks.probing_view(ds, tasks.PROBING_TASKS["movie_sentiment"])
    assert len(rows) == 10 and set(labels) == {"positive", "negative"}
    for call in (lambda: tasks.probing_view(ds, tasks.PROBING_TASKS["food_sentiment"]),
                 lambda: tasks.scr_quadrants(ds, tasks.SCR_TASKS["reviews_domain_sentiment"])):
        with pytest.raises(TaskUnavailable) as info:
            call()
        assert "\n" not in str(info.value) and "skipped" in str(info.value)


def test_mmlu_subjects():
    recs = tasks.read_mmlu()
    assert Counter(r["label"] for r in recs) == {"high_school_psychology": 545, "high_school_macroeconomics": 390,
                                                "elementary_mathematics": 379, "prehistory": 324, "philosophy": 311}
    assert all(r["text"].count("\nA. ") == 1 and "\nD. " in r["text"] for r in recs)


def test_fortunes_missing_root_is_a_one_line_skip(tmp_path):
    with pytest.raises(TaskUnavailable) as info:
        tasks.read_fortunes(root=str(tmp_path))
    msg = str(info.value)
    assert "\n" not in msg and "apt-get install fortunes" in msg and "en, de, es, it, ru, pl" in msg


def test_fortunes_parsing_filters_art_and_short(tmp_path):
    long_en = "A fortune that is long enough to keep, with plenty of ordinary English words in it.\n\t-- Someone"
    for lang, sub in tasks.FORTUNE_LANGUAGES.items():
        folder = tmp_path / sub if sub else tmp_path
        folder.mkdir(exist_ok=True)
        (folder / "quotes").write_text(f"{long_en} [{lang}]\n%\ntoo short\n%\n{'#' * 90}\n%\n", encoding="utf-8")
        (folder / "art").write_text(f"{long_en} art\n%\n", encoding="utf-8")
        (folder / "quotes.dat").write_bytes(b"\0\1")
    recs = tasks.read_fortunes(root=str(tmp_path))
    assert Counter(r["label"] for r in recs) == {lang: 1 for lang in tasks.FORTUNE_LANGUAGES}
    assert all("\t" not in r["text"] and r["text"].startswith("A fortune") for r in recs)


@pytest.mark.skipif(not HAS_FORTUNES, reason="Debian fortunes-* packages not installed")
def test_fortunes_languages_have_enough_examples():
    ds = tasks.load_source("fortunes", n_train=200, n_test=50, seed=0)
    assert _counts(ds, "label", "split") == {(lang, s): n for lang in tasks.FORTUNE_LANGUAGES
                                             for s, n in (("train", 200), ("test", 50))}


def test_source_code_reader_on_a_small_tree(tmp_path, monkeypatch):
    body = "".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(40))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("# licence header " * 10 + body)
    (tmp_path / "pkg" / "copy.py").write_text("# licence header " * 10 + body)  # same content: kept once
    (tmp_path / "pkg" / "small.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "b.js").write_text("var x = 1;\n" * 80)
    (tmp_path / "pkg" / "c.min.js").write_text("var y=2;" * 100)
    monkeypatch.setattr(tasks, "CODE_LANGUAGES", (
        tasks.CodeLanguage("python", ("*.py",), (str(tmp_path),)),
        tasks.CodeLanguage("javascript", ("*.js",), (str(tmp_path),), ("*.min.js",)),
    ))
    recs = tasks.read_source_code()
    assert Counter(r["label"] for r in recs) == {"python": 1, "javascript": 1}
    py = next(r["text"] for r in recs if r["label"] == "python")
    full = ("# licence header " * 10 + body)
    assert py == full[tasks.CODE_SKIP_CHARS: tasks.CODE_SKIP_CHARS + tasks.CODE_KEEP_CHARS].strip()


@pytest.mark.slow
def test_source_code_environment_has_250_files_per_language():
    recs = tasks.read_source_code(250)
    assert Counter(r["label"] for r in recs) == {lang.label: 250 for lang in tasks.CODE_LANGUAGES}


def test_unknown_names_are_clear_errors():
    with pytest.raises(KeyError, match="unknown task source 'nope'"):
        tasks.load_source("nope", n_train=1, n_test=1)
    with pytest.raises(KeyError, match="unknown probing task"):
        tasks.get_probing_task("nope")


# ---- hub loaders on local fixtures ------------------------------------------------------------------
@pytest.mark.parametrize("source, classes, strata", [
    ("bias_in_bios_set1", {"0", "1", "2", "6", "9"}, ("label", "gender")),
    ("bias_in_bios_set3", {"20", "21", "22", "25", "26"}, ("label", "gender")),
    ("amazon_category", {"1", "2", "3", "5", "6"}, ("label", "rating")),
    ("amazon_sentiment", {"1.0", "5.0"}, ("label",)),
    ("github_code", {"C", "Python", "HTML", "Java", "PHP"}, ("label",)),
    ("ag_news", {"0", "1", "2", "3"}, ("label",)),
    ("europarl", {"en", "fr", "de", "es", "nl"}, ("label",)),
])
def test_hub_sources_from_local_copies(source, classes, strata):
    ds = tasks.load_source(source, n_train=2, n_test=1, seed=0, data_dir=hub_tasks.local_dir(source, FIXTURES))
    counts = _counts(ds, *strata, "split")
    assert {k[0] for k in counts} == classes
    n_strata = len({k[:-1] for k in counts})
    assert n_strata == len(classes) * (2 if len(strata) == 2 else 1)
    assert all(v == (2 if k[-1] == "train" else 1) for k, v in counts.items())
    if source == "github_code":
        assert all(len(t) > tasks.CODE_MIN_CHARS - tasks.CODE_SKIP_CHARS for t in ds["text"])


def test_hub_splits_come_from_the_hub_split():
    ds = tasks.load_source("ag_news", n_train=2, n_test=2, seed=3, data_dir=hub_tasks.local_dir("ag_news", FIXTURES))
    assert all((" (train " in t) == (s == "train") for t, s in zip(ds["text"], ds["split"]))


def test_hub_scr_source_quadrant_sizes():
    task = hub_tasks.HUB_SCR_TASKS["bias_in_bios_scr_professor_nurse"]
    ds = hub_tasks.load_scr_source(task, q_train=1, q_test=1, seed=0,
                                   data_dir=hub_tasks.local_dir("bias_in_bios_scr", FIXTURES))
    quads = tasks.scr_quadrants(ds, task)
    assert {s: {q: len(v) for q, v in d.items()} for s, d in quads.items()} == {
        "train": {"pp": 2, "pn": 1, "np": 1, "nn": 2}, "test": {"pp": 2, "pn": 1, "np": 1, "nn": 2}}
    assert set(np.asarray(ds["label"])) == {"21", "13"}  # professor, nurse


def test_hub_offline_raises_hub_unavailable():
    with pytest.raises(HubUnavailableError, match="fancyzhx/ag_news"):
        tasks.load_source("ag_news", n_train=1, n_test=1)


def test_news_exam_source_crosses_genre_and_topic():
    recs = tasks.read_news_exam()
    counts = Counter((r["genre"], r["topic"]) for r in recs)
    # BBC business 510 / sport 511 files before de-duplication; MMLU macroeconomics 390, prehistory 324
    assert counts[("exam", "economy")] == 390 and counts[("exam", "other")] == 324
    assert 500 <= counts[("news", "economy")] <= 510 and 500 <= counts[("news", "other")] <= 511
    ds = tasks.load_source("news_exam", n_train=5, n_test=3, seed=0)
    table = tasks.quadrant_counts(ds, tasks.SCR_TASKS["news_exam_genre_topic"])
    assert (table.values == np.array([[5, 3]] * 4)).all()
    quads = tasks.scr_quadrants(ds, tasks.SCR_TASKS["news_exam_genre_topic"])
    news_econ = set(np.asarray(ds["text"])[quads["train"]["pp"]])
    bbc_business = {r["text"] for r in tasks.read_bbc() if r["label"] == "business"}
    assert news_econ <= bbc_business
