"""Differential tests: SAEBench 0.6.0's absorption code and ``saelib.evals.absorption`` on identical inputs.

k-sparse probing (latent ranking, k-sparse probes, choice of k), the feature-absorption calculator,
the vocabulary filter (real Gemma-3 tokenizer) and the prompt builder.
"""
import random
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from sae_bench.evals.absorption.feature_absorption_calculator import FeatureAbsorptionCalculator
from sae_bench.evals.absorption.k_sparse_probing import (
    add_feature_splits_to_metrics_df,
    train_k_sparse_probes,
    train_sparse_multi_probe,
)
from sae_bench.evals.absorption.prompting import create_icl_prompt, first_letter_formatter
from sae_bench.evals.absorption.vocab import get_alpha_tokens
from sklearn.metrics import f1_score

from saelib.evals import absorption as ab
from saelib.sae import ReLUConfig, make_sae

LET = ab.LETTERS


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny problems: see conftest.py


class SAELensLike:
    """The SAELens ``SAE`` attributes SAEBench's absorption code reads, around one of our SAEs."""

    def __init__(self, sae):
        self.sae = sae
        self.cfg = SimpleNamespace(d_sae=sae.cfg.d_sae)
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self.W_dec = sae.W_dec.detach()
        self.W_enc = sae.W_enc.detach()

    def encode(self, x):
        with torch.no_grad():
            return self.sae.encode(x.float())


def _identity_sae(F):
    """f = ReLU(x): the "residuals" below are the latent activations themselves."""
    sae = make_sae("relu", ReLUConfig(d_in=F, d_sae=F))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(F))
        sae.W_dec.copy_(torch.eye(F))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def _latent_world(n_per_letter, scale, seed):
    """Latent activations at a real SAE's scale: letter l's main latent l fires on most of its words,
    a split latent 26 + l on the rest for letters a..h, 24 noise latents fire at random."""
    g = torch.Generator().manual_seed(seed)
    F = 26 + 26 + 24
    y = torch.arange(26).repeat_interleave(n_per_letter)
    x = torch.zeros(len(y), F)
    split = (y < 8) & (torch.rand(len(y), generator=g) < 0.35)
    rows = torch.arange(len(y))
    x[rows[~split], y[~split]] = scale * (0.5 + torch.rand(int((~split).sum()), generator=g))
    x[rows[split], 26 + y[split]] = scale * (0.5 + torch.rand(int(split.sum()), generator=g))
    noise = (torch.rand(len(y), 24, generator=g) < 0.15) * scale * torch.rand(len(y), 24, generator=g)
    x[:, 52:] = noise
    miss = torch.rand(len(y), generator=g) < 0.08  # a few words where the letter latent stays silent
    x[miss, : 52] = 0.0
    return x, y


def _ksparse_both(scale):
    x_tr, y_tr = _latent_world(24, scale, seed=0)
    x_te, y_te = _latent_world(10, scale, seed=1)
    F = x_tr.shape[1]
    sae = _identity_sae(F)
    cfg = ab.AbsorptionConfig(seed=7, ksparse_epochs=20, ksparse_batch_size=48, max_k=4)  # 260 Adam steps
    labels = [(f"w{i}", int(c)) for i, c in enumerate(y_tr)]
    # SAEBench's ranking probe alone, and its whole k-sparse step, each from the same seed
    torch.manual_seed(cfg.seed)
    ref_probe = train_sparse_multi_probe(x_tr, torch.nn.functional.one_hot(y_tr), device=torch.device("cpu"),
                                         l1_decay=cfg.ksparse_l1_decay, num_epochs=cfg.ksparse_epochs,
                                         batch_size=cfg.ksparse_batch_size, show_progress=False)
    torch.manual_seed(cfg.seed)
    ref = train_k_sparse_probes(SAELensLike(sae), labels, x_tr, ks=list(range(1, cfg.max_k + 1)),
                                l1_decay=cfg.ksparse_l1_decay, batch_size=cfg.ksparse_batch_size,
                                num_epochs=cfg.ksparse_epochs, precalc_sae_acts=True)
    lat_tr, lat_te = ab.encode_latents(sae, x_tr), ab.encode_latents(sae, x_te)
    ranking = ab.rank_latents(lat_tr, y_tr, cfg)
    ours = ab.select_split_features(lat_tr, y_tr, lat_te, y_te, cfg, ranking_LF=ranking)
    return SimpleNamespace(scale=scale, cfg=cfg, ref_probe=ref_probe, ref=ref, ranking=ranking, ours=ours,
                           x_tr=x_tr, y_tr=y_tr, x_te=x_te, y_te=y_te)


