"""The sae-probes eval: split, probe and ranking against sae-probes' own functions (their source read
from the installed package and run alone), planted-latent recovery, last-token residuals, JSON."""
import ast
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from saelib.data.sae_probes_data import BinaryDataset
from saelib.evals import sae_probes as sp

FIX = Path(__file__).parent / "fixtures" / "sae_probes"
_SPEC = importlib.util.find_spec("sae_probes")
SP_DIR = None if _SPEC is None else Path(list(_SPEC.submodule_search_locations)[0])


def _their(function_names, module):
    """sae-probes' own functions, exec'd from the installed source without importing the package
    (its __init__ needs xgboost and transformer-lens)."""
    if SP_DIR is None:
        pytest.skip("sae-probes not installed")
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
    from sklearn.model_selection import LeavePOut, StratifiedKFold

    tree = ast.parse((SP_DIR / module).read_text())
    keep = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in function_names]
    ns = {"np": np, "torch": torch, "Callable": __import__("typing").Callable, "LogisticRegression": LogisticRegression, "roc_auc_score": roc_auc_score,
          "accuracy_score": accuracy_score, "f1_score": f1_score, "LeavePOut": LeavePOut,
          "StratifiedKFold": StratifiedKFold, "Parallel": None, "delayed": None,
          "Metrics": lambda **kw: kw, "BestClassifierResults": lambda metrics, classifier, scaler: metrics}
    exec(compile(ast.Module(body=keep, type_ignores=[]), str(SP_DIR / module), "exec"), ns)
    return [ns[n] for n in function_names]


def test_split_matches_sae_probes():
    (theirs,) = _their(["get_train_test_indices"], "utils_data.py")
    y = (np.random.default_rng(0).random(700) < 0.45).astype(int)
    for n_train, n_test in ((200, 150), (400, 100), (31, 17)):
        ours = sp.sae_probes_split(y, n_train, n_test, seed=42)
        ref = theirs(y, n_train, n_test, 0.5, 42)
        assert all(np.array_equal(a, b) for a, b in zip(ours, ref))
    assert sp.default_sizes(5000) == (1024, 3975)
    assert sp.default_sizes(728) == (628, 99)
    assert sp.default_sizes(5000, n_train=512, n_test=256) == (512, 256)
    with pytest.raises(ValueError, match="positives"):
        sp.sae_probes_split(np.r_[np.ones(5), np.zeros(50)].astype(int), 10, 4)


@pytest.mark.parametrize("n,penalty", [(200, "l2"), (200, "l1"), (60, "l2"), (40, "l1"), (8, "l2")])  # 8: LeavePOut(2)
def test_find_best_reg_matches_sae_probes(n, penalty):
    import warnings

    get_cv, get_splits, theirs = _their(["get_cv", "get_splits", "find_best_reg"], "utils_training.py")
    theirs.__globals__.update(get_cv=get_cv, get_splits=get_splits)
    rng = np.random.default_rng(n)
    X = rng.normal(size=(n + 80, 4))
    y = ((X[:, 0] + 0.8 * rng.normal(size=n + 80)) > 0).astype(int)
    y[:2], y[n:n + 2] = [0, 1], [0, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = theirs(X[:n], y[:n], X[n:], y[n:], penalty=penalty, seed=42)
    ours = sp.find_best_reg(X[:n], y[:n], X[n:], y[n:], penalty=penalty, seed=42)
    for key in ("test_acc", "test_auc", "test_f1", "val_auc"):
        assert ours[key] == pytest.approx(ref[key], abs=1e-9), key


def test_ranking_matches_sae_probes_and_naive():
    get_sorted_indices, their_norm = _their(["get_sorted_indices", "mean_act_normalization"], "run_sae_evals.py")
    g = torch.Generator().manual_seed(0)
    X = torch.relu(torch.randn(80, 30, generator=g)) * torch.rand(30, generator=g) * 10
    y = torch.randint(0, 2, (80,), generator=g)
    assert torch.allclose(sp.mean_act_normalization(X), their_norm(X))
    ref = get_sorted_indices(X, y, their_norm)
    ours = sp.rank_latents(X, y.numpy())
    diff = (their_norm(X)[y == 1].mean(0) - their_norm(X)[y == 0].mean(0)).abs()
    assert torch.equal(diff[ours], diff[ref])  # same order of values (ties may swap)
    naive = sorted(range(30), key=lambda j: -float(diff[j]))
    assert ours.tolist()[:5] == naive[:5]


class _PlantedSae:
    """encode = relu of a fixed random map, with latent 7 = relu(x · e0) (the label direction)."""

    def __init__(self, d, f):
        g = torch.Generator().manual_seed(3)
        self.W = torch.randn(d, f, generator=g) * 0.1
        self.W[:, 7] = 0
        self.W[0, 7] = 1.0

    def encode(self, x):
        return torch.relu(x @ self.W)


def _synthetic_task(cfg, n=400, d=16, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, d))
    x[:, 0] += np.where(y == 1, 3.0, -3.0)
    ds = BinaryDataset("planted", [f"t{i}" for i in range(n)], y.astype(np.int64), ("neg", "pos"))
    train, test = sp.sae_probes_split(ds.y, 200, 80, seed=cfg.seed)
    xs = torch.tensor(x[np.concatenate([train, test])], dtype=torch.float32)
    return sp.prepare_task(ds, xs, train, test, cfg)


