"""First-letter absorption: vocabulary/prompts, probes, k-sparse split features and the scores,
checked on synthetic SAEs whose absorption is known by construction."""
import math
import re

import numpy as np
import pytest
import torch

from saelib.evals import absorption as ab

LET = ab.LETTERS


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny problems: see conftest.py


# ----------------------------------------------------------------------------------------------
# a tiny word-level tokenizer (pieces: "\n", " word", ":"), enough for the prompt builder
# ----------------------------------------------------------------------------------------------
class FakeTokenizer:
    bos_token_id = 1

    def __init__(self, words):
        pieces = ["\n", ":", "\u2581has", "\u2581the", "\u2581first", "\u2581letter"] + [f"\u2581{c.upper()}" for c in LET]
        pieces += [f"\u2581{w}" for w in words]
        self.vocab = {"<bos>": 1}
        for p in pieces:
            self.vocab.setdefault(p, len(self.vocab) + 1)
        self.inv = {i: p for p, i in self.vocab.items()}

    def get_vocab(self):
        return dict(self.vocab)

    def __call__(self, text, add_special_tokens=True):
        parts = re.findall(r"\n|:| [A-Za-z]+", text)
        assert "".join(parts) == text, text
        ids = [self.vocab[p.replace(" ", "\u2581")] for p in parts]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}

    def decode(self, ids):
        return "".join(self.inv[i].replace("\u2581", " ") for i in ids if i != 1)


WORDS = ["cat", "Cat", "dog", "fish", "apple", "ant", "bee", "zebra", "yak", "owl", "Owl", "emu", "gnu", "hen", "ibis",
         "jay", "kiwi", "lark", "mole", "newt", "pig", "quail", "rat", "seal", "toad", "urchin", "vole", "wasp", "xerus"]


def test_build_vocab_filters_like_saebench_and_splits_deterministically():
    vocab = {f"\u2581{w}": i + 10 for i, w in enumerate(WORDS)}
    vocab.update({"\u2581a": 3, "cat": 4, "\u2581cat2": 5, "\u2581caf\u00e9": 6, "\u2581x": 7, "<bos>": 1, "\u2581": 8})
    cfg = ab.AbsorptionConfig(seed=3)
    df = ab.build_vocab(vocab, cfg)
    # letters only, leading space optional, one letter is enough; digits, accents, bare marker dropped
    assert sorted(df["text"]) == sorted([f" {w}" for w in WORDS] + [" a", "cat", " x"])
    assert (df["word"] == df["text"].str.strip()).all()
    assert list(df["token_id"]) == sorted(df["token_id"])
    assert (df["letter"] == df["word"].str[0].str.lower()).all()
    assert (df["letter_idx"] == df["letter"].map(LET.index)).all()
    assert (df["split"] == "train").sum() == int(0.8 * len(df))  # SAEBench: int(n * 0.8) entries train
    again = ab.build_vocab(vocab, cfg)
    assert again.equals(df)
    other = ab.build_vocab(vocab, ab.AbsorptionConfig(seed=4))
    assert not other["split"].equals(df["split"])
    sub = ab.build_vocab(vocab, ab.AbsorptionConfig(seed=3, max_words=10))
    assert len(sub) == 10 and set(sub["text"]) <= set(df["text"])
    # this repo's first filter and split, as named alternatives
    strict = ab.build_vocab(vocab, ab.AbsorptionConfig(seed=3, min_word_letters=2, require_leading_space=True,
                                                       group_case_variants=True))
    assert sorted(strict["word"]) == sorted(WORDS)
    by_word = strict.groupby(strict["word"].str.lower())["split"].nunique()
    assert (by_word == 1).all()
    assert strict[strict["split"] == "train"]["word"].str.lower().nunique() == int(0.8 * len(by_word))


def test_build_vocab_maps_byte_fallback_entries_to_the_plain_token():
    vocab = {"\u2581cat": 10, "\u2581dog": 11, "\u2581emu": 12, "A": 13, "<0x41>": 14, "\u2581owl": 15}

    class Tok:
        def get_vocab(self):
            return dict(vocab)

        def convert_tokens_to_string(self, tokens):
            t = tokens[0]
            return "A" if t == "<0x41>" else t.replace("\u2581", " ")

    df = ab.build_vocab(Tok(), ab.AbsorptionConfig())
    assert sorted(df["text"]) == sorted([" cat", " dog", " emu", "A", "A", " owl"])  # SAEBench keeps both "A"s
    assert df.loc[df["token"] == "<0x41>", "token_id"].item() == 13  # the id tokenizing "A" gives


def test_build_vocab_rejects_wrong_space_marker():
    vocab = {f"\u0120{w}": i for i, w in enumerate(WORDS)}  # GPT-2 style marker
    with pytest.raises(ValueError, match="space_marker"):
        ab.build_vocab(vocab, ab.AbsorptionConfig())
    df = ab.build_vocab(vocab, ab.AbsorptionConfig(space_marker="\u0120"))
    assert len(df) == len(WORDS)


