"""TopK training-step throughput: ours vs SAELens' TopKTrainingSAE, and achieved GFLOP/s vs a bare
bf16 matmul of the encoder's shape, all in one process.

    python benchmarks/train_step.py                                  # 640x5120x28, 640x5120x88, 2304x18432x320
    python benchmarks/train_step.py --shapes 640x5120x28 --impl sparse,dense --steps 12 --threads 2

Same d, F, k, batch B (2048), fp32 master weights and bf16 CPU autocast on both sides. Our step is
``saelib.train.train_step`` (decoder renormalisation, forward + AuxK bookkeeping, backward, clip,
parallel-gradient removal, fused Adam) plus the trainer's dead-latent counters; SAELens' step is
the body of ``SAETrainer._train_step`` (``training_forward_pass`` under autocast, firing counters,
backward, ``clip_grad_norm_(1.0)``, Adam). Steps run interleaved (ours, SAELens, matmul, ours, ...)
so drifting machine load hits all alike; each figure is the median step time. On a busy shared
machine use ``--threads 1 --clock cpu`` (process CPU time per step, insensitive to time slicing).

FLOPs. ``model`` = 10·B·d·F, what a dense TopK SAE step needs (forward 2 matmuls, backward 3; the
input gradient is not needed). ``executed`` = the multiply-adds our step performs: the dense
implementation does 4 matmuls (8·B·d·F) + a 2·B·k·d gather; the sparse one does the encoder matmul
(2·B·d·F) + four 2·B·k·d gathers/scatters. Peak = a bare ``x_BD @ W_DF`` bf16 matmul.
Goals (issue 3): ours >= 2x SAELens tokens/s; executed GFLOP/s >= 35% of the matmul's.

GPU (``--device cuda``, issue 14.1): the same comparison on a CUDA device (bf16 autocast there; the clock
waits for queued kernels before and after each timed call). For the device tool:

    python benchmarks/train_step.py --device cuda --shapes 640x5120x28 640x5120x89 2304x18432x320 --steps 20

Trainer overhead (``--trainer``, issue 14.3): ``train_sae`` end-to-end on a real on-disk
``ActivationCache`` (written to a temporary folder: shard loading, SHA-256 checks, shuffling, logging,
dead-latent counters, checkpoints, tqdm off) against the bare ``train_step`` loop over batches already
in memory, same shape and step count, with and without the background prefetch thread, in ``--rounds``
interleaved rounds (median of the per-round ratios). Goal: end-to-end tokens/s >= 90% of the bare step's.

    python benchmarks/train_step.py --trainer --shapes 640x5120x89 --steps 64 --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from saelib.devices import autocast_context, compute_dtype, resolve_device  # noqa: E402
from saelib.sae import TopKConfig, make_sae  # noqa: E402
from saelib.train import TrainConfig, active_latents, make_optimizer, train_step  # noqa: E402


def parse_shape(text: str) -> tuple[int, int, int]:
    """``DxFxK`` (e.g. ``640x5120x28``): input width, dictionary size, k."""
    parts = text.lower().split("x")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"shape must be DxFxK, got {text!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


class OursStep:
    """One training step of our TopK SAE, as ``train_sae`` runs it."""

    def __init__(self, d: int, f: int, k: int, batch: int, impl: str, device: torch.device = torch.device("cpu")):
        self.sae = make_sae("topk", TopKConfig(d_in=d, d_sae=f, k=k, backward_impl=impl)).to(device)
        self.cfg = TrainConfig(total_tokens=batch * 1000, batch_size=batch, device=str(device))
        self.opt = make_optimizer(self.sae, self.cfg, 1e-4)
        self.since_fired_F = torch.zeros(f, dtype=torch.int64, device=device)
        self.step = 0

    def __call__(self, x_BD: torch.Tensor) -> None:
        dead_F = self.since_fired_F >= self.cfg.dead_tokens_threshold
        res = train_step(self.sae, self.opt, x_BD, step=self.step, lr=1e-4, cfg=self.cfg, dead_mask_F=dead_F)
        fired_F, _ = active_latents(res.out, self.sae.cfg.d_sae)
        self.since_fired_F += x_BD.shape[0]
        self.since_fired_F[fired_F] = 0
        self.step += 1


class SAELensStep:
    """The body of SAELens' ``SAETrainer._train_step`` for a ``TopKTrainingSAE``."""

    def __init__(self, d: int, f: int, k: int, batch: int, device: torch.device = torch.device("cpu")):
        from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
        from sae_lens.saes.sae import TrainStepInput

        self.TrainStepInput = TrainStepInput
        self.device = device
        self.sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=d, d_sae=f, k=k, dtype="float32", device=str(device)))
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=1e-4, betas=(0.9, 0.999))
        self.since_fired_F = torch.zeros(f, device=device)
        self.act_freq_F = torch.zeros(f, device=device)
        self.step = 0

    def __call__(self, x_BD: torch.Tensor) -> None:
        self.sae.train()
        with autocast_context(self.device.type):
            out = self.sae.training_forward_pass(self.TrainStepInput(
                sae_in=x_BD, coefficients={}, dead_neuron_mask=(self.since_fired_F > 1000).bool(),
                n_training_steps=self.step, is_logging_step=False))
            with torch.no_grad():
                firing = out.feature_acts.bool().float()
                did_fire = firing.sum(-2).bool()
                self.since_fired_F += 1
                self.since_fired_F[did_fire] = 0
                self.act_freq_F += firing.sum(0)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.sae.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad()
        self.step += 1


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, x, clock, device: torch.device = torch.device("cpu")) -> float:
    _sync(device)
    t0 = clock()
    fn(x)
    _sync(device)
    return clock() - t0