@pytest.fixture(scope="module", params=[1.0, 12.0], ids=["scale1", "scale12"])
def ksparse_both(request):
    return _ksparse_both(request.param)


def test_ranking_probe_matches_saebench(ksparse_both):
    """Raw activations, default init, DataLoader order: the same L1 probe weights as SAEBench's."""
    b = ksparse_both
    torch.testing.assert_close(b.ranking, b.ref_probe.weights.detach(), rtol=1e-3, atol=1e-4 * max(1.0, b.scale))


def test_k_sparse_probes_match_saebench(ksparse_both):
    """Same top-k latents for every letter and k, and the same test predictions as SAEBench's
    k-sparse probes. Weights: SAEBench's sklearn fit stops at lbfgs tol = 1e-4, a few percent from
    the optimum on separable data, so ours are compared with the same objective solved tightly."""
    from sklearn.linear_model import LogisticRegression

    b = ksparse_both
    agree, total = 0, 0
    y_tr = b.y_tr.numpy()
    for k in range(1, b.cfg.max_k + 1):
        for l in range(26):
            probe = b.ref[k][l]
            assert b.ours.ranked_LK[l, :k].tolist() == probe.feature_ids.tolist(), (k, l)
            tight = LogisticRegression(class_weight="balanced", C=b.cfg.ksparse_C, tol=1e-10, max_iter=10000).fit(
                b.x_tr[:, probe.feature_ids].numpy(), (y_tr == l).astype(np.int64))
            w_ours = torch.cat([b.ours.weights[k - 1][l], b.ours.biases[k - 1][l : l + 1]])
            w_opt = torch.tensor(np.concatenate([tight.coef_[0], tight.intercept_]), dtype=torch.float32)
            assert float((w_ours - w_opt).norm()) <= 1e-2 * float(w_opt.norm()) + 1e-3, (k, l, w_ours, w_opt)
            ref_pred = (b.x_te[:, probe.feature_ids] @ probe.weight + probe.bias) > 0
            our_pred = (b.x_te[:, b.ours.ranked_LK[l, :k]] @ b.ours.weights[k - 1][l] + b.ours.biases[k - 1][l]) > 0
            agree += int((ref_pred == our_pred).sum())
            total += len(ref_pred)
    assert agree / total > 0.998


def test_split_features_match_saebench(ksparse_both):
    """F1 of each k-sparse probe on the test words and the chosen split features, through SAEBench's
    ``add_feature_splits_to_metrics_df``."""
    b = ksparse_both
    rows = []
    for l, letter in enumerate(LET):
        row = {"letter": letter}
        for k in range(1, b.cfg.max_k + 1):
            probe = b.ref[k][l]
            score = b.x_te[:, probe.feature_ids] @ probe.weight + probe.bias
            row[f"f1_sparse_sae_{k}"] = f1_score((b.y_te == l).numpy(), (score > 0).numpy())
            row[f"sparse_sae_k_{k}_feats"] = probe.feature_ids.numpy()
            assert b.ours.f1_LK[l, k - 1].item() == pytest.approx(row[f"f1_sparse_sae_{k}"], abs=1e-6), (letter, k)
        rows.append(row)
    df = pd.DataFrame(rows)
    add_feature_splits_to_metrics_df(df, max_k_value=b.cfg.max_k, f1_jump_threshold=b.cfg.f1_jump_threshold)
    assert b.ours.split_feats == [list(v) for v in df["split_feats"]]
    assert any(len(v) > 1 for v in b.ours.split_feats[:8])  # the planted split letters do split


