"""Paper-profile labelled datasets: the SAEBench hub sets for sparse probing, SCR and TPP.

The loading code is the real one (``datasets.load_dataset`` on the hub ids SAEBench uses); offline
it fails fast with :class:`~saelib.models.HubUnavailableError`. Task types come from
:mod:`saelib.data.task_types`; the registries here are merged with the offline ones in
:mod:`saelib.data.tasks` (which imports this module, never the other way). Every loader also takes
``data_dir``: a local copy with the same records (``train.jsonl``/``test.jsonl``, or one
``<config>.jsonl`` per europarl language pair) goes through the same code path — the tests use
small fixtures in ``tests/fixtures/hub/``.

Sources and what SAEBench takes from them (context 128, train 4000 / test 1000 per binary task):

- ``bias_in_bios_set1/2/3`` (``LabHC/bias_in_bios``: ``hard_text``, ``profession`` 0-27,
  ``gender`` 0 male / 1 female): classes {0,1,2,6,9}, {11,13,14,18,19}, {20,21,22,25,26}, each
  class balanced by gender (strata = profession × gender).
- ``amazon_category`` (``canrager/amazon_reviews_mcauley_1and5``: ``text``, ``category``,
  ``rating`` 1.0/5.0): categories {1,2,3,5,6}, balanced by rating.
- ``amazon_sentiment``: the same reviews, label = rating (1.0 / 5.0).
- ``github_code`` (``codeparrot/github-code``, streamed): C, Python, HTML, Java, PHP; files longer
  than 534 characters, first 150 characters skipped.
- ``ag_news`` (``fancyzhx/ag_news``): the four topics 0-3.
- ``europarl`` (``Helsinki-NLP/europarl``, streamed language pairs): en, fr, de, es, nl.
- SCR: ``bias_in_bios_scr`` (profession × gender; pairs professor/nurse, architect/journalist,
  surgeon/psychologist, attorney/teacher) and ``amazon_scr`` (category × rating; pairs
  Books/CDs_and_Vinyl, Software/Electronics, Pet_Supplies/Office_Products,
  Industrial_and_Scientific/Toys_and_Games).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..models import HubUnavailableError
from .task_types import (
    CODE_MIN_CHARS,
    CODE_SKIP_CHARS,
    ProbingTask,
    ScrTask,
    SourceError,
    SourceSpec,
    dedupe,
    sample_balanced,
)

BIAS_IN_BIOS_ID = "LabHC/bias_in_bios"
AMAZON_ID = "canrager/amazon_reviews_mcauley_1and5"
GITHUB_CODE_ID = "codeparrot/github-code"
AG_NEWS_ID = "fancyzhx/ag_news"
EUROPARL_ID = "Helsinki-NLP/europarl"

PROFESSIONS = {
    "accountant": 0, "architect": 1, "attorney": 2, "chiropractor": 3, "comedian": 4, "composer": 5,
    "dentist": 6, "dietitian": 7, "dj": 8, "filmmaker": 9, "interior_designer": 10, "journalist": 11,
    "model": 12, "nurse": 13, "painter": 14, "paralegal": 15, "pastor": 16, "personal_trainer": 17,
    "photographer": 18, "physician": 19, "poet": 20, "professor": 21, "psychologist": 22, "rapper": 23,
    "software_engineer": 24, "surgeon": 25, "teacher": 26, "yoga_teacher": 27,
}
"""Bias in Bios profession name → id."""
GENDERS = {"male": 0, "female": 1}
"""Bias in Bios gender name → id."""
AMAZON_CATEGORIES = {
    "All_Beauty": 0, "Toys_and_Games": 1, "Cell_Phones_and_Accessories": 2, "Industrial_and_Scientific": 3,
    "Gift_Cards": 4, "Musical_Instruments": 5, "Electronics": 6, "Handmade_Products": 7,
    "Arts_Crafts_and_Sewing": 8, "Baby_Products": 9, "Health_and_Household": 10, "Office_Products": 11,
    "Digital_Music": 12, "Grocery_and_Gourmet_Food": 13, "Sports_and_Outdoors": 14, "Home_and_Kitchen": 15,
    "Subscription_Boxes": 16, "Tools_and_Home_Improvement": 17, "Pet_Supplies": 18, "Video_Games": 19,
    "Kindle_Store": 20, "Clothing_Shoes_and_Jewelry": 21, "Patio_Lawn_and_Garden": 22, "Unknown": 23,
    "Books": 24, "Automotive": 25, "CDs_and_Vinyl": 26, "Beauty_and_Personal_Care": 27, "Amazon_Fashion": 28,
    "Magazine_Subscriptions": 29, "Software": 30, "Health_and_Personal_Care": 31, "Appliances": 32,
    "Movies_and_TV": 33,
}
"""Amazon category name → id."""

BIOS_CLASS_SETS = {1: ("0", "1", "2", "6", "9"), 2: ("11", "13", "14", "18", "19"), 3: ("20", "21", "22", "25", "26")}
"""SAEBench's three Bias in Bios class sets (profession ids)."""
AMAZON_CLASSES = ("1", "2", "3", "5", "6")
"""SAEBench's Amazon categories for probing and TPP."""
GITHUB_LANGUAGES = ("C", "Python", "HTML", "Java", "PHP")
"""SAEBench's github-code languages."""
AG_NEWS_CLASSES = ("0", "1", "2", "3")
"""AG News topics (World, Sports, Business, Sci/Tech)."""
EUROPARL_LANGUAGES = ("en", "fr", "de", "es", "nl")
"""SAEBench's Europarl languages."""
EUROPARL_PAIRS = {"en": "en-fr", "fr": "fr-it", "de": "de-en", "es": "es-fr", "nl": "nl-pt"}
"""Language → the europarl config SAEBench reads it from."""

