"""Shared fixtures. Tests run offline (HF_HUB_OFFLINE=1) and on CPU."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_model():
    """4-layer random Gemma-3 with the real tokenizer (fast)."""
    from saelib.models import load_model

    return load_model("tiny-gemma3", dtype=torch.float32, device="cpu")


@pytest.fixture(scope="session")
def gemma():
    """The real offline Gemma-3-270M (bf16 where bf16 matmuls are fast, else fp32: saelib.devices)."""
    from saelib.models import load_model

    return load_model("gemma-3-270m", device="cpu")
