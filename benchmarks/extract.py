"""Extraction throughput: nnsight trace (``saelib.hooks.residuals_batch``) vs a plain PyTorch
forward hook that stops after the layer, on the same real-text batches in the same process.

    python benchmarks/extract.py                       # gemma-3-270m layer 8, batches 16/32/64
    python benchmarks/extract.py --threads 1,2 --rounds 3
    python benchmarks/extract.py --device cuda --batch-sizes 64,128,256   # on a GPU machine

Both methods run interleaved (plain, nnsight, plain, nnsight, ...) so that drifting machine load
hits them alike; tokens/s counts every position of the batch. Goal: nnsight >= 90% of plain.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from _heldout import add_model_args, model_and_heldout  # noqa: E402
from saelib.devices import synchronized  # noqa: E402
from saelib.hooks import residuals_batch  # noqa: E402


class _Stop(Exception):
    """Raised by the plain hook to end the forward pass after the hooked layer."""


@torch.inference_mode()
def plain_residuals(model, tokens_NS, layer):
    """Baseline: register_forward_hook on the layer, keep its output, abort the rest of the forward."""
    captured = {}

    def hook(module, inputs, output):
        captured["x"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    handle = model.layers()[layer].register_forward_hook(hook)
    try:
        model.hf_model(tokens_NS.to(model.device))
    except _Stop:
        pass
    finally:
        handle.remove()
    return captured["x"].cpu()  # the extractor needs the rows on the host, as residuals_batch returns them


def _time(fn, model, *args):
    """Seconds ``fn(model, *args)`` takes, queued GPU work included."""
    with synchronized(model.device):
        t0 = time.perf_counter()
        out = fn(model, *args)
    return time.perf_counter() - t0, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--batch-sizes", default="16,32,64")
    ap.add_argument("--threads", default=str(torch.get_num_threads()), help="comma list for torch.set_num_threads")
    ap.add_argument("--rounds", type=int, default=1, help="timed batches per method and setting")
    ap.add_argument("--overhead-reps", type=int, default=10, help="repetitions of the 1x16-token overhead probe")
    args = ap.parse_args(argv)

    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    threads = [int(t) for t in args.threads.split(",")]
    device, model, layer, tokens = model_and_heldout(args, max(batch_sizes) * args.rounds)
    print(f"model {model.name} layer {layer} context {args.context} on {device}; cpu threads available {os.cpu_count()}")

    # correctness: both methods return the same residuals
    small = tokens[:2]
    torch.testing.assert_close(plain_residuals(model, small, layer), residuals_batch(model, small, layer))

    rows = []
    for nt in threads:
        torch.set_num_threads(nt)
        probe = tokens[:1, :16]
        plain_residuals(model, probe, layer), residuals_batch(model, probe, layer)  # warm-up
        t_plain = t_nn = 0.0
        for _ in range(args.overhead_reps):
            t_plain += _time(plain_residuals, model, probe, layer)[0]
            t_nn += _time(residuals_batch, model, probe, layer)[0]
        overhead_ms = (t_nn - t_plain) / args.overhead_reps * 1e3
        print(f"threads {nt}: 1x16-token forward plain {t_plain / args.overhead_reps * 1e3:.1f} ms, "
              f"nnsight {t_nn / args.overhead_reps * 1e3:.1f} ms -> per-trace overhead {overhead_ms:+.1f} ms")
        for bs in batch_sizes:
            t_plain = t_nn = 0.0
            n_tok = 0
            for r in range(args.rounds):
                batch = tokens[r * bs : (r + 1) * bs]
                t_plain += _time(plain_residuals, model, batch, layer)[0]
                t_nn += _time(residuals_batch, model, batch, layer)[0]
                n_tok += batch.numel()
            rows.append((nt, bs, n_tok / t_plain, n_tok / t_nn))
            print(f"threads {nt} batch {bs:3d}: plain {n_tok / t_plain:8.0f} tok/s   nnsight {n_tok / t_nn:8.0f} tok/s   "
                  f"nnsight/plain {t_plain / t_nn:6.1%}", flush=True)

    print("\nthreads  batch  plain_tok_s  nnsight_tok_s  ratio")
    for nt, bs, p, n in rows:
        print(f"{nt:7d}  {bs:5d}  {p:11.0f}  {n:13.0f}  {n / p:5.1%}")
    best = max(rows, key=lambda r: r[3])
    ratio = sum(n for *_, n in rows) / sum(p for *_, p, _ in rows)
    print(f"best nnsight setting: threads {best[0]}, batch {best[1]} ({best[3]:.0f} tok/s); "
          f"mean nnsight/plain {ratio:.1%} (goal >= 90%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
