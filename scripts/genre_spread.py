#!/usr/bin/env python
"""Per-genre KL/CE scores of trained SAEs on more held-out text than the train stage reads, with a
bootstrap of the worst-to-best KL gap (issue #12's per-genre target).

    .venv/bin/python scripts/genre_spread.py [--profile default] [--per-genre 32] [--out FILE] topk topk_s1 ...
    .venv/bin/python scripts/genre_spread.py topk --sae other=/path/to/clone/checkpoints/default/topk/sae --by-source

The train stage scores each genre on the profile's held-out split: on the default profile 8 sequences per
genre, and its KL/CE splice on the genre's rows among the first `core.n_kl_sequences` (4 per genre), too few
to tell a gap between genres from noise. This script packs `--per-genre` sequences of every genre from the
same held-out documents with the same packing (its first rows are the extracted held-out rows, which it
checks when the cache is there), splices each SAE of `checkpoints/<profile>/<variant>/sae` into the model on
all of them, and prints per genre SAEBench's KL and CE scores, the gap between the best and the worst
genre's KL score, and the gap's bootstrap SD and 95% interval (sequences resampled within each genre).

Not a pipeline stage: it reads trained checkpoints and writes only `--out` (JSON, atomically).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from saelib.evals.core import splice_scores  # noqa: E402
from saelib.hooks import SpliceSums  # noqa: E402


def genre_rows(genres: list[str]) -> dict[str, list[int]]:
    """Row indices of each genre, genres in first-seen order."""
    rows: dict[str, list[int]] = {}
    for i, g in enumerate(genres):
        rows.setdefault(g, []).append(i)
    return rows


def genre_scores(ss: SpliceSums, rows: dict[str, list[int]]) -> dict[str, dict[str, float]]:
    """``{genre: {kl_score, ce_score, n_sequences}}`` from per-sequence splice sums (patches ``sae``,
    ``zero``, ``zero_keep_bos``): each genre's scores pool the token sums of its rows, as the core eval does."""
    out = {}
    for g, idx in rows.items():
        sc = splice_scores(ss.rows(idx).result())
        out[g] = {"kl_score": sc["kl_score"], "ce_score": sc["ce_score"], "n_sequences": len(idx)}
    return out


def source_labels(genres: list[str], sources: list[str]) -> list[str]:
    """``"genre/source"`` per row, for :func:`genre_rows` (per-source scores within each genre)."""
    if len(genres) != len(sources):
        raise ValueError(f"{len(genres)} genre labels for {len(sources)} source labels")
    return [f"{g}/{src}" for g, src in zip(genres, sources)]


def kl_gap(scores: dict[str, dict[str, float]]) -> tuple[str, str, float]:
    """``(worst genre, best genre, best KL score - worst KL score)``."""
    worst = min(scores, key=lambda g: scores[g]["kl_score"])
    best = max(scores, key=lambda g: scores[g]["kl_score"])
    return worst, best, scores[best]["kl_score"] - scores[worst]["kl_score"]