BIOS_SCR_PAIRS = (("professor", "nurse"), ("architect", "journalist"), ("surgeon", "psychologist"), ("attorney", "teacher"))
"""SAEBench's SCR profession pairs (A = profession, B = gender male/female)."""
AMAZON_SCR_PAIRS = (("Books", "CDs_and_Vinyl"), ("Software", "Electronics"), ("Pet_Supplies", "Office_Products"),
                    ("Industrial_and_Scientific", "Toys_and_Games"))
"""SAEBench's SCR category pairs (A = category, B = rating 1.0/5.0)."""


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence ``datasets`` progress bars inside the block."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _unavailable(hub_id: str, exc: BaseException) -> HubUnavailableError:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return HubUnavailableError(
        f"could not load {hub_id} from the Hugging Face hub ({exc.__class__.__name__}: {first}); the paper "
        "profile needs hub access (or data_dir= a local copy); the offline default uses saelib.data.tasks")


def load_split_records(hub_id: str, *, data_dir: str | Path | None = None, config: str | None = None) -> Iterator[tuple[str, dict]]:
    """``(split, record)`` of every train and test record of a hub dataset (or its local copy)."""
    import datasets

    if data_dir is not None:
        files = {s: str(Path(data_dir) / f"{s}.jsonl") for s in ("train", "test")}
        missing = [f for f in files.values() if not Path(f).exists()]
        if missing:
            raise FileNotFoundError(f"local copy of {hub_id} lacks {missing}")
        with _quiet():
            dsd = datasets.load_dataset("json", data_files=files)
    else:
        try:
            with _quiet():
                dsd = datasets.load_dataset(hub_id, config) if config else datasets.load_dataset(hub_id)
        except (ConnectionError, OSError, ValueError) as exc:
            raise _unavailable(hub_id, exc) from exc
    for split in ("train", "test"):
        if split not in dsd:
            raise SourceError(f"{hub_id} has no {split!r} split (splits: {list(dsd)})")
        for record in dsd[split]:
            yield split, record


