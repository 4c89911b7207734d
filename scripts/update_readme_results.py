"""Regenerate README.md's "Results" block from results/<profile>/ and figures/<profile>/ (never edit it by hand).

    python scripts/update_readme_results.py [--root .] [--profile default] [--check]

Reads ``results/<profile>/claims_ledger.csv`` and ``results/<profile>/tables/{effects,headline}.csv``,
``scale.json``, ``probing_summary.csv`` (the residual baselines), ``sae_probes_summary.csv`` and the
tables behind the open issues' targets (``per_genre_gap.csv``, ``scr_n20_definitions.csv``,
``unlearning_seed_stability.csv``; all written by ``notebooks/07_figures.py``) and the figures in ``figures/<profile>/``, renders markdown, and writes it to
``results/<profile>/README_results.md``. For the profile the README shows (``README_PROFILE``, the
committed default run) it also replaces everything between ``<!-- results:start -->`` and
``<!-- results:end -->`` in README.md (a "## Results" section with both markers is appended when the
README has none); any other profile (smoke, paper) never touches README.md. ``--check`` exits 1 when
the README is out of date instead of writing it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from saelib.claims import VERDICTS, ledger_display  # noqa: E402
from saelib.figures import UNLEARNING_SD_TARGET, md_table  # noqa: E402
from saelib.io import atomic_write_text  # noqa: E402
from saelib.results import direction, label  # noqa: E402

README_PROFILE = "default"
"""The profile whose results README.md shows; other profiles' blocks stay in results/<profile>/README_results.md."""

START = "<!-- results:start -->"
END = "<!-- results:end -->"

FIGURES = (
    ("effects", "Did each penalty help? Change vs the same TopK SAE without the penalty, with 95% CIs"),
    ("headline_seeds", "Headline variants: mean ± 95% CI over seeds"),
    ("competesae_absorption", "Paper 000: absorption by variant (lower is better)"),
    ("competesae_table1", "Paper 000: Table 1 ablations"),
    ("ortho_fig1_absorption", "Paper 004 Fig. 1: absorption by configuration (lower is better)"),
    ("ortho_fig2_scr", "Paper 004 Fig. 2: SCR at n = 2 and 20"),
    ("ortho_fig3_reconstruction", "Paper 004 Fig. 3: MSE and cosine similarity"),
    ("ortho_fig4_probing", "Paper 004 Fig. 4: sparse probing top-1 and top-20"),
    ("sae_probes", "sae-probes benchmark: SAE latent probes, test AUC (beside SAEBench's sparse probing)"),
    ("lambda_sweep", "Penalty strength sweep (λ ÷ paper's λ, log axis)"),
)
"""Figure stems (under figures/) in README order, with captions."""

PAPER_PROFILE = """\
To run the same notebooks at the papers' scale (Gemma-2-2B layer 12, d = 2304, F = 18,432, 10M
training tokens per SAE, SAEBench's hub datasets, WMDP unlearning with gemma-2-2b-it), use a
machine with a CUDA GPU and Hugging Face access to the gated Gemma-2 models and WMDP:

```bash
hf auth login                              # Gemma-2 and WMDP are gated on the hub
sed -i 's/^profile: .*/profile: paper/' params.yaml
HF_HUB_OFFLINE=0 dvc repro                 # every stage, then this README block is regenerated
```

`run_variants` in `params.yaml` picks which SAEs are trained and evaluated (the committed list,
seeds and λ sweep included, is the default run's; shorten it for a first paper-scale pass)."""


def _fmt_scale(scale: dict) -> str:
    tok = scale.get("train_tokens")
    tok_txt = f"{int(tok):,}" if isinstance(tok, (int, float)) else str(tok)
    parts = [f"model **{scale.get('model')}**", f"layer **{scale.get('layer')}**"]
    if scale.get("d_in"):
        parts.append(f"d = {scale['d_in']}")
    if scale.get("d_sae"):
        parts.append(f"SAE width F = {scale['d_sae']}")
    parts.append(f"**{tok_txt} training tokens per SAE**")
    return ", ".join(parts) + f" (profile `{scale.get('profile')}`)"


