"""Unlearning splice cost: the later layers run from the cached clean residual (``saelib.replay``) vs the
full traced forward from the tokens, on the same real-text sequences and clamp in the same process.

    python benchmarks/unlearning.py                          # gemma-3-270m layer 8, 16 x 128 tokens, 2 rounds
    python benchmarks/unlearning.py --sequences 32 --rounds 3
    python benchmarks/unlearning.py --device cuda            # on a GPU machine

The measured function is the eval's own ``patched_ce_sums`` (forward, then the vocabulary-sized
unembedding of the changed positions); handing it the cached residual in another dtype than the model's
makes it take the full forward, so both arms run the same code apart from the layers up to the patched
one. The clamp is a random SAE's latent that fires on every token, so every position is re-scored. Arms
alternate (replay, full, replay, ...) so that drifting machine load hits both alike. Both must give the
same sums bit for bit. Printed: full/replay time for the forward alone (one model batch) and for the
whole splice, where the 262k-word unembedding, the same in both arms, takes most of the time.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from _heldout import add_model_args, model_and_heldout  # noqa: E402
from saelib.devices import synchronized  # noqa: E402
from saelib.evals import unlearning as U  # noqa: E402
from saelib.hooks import final_hidden, special_mask  # noqa: E402
from saelib.replay import final_hidden_from  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(ap)
    ap.add_argument("--sequences", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2, help="timed calls per arm")
    args = ap.parse_args(argv)

    device, model, layer, tokens_NS = model_and_heldout(args, args.sequences)
    cfg = U.UnlearningConfig()
    print(f"model {model.name} layer {layer} ({model.n_layers} layers), {tuple(tokens_NS.shape)} tokens on {device}, "
          f"model batch {cfg.model_batch_size}, torch threads {torch.get_num_threads()}")
    t0 = time.perf_counter()
    clean = U.clean_eval(model, layer, tokens_NS, batch_size=cfg.model_batch_size, token_chunk=cfg.token_chunk)
    print(f"clean run (once per corpus in unlearning_prep): {time.perf_counter() - t0:.1f} s")

    d = model.d_model
    g = torch.Generator().manual_seed(0)
    W_dec_FD = torch.randn(1, d, generator=g) / d ** 0.5
    sae = SimpleNamespace(encode=lambda x_ND: torch.ones(x_ND.shape[0], 1, device=x_ND.device),  # fires everywhere
                          decode=lambda f_NF: f_NF @ W_dec_FD.to(f_NF.device))
    patch = U.clamp_patch(sae, [0], 50.0)
    keep_NS = special_mask(model, tokens_NS)
    first_N = U.first_fired(sae, clean["x_NSD"], keep_NS, [0])
    other = torch.float64 if clean["x_NSD"].dtype != torch.float64 else torch.float32
    arms = {"replay": clean, "full": {**clean, "x_NSD": clean["x_NSD"].to(other)}}  # other dtype: full forward
    rows = slice(0, cfg.model_batch_size)
    forwards = {"replay": lambda: final_hidden_from(model, tokens_NS[rows], layer, clean["x_NSD"][rows], patch, keep_NS[rows]),
                "full": lambda: final_hidden(model, tokens_NS[rows], layer, patch, keep_NS[rows], None)}
    times: dict[str, list[float]] = {f"{part} {name}": [] for part in ("forward", "splice") for name in arms}
    sums = {}
    for _ in range(args.rounds):
        for name, c in arms.items():
            with synchronized(model.device):
                t = time.perf_counter()
                hidden = forwards[name]()
            times[f"forward {name}"].append(time.perf_counter() - t)
            with synchronized(model.device):
                t = time.perf_counter()
                sums[name] = U.patched_ce_sums(model, layer, tokens_NS, c, patch, first_N, cfg)
            times[f"splice {name}"].append(time.perf_counter() - t)
            print(f"  {name:6s} forward of {cfg.model_batch_size} sequences {times[f'forward {name}'][-1]:5.2f} s, "
                  f"splice of {tokens_NS.shape[0]} {times[f'splice {name}'][-1]:6.1f} s", flush=True)
            del hidden
    if not torch.equal(sums["replay"], sums["full"]):
        raise SystemExit(f"replay and full forward disagree: max |diff| {(sums['replay'] - sums['full']).abs().max():.3g}")
    mean = {k: sum(v) / len(v) for k, v in times.items()}
    n_seq = tokens_NS.shape[0]
    print(f"forward alone, per sequence: replay {mean['forward replay'] / cfg.model_batch_size * 1e3:.0f} ms, full "
          f"{mean['forward full'] / cfg.model_batch_size * 1e3:.0f} ms; full/replay {mean['forward full'] / mean['forward replay']:.2f}x")
    print(f"splice (forward + unembedding of every position), per sequence: replay {mean['splice replay'] / n_seq * 1e3:.0f} ms, "
          f"full {mean['splice full'] / n_seq * 1e3:.0f} ms; full/replay {mean['splice full'] / mean['splice replay']:.2f}x "
          f"(identical sums)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