def stream_records(hub_id: str, *, data_dir: str | Path | None = None, config: str | None = None,
                   file: str = "train", **kwargs: Any) -> Iterator[dict]:
    """Records of the streamed ``train`` split of a hub dataset (or ``data_dir/<file>.jsonl``)."""
    import datasets

    if data_dir is not None:
        path = Path(data_dir) / f"{file}.jsonl"
        if not path.exists():
            raise FileNotFoundError(f"local copy of {hub_id} lacks {path}")
        stream = datasets.load_dataset("json", data_files=str(path), split="train", streaming=True)
    else:
        try:
            stream = datasets.load_dataset(hub_id, config, split="train", streaming=True, **kwargs)
        except (ConnectionError, OSError, ValueError) as exc:
            raise _unavailable(hub_id, exc) from exc
    iterator = iter(stream)
    while True:
        try:
            yield next(iterator)
        except StopIteration:
            return
        except (ConnectionError, OSError) as exc:
            raise _unavailable(hub_id, exc) from exc


def read_bias_in_bios(limit: int | None = None, *, professions: tuple[str, ...], data_dir=None) -> list[dict]:
    """Bios of the given profession ids: ``label`` = profession id, ``gender`` = 0/1, hub split kept."""
    wanted = set(professions)
    out = []
    for split, rec in load_split_records(BIAS_IN_BIOS_ID, data_dir=data_dir):
        prof = str(int(rec["profession"]))
        if prof in wanted:
            out.append({"text": rec["hard_text"], "label": prof, "gender": str(int(rec["gender"])), "split": split})
    return out


def _rating(value) -> str:
    return f"{float(value):.1f}"


def read_amazon(limit: int | None = None, *, categories: tuple[str, ...] | None, data_dir=None) -> list[dict]:
    """Amazon reviews (ratings 1 and 5): ``label`` = category id, ``rating`` = "1.0"/"5.0"."""
    wanted = None if categories is None else set(categories)
    out = []
    for split, rec in load_split_records(AMAZON_ID, data_dir=data_dir):
        cat = str(int(rec["category"]))
        if wanted is None or cat in wanted:
            out.append({"text": rec["text"], "label": cat, "rating": _rating(rec["rating"]), "split": split})
    return out


def read_amazon_sentiment(limit: int | None = None, *, data_dir=None) -> list[dict]:
    """Amazon reviews labelled by rating (``label`` = "1.0"/"5.0")."""
    return [{"text": r["text"], "label": r["rating"], "split": r["split"]}
            for r in read_amazon(limit, categories=None, data_dir=data_dir)]


def read_github_code(limit: int | None = None, *, data_dir=None) -> list[dict]:
    """Code files of the five languages, first 150 characters skipped; ``limit`` per language."""
    counts = {lang: 0 for lang in GITHUB_LANGUAGES}
    out = []
    for rec in stream_records(GITHUB_CODE_ID, data_dir=data_dir, languages=list(GITHUB_LANGUAGES)):
        lang = rec.get("language")
        code = rec.get("code") or ""
        if lang not in counts or len(code) <= CODE_MIN_CHARS:
            continue
        if limit is not None and counts[lang] >= limit:
            if all(c >= limit for c in counts.values()):
                break
            continue
        out.append({"text": code[CODE_SKIP_CHARS:], "label": lang})
        counts[lang] += 1
    return out


def read_ag_news(limit: int | None = None, *, data_dir=None) -> list[dict]:
    """AG News headlines + descriptions labelled 0-3, hub split kept."""
    return [{"text": rec["text"], "label": str(int(rec["label"])), "split": split}
            for split, rec in load_split_records(AG_NEWS_ID, data_dir=data_dir)]


def read_europarl(limit: int | None = None, *, data_dir=None) -> list[dict]:
    """Europarl sentences labelled with their language; ``limit`` per language (first ones)."""
    out = []
    for lang in EUROPARL_LANGUAGES:
        pair = EUROPARL_PAIRS[lang]
        n = 0
        for rec in stream_records(EUROPARL_ID, data_dir=data_dir, config=pair, file=pair):
            text = rec["translation"][lang]
            if text and text.strip():
                out.append({"text": text, "label": lang})
                n += 1
            if limit is not None and n >= limit:
                break
    return out