def penalty_text(r) -> str:
    """What an effects row's SAE adds to plain TopK: an L1 control its L1 coefficient alone (its
    co-activation λ is 0 by construction); a penalty its family, reading and λ, plus its L1 term if any."""
    l1 = r.get("l1_coef")
    l1 = 0.0 if l1 is None or pd.isna(l1) else float(l1)
    if r["penalty"] == "l1 control":
        return f"L1 control: the L1 term alone, coefficient {l1:g}"
    text = f"{r['penalty']}, {str(r['reading']).replace('_', ' ')}, λ = {r['lam']:g}"
    return text + (f", L1 coefficient {l1:g}" if l1 > 0 else "")


def effect_sentences(effects: pd.DataFrame, metric: str = "mean_absorption_score") -> list[str]:
    """One plain sentence per penalised variant and comparison (plain TopK twin, L1 control): did it
    lower (= improve) absorption? A comparison whose baseline was not run says so."""
    out = []
    if "status" in effects:
        for _, r in effects[effects["status"].astype(object).fillna("").astype(str).str.startswith("not run")].iterrows():
            out.append(f"- `{r['variant']}` {r.get('comparison', 'vs')} `{r['baseline']}`: {r['status']}.")
    for _, r in effects[effects["metric"] == metric].iterrows():
        has_ci = not (pd.isna(r["diff_lo"]) or pd.isna(r["diff_hi"]))
        if has_ci and r["diff_hi"] < 0:
            answer = "**yes** — lower absorption (better), the 95% CI excludes 0"
        elif has_ci and r["diff_lo"] > 0:
            answer = "**no** — higher absorption (worse), the 95% CI excludes 0"
        elif has_ci:
            answer = "**no detectable change** — the 95% CI includes 0"
        else:
            answer = ("lower (better)" if r["diff"] < 0 else "higher (worse)" if r["diff"] > 0 else "unchanged") + \
                     ", single run, no CI"
        ci = f", 95% CI [{r['diff_lo']:+.4f}, {r['diff_hi']:+.4f}]" if has_ci else ""
        sd = f"; run-to-run SD {r['seed_sd']:.4f}" if not pd.isna(r["seed_sd"]) else ""
        seeds = ""
        if "n_variant" in r and not pd.isna(r.get("n_variant")) and not pd.isna(r.get("n_baseline")):
            seeds = f"; {int(r['n_variant'])} vs {int(r['n_baseline'])} seeds"
        kind = r.get("comparison")
        kind = f" ({kind})" if isinstance(kind, str) and kind else ""
        out.append(f"- `{r['variant']}` ({penalty_text(r)}) vs "
                   f"`{r['baseline']}`{kind}: {r['baseline_mean'] + r['diff']:.4f} vs {r['baseline_mean']:.4f} "
                   f"(Δ {r['diff']:+.4f}{ci}{sd}{seeds}) → {answer}.")
    return out


def genre_gap_lines(gaps: pd.DataFrame) -> list[str]:
    """One sentence per TopK baseline: its best-minus-worst genre gap in held-out KL score against the
    target (``saelib.figures.genre_gap_table``)."""
    out = []
    for _, r in gaps.iterrows():
        spread = (f"{r['gap_mean']:.3f} ± {r['gap_ci']:.3f} over {int(r['n_seeds'])} seeds" if r["n_seeds"] > 1
                  else f"{r['gap_mean']:.3f} (1 run)")
        out.append(f"Per genre (held-out, {int(r['sequences_per_genre'])} sequences each): `{r['group']}`'s best-minus-worst "
                   f"KL score gap is {spread} (worst {r['worst_genre']}, best {r['best_genre']}); target < "
                   f"{r['target']:g}: **{r['meets_target']}**.")
    return out


def read_table(path: Path, **kwargs) -> pd.DataFrame | None:
    """An optional table of the figures stage, or None when the profile did not write it. A frame with no
    columns at all (``results.seed_table`` over no groups) is written as an empty file; it reads as None too."""
    if not path.exists() or not path.read_text().strip():
        return None
    return pd.read_csv(path, **kwargs)


def flag(value) -> bool | None:
    """A True/False/empty column read back from CSV (pandas gives bool, object or NaN): True, False or None."""
    text = str(value)
    return True if text == "True" else False if text == "False" else None


SCR_TARGET_GROUP = "topk"
"""Issue #13 asks the TopK baseline's S at n = 20 to be told apart from 0 (its seed CI excludes 0)."""


