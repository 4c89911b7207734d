"""What the model-side benchmarks share: the model options and real held-out text to run it on."""
from __future__ import annotations

import argparse

from saelib.data.corpus import load_corpus, tokenize_corpus
from saelib.devices import resolve_device
from saelib.models import load_model


def add_model_args(ap: argparse.ArgumentParser) -> None:
    """``--model``, ``--layer``, ``--context`` and ``--device``."""
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--layer", type=int, default=None, help="default: the model's default SAE layer")
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (saelib.devices.resolve_device)")


def model_and_heldout(args: argparse.Namespace, n_sequences: int):
    """``(device, model, layer, tokens_NS)``: the model on the chosen device, the layer (checked) and
    ``n_sequences`` sequences of ``args.context`` tokens from the offline corpus's held-out split."""
    device = resolve_device(args.device)
    model = load_model(args.model, device=device)
    layer = model.default_layer if args.layer is None else model.check_layer(args.layer)
    docs = load_corpus("offline", "heldout", seed=0)["text"]
    tokens_NS = tokenize_corpus(model.tokenizer, docs, context=args.context, max_sequences=n_sequences)
    if tokens_NS.shape[0] < n_sequences:
        raise SystemExit(f"held-out corpus gave only {tokens_NS.shape[0]} sequences, {n_sequences} wanted")
    return device, model, layer, tokens_NS