def run_shape(d: int, f: int, k: int, batch: int, impls: list[str], steps: int, warmup: int, with_saelens: bool,
              clock=time.perf_counter, device: torch.device = torch.device("cpu")) -> dict:
    gen = torch.Generator().manual_seed(0)
    xs = [(torch.randn(batch, d, generator=gen) * 4.0 + 1.0).to(torch.bfloat16).to(device) for _ in range(4)]
    W_DF = (torch.randn(d, f, generator=gen) * 0.02).to(device=device, dtype=compute_dtype(device))  # the step's matmul dtype
    runners: dict[str, object] = {f"ours[{impl}]": OursStep(d, f, k, batch, impl, device) for impl in impls}
    saelens_error = None
    if with_saelens:
        try:
            runners["saelens"] = SAELensStep(d, f, k, batch, device)
        except ImportError as err:
            saelens_error = f"sae-lens unavailable: {err}"
    runners["matmul"] = lambda x: x.to(W_DF.dtype) @ W_DF
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(warmup + steps):
        for name, fn in runners.items():
            t = timed(fn, xs[i % len(xs)], clock, device)
            if i >= warmup:
                times[name].append(t)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    peak = 2 * batch * d * f / med["matmul"] / 1e9
    row: dict = {"d": d, "F": f, "k": k, "B": batch, "device": str(device), "matmul_ms": med["matmul"] * 1e3,
                 "matmul_gflops": peak, "saelens_error": saelens_error}
    for impl in impls:
        name = f"ours[{impl}]"
        sparse = runners[name].sae.cfg.sparse_backward
        executed = 2 * batch * d * f + 8 * batch * k * d if sparse else 8 * batch * d * f + 2 * batch * k * d
        t = med[name]
        row[name] = {
            "path": "sparse" if sparse else "dense", "ms": t * 1e3, "tokens_per_s": batch / t,
            "executed_gflops": executed / t / 1e9, "executed_frac_peak": executed / t / 1e9 / peak,
            "model_gflops": 10 * batch * d * f / t / 1e9, "model_frac_peak": 10 * batch * d * f / t / 1e9 / peak,
        }
        if "saelens" in med:
            row[name]["speedup_vs_saelens"] = med["saelens"] / t
    if "saelens" in med:
        row["saelens"] = {"ms": med["saelens"] * 1e3, "tokens_per_s": batch / med["saelens"],
                          "model_gflops": 10 * batch * d * f / med["saelens"] / 1e9}
    return row