def _bios_scr_professions() -> tuple[str, ...]:
    return tuple(sorted({str(PROFESSIONS[p]) for pair in BIOS_SCR_PAIRS for p in pair}, key=int))


def _amazon_scr_categories() -> tuple[str, ...]:
    return tuple(sorted({str(AMAZON_CATEGORIES[c]) for pair in AMAZON_SCR_PAIRS for c in pair}, key=int))


HUB_SOURCES: dict[str, SourceSpec] = {
    **{f"bias_in_bios_set{i}": SourceSpec(
        f"bias_in_bios_set{i}",
        (lambda limit=None, data_dir=None, _c=classes: read_bias_in_bios(limit, professions=_c, data_dir=data_dir)),
        ("label", "gender"), f"Bias in Bios professions {', '.join(classes)} (balanced by gender)", "MIT (LabHC)")
       for i, classes in BIOS_CLASS_SETS.items()},
    "amazon_category": SourceSpec(
        "amazon_category", lambda limit=None, data_dir=None: read_amazon(limit, categories=AMAZON_CLASSES, data_dir=data_dir),
        ("label", "rating"), "Amazon reviews (McAuley) categories 1,2,3,5,6 balanced by rating", "research use"),
    "amazon_sentiment": SourceSpec(
        "amazon_sentiment", read_amazon_sentiment, ("label",), "Amazon reviews rated 1 vs 5", "research use"),
    "github_code": SourceSpec(
        "github_code", read_github_code, ("label",), "GitHub code in C, Python, HTML, Java, PHP", "per-repository licences"),
    "ag_news": SourceSpec("ag_news", read_ag_news, ("label",), "AG News, 4 topics", "non-commercial research use"),
    "europarl": SourceSpec("europarl", read_europarl, ("label",), "Europarl sentences in en, fr, de, es, nl", "public domain (EU)"),
    "bias_in_bios_scr": SourceSpec(
        "bias_in_bios_scr",
        lambda limit=None, data_dir=None: read_bias_in_bios(limit, professions=_bios_scr_professions(), data_dir=data_dir),
        ("label", "gender"), "Bias in Bios professions of the SCR pairs × gender", "MIT (LabHC)"),
    "amazon_scr": SourceSpec(
        "amazon_scr", lambda limit=None, data_dir=None: read_amazon(limit, categories=_amazon_scr_categories(), data_dir=data_dir),
        ("label", "rating"), "Amazon categories of the SCR pairs × rating", "research use"),
}
"""Paper-profile sources by name (same interface as ``saelib.data.tasks.SOURCES``)."""

HUB_LOCAL_NAMES: dict[str, str] = {
    "bias_in_bios_set1": "bias_in_bios", "bias_in_bios_set2": "bias_in_bios", "bias_in_bios_set3": "bias_in_bios",
    "bias_in_bios_scr": "bias_in_bios", "amazon_category": "amazon_reviews", "amazon_sentiment": "amazon_reviews",
    "amazon_scr": "amazon_reviews", "github_code": "github_code", "ag_news": "ag_news", "europarl": "europarl",
}
"""Source → folder of its local copy under a ``data_dir`` root (one folder per hub dataset)."""


def local_dir(source: str, root: str | Path | None) -> str | None:
    """``<root>/<dataset folder>`` of a hub source, or None when ``root`` is None."""
    if root is None:
        return None
    if source not in HUB_LOCAL_NAMES:
        raise KeyError(f"{source!r} is not a hub source; hub sources: {', '.join(sorted(HUB_LOCAL_NAMES))}")
    return str(Path(root) / HUB_LOCAL_NAMES[source])