@pytest.mark.parametrize("n_shot", [0, 2, 3])
def test_build_prompts_layout_and_query_position(n_shot):
    tok = FakeTokenizer(WORDS)
    cfg = ab.AbsorptionConfig(n_shot=n_shot, seed=1)
    vocab = ab.build_vocab(tok, cfg)
    for split in ("train", "test"):
        ps = ab.build_prompts(vocab, tok, cfg, split)
        rows = np.flatnonzero(vocab["split"] == split)
        assert len(ps) == len(rows)
        split_words = set(vocab["word"].to_numpy()[rows])
        for i in range(len(ps)):
            word = vocab["word"].iloc[ps.rows_N[i]]
            assert vocab["text"].iloc[ps.rows_N[i]] == f" {word}"
            text = ps.text(tok, i)
            lines = text.split("\n")
            assert lines[0] == "" and len(lines) == n_shot + 2
            assert lines[-1] == f" {word} has the first letter:"
            examples = [re.fullmatch(r" ([A-Za-z]+) has the first letter: ([A-Z])", l) for l in lines[1:-1]]
            assert all(m is not None for m in examples)
            ex_words = [m.group(1) for m in examples]
            assert word not in ex_words and len(set(ex_words)) == n_shot and set(ex_words) <= split_words
            assert all(m.group(2) == m.group(1)[0].upper() for m in examples)
            # the query token sits at query_pos; the answer id is the upper-case letter token
            assert ps.tokens_NS[i, ps.query_pos] == tok.vocab[f"\u2581{word}"]
            assert ps.answer_ids_N[i] == tok.vocab[f"\u2581{word[0].upper()}"]
            assert ps.letter_idx_N[i] == LET.index(word[0].lower())
            assert tok(text)["input_ids"] == ps.tokens_NS[i].tolist()
        assert ps.query_pos == ps.tokens_NS.shape[1] - 6  # " has the first letter :" follows the word
    same = ab.build_prompts(vocab, tok, cfg, "train")
    assert torch.equal(same.tokens_NS, ab.build_prompts(vocab, tok, cfg, "train").tokens_NS)
    if n_shot:
        fresh = ab.build_prompts(vocab, tok, cfg, "train", variant=1)
        assert torch.equal(fresh.tokens_NS[:, fresh.query_pos], same.tokens_NS[:, same.query_pos])
        assert not torch.equal(fresh.tokens_NS, same.tokens_NS)
        # absorption prompts: examples from the whole vocabulary (SAEBench's calculator)
        wide = ab.build_prompts(vocab, tok, cfg, "test", pool="all")
        test_ids = set(vocab.loc[vocab["split"] == "test", "token_id"])
        block = wide.tokens_NS.shape[1] - wide.query_pos + 2  # sep, word, " has the first letter:", answer
        ex_cols = [wide.query_pos - (n_shot - j) * block for j in range(n_shot)]
        assert all(wide.tokens_NS[:, c - 1].eq(tok.vocab["\n"]).all() for c in ex_cols)
        ex_ids = set(wide.tokens_NS[:, ex_cols].flatten().tolist())
        assert ex_ids <= set(vocab["token_id"]) and not ex_ids <= test_ids
        # the Jan 2025 layout: no separator before the first line
        legacy = ab.build_prompts(vocab, tok, ab.AbsorptionConfig(n_shot=n_shot, seed=1, prepend_separator=False), "train")
        assert legacy.tokens_NS.shape[1] == same.tokens_NS.shape[1] - 1
        assert not legacy.text(tok, 0).startswith("\n") and legacy.text(tok, 0) == same.text(tok, 0)[1:]


def test_check_prompt_tokenization_flags_templates_that_do_not_round_trip():
    tok = FakeTokenizer(WORDS)
    cfg = ab.AbsorptionConfig(seed=1)
    ps = ab.build_prompts(ab.build_vocab(tok, cfg), tok, cfg, "train")
    assert ab.check_prompt_tokenization(ps, tok) == 0.0

    class MergingTokenizer(FakeTokenizer):  # tokenizes ": " + letter as one unknown piece
        def __call__(self, text, add_special_tokens=True):
            out = super().__call__(text, add_special_tokens)
            return {"input_ids": [i for i in out["input_ids"] if i != self.vocab[":"]]}

    with pytest.raises(ValueError, match="piece by piece"):
        ab.check_prompt_tokenization(ps, MergingTokenizer(WORDS))


def test_build_prompts_needs_enough_words():
    tok = FakeTokenizer(WORDS)
    vocab = ab.build_vocab(tok, ab.AbsorptionConfig(seed=1))
    with pytest.raises(ValueError, match="in-context examples"):
        ab.build_prompts(vocab, tok, ab.AbsorptionConfig(n_shot=40, seed=1), "test")


