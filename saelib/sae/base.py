"""Shared SAE machinery: output tuple, base config, base module, SAELens-format save/load.

Every architecture computes ``pre = (x - b_dec) W_enc + b_enc`` and ``x_hat = f W_dec + b_dec``;
they differ in the activation that maps ``pre`` to the latents ``f`` and in their loss terms.
Parameters are stored in ``cfg.dtype`` (fp32 master weights); under ``torch.autocast("cpu",
dtype=torch.bfloat16)`` (or ``"cuda"``: compute follows the parameters' device) the matmuls run in
bf16 while every loss term stays fp32.

On disk an SAE is a SAELens folder: ``cfg.json`` + ``sae_weights.safetensors`` with ``W_enc``
(d_in, d_sae), ``b_enc`` (d_sae), ``W_dec`` (d_sae, d_in), ``b_dec`` (d_in) and, for
threshold architectures, ``threshold`` (d_sae). Our own config rides along in
``cfg.json["metadata"]["saelib_config"]`` so that ``load`` is the exact inverse of ``save``.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from ..io import atomic_save_safetensors, atomic_write_json, read_json

CFG_FILENAME = "cfg.json"
"""SAELens config file name."""
WEIGHTS_FILENAME = "sae_weights.safetensors"
"""SAELens weights file name."""
SAELENS_FORMAT_VERSION = "6.0.0"
"""SAELens cfg.json layout we write (the v6 layout: hook/model names live in ``metadata``)."""

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}


class SAEOutput(NamedTuple):
    """What ``forward`` returns."""

    x_hat_BD: Tensor
    """Reconstruction, float32."""
    f_BF: Tensor | None
    """Dense latents (zeros where inactive); ``None`` only when ``forward(..., dense_latents=False)``."""
    idx_BK: Tensor | None
    """Active-latent indices for TopK-style SAEs with a fixed k per token (else ``None``)."""
    val_BK: Tensor | None
    """Their activations (differentiable), aligned with ``idx_BK``."""
    losses: dict[str, Tensor]
    """Scalar fp32 terms; ``"loss"`` is the weighted total that training minimises."""


class SAEFormatError(ValueError):
    """A saved SAE folder is missing a file or does not describe an SAE we can build."""


def resolve_dtype(name: str) -> torch.dtype:
    """``"float32"`` → ``torch.float32``; clear error for unknown names."""
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPES)}")
    return _DTYPES[name]


@dataclass
class SAEConfig:
    """Fields shared by every architecture."""

    d_in: int
    """Width of the activations the SAE reads (d)."""
    d_sae: int
    """Number of latents (F, dictionary width)."""
    hook_name: str = ""
    """Where the activations come from, e.g. ``model.layers.8`` (SAELens ``metadata.hook_name``)."""
    model_name: str = ""
    """Name of the model the activations come from (SAELens ``metadata.model_name``)."""
    dtype: str = "float32"
    """Storage dtype of the parameters (master weights); compute uses bf16 under autocast."""
    seed: int = 42
    """Seed of the parameter initialisation."""
    normalize_decoder: bool = True
    """Keep decoder rows unit-norm: the trainer renormalises them before every step and removes the
    gradient component parallel to each row."""

    def __post_init__(self) -> None:
        if int(self.d_in) < 1 or int(self.d_sae) < 1:
            raise ValueError(f"d_in and d_sae must be positive, got d_in={self.d_in}, d_sae={self.d_sae}")
        resolve_dtype(self.dtype)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Inverse of ``to_dict``; unknown keys are an error (they would be silently lost)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.__name__} has no field(s) {unknown}; known fields: {sorted(names)}")
        return cls(**data)

    @classmethod
    def from_saved(cls, data: dict[str, Any]):
        """The config of a saved SAE (``cfg.json``): :meth:`from_dict`, plus whatever an architecture needs
        to read files written before one of its fields existed."""
        return cls.from_dict(data)


def compute_dtype(param_dtype: torch.dtype, device_type: str = "cpu") -> torch.dtype:
    """The autocast dtype (bf16) when autocast is on for ``device_type`` (the parameters' device type,
    ``"cpu"`` or ``"cuda"``), else the parameters' dtype."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return param_dtype


