"""Co-activation penalties: training-step time and peak memory with and without each penalty, and the
original runs' dense F×F formulation for comparison.

    python benchmarks/penalty.py                                   # 640x5120x100 and 2304x18432x100
    python benchmarks/penalty.py --shapes 2304x18432x320 --variants ortho_run --steps 2
    python benchmarks/penalty.py --shapes 2304x18432x100 --dense   # also the dense as-run form (~11 GB)

Step = ``saelib.train.train_step`` on a TopK SAE (bf16 autocast, fp32 master weights, B = 2048): the
penalty's cost includes its backward. Variants (``--variants``):
``none``; ``ortho_run`` / ``compete_run`` (as run: per-batch statistics, mean over F², diagonal);
``compete_desc`` (as described: EMA of the coefficients — a dense F×F fp32 buffer up to
``ema_dense_max_mb``, 1.27 GiB at F = 18432 — plus the L1 term); ``ortho_dec`` (decoder-cosine target);
``ortho_run_torch`` / ``compete_run_torch`` (the same with ``backend="torch"``: the pair pass as torch
ops instead of the compiled kernel, for the ratio between the two); ``dense_run`` (the as-run 004
penalty written as the original code did: B×F mask, MᵀM, min-count matrix, fᵀf, all F×F fp32; run by default only when F <= 8192, else with ``--dense``).

Time: every variant shares one SAE and runs interleaved (none, ortho_run, ..., none, ...) so that
drifting load on the shared machine hits all alike; figures are medians. ``penalty-only`` times the
penalty's forward + backward alone on a fixed SAE output (the least noisy figure).
Memory: torch on CPU allocates through malloc, so tracemalloc does not see tensors; instead each
variant runs in a fresh subprocess that resets its peak-RSS mark (``/proc/self/clear_refs``; a
child inherits its parent's ``ru_maxrss``), takes two plain steps, reads its peak RSS (``VmHWM``),
then takes two steps with the penalty and reads it again: the difference is the extra peak memory
of a penalised step (the penalty's temporaries sit on top of the SAE step's live activations).
Persistent state (the EMA buffer) is included.
Goals (issue 4): overhead <= 10% of step time; extra memory < 200 MB at F = 18432.
On a busy machine run with ``OMP_WAIT_POLICY=PASSIVE``: with OpenMP's default spinning, torch's
2-thread ops (the SAE step's too) slow down erratically whenever another process holds a core.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from saelib.devices import autocast_context  # noqa: E402
from saelib.penalties import PenaltyConfig, make_penalty  # noqa: E402
from saelib.sae import TopKConfig, make_sae  # noqa: E402
from saelib.train import TrainConfig, make_optimizer, train_step  # noqa: E402
from train_step import parse_shape  # noqa: E402  (benchmarks/train_step.py: this folder is sys.path[0])

VARIANTS = ("none", "ortho_run", "compete_run", "ortho_run_torch", "compete_run_torch", "compete_desc", "ortho_dec",
            "dense_run")


class DenseAsRunPenalty:
    """The as-run orthogonality penalty written the way the original code computed it (benchmark
    reference only): ``(w * D**2).mean()`` over dense F×F matrices, fp32, no autocast."""

    needs_dense_latents = False

    def __init__(self, d_sae: int, lam: float = 0.075):
        self.F, self.lam = d_sae, lam

    def __call__(self, out, sae, step: int) -> dict[str, torch.Tensor]:
        with torch.autocast(device_type="cpu", enabled=False):
            B = out.idx_BK.shape[0]
            f = torch.zeros(B, self.F).scatter(1, out.idx_BK, out.val_BK.float())
            masks = torch.zeros(B, self.F).scatter_(1, out.idx_BK, 1.0)
            inter = masks.t() @ masks
            counts = inter.diag().unsqueeze(0)
            w = inter / (torch.min(counts, counts.t()) + 1e-8)
            dots = torch.einsum("bi,bj->ij", f, f) / B
            p = (w * dots.pow(2)).mean()
        return {"penalty": self.lam * p, "penalty_raw": p.detach()}


def build_penalty(variant: str, F: int, k: int, ramp_steps: int):
    if variant == "none":
        return None
    if variant == "dense_run":
        return DenseAsRunPenalty(F)
    cfg = {
        "ortho_run": PenaltyConfig(kind="orthogonality", reading="as_run"),
        "compete_run": PenaltyConfig(kind="competition", reading="as_run", ramp_steps=ramp_steps),
        "compete_desc": PenaltyConfig(kind="competition", reading="as_described", ramp_steps=ramp_steps),
        "ortho_dec": PenaltyConfig(kind="orthogonality", reading="as_run", target="decoder"),
        "ortho_run_torch": PenaltyConfig(kind="orthogonality", reading="as_run", backend="torch"),
        "compete_run_torch": PenaltyConfig(kind="competition", reading="as_run", ramp_steps=ramp_steps,
                                           backend="torch"),
    }[variant]
    return make_penalty(cfg, F, k)


def make_batches(d: int, B: int, n: int = 3) -> list[torch.Tensor]:
    """Structured synthetic activations: each token a sparse non-negative mix of 4d fixed directions plus
    noise, so that latents co-fire repeatedly as on real data; bf16 like the activation cache."""
    gen = torch.Generator().manual_seed(0)
    n_dirs = 4 * d
    dirs = torch.nn.functional.normalize(torch.randn(n_dirs, d, generator=gen), dim=1)
    out = []
    for _ in range(n):
        coef = torch.relu(torch.randn(B, n_dirs, generator=gen) - 2.0) * (torch.rand(n_dirs, generator=gen) + 0.5)
        x = coef @ dirs * 4.0 + 0.3 * torch.randn(B, d, generator=gen)
        out.append(x.to(torch.bfloat16))
    return out


class Stepper:
    def __init__(self, d: int, F: int, k: int, B: int):
        self.sae = make_sae("topk", TopKConfig(d_in=d, d_sae=F, k=k))
        self.cfg = TrainConfig(total_tokens=B * 1000, batch_size=B)
        self.opt = make_optimizer(self.sae, self.cfg, 1e-4)
        self.step = 0

    def __call__(self, x_BD: torch.Tensor, penalty) -> dict[str, float]:
        res = train_step(self.sae, self.opt, x_BD, step=self.step, lr=1e-4, cfg=self.cfg, penalty=penalty)
        self.step += 1
        logs = {k: float(v.detach()) for k, v in res.penalty.items()}
        logs["mse"] = float(res.out.losses["mse"].detach())
        return logs


def penalty_only_ms(stepper: Stepper, x_BD: torch.Tensor, penalty, reps: int) -> float:
    """Median time of the penalty's forward + backward (to val_BK / W_dec) on a fixed SAE output."""
    with autocast_context("cpu"):
        out = stepper.sae(x_BD, dense_latents=False)
    val = out.val_BK.detach().float().requires_grad_(True)
    out = out._replace(val_BK=val)
    ts = []
    for r in range(reps):
        t0 = time.perf_counter()
        p = penalty(out, stepper.sae, 10_000 + r)["penalty"]
        torch.autograd.backward(p)
        ts.append(time.perf_counter() - t0)
        val.grad = None
        stepper.sae.zero_grad(set_to_none=True)
    return statistics.median(ts) * 1e3