def test_config_from_params_rejects_unknown_keys():
    assert ab.AbsorptionConfig.from_params({"n_shot": 6}).n_shot == 6
    with pytest.raises(ValueError, match="unknown absorption settings"):
        ab.AbsorptionConfig.from_params({"nshot": 6})
    with pytest.raises(ValueError, match="n_shot"):
        ab.AbsorptionConfig(n_shot=-1)


# ----------------------------------------------------------------------------------------------
# small pure pieces against references
# ----------------------------------------------------------------------------------------------
def test_f1_scores_match_sklearn():
    from sklearn.metrics import f1_score, precision_score, recall_score

    g = torch.Generator().manual_seed(0)
    pred = torch.rand(200, 5, generator=g) > 0.6
    true = torch.rand(200, 5, generator=g) > 0.7
    f1, p, r = ab.f1_scores(pred, true)
    for j in range(5):
        assert f1[j].item() == pytest.approx(f1_score(true[:, j], pred[:, j]))
        assert p[j].item() == pytest.approx(precision_score(true[:, j], pred[:, j]))
        assert r[j].item() == pytest.approx(recall_score(true[:, j], pred[:, j]))
    zero = ab.f1_scores(torch.zeros(4, 1, dtype=torch.bool), torch.zeros(4, 1, dtype=torch.bool))
    assert [t.item() for t in zero] == [0.0, 0.0, 0.0]


def test_choose_k_follows_the_f1_jump_rule():
    assert ab.choose_k([0.5, 0.6, 0.61, 0.9], 0.03) == 2  # stops at the first small gain
    assert ab.choose_k([0.9, 0.91, 0.99], 0.03) == 1
    assert ab.choose_k([0.2, 0.3, 0.4, 0.5], 0.03) == 4
    assert ab.choose_k([0.0, 0.0], 0.03) == 1  # k = 1 is always taken


def test_fit_logistic_batched_matches_sklearn_balanced():
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(1)
    L, N, K = 3, 300, 4
    X = torch.randn(L, N, K, generator=g)
    true_w = torch.randn(L, K, generator=g)
    Y = (torch.einsum("lnk,lk->ln", X, true_w) + 0.8 * torch.randn(L, N, generator=g) > 0.7).long()
    W, b = ab.fit_logistic_batched(X, Y, C=1.0, max_iter=200)
    for l in range(L):
        sk = LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000, tol=1e-10).fit(X[l].numpy(), Y[l].numpy())
        np.testing.assert_allclose(W[l].numpy(), sk.coef_[0], atol=2e-3)
        assert b[l].item() == pytest.approx(sk.intercept_[0], abs=2e-3)


def _naive_word(f_F, x_D, W_dec, probe, main, cfg):
    """Per-word absorption straight from the spec's wording (python loops)."""
    p = probe / probe.norm()
    cos = [float(torch.dot(W_dec[i], p) / W_dec[i].norm()) for i in range(W_dec.shape[0])]
    proj = [float(f_F[i]) * float(torch.dot(W_dec[i], p)) for i in range(W_dec.shape[0])]
    act = float(torch.dot(x_D, p))
    main_proj = sum(proj[i] for i in main)
    others = sorted((proj[i] for i in range(len(proj)) if i not in main and cos[i] >= cfg.absorption_fraction_cos_threshold
                     and proj[i] > 0), reverse=True)
    top_sum = sum(others[: cfg.max_absorbing_latents])
    if act <= 0 or main_proj >= act or top_sum / act < cfg.projection_proportion_threshold:
        frac = 0.0
    elif main_proj <= 0:
        frac = 1.0
    else:
        a = min(top_sum, act - main_proj)
        frac = min(1.0, max(0.0, a / (a + main_proj)))
    top = max(range(len(proj)), key=lambda i: proj[i])
    full = (all(abs(float(f_F[i])) < ab.EPS for i in main) and cos[top] >= cfg.full_absorption_cos_threshold
            and act > 0 and proj[top] / act >= cfg.projection_proportion_threshold)
    return frac, full