# ----------------------------------------------------------------------------------------------
# vocabulary and prompts on the real Gemma-3 tokenizer
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gemma_tok(tiny_model):
    return tiny_model.tokenizer


@pytest.fixture(scope="module")
def full_vocab(gemma_tok):
    return ab.build_vocab(gemma_tok, ab.AbsorptionConfig())


def test_vocabulary_is_saebench_get_alpha_tokens(gemma_tok, full_vocab):
    ref = get_alpha_tokens(gemma_tok)
    assert len(full_vocab) == len(ref) > 100_000
    assert sorted(full_vocab["text"]) == sorted(ref)
    assert (full_vocab["text"].str.startswith(" ")).any() and (~full_vocab["text"].str.startswith(" ")).any()
    # this repo's first filter ("▁" + >= 2 letters; tested in test_absorption.py) keeps far fewer
    strict = full_vocab["text"].str.startswith(" ") & (full_vocab["word"].str.len() >= 2)
    assert strict.sum() < 0.8 * len(full_vocab)


@pytest.mark.parametrize("prepend", [True, False], ids=["v0.6.0", "jan2025"])
@pytest.mark.parametrize("pool", ["split", "all"])
def test_prompts_are_saebench_create_icl_prompt(gemma_tok, full_vocab, prepend, pool):
    """Same seed, same example pool: our token-id prompts decode to SAEBench's prompt text, its
    tokenization gives our ids, and SAEBench's read position −6 is our query position."""
    cfg = ab.AbsorptionConfig(prepend_separator=prepend)
    vocab = full_vocab.iloc[::40].reset_index(drop=True)  # ~3,500 words: same prompts, fewer of them
    ps = ab.build_prompts(vocab, gemma_tok, cfg, "test", pool=pool, rng=random.Random(11))
    rows = ps.rows_N
    pool_texts = vocab["text"].tolist() if pool == "all" else vocab["text"].to_numpy()[rows].tolist()
    random.seed(11)
    ref = [create_icl_prompt(word=t, examples=pool_texts, base_template=cfg.template, answer_formatter=first_letter_formatter(),
                             example_separator="\n", max_icl_examples=cfg.n_shot, prepend_separator_to_first_example=prepend)
           for t in vocab["text"].to_numpy()[rows]]
    assert len(ref) == len(ps) > 300
    mismatched = 0
    for i, r in enumerate(ref):
        assert ps.text(gemma_tok, i) == r.base
        assert gemma_tok.decode([int(ps.answer_ids_N[i])]) == r.answer
        ids = gemma_tok(r.base)["input_ids"]
        if ids != ps.tokens_NS[i].tolist():
            mismatched += 1
    assert ps.query_pos == ps.tokens_NS.shape[1] - 6  # SAEBench's prompt_token_pos
    assert mismatched / len(ref) < 0.02  # words the tokenizer would split differently in context


# ----------------------------------------------------------------------------------------------
# the feature-absorption calculator (current scores) on identical residuals, SAE and probe
# ----------------------------------------------------------------------------------------------
HOOK = "blocks.3.hook_resid_post"
SUFFIX = " has the first letter:"