def time_shape(d, F, k, B, variants, steps, warmup, ramp_steps, reps) -> dict:
    xs = make_batches(d, B)
    stepper = Stepper(d, F, k, B)
    stepper.sae.init_from_batch_(xs[0].float())
    pens = {v: build_penalty(v, F, k, ramp_steps) for v in variants}
    wall: dict[str, list[float]] = {v: [] for v in variants}
    cpu: dict[str, list[float]] = {v: [] for v in variants}
    last: dict[str, dict] = {}
    for i in range(warmup + steps):
        for v in variants:
            t0, c0 = time.perf_counter(), time.process_time()
            last[v] = stepper(xs[i % len(xs)], pens[v])
            if i >= warmup:
                wall[v].append(time.perf_counter() - t0)
                cpu[v].append(time.process_time() - c0)
    row: dict = {"d": d, "F": F, "k": k, "B": B, "variants": {}}
    base_w, base_c = statistics.median(wall["none"]), statistics.median(cpu["none"])
    for v in variants:
        w, c = statistics.median(wall[v]), statistics.median(cpu[v])
        rec = {"step_ms": w * 1e3, "step_cpu_ms": c * 1e3}
        if v != "none":
            rec["overhead_pct"] = 100 * (w - base_w) / base_w
            rec["overhead_cpu_pct"] = 100 * (c - base_c) / base_c
            rec["penalty_only_ms"] = penalty_only_ms(stepper, xs[0], pens[v], reps)
            rec["penalty_only_pct_of_step"] = 100 * rec["penalty_only_ms"] / (base_w * 1e3)
            lg = last[v]
            rec["penalty_over_mse"] = lg.get("penalty_coact", lg.get("penalty", 0.0)) / lg["mse"]
            rec["coact_pairs"] = lg.get("coact_pairs")
            if "ema_entries" in lg:
                rec["ema_entries"] = lg["ema_entries"]
            ema = getattr(pens[v], "ema", None)
            if ema is not None:  # allocated state (calloc'd pages count in RSS only once touched)
                st = ema.state()
                rec["state_mib"] = sum(t.numel() * t.element_size() for t in st.values()
                                       if isinstance(t, torch.Tensor)) / 2**20
        row["variants"][v] = rec
    return row