def test_word_absorption_matches_naive_reference_on_all_branches():
    g = torch.Generator().manual_seed(5)
    F, D, C = 40, 16, 400
    W_dec = torch.randn(F, D, generator=g)
    probe = torch.randn(D, generator=g)
    p = probe / probe.norm()
    # make a few latents strongly aligned with the probe so that absorption happens often
    W_dec[:6] = p + 0.3 * torch.randn(6, D, generator=g)
    f = torch.relu(torch.randn(C, F, generator=g)) * (torch.rand(C, F, generator=g) < 0.15)
    main = [0, 1]
    f[: C // 2, :2] = 0.0  # half the words: split features off
    x = f @ W_dec + 0.5 * torch.randn(C, D, generator=g)
    cfg = ab.AbsorptionConfig()
    got = ab.word_absorption(f, x, W_dec, probe, main, cfg)
    ref = [_naive_word(f[c], x[c], W_dec, probe, main, cfg) for c in range(C)]
    frac_ref = torch.tensor([r[0] for r in ref])
    full_ref = torch.tensor([r[1] for r in ref])
    torch.testing.assert_close(got["absorption_fraction"], frac_ref, atol=1e-5, rtol=0)
    assert torch.equal(got["is_full_absorption"], full_ref)
    # the random data exercises every branch
    assert (frac_ref == 0).any() and (frac_ref == 1).any() and ((frac_ref > 0) & (frac_ref < 1)).any()
    assert full_ref.any() and not full_ref.all()


# ----------------------------------------------------------------------------------------------
# synthetic world: residual = letter direction (+ word direction); SAEs built by hand
# ----------------------------------------------------------------------------------------------
D = 64
U0 = 26  # dims 26..57: word-specific directions of planted words
V1, V2 = 60, 61  # dims of the two halves of letter "b" (feature splitting)
THR = 0.5  # encoder threshold of every synthetic latent
U_SCALE = 1.5  # size of a planted word's own direction in its residual


class HandSAE:
    """ReLU SAE with hand-set weights: f = relu(x W_enc + b_enc)."""

    def __init__(self, W_enc_DF, b_enc_F, W_dec_FD):
        self.W_enc, self.b_enc, self.W_dec = W_enc_DF, b_enc_F, W_dec_FD

        class _Cfg:
            d_in, d_sae = W_enc_DF.shape

        self.cfg = _Cfg()

    def encode(self, x_ND):
        return torch.relu(x_ND.float() @ self.W_enc + self.b_enc)

    def decode(self, f_NF):
        return f_NF @ self.W_dec

    def permuted(self, perm):
        return HandSAE(self.W_enc[:, perm], self.b_enc[perm], self.W_dec[perm])


def _world(n_train=30, n_test=20, seed=0, split_b=False):
    """Train residuals with noise inside the letter subspace; clean test residuals."""
    g = torch.Generator().manual_seed(seed)
    y_tr = torch.arange(26).repeat_interleave(n_train)
    y_te = torch.arange(26).repeat_interleave(n_test)
    x_tr = torch.zeros(len(y_tr), D)
    x_tr[torch.arange(len(y_tr)), y_tr] = 0.6 + 0.8 * torch.rand(len(y_tr), generator=g)
    x_tr[:, :26] += 0.05 * torch.randn(len(y_tr), 26, generator=g)
    x_te = torch.zeros(len(y_te), D)
    x_te[torch.arange(len(y_te)), y_te] = 1.0
    if split_b:
        for x, y in ((x_tr, y_tr), (x_te, y_te)):
            rows = torch.nonzero(y == 1).flatten()
            x[rows[: len(rows) // 2], V1] = 1.0
            x[rows[len(rows) // 2 :], V2] = 1.0
    return x_tr, y_tr, x_te, y_te


def _clean_sae(n_extra=8, split_b=False):
    """One latent per letter (decoder = letter direction) + ``n_extra`` latents that never fire."""
    F = 26 + n_extra + (1 if split_b else 0)
    W_enc = torch.zeros(D, F)
    W_dec = torch.zeros(F, D)
    b_enc = torch.full((F,), -THR)
    for l in range(26):
        W_enc[l, l] = 1.0
        W_dec[l, l] = 1.0
    for j in range(n_extra):  # dead latents with decoders in the word subspace
        W_enc[U0 + j, 26 + j] = -1.0
        W_dec[26 + j, U0 + j] = 1.0
    if split_b:  # latent 1 -> "b, first half", last latent -> "b, second half"
        W_enc[:, 1] = 0.0
        W_enc[1, 1], W_enc[V1, 1], W_enc[V2, 1] = 1.0, 1.0, -1.0
        W_enc[1, F - 1], W_enc[V2, F - 1], W_enc[V1, F - 1] = 1.0, 1.0, -1.0
        W_dec[F - 1, 1] = 1.0
    return HandSAE(W_enc, b_enc, W_dec)


def _plant_absorption(sae, x_te, y_te, letter, n_words, suppress):
    """Give ``n_words`` test words of ``letter`` their own direction u and an absorbing latent
    (encoder u, decoder (e_letter + u)/√2); the letter latent's encoder gets ``-suppress·u``."""
    x_te = x_te.clone()
    W_enc, b_enc, W_dec = sae.W_enc.clone(), sae.b_enc.clone(), sae.W_dec.clone()
    rows = torch.nonzero(y_te == letter).flatten()[:n_words]
    for j, r in enumerate(rows.tolist()):
        u = U0 + j
        x_te[r, u] = U_SCALE
        lat = 26 + j  # reuse the dead latent j as the absorbing latent
        W_enc[:, lat] = 0.0
        W_enc[u, lat] = 1.0
        W_dec[lat] = 0.0
        W_dec[lat, letter] = 1.0 / math.sqrt(2)
        W_dec[lat, u] = 1.0 / math.sqrt(2)
        W_enc[u, letter] = -suppress
    return HandSAE(W_enc, b_enc, W_dec), x_te, rows


SMALL = {"ksparse_batch_size": 32}
"""The ranking probe trains from nn.Linear's random init (as SAEBench's): on these few hundred
words it needs minibatches smaller than SAEBench's 4096 to take enough Adam steps."""


def _evaluate(sae, x_tr, y_tr, x_te, y_te, cfg=None):
    cfg = cfg or ab.AbsorptionConfig(seed=0, **SMALL)
    data = ab.AbsorptionData.from_residuals(x_tr, y_tr, x_te, y_te, cfg)
    return data, ab.evaluate_sae(sae, data, cfg)


def test_letter_probes_find_the_letter_directions():
    x_tr, y_tr, x_te, y_te = _world()
    probes = ab.train_letter_probes(x_tr, y_tr)
    table = ab.probe_metrics(probes.scores(x_te), y_te, y_tr)
    assert (table["probe_f1"] == 1.0).all()
    assert (table["n_train"] == 30).all() and (table["n_test"] == 20).all()
    # each direction points mostly along its own letter axis and has no weight outside the data's span
    dirs = probes.directions_LD
    assert (dirs[torch.arange(26), torch.arange(26)] > 0.5).all()
    assert dirs[:, 26:].abs().max() < 1e-6


def test_clean_sae_has_zero_absorption():
    x_tr, y_tr, x_te, y_te = _world()
    data, res = _evaluate(_clean_sae(), x_tr, y_tr, x_te, y_te)
    s, per = res.summary, res.per_letter
    assert s["mean_absorption_fraction_score"] == 0.0
    assert s["mean_full_absorption_score"] == 0.0
    assert s["n_letters_current"] == 26 and s["current_valid"]
    assert s["n_letters_legacy"] == 0  # the letter latents never miss: no legacy candidates
    assert (per["num_absorption"] == 0).all() and (per["num_full_absorption"] == 0).all()
    assert (per["num_probe_true_positives"] == 20).all()
    assert per["split_feats"].tolist() == [str(l) for l in range(26)]
    assert s["mean_num_split_features"] == 1.0


def test_weak_words_are_legacy_candidates_but_not_absorbed():
    """Words the probe sees but the letter latent misses, with no absorbing latent: rate 0."""
    x_tr, y_tr, x_te, y_te = _world()
    rows = torch.nonzero(y_te == 4).flatten()[:5]  # five "e" words at 40% strength: below THR
    x_te[rows, 4] = 0.4
    data, res = _evaluate(_clean_sae(), x_tr, y_tr, x_te, y_te)
    per = res.per_letter.set_index("letter")
    assert per.loc["e", "num_probe_true_positives"] == 20
    assert per.loc["e", "num_legacy_candidates"] == 5
    assert res.summary["n_letters_legacy"] == 1
    assert res.summary["mean_absorption_score"] == 0.0
    assert res.summary["mean_absorption_fraction_score"] == 0.0


@pytest.mark.parametrize("n_words", [3, 8])
def test_planted_full_absorption_gives_the_expected_fraction(n_words):
    x_tr, y_tr, x_te, y_te = _world()
    letter, n_test = 0, 20
    sae, x_te2, rows = _plant_absorption(_clean_sae(), x_te, y_te, letter, n_words, suppress=1.0)
    assert (sae.encode(x_te2[rows])[:, letter] == 0).all()  # the letter latent is off on planted words
    data, res = _evaluate(sae, x_tr, y_tr, x_te2, y_te)
    s, per = res.summary, res.per_letter.set_index("letter")
    rate = n_words / n_test
    assert per.loc["a", "num_probe_true_positives"] == n_test
    assert per.loc["a", "num_full_absorption"] == n_words
    assert per.loc["a", "full_absorption_rate"] == pytest.approx(rate)
    assert per.loc["a", "mean_absorption_fraction"] == pytest.approx(rate)
    assert s["mean_full_absorption_score"] == pytest.approx(rate / 26)
    assert s["mean_absorption_fraction_score"] == pytest.approx(rate / 26)
    # legacy: only letter "a" has candidates (its latent is silent exactly on the planted words)
    assert per.loc["a", "num_legacy_candidates"] == n_words and per.loc["a", "num_absorption"] == n_words
    assert s["n_letters_legacy"] == 1
    assert s["mean_absorption_score"] == pytest.approx(rate)
    absorbed = res.words[res.words["is_full_absorption"]]
    assert sorted(absorbed["test_row"]) == sorted(rows.tolist())
    assert sorted(absorbed["top_latent"]) == list(range(26, 26 + n_words))
    assert (per.drop(index="a")["num_full_absorption"] == 0).all()


def test_planted_partial_absorption_gives_the_expected_fraction():
    """Letter latent weakened (not off): partial absorption with a known fraction, no full absorption."""
    x_tr, y_tr, x_te, y_te = _world()
    suppress, n_words, n_test = 0.1, 6, 20
    sae, x_te2, rows = _plant_absorption(_clean_sae(), x_te, y_te, 0, n_words, suppress)
    # per planted word, in units of the probe's component q = e_a·p (x·p = q since u ⟂ p):
    main = 1.0 - suppress * U_SCALE - THR            # letter latent activation, decoder e_a → projection main·q
    absorber = (U_SCALE - THR) / math.sqrt(2)        # absorbing latent activation × (decoder · e_a)
    a = min(absorber, 1.0 - main)
    expected_word = a / (a + main)
    assert 0.0 < expected_word < 1.0
    data, res = _evaluate(sae, x_tr, y_tr, x_te2, y_te)
    per = res.per_letter.set_index("letter")
    planted = res.words[res.words["test_row"].isin(rows.tolist())]
    np.testing.assert_allclose(planted["absorption_fraction"], expected_word, rtol=1e-5)
    assert per.loc["a", "mean_absorption_fraction"] == pytest.approx(n_words * expected_word / n_test, rel=1e-5)
    assert res.summary["mean_absorption_fraction_score"] == pytest.approx(n_words * expected_word / n_test / 26, rel=1e-5)
    assert res.summary["mean_full_absorption_score"] == 0.0
    assert per.loc["a", "num_legacy_candidates"] == 0  # the letter latent still fires: k-sparse probe says yes


def test_split_feature_selection_picks_the_planted_latents():
    x_tr, y_tr, x_te, y_te = _world(split_b=True)
    sae = _clean_sae(split_b=True)
    F = sae.W_dec.shape[0]
    data, res = _evaluate(sae, x_tr, y_tr, x_te, y_te)
    per = res.per_letter.set_index("letter")
    assert sorted(int(i) for i in per.loc["b", "split_feats"].split()) == [1, F - 1]
    assert per.loc["b", "num_split_features"] == 2
    f1_by_k = [float(v) for v in per.loc["b", "k_sparse_f1_by_k"].split()]
    assert f1_by_k[0] == pytest.approx(2 / 3, abs=1e-3)  # one half of the "b" words: recall 1/2, precision 1
    assert f1_by_k[1] == pytest.approx(1.0)
    assert (per.drop(index="b")["num_split_features"] == 1).all()
    assert res.summary["mean_num_split_features"] == pytest.approx(27 / 26)
    assert res.summary["mean_absorption_fraction_score"] == 0.0


def test_scores_are_invariant_to_latent_permutation():
    """With the zero-initialised ranking (``ksparse_normalize``, the named alternative) the scores do
    not depend on latent order; SAEBench's random init makes the default order-dependent in principle."""
    x_tr, y_tr, x_te, y_te = _world(split_b=True)
    sae, x_te2, rows = _plant_absorption(_clean_sae(split_b=True), x_te, y_te, 3, 5, suppress=1.0)
    cfg = ab.AbsorptionConfig(seed=0, ksparse_epochs=20, ksparse_normalize=True)
    data = ab.AbsorptionData.from_residuals(x_tr, y_tr, x_te2, y_te, cfg)
    base = ab.evaluate_sae(sae, data, cfg)
    F = sae.W_dec.shape[0]
    perm = torch.randperm(F, generator=torch.Generator().manual_seed(7))
    other = ab.evaluate_sae(sae.permuted(perm), data, cfg)
    for key, value in base.summary.items():
        if key.startswith("seconds") or isinstance(value, str):
            continue
        assert other.summary[key] == pytest.approx(value, nan_ok=True), key
    assert base.summary["mean_full_absorption_score"] > 0 and base.summary["mean_absorption_score"] > 0
    new_of_old = torch.argsort(perm)  # old latent i sits at position new_of_old[i]
    for a, b in zip(base.per_letter["split_feats"], other.per_letter["split_feats"]):
        assert sorted(new_of_old[int(i)].item() for i in a.split()) == sorted(int(i) for i in b.split())
    cols = ["num_probe_true_positives", "num_absorption", "num_full_absorption", "num_split_features"]
    assert base.per_letter[cols].equals(other.per_letter[cols])


def test_encode_latents_round_trip_and_columns():
    g = torch.Generator().manual_seed(2)
    sae = HandSAE(torch.randn(D, 50, generator=g), -1.5 * torch.ones(50), torch.randn(50, D, generator=g))
    x = torch.randn(70, D, generator=g)
    lat = ab.encode_latents(sae, x, batch_size=16)
    torch.testing.assert_close(lat.dense(), sae.encode(x))
    ids = torch.tensor([[3, 7, 11], [0, 49, 20]])
    cols = lat.columns(ids)
    dense = sae.encode(x)
    torch.testing.assert_close(cols[0], dense[:, [3, 7, 11]])
    torch.testing.assert_close(cols[1], dense[:, [0, 49, 20]])
    with pytest.raises(ValueError, match="d_in"):
        ab.encode_latents(sae, torch.randn(4, D + 1))


def test_evaluate_sae_rejects_bad_inputs():
    x_tr, y_tr, x_te, y_te = _world(n_train=4, n_test=2)
    cfg = ab.AbsorptionConfig()
    data = ab.AbsorptionData.from_residuals(x_tr, y_tr, x_te, y_te, cfg)
    wrong = HandSAE(torch.zeros(D + 2, 30), torch.zeros(30), torch.zeros(30, D + 2))
    with pytest.raises(ValueError, match="d_in"):
        ab.evaluate_sae(wrong, data, cfg)

    class NaNSAE(HandSAE):
        def encode(self, x_ND):
            return torch.full((x_ND.shape[0], 30), float("nan"))

    with pytest.raises(ValueError, match="NaN"):
        ab.evaluate_sae(NaNSAE(torch.zeros(D, 30), torch.zeros(30), torch.zeros(30, D)), data, cfg)
    with pytest.raises(ValueError, match="NaN"):
        ab.train_letter_probes(torch.full((4, D), float("nan")), torch.zeros(4, dtype=torch.long))


def test_save_results_writes_saebench_json_and_csv(tmp_path):
    from saelib.io import read_json

    x_tr, y_tr, x_te, y_te = _world(n_train=6, n_test=4)
    cfg = ab.AbsorptionConfig(ksparse_batch_size=8)
    data = ab.AbsorptionData.from_residuals(x_tr, y_tr, x_te, y_te, cfg)
    res = ab.evaluate_sae(_clean_sae(), data, cfg)
    j, c = ab.save_results(res, tmp_path, "topk", cfg)
    payload = read_json(j)
    assert payload["eval_type_id"] == "absorption_first_letter" and payload["lower_is_better"] is True
    assert payload["eval_result_metrics"]["mean"]["mean_absorption_fraction_score"] == 0.0
    assert len(payload["eval_result_details"]) == 26
    import pandas as pd

    assert list(pd.read_csv(c)["letter"]) == list(LET)


# ----------------------------------------------------------------------------------------------
# model I/O on the tiny random Gemma-3 (real tokenizer)
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_prepare_on_tiny_model_matches_hooks_and_reuses_cache(tiny_model, tmp_path, monkeypatch):
    from saelib.hooks import residuals

    cfg = ab.AbsorptionConfig(max_words=300, n_shot=1, accuracy_prompts=8, llm_batch_size=64, probe_max_iter=20)
    data = ab.prepare_absorption_data(tiny_model, 2, cfg, tmp_path)
    vocab = data.vocab
    ps = ab.build_prompts(vocab, tiny_model.tokenizer, cfg, "test")
    ref = residuals(tiny_model, ps.tokens_NS[:5], 2)[:, ps.query_pos]
    torch.testing.assert_close(data.x_test_ND[:5], ref)
    assert data.x_train_ND.shape == (int((vocab["split"] == "train").sum()), tiny_model.d_model)
    assert not torch.equal(data.x_abs_ND, data.x_test_ND)  # fresh in-context examples
    # the prompts are exactly what the real tokenizer makes of their text
    text = ps.text(tiny_model.tokenizer, 0)
    assert tiny_model.tokenizer(text)["input_ids"] == ps.tokens_NS[0].tolist()
    assert text.endswith(" has the first letter:")
    # prompt accuracy: compare with the model's full logits on the same prompts
    sub = ab.PromptSet(ps.tokens_NS[:3], ps.query_pos, ps.answer_ids_N[:3], ps.letter_idx_N[:3], ps.rows_N[:3])
    summary, _ = ab.prompt_accuracy(tiny_model, sub, max_prompts=3, batch_size=2)
    with torch.no_grad():
        logits = tiny_model.hf_model(ps.tokens_NS[:3]).logits[:, -1]
    expect = (logits.argmax(-1) == ps.answer_ids_N[:3]).float().mean().item()
    assert summary["prompt_accuracy"] == pytest.approx(expect) and summary["n_prompts"] == 3

    def boom(*a, **k):
        raise AssertionError("residuals recomputed despite the cache")

    monkeypatch.setattr(ab.model_io, "collect_residuals", boom)
    monkeypatch.setattr(ab.run, "prompt_accuracy", boom)
    monkeypatch.setattr(ab.run, "train_letter_probes", boom)
    again = ab.prepare_absorption_data(tiny_model, 2, cfg, tmp_path)
    assert torch.equal(again.x_train_ND, data.x_train_ND) and torch.equal(again.probes.W_LD, data.probes.W_LD)


# ----------------------------------------------------------------------------------------------
# legacy mean_absorption_score (SAEBench 293b385..bb8e145) on a hand-worked fixture
# ----------------------------------------------------------------------------------------------
def test_legacy_absorption_score_hand_worked():
    """Three letters a, b, c with probe directions e0, e1, e2; latents 0, 1, 3 are their split
    features; latent 2 has decoder (0.6, 0, 0.8): cos 0.6 with a's probe, 0.8 with c's.

    Per word (TP = probe score > 0; candidate = TP with k-sparse score <= 0; absorbed = candidate,
    split features silent, top latent by act·cos has cos >= 0.025, probe projection x·p >= 0 and
    the top latent supplies >= 0.4 of it):
      a0  f2=2,   x=(1.5,0,1)  candidate; top latent 2: 2·0.6 = 1.2 of 1.5 = 0.8  -> absorbed
      a1  f2=0.5, x=(2,0,0)    candidate; 0.5·0.6 = 0.3 of 2 = 0.15 < 0.4         -> not absorbed
      a2  f0=1,   x=(1,0,0)    TP, k-sparse probe fires: not a candidate
      a3  x=(-1,0,0)           probe silent: not a TP
      -> a: 1 absorbed / 3 TPs = 1/3; kept (a0, a1 are candidates with silent split features)
      b0  f1=1e-3              candidate, but its split feature fires (>= 1e-8): dropped
      b1  f1=1                 TP, not a candidate
      -> b has no kept candidate: left out of the mean (rate 0/2 reported, not averaged)
      c0  f=0, x=(0,0,0.5)     candidate; no latent projects: share 0                 -> not absorbed
      c1  f2=1, x=(0,0,1)      candidate; 1·0.8 of 1 = 0.8, cos 0.8                   -> absorbed
      c2, c3  f3=1             TPs, not candidates
      c4  f2=1, x=(0,0,-0.5)   TP only through the probe bias (+2); projection -0.5 < 0 -> not absorbed
      -> c: 1 / 5 TPs = 1/5
    mean_absorption_score = (1/3 + 1/5) / 2 = 4/15 over n_letters_legacy = 2.
    """
    W_dec = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0.6, 0, 0.8], [0, 0, 1.0]])
    probe_W = torch.eye(3)
    split = [[0], [1], [3]]
    #        word:  a0   a1   a2   a3   b0    b1   c0   c1   c2   c3   c4
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    f = torch.zeros(11, 4)
    f[0, 2], f[1, 2], f[2, 0], f[4, 1], f[5, 1], f[7, 2], f[8, 3], f[9, 3], f[10, 2] = 2, 0.5, 1, 1e-3, 1, 1, 1, 1, 1
    x = torch.zeros(11, 3)
    x[0] = torch.tensor([1.5, 0, 1])
    x[1, 0], x[2, 0], x[3, 0], x[4, 1], x[5, 1], x[6, 2], x[7, 2], x[8, 2], x[9, 2], x[10, 2] = 2, 1, -1, 1, 1, 0.5, 1, 1, 1, -0.5
    probe_scores = x @ probe_W.T
    probe_scores[10, 2] += 2.0  # c4: the probe's bias makes it fire
    ksparse = torch.full((11, 3), -1.0)
    ksparse[2, 0], ksparse[5, 1], ksparse[8, 2], ksparse[9, 2] = 1.0, 1.0, 1.0, 1.0
    lat = ab.SparseLatents(idx_NM=torch.arange(4).expand(11, 4).clone(), val_NM=f, d_sae=4)
    res = ab.absorption_scores(y_test_N=y, probe_scores_NL=probe_scores, ksparse_scores_NL=ksparse, split_feats=split,
                               lat_abs=lat, x_abs_ND=x, W_dec_FD=W_dec, probe_W_LD=probe_W,
                               probe_f1_L=torch.ones(3), cfg=ab.AbsorptionConfig())
    per = res.per_letter.set_index("letter")
    assert per["num_probe_true_positives"].tolist() == [3, 2, 5]
    assert per["num_legacy_candidates"].tolist() == [2, 1, 3]
    assert per["num_absorption"].tolist() == [1, 0, 1]
    assert per["legacy_included"].tolist() == [True, False, True]
    assert per.loc["a", "absorption_rate"] == pytest.approx(1 / 3) and per.loc["c", "absorption_rate"] == pytest.approx(1 / 5)
    assert res.summary["mean_absorption_score"] == pytest.approx(4 / 15)
    assert res.summary["n_letters_legacy"] == 2
