"""Differential tests: sparse probing's selection and probes against SAEBench 0.6.0's own functions,
fed identical tensors (``sae-bench`` installed ``--no-deps``)."""
import numpy as np
import pytest
import torch

from saelib.evals.probing import (SPALL_PROBE, ProbeTrainConfig, ProbingConfig, logistic_accuracy, one_vs_rest,
                                  sparse_probe, top_k_mean_diff, train_torch_probe)

probe_training = pytest.importorskip("sae_bench.evals.sparse_probing.probe_training")


def _task(seed, n=240, d=40, signal=(3, 11, 17), scale=1.0, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < 0.5).long()
    X = torch.randn(n, d, generator=g) * scale + offset
    for j, s in zip(signal, (1.5, 1.0, 0.6)):
        X[:, j] += s * scale * (2 * y - 1)
    return X, y


@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_top_k_selection_matches_saebench(k):
    X, y = _task(0)
    mask_D = probe_training.get_top_k_mean_diff_mask(X, y.int(), k)  # True = dropped
    theirs = set(torch.nonzero(~mask_D).flatten().tolist())
    ours = set(top_k_mean_diff(X.numpy(), y.numpy(), k).tolist())
    assert ours == theirs and len(ours) == k
    kept = probe_training.apply_topk_mask_reduce_dim(X, mask_D)
    assert torch.equal(kept, X[:, sorted(ours)])  # SAEBench keeps the chosen columns in index order


def test_top_k_sklearn_probe_matches_saebench():
    X, y = _task(1, n=400, d=30, scale=3.0, offset=2.0)
    tr, te = slice(0, 300), slice(300, None)
    for k in (2, 5, 30):
        feats = np.sort(top_k_mean_diff(X[tr].numpy(), y[tr].numpy(), k))
        _, theirs = probe_training.train_sklearn_probe(X[tr][:, feats], y[tr].int(), X[te][:, feats], y[te].int())
        ours = logistic_accuracy(X[tr][:, feats].numpy(), y[tr].numpy(), X[te][:, feats].numpy(), y[te].numpy())
        assert ours == pytest.approx(theirs, abs=1.0 / 100)  # same objective; one test row at most


def _saebench_torch_probe(X_tr, y_tr, X_te, y_te, cfg: ProbeTrainConfig):
    torch.manual_seed(cfg.seed)
    probe, acc = probe_training.train_probe_gpu(
        X_tr, y_tr.int(), X_te, y_te.int(), dim=X_tr.shape[1], batch_size=cfg.batch_size, epochs=cfg.epochs,
        lr=cfg.lr, l1_penalty=cfg.l1_penalty or None, early_stopping_patience=cfg.early_stopping_patience)
    return probe, acc


@pytest.mark.parametrize("which", ["spall", "scr"])
def test_torch_probe_matches_saebench_step_for_step(which):
    """Same seed → same init, batch order and kept epoch: SAEBench's probe and ours agree."""
    cfg = SPALL_PROBE if which == "spall" else ProbeTrainConfig(epochs=6)
    X, y = _task(2, n=600, d=48, scale=2.0, offset=1.0)
    X_tr, y_tr, X_te, y_te = X[:450], y[:450], X[450:], y[450:]
    theirs, acc_theirs = _saebench_torch_probe(X_tr, y_tr, X_te, y_te, cfg)
    ours, acc_ours = train_torch_probe(X_tr, y_tr, X_te, y_te, cfg)
    assert acc_ours == acc_theirs
    torch.testing.assert_close(ours.weight_D, theirs.net.weight.detach().reshape(-1), rtol=1e-4, atol=1e-5)
    assert ours.bias == pytest.approx(float(theirs.net.bias), rel=1e-4, abs=1e-5)
    assert ours.accuracy(X_te, y_te) == pytest.approx(acc_theirs)


def test_torch_probe_leaves_the_global_rng_alone():
    X, y = _task(3, n=80, d=20)
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    train_torch_probe(X[:60], y[:60], X[60:], y[60:], ProbeTrainConfig(epochs=2))
    assert torch.equal(torch.rand(3), expected)


def test_all_latents_accuracy_is_saebench_torch_probe_by_default():
    """``sae_test_accuracy`` = SAEBench's all-features torch probe on the same one-vs-rest sets;
    ``all_probe="sklearn"`` is the named alternative (L2 logistic regression)."""
    rng = np.random.default_rng(4)
    n, d = 240, 24
    labels = np.repeat(["a", "b", "c"], n // 3)
    splits = np.tile(np.array(["train"] * 60 + ["test"] * 20), 3)
    X = rng.normal(size=(n, d)).astype(np.float32)
    for i, c in enumerate("abc"):
        X[labels == c, i] += 1.2
    cfg = ProbingConfig(k_values=(2,))
    out = sparse_probe(torch.from_numpy(X), labels, splits, cfg=cfg)
    alt = sparse_probe(torch.from_numpy(X), labels, splits, cfg=ProbingConfig(k_values=(2,), all_probe="sklearn"))
    from saelib.evals.probing import _stable_int

    for cls in "abc":
        sets = one_vs_rest(labels, splits, cls, seed=cfg.seed)
        (itr, ytr), (ite, yte) = sets["train"], sets["test"]
        seed = _stable_int(cfg.seed, cls, "all") % (2 ** 31)
        _, theirs = _saebench_torch_probe(torch.from_numpy(X[itr]), torch.from_numpy(ytr), torch.from_numpy(X[ite]),
                                          torch.from_numpy(yte), ProbeTrainConfig(**{**SPALL_PROBE.__dict__, "seed": seed}))
        assert out["sae_test_accuracy"][cls] == theirs
        _, sk = probe_training.train_sklearn_probe(torch.from_numpy(X[itr]), torch.from_numpy(ytr).int(),
                                                   torch.from_numpy(X[ite]), torch.from_numpy(yte).int())
        assert alt["sae_test_accuracy"][cls] == pytest.approx(sk, abs=1.0 / len(yte))
        assert alt["sae_top_2_test_accuracy"][cls] == out["sae_top_2_test_accuracy"][cls]  # top-k probes unchanged
    with pytest.raises(ValueError, match="all_probe"):
        sparse_probe(torch.from_numpy(X), labels, splits, cfg=ProbingConfig(all_probe="lbfgs"))