def bootstrap_gap(ss: SpliceSums, rows: dict[str, list[int]], n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """The KL gap over ``n_boot`` resamples of each genre's sequences (with replacement, within the genre):
    its SD and 2.5/97.5 percentiles."""
    if n_boot < 2:
        raise ValueError(f"n_boot must be >= 2, got {n_boot}")
    gen = torch.Generator().manual_seed(seed)
    gaps = []
    for _ in range(n_boot):
        res = {g: [idx[j] for j in torch.randint(len(idx), (len(idx),), generator=gen).tolist()] for g, idx in rows.items()}
        gaps.append(kl_gap(genre_scores(ss, res))[2])
    t = torch.tensor(gaps, dtype=torch.float64)
    return {"sd": float(t.std()), "lo": float(t.quantile(0.025)), "hi": float(t.quantile(0.975)), "n_boot": n_boot}


def sae_folders(specs: list[str]) -> dict[str, Path]:
    """``{label: folder}`` from ``--sae LABEL=FOLDER`` arguments; ``ValueError`` for a malformed or repeated label."""
    out: dict[str, Path] = {}
    for spec in specs:
        label, sep, folder = (part.strip() for part in spec.partition("="))
        if not sep or not label or not folder:
            raise ValueError(f"--sae {spec!r}: expected LABEL=FOLDER, e.g. --sae mix=/tmp/exp/checkpoints/default/topk/sae")
        if label in out:
            raise ValueError(f"--sae: label {label!r} given twice")
        out[label] = Path(folder).expanduser()
    return out


def stored_check(P: dict, variant: str, ss: SpliceSums, genres: list[str], n_extracted: int) -> float | None:
    """Largest difference between the per-genre KL scores the train stage stored for ``variant`` and this
    script's on the same rows (the genre's rows among the first ``core.n_kl_sequences`` of the extracted
    ones, :func:`saelib.evals.core.splice_rows`); None when there is nothing to compare."""
    from saelib.evals.core import splice_rows
    from saelib.io import read_json

    path = P["paths"]["results"] / "core" / f"{variant}.json"
    if not n_extracted or not path.exists():
        return None
    stored = read_json(path).get("per_genre") or {}
    n_kl = P["run"].get("core", {}).get("n_kl_sequences")
    rows = splice_rows(n_extracted, n_kl, genres[:n_extracted])
    mine = genre_scores(ss, {g: [r for r in rows if genres[r] == g] for g in dict.fromkeys(genres[:n_extracted])})
    diffs = [abs(mine[g]["kl_score"] - stored[g]["kl_score"]) for g in mine if g in stored]
    return max(diffs) if diffs else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="*", help="SAEs to score (names in checkpoints/<profile>/)")
    ap.add_argument("--sae", action="append", default=[], metavar="LABEL=FOLDER",
                    help="also score the SAE saved in FOLDER (cfg.json + safetensors, e.g. one trained in another "
                         "clone on another corpus or budget) under LABEL; repeatable")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--per-genre", type=int, default=32, help="held-out sequences per genre (default 32)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--by-source", action="store_true",
                    help="also print each source's KL/CE scores within its genre (rows labelled by the source "
                         "that gave most of their tokens)")
    ap.add_argument("--out", type=Path, help="write the figures to this JSON file")
    args = ap.parse_args(argv)

    from saelib.activations import ActivationCache
    from saelib.config import load_params
    from saelib.data.corpus import GENRES, heldout_by_genre
    from saelib.extract import ExtractConfig
    from saelib.evals.core_baseline import compute_core_baseline
    from saelib.hooks import splice_sums
    from saelib.io import atomic_write_json
    from saelib.models import load_model
    from saelib.sae import load_sae

    if args.threads:
        torch.set_num_threads(args.threads)
    P = load_params(args.profile, path=ROOT / "params.yaml")
    run = P["run"]
    if run.get("corpus") != "offline":
        print(f"profile {args.profile!r} reads the {run.get('corpus')!r} corpus; per-genre rows exist only for 'offline'",
              file=sys.stderr)
        return 2
    folders = {v: P["paths"]["checkpoints"] / v / "sae" for v in args.variants}
    try:
        extra = sae_folders(args.sae)
        clash = sorted(set(extra) & set(folders))
        if clash:
            raise ValueError(f"--sae label(s) {clash} also named as variants: pick other labels")
        folders.update(extra)
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    if not folders:
        print("nothing to score: name variants and/or --sae LABEL=FOLDER", file=sys.stderr)
        return 2
    missing = [str(f) for f in folders.values() if not f.is_dir()]
    if missing:
        print(f"no trained SAE at {', '.join(missing)}: run `dvc repro train@<variant>` first", file=sys.stderr)
        return 2
    ecfg = ExtractConfig.from_run(run)
    model = load_model(run["model"], device=P.get("device", "auto"))
    layer = model.check_layer(int(run["layer"]))
    batch = int(run.get("core", {}).get("batch_size", 16))
    n_genres = len(GENRES)
    packed = heldout_by_genre(model.tokenizer, ecfg.context, args.per_genre * n_genres, seed=ecfg.seed)
    tokens, genres = packed.tokens_NS, packed.genres
    rows = genre_rows(genres)
    print(f"{tokens.shape[0]} held-out sequences of {ecfg.context} tokens: "
          + ", ".join(f"{g} {len(r)}" for g, r in rows.items()))
    n_extracted = 0
    try:
        extracted = ActivationCache(P["paths"]["activations_heldout"], profile=P["profile"]).tokens()
        n = min(extracted.shape[0], tokens.shape[0])
        same = torch.equal(extracted[:n], tokens[:n])
        n_extracted = n if same and n == extracted.shape[0] else 0
        print(f"the first {n} rows {'are' if same else 'are NOT'} the extracted held-out rows")
    except Exception as err:  # the cache is only a cross-check
        print(f"(no cross-check against the extracted held-out cache: {err})")

    t0 = time.perf_counter()
    # the SAE-independent runs once for every SAE below: clean hidden states and both zero-ablation baselines
    baseline = compute_core_baseline(model, tokens, layer, n_kl_sequences=None, batch_size=batch)
    clean, zeros = baseline.clean_hidden_NSD, baseline.sums
    print(f"clean run and zero-ablation baselines: {time.perf_counter() - t0:.0f} s")
    report: dict = {"profile": args.profile, "per_genre": args.per_genre, "n_sequences": int(tokens.shape[0]),
                    "context": ecfg.context, "variants": {}}
    for v, folder in folders.items():
        t0 = time.perf_counter()
        sae = load_sae(folder, expect_d_in=model.d_model).eval()
        own = splice_sums(model, tokens, layer, {"sae": lambda x_ND: sae.decode(sae.encode(x_ND)).to(x_ND.device)},
                          batch_size=batch, saebench_positions=True, clean_hidden_NSD=clean)  # evaluate_core's patch
        ss = own.with_patches(zeros)
        scores = genre_scores(ss, rows)
        worst, best, gap = kl_gap(scores)
        boot = bootstrap_gap(ss, rows, args.n_boot)
        overall = splice_scores(ss.result())
        print(f"\n{v} ({time.perf_counter() - t0:.0f} s): KL score {overall['kl_score']:.4f}, CE score {overall['ce_score']:.4f}")
        for g, s in scores.items():
            print(f"  {g:<13} KL score {s['kl_score']:.4f}  CE score {s['ce_score']:.4f}  ({s['n_sequences']} sequences)")
        print(f"  KL gap {best} - {worst}: {gap:.4f} (bootstrap SD {boot['sd']:.4f}, 95% [{boot['lo']:.4f}, {boot['hi']:.4f}])")
        by_source = genre_scores(ss, genre_rows(source_labels(genres, packed.sources))) if args.by_source else None
        for label, sc in sorted((by_source or {}).items()):
            print(f"    {label:<34} KL score {sc['kl_score']:.4f}  CE score {sc['ce_score']:.4f}  ({sc['n_sequences']} sequences)")
        stored = stored_check(P, v, ss, genres, n_extracted) if v in args.variants else None
        if stored is not None:
            print(f"  on the train stage's own rows: max |KL score - results/{args.profile}/core/{v}.json per_genre| = {stored:.1e}")
        report["variants"][v] = {"kl_score": overall["kl_score"], "ce_score": overall["ce_score"], "per_genre": scores,
                                 "worst": worst, "best": best, "kl_gap": gap, "kl_gap_bootstrap": boot,
                                 "per_source": by_source}
    if args.out:
        atomic_write_json(args.out, report)
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