HUB_PROBING_TASKS: dict[str, ProbingTask] = {
    "bias_in_bios_set1": ProbingTask("bias_in_bios_set1", "bias_in_bios_set1"),
    "bias_in_bios_set2": ProbingTask("bias_in_bios_set2", "bias_in_bios_set2"),
    "bias_in_bios_set3": ProbingTask("bias_in_bios_set3", "bias_in_bios_set3"),
    "amazon_category": ProbingTask("amazon_category", "amazon_category"),
    "amazon_sentiment": ProbingTask("amazon_sentiment", "amazon_sentiment"),
    "github_code": ProbingTask("github_code", "github_code"),
    "ag_news": ProbingTask("ag_news", "ag_news"),
    "europarl": ProbingTask("europarl", "europarl"),
}
"""SAEBench's eight sparse-probing datasets."""

HUB_SCR_TASKS: dict[str, ScrTask] = {
    **{f"bias_in_bios_scr_{a}_{b}": ScrTask(f"bias_in_bios_scr_{a}_{b}", "bias_in_bios_scr",
                                            "label", str(PROFESSIONS[a]), str(PROFESSIONS[b]), "gender", "0", "1")
       for a, b in BIOS_SCR_PAIRS},
    **{f"amazon_scr_{a}_{b}": ScrTask(f"amazon_scr_{a}_{b}", "amazon_scr",
                                      "label", str(AMAZON_CATEGORIES[a]), str(AMAZON_CATEGORIES[b]), "rating", "1.0", "5.0")
       for a, b in AMAZON_SCR_PAIRS},
}
"""SAEBench's SCR pairs. B's positive value pairs with A's positive one in the biased set, as in
SAEBench (male professors vs female nurses; rating 1.0 with the first category)."""

HUB_TPP_TASKS: dict[str, ProbingTask] = {
    "bias_in_bios_set1": HUB_PROBING_TASKS["bias_in_bios_set1"],
    "amazon_category": HUB_PROBING_TASKS["amazon_category"],
}
"""SAEBench's TPP datasets."""


def load_scr_source(task: ScrTask, *, q_train: int, q_test: int, seed: int = 0, data_dir=None):
    """Rows of ``task``'s source for SCR: per split 2q of (a+, b+) and (a−, b−), q of the mixed
    quadrants (SAEBench's sizes, q = set size // 4), as a ``datasets.Dataset``."""
    import datasets

    if task.source not in HUB_SOURCES:
        raise KeyError(f"{task.name}: {task.source!r} is not a hub source; hub sources: {', '.join(sorted(HUB_SOURCES))}")
    spec = HUB_SOURCES[task.source]
    records = dedupe(spec.read(None, data_dir=data_dir))
    a_col = "label" if task.column_a == "label" else task.column_a
    quad = {}
    for rec in records:
        a, b = rec.get(a_col), rec.get(task.column_b)
        qa = "p" if a == task.a_pos else "n" if a == task.a_neg else None
        qb = "p" if b == task.b_pos else "n" if b == task.b_neg else None
        if qa and qb:
            quad.setdefault(qa + qb, []).append(rec)
    rows = []
    for q, recs in sorted(quad.items()):
        scale = 2 if q in ("pp", "nn") else 1
        rows += sample_balanced(recs, (), scale * q_train, scale * q_test, seed=seed, name=f"{task.name}:{q}")
    missing = {"pp", "pn", "np", "nn"} - set(quad)
    if missing:
        raise SourceError(f"{task.name}: no records in quadrant(s) {sorted(missing)}")
    columns = sorted({k for r in rows for k in r})
    return datasets.Dataset.from_dict({c: [str(r.get(c, "")) for r in rows] for c in columns})


__all__ = [
    "HUB_SOURCES", "HUB_LOCAL_NAMES", "local_dir", "HUB_PROBING_TASKS", "HUB_SCR_TASKS", "HUB_TPP_TASKS", "HubUnavailableError",
    "load_split_records", "stream_records", "load_scr_source", "read_bias_in_bios", "read_amazon",
    "read_amazon_sentiment", "read_github_code", "read_ag_news", "read_europarl", "PROFESSIONS",
    "AMAZON_CATEGORIES", "BIOS_CLASS_SETS", "BIOS_SCR_PAIRS", "AMAZON_SCR_PAIRS",
]