def test_planted_latent_is_found_at_k1_and_json_is_saebench_shaped(tmp_path):
    cfg = sp.SaeProbesConfig(tasks=("planted",), ks=(1, 2))
    td = _synthetic_task(cfg)
    prep = sp.SaeProbesPrep(cfg, {"planted": td})
    res = sp.sae_probes_sae(prep, _PlantedSae(16, 40))
    m = res["per_task"]["planted"]
    assert m[1]["indices"] == [7] and m[1]["test_acc"] >= 0.95
    assert td.llm["test_acc"] >= 0.95
    path = sp.save_sae_probes_results(prep, res, tmp_path, "v")
    out = __import__("json").loads(path.read_text())
    assert out["eval_type_id"] == "sparse_probing_sae_probes"
    assert set(out["eval_result_metrics"]["sae"]) == {f"sae_top_{k}_test_{m}" for k in (1, 2) for m in ("accuracy", "auc", "f1")}
    assert out["eval_result_metrics"]["llm"]["llm_test_accuracy"] == pytest.approx(td.llm["test_acc"])
    assert out["sae_metrics_by_k"]["1"]["test_accuracy"] == pytest.approx(m[1]["test_acc"])
    assert out["eval_result_details"][0]["dataset_name"] == "planted"
    assert out["eval_result_unstructured"]["planted"]["sae"]["1"]["indices"] == [7]
    assert list(sp.per_task_table(out).index) == ["planted"]


def test_no_signal_is_near_chance():
    cfg = sp.SaeProbesConfig(ks=(1,), baseline=False)
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 300).astype(np.int64)
    ds = BinaryDataset("noise", ["t"] * 300, y, ("0", "1"))
    train, test = sp.sae_probes_split(y, 200, 80)
    td = sp.prepare_task(ds, torch.tensor(rng.normal(size=(280, 16)), dtype=torch.float32), train, test, cfg)
    m = sp.sae_probe_metrics(sp.encode_rows(_PlantedSae(16, 40), td.x_train_ND), td.y_train,
                             sp.encode_rows(_PlantedSae(16, 40), td.x_test_ND), td.y_test, cfg)
    assert 0.3 <= m[1]["test_acc"] <= 0.7 and td.llm is None


def test_config_from_params_and_skips(tmp_path):
    cfg = sp.SaeProbesConfig.from_params({"sae_probes": {"tasks": ["5_hist_fig_ismale"], "n_train": 64, "ks": [1]}})
    assert cfg.tasks == ("5_hist_fig_ismale",) and cfg.ks == (1,) and cfg.n_train == 64
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['n_trian'\]"):
        sp.SaeProbesConfig.from_params({"sae_probes": {"n_trian": 3}})
    with pytest.raises(ValueError, match="reg_type"):
        sp.SaeProbesConfig(reg_type="l3")
    # the fixture's 24 rows are too few for sae-probes' split: skipped with one line, the model never loaded
    prep = sp.prepare_sae_probes(cfg, model=lambda: pytest.fail("model loaded"), model_name="m", layer=0,
                                 cache_dir=tmp_path, data_dir=FIX)
    assert prep.tasks == {} and len(prep.skipped) == 1 and "too small" in prep.skipped[0]
    every = sp.prepare_sae_probes(sp.SaeProbesConfig(tasks="all"), model=None, model_name="m", layer=0,
                                  cache_dir=tmp_path, data_dir=FIX)
    assert len(every.skipped) == 8  # the fixture table's eight binary datasets, each too small here


def test_last_token_residuals_match_a_single_forward_and_cache(tiny_model, tmp_path):
    from saelib.hooks import residuals_batch

    texts = ["The cat sat on the mat.", "Hi", "A somewhat longer prompt with several more tokens in it."]
    x = sp.last_token_residuals(tiny_model, texts, 2, context=64, batch_size=2)
    for i, t in enumerate(texts):
        ids = torch.tensor([tiny_model.tokenizer(t)["input_ids"]])
        ref = residuals_batch(tiny_model, ids, 2)[0, -1].float()
        assert torch.allclose(x[i], ref, atol=1e-4)
    long = " ".join(f"w{i}" for i in range(100))
    ids = sp.last_token_ids(tiny_model.tokenizer, [long], 16)[0]
    full = tiny_model.tokenizer(long)["input_ids"]
    assert len(ids) == 16 and ids[0] == full[0] and ids[1:] == full[-15:]  # BOS kept, the end kept
    x1, hit1 = sp.cached_last_token_residuals(tiny_model, texts, model_name=tiny_model.name, layer=2, context=64,
                                              cache_dir=tmp_path, name="t")
    x2, hit2 = sp.cached_last_token_residuals(lambda: pytest.fail("model loaded"), texts, model_name=tiny_model.name,
                                              layer=2, context=64, cache_dir=tmp_path, name="t")
    assert (hit1, hit2) == (False, True) and torch.equal(x1, x2)


@pytest.mark.skipif(SP_DIR is None, reason="sae-probes not installed")
def test_end_to_end_on_a_real_dataset_with_the_tiny_model(tiny_model, tmp_path):
    cfg = sp.SaeProbesConfig(tasks=("5_hist_fig_ismale",), n_train=32, n_test=16, context=32, ks=(1,))
    prep = sp.prepare_sae_probes(cfg, model=tiny_model, model_name=tiny_model.name, layer=2, cache_dir=tmp_path)
    td = prep.tasks["5_hist_fig_ismale"]
    assert td.x_train_ND.shape == (32, tiny_model.d_model) and len(td.y_test) == 16
    assert td.y_train.sum() == 16 and td.y_test.sum() == 8  # sae-probes' balanced split
    assert 0.0 <= td.llm["test_acc"] <= 1.0 and not td.cache_hit
    res = sp.sae_probes_sae(prep, _PlantedSae(tiny_model.d_model, 24))
    out = sp.sae_probes_output(prep, res, variant="v")
    assert out["eval_result_details"][0]["dataset_name"] == "5_hist_fig_ismale"
    assert out["eval_result_unstructured"]["5_hist_fig_ismale"]["n_train"] == 32