def scr_target_lines(defs: pd.DataFrame, group: str = SCR_TARGET_GROUP) -> list[str]:
    """One sentence per SCR ablation definition for ``group`` at n = 20 (``saelib.figures.scr_definitions_table``):
    seed mean ± 95% CI half-width and whether the interval excludes 0."""
    out = []
    for _, r in defs[defs["group"] == group].iterrows():
        n = int(r["n"])
        if n > 1 and r["ci"] == r["ci"]:
            verdict = "excludes 0" if flag(r["excludes_zero"]) else "includes 0"
            value = f"{r['mean']:+.3f} ± {r['ci']:.3f} over {n} seeds ({r['lo']:+.3f} to {r['hi']:+.3f}): **{verdict}**"
        else:
            value = f"{r['mean']:+.3f} (1 run, no interval)"
        name = "SAEBench's ablation, the default" if r["special_positions"] == "saebench" else "kept tokens only"
        out.append(f"SCR at n = 20 ({name}): `{group}` {value}.")
    return out


def unlearning_target_lines(stability: pd.DataFrame, target: float) -> list[str]:
    """One sentence per (group, metric) of ``saelib.figures.unlearning_seed_stability``: the largest bootstrap
    SD against ``target`` and whether the seeds lie within 2 bootstrap SDs of each other."""
    out = []
    for _, r in stability.iterrows():
        below, pair = flag(r["boot_sd_below_target"]), flag(r["within_2sd"])
        seeds = ("only one seed" if pair is None else
                 f"seeds within 2 bootstrap SDs of each other: **{'yes' if pair else 'no'}** "
                 f"(widest pair {r['max_pair']}, {r['max_pair_z']:.1f} SDs apart; seed SD {r['seed_sd']:.3f})")
        out.append(f"Unlearning, `{r['group']}` `{r['metric']}` (mean {r['mean']:.3f} over {int(r['n'])}): largest "
                   f"bootstrap SD {r['max_boot_sd']:.3f}, target < {target:g}: **{'yes' if below else 'no'}**; {seeds}.")
    return out


def target_lines(tables: Path, unlearning_sd_target: float) -> list[str]:
    """The "targets" subsection: the issues' measurable targets read back from the figures stage's tables
    (per-genre gap, SCR at n = 20 for the TopK baseline, the unlearning scores' stability); tables that
    the profile did not produce are left out."""
    lines = []
    readers = (("per_genre_gap.csv", genre_gap_lines),
               ("scr_n20_definitions.csv", scr_target_lines),
               ("unlearning_seed_stability.csv", lambda t: unlearning_target_lines(t, unlearning_sd_target)))
    for name, render in readers:
        table = read_table(tables / name)
        if table is not None:
            lines += [f"- {line}" for line in render(table)]
    return lines


def headline_lines(headline: pd.DataFrame) -> list[str]:
    """The headline variants × metrics as one markdown table: mean ± 95% CI half-width over seeds
    (``n`` seeds), or the single value marked ``(1 run)``."""
    if headline.empty:
        return ["- No headline variant was run at this profile."]
    cells = {}
    for _, r in headline.iterrows():
        if pd.isna(r["mean"]):
            continue  # no result for this metric: shown as "not run"
        if r["n"] > 1 and not pd.isna(r["ci"]):
            text = f"{r['mean']:.4g} ± {r['ci']:.2g} (n = {int(r['n'])})"
        else:
            text = f"{r['mean']:.4g} (1 run)"
        cells.setdefault(r["group"], {})[r["metric"]] = text
    metrics = list(dict.fromkeys(headline["metric"]))
    arrows = {"lower": "↓", "higher": "↑", None: ""}
    header = ["variant"] + [f"{label(m)} {arrows[direction(m)]}".strip() for m in metrics]
    notes = {}
    if "note" in headline:
        notes = {g: n for g, n in zip(headline["group"], headline["note"]) if isinstance(n, str) and n}
    rows = [[f"`{g}`" + (f" ({notes[g]})" if g in notes else "")] + [cells.get(g, {}).get(m, "not run") for m in metrics]
            for g in dict.fromkeys(headline["group"])]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def probing_baseline_line(summary: pd.DataFrame) -> str:
    """The residual-stream probing baselines (the same for every SAE) beside the TopK SAE's."""
    if summary.empty or "llm_top_1_test_accuracy" not in summary:
        return ""
    llm1, llm_all = summary["llm_top_1_test_accuracy"].iloc[0], summary["llm_test_accuracy"].iloc[0]
    text = (f"Sparse-probing baselines on the residual stream (mean over tasks): best single residual dimension "
            f"{llm1:.3f}, full residual {llm_all:.3f}")
    if "topk" in summary.index:
        text += (f"; the TopK SAE's best single latent {summary.loc['topk', 'sae_top_1_test_accuracy']:.3f}, "
                 f"all latents {summary.loc['topk', 'sae_test_accuracy']:.3f}")
    return text + "."