def geometric_median(x_ND: Tensor, *, max_iter: int = 200, tol: float = 1e-9, eps: float = 1e-12) -> Tensor:
    """Geometric median of the rows of ``x_ND`` by Weiszfeld iterations (computed in float64).

    Minimises ``Σ_n ‖x_n − y‖``. Starts at the mean; stops when a step moves ``y`` by less than
    ``tol`` relative to the data scale. Returns ``y_D`` in float32.
    """
    if x_ND.ndim != 2 or x_ND.shape[0] == 0:
        raise ValueError(f"geometric_median needs a non-empty (N, D) tensor, got shape {tuple(x_ND.shape)}")
    x = x_ND.detach().to(torch.float64)
    if not torch.isfinite(x).all():
        raise ValueError("geometric_median: input contains NaN or inf")
    y = x.mean(0)
    scale = float(x.norm(dim=1).max()) or 1.0
    for _ in range(max_iter):
        dist_N = (x - y).norm(dim=1)
        w_N = 1.0 / dist_N.clamp_min(eps * scale)
        y_new = (w_N[:, None] * x).sum(0) / w_N.sum()
        moved = float((y_new - y).norm())
        y = y_new
        if moved <= tol * scale:
            break
    # Weiszfeld converges only sublinearly when the median is a data point; test the nearest one
    # with the exact optimality condition ‖Σ_{i: x_i ≠ x_j} unit(x_i − x_j)‖ ≤ multiplicity(x_j).
    j = int((x - y).norm(dim=1).argmin())
    diff = x - x[j]
    dist = diff.norm(dim=1)
    other = dist > 0
    pull = (diff[other] / dist[other, None]).sum(0).norm()
    if float(pull) <= float((~other).sum()):
        y = x[j]
    return y.to(torch.float32)