def _write_cache(folder: Path, d: int, n_tokens: int, shard_tokens: int = 65_536):
    from saelib.activations import ActivationWriter

    seq = 128
    n_seq = max(1, n_tokens // seq)
    per_shard = max(1, shard_tokens // seq)
    w = ActivationWriter(folder, {"model": "bench", "layer": 0, "d_model": d, "context": seq, "n_sequences": n_seq,
                                  "special_ids": [], "tokens_sha256": "bench"})
    gen = torch.Generator().manual_seed(0)
    for s0 in range(0, n_seq, per_shard):
        n = min(per_shard, n_seq - s0)
        acts = (torch.randn(n * seq, d, generator=gen) * 4.0 + 1.0).to(torch.bfloat16)
        w.write_shard(acts, torch.zeros(n, seq, dtype=torch.int32), torch.ones(n, seq, dtype=torch.bool))
    w.manifest["complete"] = True  # the token hash is a placeholder: open the folder without finish()'s checks
    w._save()
    from saelib.activations import ActivationCache

    return ActivationCache(folder)


def run_trainer(d: int, f: int, k: int, batch: int, steps: int, warmup: int, rounds: int = 3) -> dict:
    """Bare ``train_step`` loop vs ``train_sae`` (prefetch on / off) over the same number of steps, in
    ``rounds`` interleaved rounds (bare, prefetch on, prefetch off; then again), so that a machine whose
    speed drifts between blocks (seen here: the bare step at 361, 408 and 418 ms in three runs minutes
    apart) moves the reference and the trainer alike. Each round gives one ratio per trainer setting; the
    row reports their median (``frac_of_bare``) and all of them (``fracs``)."""
    import tempfile

    from saelib.train import train_sae

    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    with tempfile.TemporaryDirectory() as tmp:
        cache = _write_cache(Path(tmp) / "cache", d, batch * (steps + warmup))
        xs = []
        for x in cache.iter_batches(batch, seed=0):
            xs.append(x)
            if len(xs) == steps + warmup:
                break
        bares: list[float] = []
        runs: dict[int, list[float]] = {2: [], 0: []}
        for r in range(rounds):
            ours = OursStep(d, f, k, batch, "auto")
            for x in xs[:warmup]:
                ours(x)
            t0 = time.perf_counter()
            for x in xs[warmup:]:
                ours(x)
            bares.append((time.perf_counter() - t0) / len(xs[warmup:]))
            for prefetch in runs:
                sae = make_sae("topk", TopKConfig(d_in=d, d_sae=f, k=k))
                cfg = TrainConfig(total_tokens=batch * steps, batch_size=batch, prefetch=prefetch, checkpoint_every=10**9,
                                  init_b_dec=False)  # the one-time geometric-median init is not per-step overhead
                res = train_sae(sae, cache, cfg, out_dir=Path(tmp) / f"run{prefetch}_{r}", resume=False, progress=False)
                runs[prefetch].append(res.wall_time_s / steps)
        bare = statistics.median(bares)
        row = {"d": d, "F": f, "k": k, "B": batch, "steps": steps, "rounds": rounds, "bare_ms": bare * 1e3,
               "bare_ms_rounds": [b * 1e3 for b in bares], "bare_tokens_per_s": batch / bare}
        for prefetch, per_step in runs.items():
            fracs = [b / t for b, t in zip(bares, per_step)]
            med = statistics.median(per_step)
            row[f"trainer_prefetch{prefetch}"] = {"ms": med * 1e3, "ms_rounds": [t * 1e3 for t in per_step],
                                                  "tokens_per_s": batch / med, "frac_of_bare": statistics.median(fracs),
                                                  "fracs": fracs}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", type=parse_shape, nargs="+", default=[(640, 5120, 28), (640, 5120, 88), (2304, 18432, 320)])
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--impl", default="auto", help="comma list of backward implementations: auto, sparse, dense")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per runner (median reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                    help="wall: elapsed time; cpu: process CPU time (robust on a shared machine with --threads 1)")
    ap.add_argument("--no-saelens", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--trainer", action="store_true", help="trainer end-to-end vs bare train_step (see above)")
    ap.add_argument("--rounds", type=int, default=3, help="--trainer: interleaved rounds (median ratio reported)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto (the step comparison; --trainer is CPU only)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    if args.trainer and device.type != "cpu":
        ap.error("--trainer measures the CPU trainer's overhead; run it without --device")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.trainer:
        rows = []
        for d, f, k in args.shapes:
            row = run_trainer(d, f, k, args.batch, args.steps, args.warmup, args.rounds)
            rows.append(row)
            print(f"\nd={d} F={f} k={k} B={args.batch}, {args.steps} steps x {args.rounds} rounds: bare train_step "
                  f"{row['bare_ms']:.1f} ms/step ({row['bare_tokens_per_s']:.0f} tok/s; rounds "
                  f"{', '.join(f'{b:.0f}' for b in row['bare_ms_rounds'])} ms)")
            for pf in (2, 0):
                t = row[f"trainer_prefetch{pf}"]
                print(f"  train_sae prefetch={pf}: {t['ms']:.1f} ms/step ({t['tokens_per_s']:.0f} tok/s); median of the "
                      f"rounds' ratios {100 * t['frac_of_bare']:.0f}% of the bare step's throughput "
                      f"(rounds {', '.join(f'{100 * x:.0f}%' for x in t['fracs'])})")
        print(f"\nload avg at end {os.getloadavg()[0]:.1f}")
        if args.json:
            args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")
        return
    impls = [s.strip() for s in args.impl.split(",") if s.strip()]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"threads {torch.get_num_threads()}"
    print(f"torch {torch.__version__}, device {device} ({where}), clock {args.clock}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, load avg {os.getloadavg()[0]:.1f}")
    rows = []
    for d, f, k in args.shapes:
        row = run_shape(d, f, k, args.batch, impls, args.steps, args.warmup, not args.no_saelens, CLOCKS[args.clock],
                        device)
        rows.append(row)
        print(f"\nd={d} F={f} k={k} B={args.batch}: bare {str(compute_dtype(device)).replace('torch.', '')} matmul {row['matmul_ms']:.1f} ms = {row['matmul_gflops']:.0f} GFLOP/s")
        if "saelens" in row:
            s = row["saelens"]
            print(f"  {'SAELens TopKTrainingSAE'.ljust(25)} {s['ms']:8.1f} ms/step  {s['tokens_per_s']:9.0f} tok/s")
        elif row["saelens_error"]:
            print(f"  SAELens: {row['saelens_error']}")
        for impl in impls:
            o = row[f"ours[{impl}]"]
            vs = f"  {o['speedup_vs_saelens']:.2f}x SAELens" if "speedup_vs_saelens" in o else ""
            label = f"ours [{impl}->{o['path']}]".ljust(25)
            print(f"  {label} {o['ms']:8.1f} ms/step  {o['tokens_per_s']:9.0f} tok/s{vs}"
                  f"  | executed {o['executed_gflops']:.0f} GFLOP/s = {100 * o['executed_frac_peak']:.0f}% of matmul"
                  f"  | model {o['model_gflops']:.0f} GFLOP/s = {100 * o['model_frac_peak']:.0f}%")
    print(f"\nload avg at end {os.getloadavg()[0]:.1f} (a shared machine inflates every figure; ratios are the robust part)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "clock": args.clock, "device": str(device),
                                         "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