def sae_probes_line(summary: pd.DataFrame) -> str:
    """The second probing eval (the sae-probes benchmark's protocol) for the TopK SAE, beside SAEBench's."""
    cols = [f"sae_top_{k}_test_auc" for k in (1, 2, 5)]
    if summary.empty or "topk" not in summary.index or not all(c in summary for c in cols):
        return ""
    aucs = ", ".join(f"k = {k}: {summary.loc['topk', c]:.3f}" for k, c in zip((1, 2, 5), cols))
    return (f"sae-probes benchmark (its own datasets and protocol: last token, C-grid logistic probes; reported beside "
            f"SAEBench's sparse probing, not mixed into it): the TopK SAE's test AUC with the top {aucs} latents "
            f"(`results/<profile>/tables/sae_probes_summary.csv` has every variant).")


def profile_dirs(root: str | Path, profile: str) -> tuple[Path, Path]:
    """``(results/<profile>, figures/<profile>)`` under ``root``."""
    root = Path(root)
    return root / "results" / profile, root / "figures" / profile


def render_results_section(root: str | Path, profile: str = README_PROFILE) -> str:
    """The markdown that goes between the README markers, built from results/<profile>/ and figures/<profile>/ only."""
    root = Path(root)
    res, figs = profile_dirs(root, profile)
    ledger_path = res / "claims_ledger.csv"
    if not ledger_path.exists():
        raise FileNotFoundError(f"{ledger_path} does not exist: run notebooks/07_figures.py (dvc repro) first")
    ledger = pd.read_csv(ledger_path, keep_default_na=False, na_values=[""])
    for col in ledger.columns:
        if ledger[col].dtype == object:
            ledger[col] = ledger[col].fillna("")
    scale = json.loads((res / "tables" / "scale.json").read_text())
    effects_path = res / "tables" / "effects.csv"
    effects = read_table(effects_path)
    effects = pd.DataFrame(columns=["metric"]) if effects is None else effects

    lines = [
        f"_Profile **`{profile}`**: generated by `notebooks/07_figures.py` through `scripts/update_readme_results.py` "
        f"from `results/{profile}/` and `figures/{profile}/` — do not edit this block by hand; `dvc repro` rewrites it._",
        "",
        f"**Scale of these numbers:** {_fmt_scale(scale)}. The papers used Gemma-2-2B layer 12, F = 18,432 and "
        "5–10M tokens: compare directions of change, not absolute values.",
        "",
        "**Absorption is lower-is-better.** Both papers present higher absorption scores as improvements; every "
        "figure axis and ledger verdict here uses the correct direction.",
        "",
        "### Did the penalties reduce absorption?",
        "",
    ]
    sentences = effect_sentences(effects)
    lines += sentences if sentences else ["- No penalised SAE with a no-penalty twin was run at this profile."]
    headline_path = res / "tables" / "headline.csv"
    headline = read_table(headline_path)
    headline = pd.DataFrame() if headline is None else headline
    lines += ["", "### Headline variants", "",
              "Mean ± 95% CI half-width over seeds (t interval); arrows give the better direction.", ""]
    lines += headline_lines(headline)
    probing_path = res / "tables" / "probing_summary.csv"
    probing = read_table(probing_path, index_col=0)
    if probing is not None:
        baseline = probing_baseline_line(probing)
        lines += ["", baseline] if baseline else []
    sae_probes_path = res / "tables" / "sae_probes_summary.csv"
    sae_probes = read_table(sae_probes_path, index_col=0)
    if sae_probes is not None:
        line = sae_probes_line(sae_probes)
        lines += ["", line] if line else []
    targets = target_lines(res / "tables", UNLEARNING_SD_TARGET)
    if targets:
        lines += ["", "### Targets set by the open issues", "",
                  "Read back from `results/" + profile + "/tables/` (`per_genre_gap`, `scr_n20_definitions`, "
                  "`unlearning_seed_stability`; notebook 07 explains each).", "", *targets]
    counts = ledger.groupby(["paper", "verdict"]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=[v for v in VERDICTS if v in counts.columns])
    lines += ["", "### Claims ledger", "",
              f"{len(ledger)} claims (`results/{profile}/claims_ledger.csv`, all columns there). The verdict rule is in "
              "`saelib/claims.py` (`VERDICT_RULE`) and printed in `notebooks/07_figures.py`. \"Original runs\" applies "
              "the same rule to the original Gemma-2-2B runs' recorded numbers (`docs/spec/original_runs.md`); "
              "\"(no CI)\" marks a single-run comparison. Each metric has its own margin m (absolute for bounded "
              "scores, a multiple of the measured seed SD otherwise; `docs/spec/claims.yaml`), and each comparison its "
              "minimum detectable effect (MDE: two-sample, α = 0.05, power 0.8, from the pooled seed SD). "
              "**underpowered** means the claim is unresolved and the MDE exceeds the effect the claim is about: "
              "the experiment could not have seen it. **within noise** means it could have, and did not.", "",
              md_table(counts.reset_index()), md_table(ledger_display(ledger)), "### Figures", ""]
    for stem, caption in FIGURES:
        if (figs / f"{stem}.png").exists():
            rel = f"figures/{profile}/{stem}"
            lines += [f"**{caption}** (`{rel}.png`, `.pdf`)", "", f"![{caption}]({rel}.png)", ""]
    lines += [f"Tables behind the figures: `results/{profile}/tables/*.csv` (and `.md`).", "",
              "### Running the paper profile", "", PAPER_PROFILE]
    return "\n".join(lines).rstrip() + "\n"