class BaseSAE(nn.Module):
    """Parameters, init, decoder constraints and SAELens save/load shared by all architectures.

    Subclasses set ``arch``, ``config_cls``, ``saelens_architecture`` and implement ``encode`` and
    ``forward``. Parameter names match SAELens: ``W_enc`` (d_in, d_sae), ``b_enc``, ``W_dec``
    (d_sae, d_in), ``b_dec``.
    """

    arch: ClassVar[str] = ""
    config_cls: ClassVar[type[SAEConfig]] = SAEConfig
    saelens_architecture: ClassVar[str] = ""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        if not isinstance(cfg, self.config_cls):
            raise TypeError(f"{type(self).__name__} needs a {self.config_cls.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg
        dtype = resolve_dtype(cfg.dtype)
        # (d_in, d_sae) like SAELens; stored latent-major (strides (1, d_in)) when the gradient is
        # produced per latent (sparse TopK backward), so it lands without a transposing copy
        if self._encoder_latent_major():
            self.W_enc = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_in, dtype=dtype).T)
        else:
            self.W_enc = nn.Parameter(torch.empty(cfg.d_in, cfg.d_sae, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        self.W_dec = nn.Parameter(torch.empty(cfg.d_sae, cfg.d_in, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype))
        self.reset_parameters()

    def _encoder_latent_major(self) -> bool:
        """Memory layout of ``W_enc``: latent-major if True (set by architectures)."""
        return False

    # ---- shape-suffixed aliases (same tensors) -------------------------------------------
    @property
    def W_enc_DF(self) -> nn.Parameter:
        return self.W_enc

    @property
    def b_enc_F(self) -> nn.Parameter:
        return self.b_enc

    @property
    def W_dec_FD(self) -> nn.Parameter:
        return self.W_dec

    @property
    def b_dec_D(self) -> nn.Parameter:
        return self.b_dec

    # ---- init -------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Kaiming-uniform ``W_enc`` (nn.Linear's default: U(±1/√d_in)), ``b_enc = 0``,
        ``W_dec = W_encᵀ`` with unit-norm rows, ``b_dec = 0`` (set it with ``init_from_batch_``)."""
        gen = torch.Generator().manual_seed(int(self.cfg.seed))
        w_FD = torch.empty(self.cfg.d_sae, self.cfg.d_in, dtype=torch.float32)
        bound = 1.0 / math.sqrt(self.cfg.d_in)  # kaiming_uniform_(a=√5) with fan_in = d_in
        w_FD.uniform_(-bound, bound, generator=gen)
        self.W_enc.copy_(w_FD.T)
        self.b_enc.zero_()
        self.W_dec.copy_(w_FD / w_FD.norm(dim=1, keepdim=True))
        self.b_dec.zero_()

    @torch.no_grad()
    def init_from_batch_(self, x_BD: Tensor) -> None:
        """Data-dependent init from the first training batch: ``b_dec`` = geometric median."""
        x_BD = self._check_input(x_BD)
        self.b_dec.copy_(geometric_median(x_BD.float()).to(self.b_dec.dtype))

    # ---- decoder constraints (used by the trainer) ----------------------------------------
    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale each decoder row to unit L2 norm."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_decoder_grad_(self) -> None:
        """Remove from each row of ``W_dec.grad`` its component along that decoder row."""
        g_FD = self.W_dec.grad
        if g_FD is None:
            return
        w_FD = self.W_dec
        coef_F1 = torch.linalg.vecdot(g_FD, w_FD) / torch.linalg.vecdot(w_FD, w_FD).clamp_min(1e-24)
        g_FD.addcmul_(w_FD, coef_F1[:, None], value=-1.0)

    @torch.no_grad()
    def after_step_(self) -> None:
        """Called by the trainer after each optimizer step (architecture-specific projections)."""

    def lr_multiplier(self, name: str) -> float:
        """Factor on the trainer's learning rate for parameter ``name`` (1: one rate for all; normalised
        units, :mod:`saelib.sae.units`, differ). Read every step, so it may depend on ``init_from_batch_``."""
        return 1.0

    def uses_lr_multipliers(self) -> bool:
        """Whether :meth:`lr_multiplier` may differ from 1 (the trainer then gives each parameter its own
        Adam group); known when the optimizer is built, before ``init_from_batch_``."""
        return False

    # ---- shapes -----------------------------------------------------------------------------
    def _check_input(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"expected a tensor, got {type(x).__name__}")
        if x.ndim < 1 or x.shape[-1] != self.cfg.d_in:
            raise ValueError(f"{type(self).__name__} expects inputs (..., {self.cfg.d_in}), got {tuple(x.shape)}")
        return x

    def _check_latents(self, f: Tensor) -> Tensor:
        if f.ndim < 1 or f.shape[-1] != self.cfg.d_sae:
            raise ValueError(f"{type(self).__name__} expects latents (..., {self.cfg.d_sae}), got {tuple(f.shape)}")
        return f

    def pre_activations(self, x_BD: Tensor) -> Tensor:
        """``(x − b_dec) W_enc + b_enc`` in the compute dtype (bf16 under autocast)."""
        cd = compute_dtype(self.W_enc.dtype, self.W_enc.device.type)
        xc_BD = (x_BD.to(self.b_dec.dtype) - self.b_dec).to(cd)
        return torch.addmm(self.b_enc.to(cd), xc_BD, self.W_enc.to(cd))

    # ---- interface ----------------------------------------------------------------------------
    def encode(self, x_BD: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, f_BF: Tensor) -> Tensor:
        """``f W_dec + b_dec`` (float32); accepts any leading dims."""
        f = self._check_latents(f_BF)
        shape = f.shape[:-1]
        f_BF = f.reshape(-1, self.cfg.d_sae)
        cd = compute_dtype(self.W_dec.dtype, self.W_dec.device.type)
        x_hat_BD = (f_BF.to(cd) @ self.W_dec.to(cd)).float() + self.b_dec.float()
        return x_hat_BD.reshape(*shape, self.cfg.d_in)

    def forward(self, x_BD: Tensor, *, step: int | None = None, dead_mask_F: Tensor | None = None,
                dense_latents: bool = True) -> SAEOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def mse_loss(x_hat_BD: Tensor, x_BD: Tensor) -> Tensor:
        """Per-token squared error summed over d, mean over tokens (the original runs' loss)."""
        return (x_hat_BD.float() - x_BD.float()).pow(2).sum(-1).mean()

    # ---- SAELens format --------------------------------------------------------------------
    def saelens_config(self) -> dict[str, Any]:
        """The ``cfg.json`` dict (SAELens v6 layout plus our config under metadata)."""
        return {
            "architecture": self.saelens_architecture,
            "d_in": self.cfg.d_in,
            "d_sae": self.cfg.d_sae,
            "dtype": self.cfg.dtype,
            "device": "cpu",
            "apply_b_dec_to_input": True,
            "normalize_activations": "none",
            "reshape_activations": "none",
            **self._saelens_extra_config(),
            "metadata": {
                "sae_lens_version": SAELENS_FORMAT_VERSION,
                "sae_lens_training_version": SAELENS_FORMAT_VERSION,
                "model_name": self.cfg.model_name,
                "hook_name": self.cfg.hook_name,
                "saelib_architecture": self.arch,
                "saelib_config": self.cfg.to_dict(),
            },
        }

    def _saelens_extra_config(self) -> dict[str, Any]:
        return {}

    def saelens_state_dict(self) -> dict[str, Tensor]:
        """Tensors written to ``sae_weights.safetensors`` (detached contiguous copies)."""
        return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.state_dict().items()}

    def load_saelens_state_dict(self, tensors: dict[str, Tensor]) -> None:
        """Inverse of ``saelens_state_dict``."""
        self.load_state_dict(tensors, strict=True)

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/sae_weights.safetensors`` then ``folder/cfg.json`` (each atomically)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_save_safetensors(folder / WEIGHTS_FILENAME, self.saelens_state_dict(), metadata={"format": "pt"})
        atomic_write_json(folder / CFG_FILENAME, self.saelens_config())
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "BaseSAE":
        """Exact inverse of ``save``; also reads plain SAELens folders of supported architectures.

        Dispatches through the loader that ``saelib.sae`` registers (:func:`register_loader`), which
        knows every architecture; this module imports none of them."""
        if _LOADER is None:
            raise RuntimeError("no SAE loader registered: import saelib.sae (it registers load_sae)")
        sae = _LOADER(folder)
        if cls is not BaseSAE and not isinstance(sae, cls):
            raise SAEFormatError(f"{folder} holds a {type(sae).__name__} ({sae.arch!r}), not a {cls.__name__}")
        return sae


_LOADER: Callable[[str | Path], "BaseSAE"] | None = None
"""The folder → SAE loader of the architecture registry (``saelib.sae.load_sae``), set by :func:`register_loader`."""


def register_loader(loader: Callable[[str | Path], "BaseSAE"]) -> None:
    """Called once by ``saelib.sae``: lets :meth:`BaseSAE.load` dispatch on the folder's architecture."""
    global _LOADER
    _LOADER = loader


def read_saelens_folder(folder: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(cfg_dict, tensors)`` of a SAELens folder, with clear errors for missing files."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not folder.is_dir():
        raise SAEFormatError(f"SAE folder {folder} does not exist")
    for name in (CFG_FILENAME, WEIGHTS_FILENAME):
        if not (folder / name).exists():
            raise SAEFormatError(f"SAE folder {folder} has no {name} (expected SAELens layout: {CFG_FILENAME} + {WEIGHTS_FILENAME})")
    try:
        cfg_json = read_json(folder / CFG_FILENAME)
    except ValueError as err:  # json.JSONDecodeError
        raise SAEFormatError(f"{folder / CFG_FILENAME} is not valid JSON ({err}); {retrain_hint(folder)}") from None
    try:
        tensors = load_file(str(folder / WEIGHTS_FILENAME))
    except Exception as err:  # safetensors raises SafetensorError (not an OSError) for truncated/garbled files
        raise SAEFormatError(
            f"{folder / WEIGHTS_FILENAME} is corrupt or truncated ({type(err).__name__}: {err}); {retrain_hint(folder)}"
        ) from None
    return cfg_json, tensors


def retrain_hint(folder: str | Path) -> str:
    """How to rebuild the SAE in ``folder``: its train stage for ``checkpoints/<profile>/<variant>/sae``."""
    folder = Path(folder)
    if folder.name == "sae" and folder.parent.parent.parent.name == "checkpoints":
        return f"retrain it with `dvc repro train@{folder.parent.name}` (profile {folder.parent.parent.name})"
    return "save or download the SAE again"