class ResidualTableModel:
    """``run_with_cache`` / ``to_tokens`` for SAEBench's calculator: the residual at position −6 of a
    prompt is the table row of its query word (parsed from the prompt's last line)."""

    def __init__(self, rows_by_word, seq=12):
        self.rows_by_word, self.seq = rows_by_word, seq

    def to_tokens(self, text):
        return torch.zeros(1, self.seq, dtype=torch.long)

    def run_with_cache(self, prompts, names_filter=()):
        assert list(names_filter) == [HOOK]
        D = next(iter(self.rows_by_word.values())).shape[0]
        out = torch.zeros(len(prompts), self.seq, D)
        for i, p in enumerate(prompts):
            last = p.split("\n")[-1]
            assert last.endswith(SUFFIX)
            out[i, -6] = self.rows_by_word[last[: -len(SUFFIX)]]
        return None, {HOOK: out}


class CalcSAE:
    def __init__(self, W_enc, b_enc, W_dec):
        self.W_enc, self.b_enc, self.W_dec = W_enc, b_enc, W_dec
        self.device = torch.device("cpu")

    def encode(self, x):
        return torch.relu(x @ self.W_enc + self.b_enc)


def _calc_world(unit_rows, seed=0):
    g = torch.Generator().manual_seed(seed)
    D, F, N = 12, 40, 300
    W_dec = torch.randn(F, D, generator=g)
    W_dec[:8, 0] += 3.0  # latents 0..7 lean on the probe direction e0 (cos above 0.1 for most)
    if unit_rows:
        W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    else:
        W_dec = W_dec * (0.5 + 2 * torch.rand(F, 1, generator=g))
    W_enc = torch.randn(D, F, generator=g) * 0.7
    b_enc = -0.8 * torch.ones(F)
    x = torch.randn(N, D, generator=g)
    x[:, 0] += 1.5 * torch.rand(N, generator=g)
    words = [f" w{i}" for i in range(N)]
    probe = torch.zeros(D)
    probe[0], probe[1] = 2.0, 0.3
    return CalcSAE(W_enc, b_enc, W_dec), x, words, probe


@pytest.mark.parametrize("unit_rows,fold", [(True, True), (False, False)], ids=["unit-rows-folded", "raw-rows-cos"])
def test_absorption_calculator_matches_saebench(unit_rows, fold):
    """Per word: absorption fraction and full absorption as SAEBench's ``FeatureAbsorptionCalculator``.
    SAEBench projects with activation × cos; ours with ``fold_decoder_norm`` uses activation ×
    (W_dec · p), equal for unit-norm decoder rows (SAELens SAEs after SAEBench's norm folding)."""
    sae, x, words, probe = _calc_world(unit_rows)
    main = [0, 3]
    calc = FeatureAbsorptionCalculator(model=ResidualTableModel(dict(zip(words, x))), icl_word_list=words,
                                       max_icl_examples=2, base_template="{word}" + SUFFIX, word_token_pos=-6,
                                       batch_size=64)
    ref = calc.calculate_absorption(sae, words=words, probe_direction=probe, main_feature_ids=main, layer=3,
                                    show_progress=False)
    cfg = ab.AbsorptionConfig(fold_decoder_norm=fold)
    ours = ab.word_absorption(sae.encode(x), x, sae.W_dec, probe, main, cfg)
    ref_frac = torch.tensor([float(r.absorption_fraction) for r in ref.word_results])
    ref_full = torch.tensor([r.is_full_absorption for r in ref.word_results])
    torch.testing.assert_close(ours["absorption_fraction"], ref_frac.float(), rtol=1e-5, atol=1e-6)
    assert torch.equal(ours["is_full_absorption"], ref_full)
    assert torch.tensor([r.top_projection_feature_scores[0].feature_id for r in ref.word_results]).equal(ours["top_latent"])
    # every branch of the rules is exercised
    assert ref_full.any() and (~ref_full).any()
    assert (ref_frac == 0).any() and (ref_frac == 1).any() and ((ref_frac > 0) & (ref_frac < 1)).any()
    # the per-letter means SAEBench aggregates (sum / probe true positives) agree as well
    assert float(ours["absorption_fraction"].mean()) == pytest.approx(float(ref_frac.mean()), rel=1e-6)