def replace_block(text: str, block: str) -> str:
    """``text`` with the content between the markers replaced by ``block`` (section appended if absent)."""
    n_start, n_end = text.count(START), text.count(END)
    if n_start == 0 and n_end == 0:
        return text.rstrip("\n") + f"\n\n## Results\n\n{START}\n{block}{END}\n"
    if n_start != 1 or n_end != 1:
        raise ValueError(f"README must contain exactly one {START} and one {END} (found {n_start} and {n_end})")
    i, j = text.index(START), text.index(END)
    if j < i:
        raise ValueError(f"{END} comes before {START} in the README")
    return text[: i + len(START)] + "\n" + block + text[j:]


def update_readme(readme: str | Path, block: str) -> bool:
    """Write ``block`` into ``readme`` between the markers (atomically). Returns True if it changed."""
    readme = Path(readme)
    if not readme.exists():
        raise FileNotFoundError(f"{readme} does not exist")
    old = readme.read_text(encoding="utf-8")
    new = replace_block(old, block)
    if new != old:
        atomic_write_text(readme, new)
    return new != old


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=".", help="repository root (holds README.md, results/, figures/)")
    parser.add_argument("--profile", default=README_PROFILE,
                        help=f"whose results (results/<profile>/); only {README_PROFILE!r} is written into README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md is out of date; write nothing")
    args = parser.parse_args(argv)
    root = Path(args.root)
    block = render_results_section(root, args.profile)
    readme = root / "README.md"
    if args.profile != README_PROFILE:
        if args.check:
            print(f"profile {args.profile!r} has no README block to check (README.md shows {README_PROFILE!r})")
            return 0
        out = atomic_write_text(profile_dirs(root, args.profile)[0] / "README_results.md", block)
        print(f"profile {args.profile!r}: wrote {out}; README.md (profile {README_PROFILE!r}) left alone")
        return 0
    if args.check:
        stale = replace_block(readme.read_text(encoding="utf-8"), block) != readme.read_text(encoding="utf-8")
        print("README.md results block is " + ("out of date" if stale else "up to date"))
        return 1 if stale else 0
    atomic_write_text(profile_dirs(root, args.profile)[0] / "README_results.md", block)
    changed = update_readme(readme, block)
    print(f"README.md results block {'updated' if changed else 'already up to date'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