def peak_rss_mib() -> float:
    """Peak resident set size of this process (``VmHWM``), MiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0). Needed because a child started by
    fork/exec inherits its parent's high-water mark, which would hide everything below it."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def child_memory(d, F, k, B, variant, ramp_steps) -> dict:
    """Run in a fresh process: peak RSS after 2 plain steps and after 2 penalised steps (MiB)."""
    reset_peak_rss()
    xs = make_batches(d, B, n=2)
    stepper = Stepper(d, F, k, B)
    stepper.sae.init_from_batch_(xs[0].float())
    pen = build_penalty(variant, F, k, ramp_steps)
    for i in range(2):
        stepper(xs[i], None)
    plain = peak_rss_mib()
    for i in range(2):
        stepper(xs[i], pen)
    with_pen = peak_rss_mib()
    return {"peak_plain_mib": plain, "peak_with_mib": with_pen, "extra_mib": with_pen - plain}


def memory_shape(d, F, k, B, variants, ramp_steps) -> dict[str, dict]:
    out = {}
    for v in variants:
        if v == "none":
            continue
        cmd = [sys.executable, __file__, "--child", f"{d}x{F}x{k}", "--variant", v, "--batch", str(B),
               "--ramp-steps", str(ramp_steps)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            out[v] = {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
        else:
            out[v] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", type=parse_shape, nargs="+", default=[(640, 5120, 100), (2304, 18432, 100)])
    ap.add_argument("--variants", default="none,ortho_run,compete_run,compete_desc",
                    help=f"comma list from {VARIANTS} ('none' is always added)")
    ap.add_argument("--dense", action="store_true", help="also run dense_run when F > 8192 (~8 x 4F^2 bytes)")
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant (median reported)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3, help="penalty-only repetitions")
    ap.add_argument("--ramp-steps", type=int, default=0, help="warmup steps of the competition ramp (0: full weight)")
    ap.add_argument("--no-memory", action="store_true", help="skip the per-variant memory subprocesses")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--child", type=parse_shape, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child is not None:
        d, F, k = args.child
        print(json.dumps(child_memory(d, F, k, args.batch, args.variant, args.ramp_steps)))
        return
    variants = ["none"] + [v for v in (s.strip() for s in args.variants.split(",")) if v and v != "none"]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {VARIANTS}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()} (penalty: PenaltyConfig defaults), "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, load avg {os.getloadavg()[0]:.1f}")
    rows = []
    for d, F, k in args.shapes:
        vs = list(variants)
        if "dense_run" not in vs and (F <= 8192 or args.dense):
            vs.append("dense_run")
        row = time_shape(d, F, k, args.batch, vs, args.steps, args.warmup, args.ramp_steps, args.reps)
        if not args.no_memory:
            for v, m in memory_shape(d, F, k, args.batch, vs, args.ramp_steps).items():
                row["variants"][v].update(m)
        rows.append(row)
        print(f"\nd={d} F={F} k={k} B={args.batch}  (B*k^2 = {args.batch * k * k / 1e6:.1f}M pair instances, "
              f"F^2 = {F * F / 1e6:.1f}M)")
        print(f"  {'variant':13s} {'step ms':>9s} {'cpu ms':>9s} {'overhead':>9s} {'pen-only':>9s} {'pen/step':>9s}"
              f" {'extra MiB':>10s} {'pen/mse':>9s} {'pairs':>10s}")
        for v, r in row["variants"].items():
            ov = f"{r['overhead_pct']:8.0f}%" if "overhead_pct" in r else f"{'':9s}"
            po = f"{r['penalty_only_ms']:9.0f}" if "penalty_only_ms" in r else f"{'':9s}"
            pp = f"{r['penalty_only_pct_of_step']:8.0f}%" if "penalty_only_pct_of_step" in r else f"{'':9s}"
            mem = (f"{r['extra_mib']:10.0f}" if "extra_mib" in r else f"{'err' if 'error' in r else '':>10s}")
            pm = f"{r['penalty_over_mse']:9.1e}" if "penalty_over_mse" in r else f"{'':9s}"
            pairs = f"{r['coact_pairs']:10.0f}" if r.get("coact_pairs") is not None else f"{'':10s}"
            print(f"  {v:13s} {r['step_ms']:9.0f} {r['step_cpu_ms']:9.0f} {ov} {po} {pp} {mem} {pm} {pairs}")
            if "error" in r:
                print(f"      memory child failed: {r['error']}")
            if "state_mib" in r:
                print(f"      + persistent EMA state {r['state_mib']:.0f} MiB (RSS grows to it as pairs get touched)")
        if "dense_run" not in row["variants"]:
            dense_gib = 8 * 4 * F * F / 2**30
            print(f"  dense_run skipped at F={F}: the as-run code holds ~8 F×F fp32 tensors = {dense_gib:.1f} GiB "
                  f"(pass --dense to run it)")
            for prev in reversed(rows[:-1]):  # extrapolate the last dense measurement by (F / F_prev)^2
                r = prev["variants"].get("dense_run", {})
                if "penalty_only_ms" in r:
                    scale = (F / prev["F"]) ** 2
                    mem = f", extra memory ~{r['extra_mib'] * scale / 1024:.1f} GiB" if "extra_mib" in r else ""
                    print(f"    extrapolated from F={prev['F']} (x{scale:.1f}): penalty-only ~{r['penalty_only_ms'] * scale / 1e3:.0f} s"
                          f"{mem}")
                    break
    print(f"\nload avg at end {os.getloadavg()[0]:.1f} (a shared machine inflates every figure; the "
          "interleaved ratios and penalty-only times are the robust part)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
