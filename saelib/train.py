"""Train an SAE on cached activations: bf16 autocast, per-step JSON logs, atomic checkpoints, resume.

One step (the original runs' order): unit-normalise the decoder rows → forward (+ penalty) → backward
→ clip the gradient norm → remove each decoder-row gradient's component along its row → Adam.
LR = ``2e-4 / sqrt(F / 2^14)`` unless given; constant, optional linear warmup, then linear decay to
0 over the last ``lr_decay_frac`` of the steps. Dead latents (no firing for
``dead_tokens_threshold`` tokens; for TopK codes, not selected by any token's top-k) feed the AuxK loss
of TopK-style SAEs.

Device: ``TrainConfig.device`` ("auto": CUDA when available, else CPU). The SAE, the penalty's state,
the dead-latent counters and every batch live there; autocast follows the batch's device type. A
background thread reads batches ahead (``TrainConfig.prefetch``), pinned for CUDA.

Outputs in ``out_dir``: ``log.jsonl`` (one record per logged step), ``checkpoint.pt`` (model,
optimizer, penalty state, step, data position, RNG, dead counters; written atomically),
``sae/`` (SAELens layout) and ``train_summary.json``. A run that finds a compatible checkpoint
continues from it and produces bit-identical results to an uninterrupted run. Times add up across
resumes: the checkpoint holds the training seconds spent up to its step, so ``time_s`` in the log and
``wall_time_s`` in the summary count every step once (work lost after the last checkpoint is redone and
counted when it is redone, not twice).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import queue
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import Tensor

from .devices import bf16_matmul_is_fast, resolve_device
from .io import atomic_torch_save, atomic_write_json, atomic_write_text
from .sae.base import BaseSAE, SAEOutput

Penalty = Callable[[SAEOutput, BaseSAE, int], dict[str, Tensor]]
"""``penalty(out, sae, step) -> {"penalty": term added to the loss, "penalty_raw": P, ...}``."""

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
SUMMARY_NAME = "train_summary.json"
SAE_DIRNAME = "sae"
_IGNORED_FOR_RESUME = ("log_every", "checkpoint_every", "device", "prefetch")


class ActivationSource(Protocol):
    """What the trainer needs from an activation cache (``saelib.activations.ActivationCache``)."""

    d_model: int
    n_tokens: int

    def iter_batches(self, batch_size: int, *, seed: int, shuffle: bool = True, drop_last: bool = True) -> Iterator[Tensor]:
        ...


@dataclass
class TrainConfig:
    """How to train (the SAE's own config says what to train)."""

    total_tokens: int
    """Training tokens; the run has ``total_tokens // batch_size`` steps (cycling the cache if needed)."""
    batch_size: int = 2048
    """Tokens per step (B)."""
    lr: float | None = None
    """Adam learning rate; ``None`` → ``2e-4 / sqrt(d_sae / 2**14)``."""
    lr_warmup_steps: int = 0
    """Linear LR warmup steps (0: none, as in the TopK runs)."""
    lr_decay_frac: float = 1 / 8
    """Fraction of steps at the end over which the LR decays linearly to 0."""
    grad_clip: float = 1.0
    """Max global gradient norm (``clip_grad_norm_``); ``0`` disables clipping."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam β1, β2."""
    adam_eps: float = 1e-8
    """Adam ε."""
    seed: int = 42
    """Seed of the data order (epoch e shuffles with ``seed + e``) and of torch's global RNG."""
    log_every: int = 1
    """Write a ``log.jsonl`` record every this many steps (and at the last step)."""
    checkpoint_every: int = 500
    """Write ``checkpoint.pt`` every this many steps (and at the end)."""
    dead_tokens_threshold: int = 10_000_000
    """A latent is dead (enters AuxK) after this many training tokens without firing."""
    autocast_bf16: bool = True
    """Run the forward pass under bf16 autocast on the training device (AMX matmuls on CPU, tensor cores
    on CUDA); master weights, losses and the penalty stay fp32. Where the device has no fast bf16
    matmul (:func:`bf16_matmul_is_fast`: e.g. an AVX2-only CPU, where one 640x2048x5120 bf16 matmul
    took 100 s against 0.1 s in fp32) the step runs in fp32 with a warning, and ``train_summary.json``
    records the dtype used (``compute_dtype``)."""
    device: str = "auto"
    """Where to train: "auto" (CUDA when ``torch.cuda.is_available()``, else CPU), "cpu", "cuda" or
    "cuda:N". The trainer moves the SAE (and the penalty's state) there and each batch as it comes
    (non-blocking); the dead-latent counters live there too. Checkpoints are read to CPU, then moved."""
    init_b_dec: bool = True
    """Initialise ``b_dec`` (and data-dependent parameters) from the first batch (geometric median)."""
    prefetch: int = 2
    """Batches read ahead by a background thread (shard loading and shuffling overlap the steps; the
    batches and their order are unchanged); 0 reads them in the training loop."""
    shuffle: bool = True
    """Shuffle the cache's tokens (per epoch)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.total_tokens < self.batch_size:
            raise ValueError(f"total_tokens ({self.total_tokens}) is less than one batch ({self.batch_size})")
        if not 0.0 <= self.lr_decay_frac <= 1.0:
            raise ValueError(f"lr_decay_frac must be in [0, 1], got {self.lr_decay_frac}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {self.prefetch}")
        if self.log_every < 1 or self.checkpoint_every < 1:
            raise ValueError("log_every and checkpoint_every must be >= 1")
        self.adam_betas = tuple(float(b) for b in self.adam_betas)  # type: ignore[assignment]

    @property
    def torch_device(self) -> torch.device:
        """:func:`resolve_device` of ``device``."""
        return resolve_device(self.device)

    @property
    def n_steps(self) -> int:
        """Number of optimizer steps."""
        return self.total_tokens // self.batch_size

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d


def step_uses_bf16(cfg: "TrainConfig", device_type: str) -> bool:
    """``cfg.autocast_bf16`` unless the device has no fast bf16 matmul (then fp32, warned once)."""
    if not cfg.autocast_bf16:
        return False
    if bf16_matmul_is_fast(device_type):
        return True
    _warn_no_bf16(device_type)
    return False


@functools.lru_cache(maxsize=None)
def _warn_no_bf16(device_type: str) -> None:
    warnings.warn(f"this {device_type} has no fast bf16 matmul (no AVX-512/AMX): training runs in fp32 "
                  "instead of bf16 autocast (results differ from bf16 runs in the last digits)", RuntimeWarning,
                  stacklevel=3)


class NonFiniteLossError(FloatingPointError):
    """A loss term (or the gradient norm) became NaN/inf."""

    def __init__(self, step: int, term: str, value: float, *, penalty_lambda: float | None = None, variant: str | None = None):
        self.step, self.term, self.value = step, term, value
        self.penalty_lambda, self.variant = penalty_lambda, variant
        where = f"variant {variant!r}: " if variant else ""
        if penalty_lambda is not None:
            fix = (f"the co-activation penalty is on (λ = {penalty_lambda:g}) and is the likely cause: lower `lam` or "
                   f"`lam_mult` in params.yaml sae_variants.{variant or '<variant>'}.penalty, then `dvc repro "
                   f"train@{variant or '<variant>'}`")
        else:
            fix = "check the activation cache for NaN/inf (`dvc repro extract` rebuilds it) or lower the learning rate (`train: {lr: ...}`)"
        super().__init__(f"{where}training diverged: {term!r} = {value} at step {step} (0-based); {fix}")

    def for_variant(self, variant: str) -> "NonFiniteLossError":
        """The same error, naming ``variant`` (the pipeline adds it)."""
        return NonFiniteLossError(self.step, self.term, self.value, penalty_lambda=self.penalty_lambda, variant=variant)


@dataclass
class TrainResult:
    """What ``train_sae`` returns."""

    sae: BaseSAE
    """The trained SAE (eval mode)."""
    out_dir: Path
    """Run folder."""
    n_steps: int
    """Steps in the run."""
    final: dict[str, float]
    """The last logged record."""
    summary: dict[str, Any]
    """Contents of ``train_summary.json``."""
    resumed_from: int = 0
    """Step the run continued from (0: fresh)."""
    wall_time_s: float = 0.0
    """Training seconds of the whole run: this call's loop plus, after a resume, the seconds the
    checkpoint had recorded up to its step."""
    log_path: Path = field(default_factory=Path)
    sae_dir: Path = field(default_factory=Path)


def default_lr(d_sae: int) -> float:
    """``2e-4 / sqrt(F / 2^14)`` (1.886e-4 at F = 18432)."""
    return 2e-4 / math.sqrt(d_sae / 2**14)


def lr_at(step: int, n_steps: int, base_lr: float, *, warmup_steps: int = 0, decay_frac: float = 1 / 8) -> float:
    """LR of 0-based ``step``: linear warmup ``(step+1)/warmup``, constant, then linear decay.

    Decay starts at ``int(n_steps·(1 − decay_frac))`` (step 4271 of 4882 at 1/8) with factor
    ``(n_steps − step) / (n_steps − start)``.
    """
    scale = 1.0
    if warmup_steps > 0 and step < warmup_steps:
        scale = (step + 1) / warmup_steps
    start = int(n_steps * (1.0 - decay_frac))
    if decay_frac > 0 and step >= start and n_steps > start:
        scale *= (n_steps - step) / (n_steps - start)
    return base_lr * scale


def lr_travel(n_steps: int, base_lr: float, *, warmup_steps: int = 0, decay_frac: float = 1 / 8) -> float:
    """``Σ_t lr_t`` over the run: about the farthest Adam can move any one parameter, since its
    per-step update ``lr·m̂/(√v̂ + ε)`` stays within about ``lr`` in magnitude."""
    return float(sum(lr_at(t, n_steps, base_lr, warmup_steps=warmup_steps, decay_frac=decay_frac)
                     for t in range(n_steps)))


def make_optimizer(sae: BaseSAE, cfg: TrainConfig, lr: float) -> torch.optim.Adam:
    """Adam over all SAE parameters (fused CPU kernel when available). When the SAE's
    :meth:`~saelib.sae.base.BaseSAE.lr_multiplier` may differ from 1 (``uses_lr_multipliers``), every
    parameter gets a group of its own, named after it (``train_step`` scales its rate); otherwise one group,
    as in the original runs."""
    groups = _param_groups(sae)
    try:
        return torch.optim.Adam(groups, lr=lr, betas=cfg.adam_betas, eps=cfg.adam_eps, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(groups, lr=lr, betas=cfg.adam_betas, eps=cfg.adam_eps, foreach=True)


def _param_groups(sae: BaseSAE) -> list[dict[str, Any]]:
    if not sae.uses_lr_multipliers():
        return [{"params": list(sae.parameters()), "name": ""}]
    return [{"params": [p], "name": n} for n, p in sae.named_parameters()]


def active_latents(out: SAEOutput, d_sae: int) -> tuple[Tensor, Tensor]:
    """``(fired_F, l0)``: which latents fired in the batch, and the mean non-zero count per token.

    TopK-style codes: a latent fired when it is in some token's top-k set, whatever its ReLU value
    (the original runs' dead-latent rule: AuxK revives latents that never get *selected*); ``l0``
    counts the selected entries that are > 0. Dense codes: fired = non-zero somewhere."""
    with torch.no_grad():
        if out.idx_BK is not None and out.val_BK is not None:
            fired_F = torch.zeros(d_sae, dtype=torch.bool, device=out.idx_BK.device)
            fired_F[out.idx_BK.reshape(-1)] = True
            return fired_F, (out.val_BK > 0).sum(1).float().mean()
        nz_BF = out.f_BF != 0
        return nz_BF.any(0), nz_BF.sum(1).float().mean()


def _penalty_lambda(penalty: Penalty | None) -> float | None:
    """λ of a co-activation penalty (``None`` when there is none)."""
    cfg = getattr(penalty, "cfg", None)
    lam = getattr(cfg, "lam", None)
    return None if penalty is None or lam is None else float(lam)


def _first_bad(step: int, terms: dict[str, Tensor], penalty: Penalty | None = None) -> None:
    vals = torch.stack([t.detach().float().reshape(()) for t in terms.values()])
    if bool(torch.isfinite(vals).all()):
        return
    for name, v in zip(terms, vals.tolist()):
        if not math.isfinite(v):
            raise NonFiniteLossError(step, name, v, penalty_lambda=_penalty_lambda(penalty))


@dataclass
class StepResult:
    """Tensors of one training step (for logging)."""

    out: SAEOutput
    penalty: dict[str, Tensor]
    loss: Tensor
    grad_norm: Tensor


def train_step(sae: BaseSAE, opt: torch.optim.Optimizer, x_BD: Tensor, *, step: int, lr: float, cfg: TrainConfig,
               dead_mask_F: Tensor | None = None, penalty: Penalty | None = None) -> StepResult:
    """One optimizer step in the original runs' order; raises ``NonFiniteLossError``."""
    if sae.cfg.normalize_decoder:
        sae.normalize_decoder_()
    for group in opt.param_groups:
        name = group.get("name", "")
        group["lr"] = lr * sae.lr_multiplier(name) if name else lr
    dense = bool(getattr(penalty, "needs_dense_latents", False))
    with torch.autocast(x_BD.device.type, dtype=torch.bfloat16, enabled=step_uses_bf16(cfg, x_BD.device.type)):
        out = sae(x_BD, step=step, dead_mask_F=dead_mask_F, dense_latents=dense)
        pen = penalty(out, sae, step) if penalty is not None else {}
    loss = out.losses["loss"]
    if pen:
        if "penalty" not in pen:
            raise KeyError(f"penalty must return a 'penalty' entry, got keys {sorted(pen)}")
        loss = loss + pen["penalty"].float()
    pen_terms = {k: v for k, v in pen.items() if isinstance(v, Tensor) and torch.is_floating_point(v)}
    _first_bad(step, {**out.losses, **pen_terms, "total_loss": loss}, penalty)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for p in sae.parameters() if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
    if not bool(torch.isfinite(grad_norm)):
        raise NonFiniteLossError(step, "grad_norm", float(grad_norm), penalty_lambda=_penalty_lambda(penalty))
    if cfg.grad_clip > 0 and float(grad_norm) + 1e-6 > cfg.grad_clip:
        # same arithmetic as clip_grad_norm_, minus its multiply-by-1.0 pass when nothing is clipped
        torch.nn.utils.clip_grads_with_norm_(params, cfg.grad_clip, grad_norm, foreach=True)
    if sae.cfg.normalize_decoder:
        sae.remove_parallel_decoder_grad_()
    opt.step()
    sae.after_step_()
    return StepResult(out, pen, loss, grad_norm)


def _record(step: int, cfg: TrainConfig, lr: float, res: StepResult, l0: Tensor, n_dead: int, t0: float) -> dict[str, Any]:
    rec: dict[str, Any] = {"step": step, "tokens": (step + 1) * cfg.batch_size, "lr": lr}
    rec["loss"] = float(res.loss.detach())
    for name, v in res.out.losses.items():
        rec[name if name != "loss" else "sae_loss"] = float(v.detach())
    for name, v in res.penalty.items():
        rec[name] = float(v.detach()) if isinstance(v, Tensor) else float(v)
    if "penalty" in res.penalty:
        mse = rec.get("mse", float("nan"))
        rec["penalty_over_mse"] = rec["penalty"] / mse if mse else float("nan")
    rec["l0"] = float(l0)
    rec["n_dead"] = n_dead
    rec["grad_norm"] = float(res.grad_norm)
    rec["time_s"] = round(time.perf_counter() - t0, 4)
    return rec


def _batches_from(cache: ActivationSource, cfg: TrainConfig, epoch: int, skip: int) -> Iterator[tuple[int, int, Tensor]]:
    """``(epoch, index_in_epoch, x_BD)`` forever, starting at (epoch, skip)."""
    while True:
        it = cache.iter_batches(cfg.batch_size, seed=cfg.seed + epoch, shuffle=cfg.shuffle, drop_last=True)
        n = 0
        for i, x_BD in enumerate(it):
            n += 1
            if i < skip:
                continue
            yield epoch, i, x_BD
        if n == 0:
            raise ValueError(f"the activation cache yields no batch of {cfg.batch_size} tokens (it holds {cache.n_tokens})")
        epoch, skip = epoch + 1, 0


class _Prefetch:
    """Runs an iterator in a background thread, ``depth`` items ahead (same items, same order), so that
    reading and shuffling activation shards overlaps the training steps; ``pin`` pins each batch
    (for non-blocking host-to-CUDA copies). An exception in the producer is re-raised by ``next``."""

    _END = object()

    def __init__(self, it: Iterator[Any], depth: int = 2, pin: bool = False):
        self._q: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(it, pin), daemon=True, name="saelib-prefetch")
        self._thread.start()

    def _run(self, it: Iterator[Any], pin: bool) -> None:
        try:
            for item in it:
                if pin:
                    ep, i, x_BD = item
                    item = (ep, i, x_BD.pin_memory())
                while not self._stop.is_set():
                    try:
                        self._q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._q.put(self._END)
        except BaseException as err:  # handed to the consumer
            self._q.put(err)

    def __iter__(self) -> "_Prefetch":
        return self

    def __next__(self) -> Any:
        item = self._q.get()
        if item is self._END:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop the producer (it may be blocked on a full queue) and wait for it."""
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._q.get_nowait()
            except queue.Empty:
                pass
            self._thread.join(timeout=0.05)


def _sae_state(sae: BaseSAE) -> dict[str, Any]:
    return {"arch": sae.arch, "cfg": sae.cfg.to_dict(), "model": sae.state_dict()}


def _check_resume(ckpt: dict[str, Any], sae: BaseSAE, cfg: TrainConfig, path: Path) -> None:
    if ckpt["sae"]["arch"] != sae.arch:
        raise ValueError(f"{path} was written for a {ckpt['sae']['arch']!r} SAE, not {sae.arch!r}; use resume=False or another out_dir")
    saved_cfg = ckpt["sae"]["cfg"]
    for name, value in sae.cfg.to_dict().items():
        if value is not None and saved_cfg.get(name) != value:
            raise ValueError(f"{path}: SAE config differs ({name}: checkpoint {saved_cfg.get(name)!r} vs now {value!r}); "
                             f"use resume=False or another out_dir")
    saved_train = {k: v for k, v in ckpt["train_cfg"].items() if k not in _IGNORED_FOR_RESUME}
    now_train = {k: v for k, v in cfg.to_dict().items() if k not in _IGNORED_FOR_RESUME}
    if saved_train != now_train:
        diff = sorted(k for k in now_train if saved_train.get(k) != now_train[k])
        raise ValueError(f"{path}: training config differs in {diff}; use resume=False or another out_dir")


def _truncate_log(path: Path, before_step: int) -> None:
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if rec.get("step", before_step) < before_step:
            keep.append(line)
    atomic_write_text(path, "".join(s + "\n" for s in keep))


def train_sae(sae: BaseSAE, cache: ActivationSource, cfg: TrainConfig, *, penalty: Penalty | None = None,
              out_dir: str | Path, resume: bool = True, progress: bool = True) -> TrainResult:
    """Train ``sae`` in place on ``cache``; see the module docstring for outputs and resume."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if int(cache.d_model) != sae.cfg.d_in:
        raise ValueError(f"activation width {cache.d_model} does not match the SAE's d_in {sae.cfg.d_in}")
    ckpt_path, log_path = out_dir / CHECKPOINT_NAME, out_dir / LOG_NAME
    n_steps = cfg.n_steps
    device = cfg.torch_device
    sae.to(device)
    if isinstance(penalty, torch.nn.Module):
        penalty.to(device)
    base_lr = cfg.lr if cfg.lr is not None else default_lr(sae.cfg.d_sae)
    opt = make_optimizer(sae, cfg, base_lr)
    since_fired_F = torch.zeros(sae.cfg.d_sae, dtype=torch.int64, device=device)
    start, epoch, in_epoch = 0, 0, 0
    elapsed_before = 0.0  # training seconds up to the checkpoint's step (resume)

    if resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        _check_resume(ckpt, sae, cfg, ckpt_path)
        sae.cfg = type(sae.cfg).from_dict(ckpt["sae"]["cfg"])
        sae.load_state_dict(ckpt["sae"]["model"])  # copies into the parameters on ``device``
        opt.load_state_dict(ckpt["optimizer"])
        if penalty is not None and ckpt.get("penalty") is not None:
            penalty.load_state_dict(ckpt["penalty"])  # type: ignore[attr-defined]
        since_fired_F = ckpt["since_fired_F"].to(device)
        start, epoch, in_epoch = ckpt["step"], ckpt["epoch"], ckpt["in_epoch"]
        elapsed_before = float(ckpt.get("elapsed_s", 0.0))
        torch.set_rng_state(ckpt["rng"])
        if device.type == "cuda" and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ckpt["cuda_rng"], device)
        _truncate_log(log_path, start)
    else:
        torch.manual_seed(cfg.seed)
        atomic_write_text(log_path, "")

    def save_checkpoint(step: int) -> None:
        atomic_torch_save(ckpt_path, {
            "step": step, "epoch": epoch, "in_epoch": in_epoch, "sae": _sae_state(sae),
            "optimizer": opt.state_dict(), "since_fired_F": since_fired_F.clone(),
            "penalty": penalty.state_dict() if hasattr(penalty, "state_dict") else None,  # type: ignore[union-attr]
            "rng": torch.get_rng_state(), "train_cfg": cfg.to_dict(),
            "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "elapsed_s": time.perf_counter() - t0,
        })

    sae.train()
    if hasattr(penalty, "train"):
        penalty.train()  # type: ignore[union-attr]
    last: dict[str, Any] = {}
    t0 = time.perf_counter() - elapsed_before  # time_s and wall_time_s count the steps before the resume too
    bar = tqdm(total=n_steps, initial=start, desc=f"train {sae.arch}", disable=not progress, unit="step")
    batches: Any = iter(())
    if start < n_steps:
        batches = _batches_from(cache, cfg, epoch, in_epoch)
        if cfg.prefetch > 0:
            batches = _Prefetch(batches, cfg.prefetch, pin=device.type == "cuda")
    try:
        with open(log_path, "a", encoding="utf-8") as log:
            for step in range(start, n_steps):
                ep, i, x_BD = next(batches)
                x_BD = x_BD.to(device, non_blocking=True)
                if step == 0 and cfg.init_b_dec:
                    sae.init_from_batch_(x_BD)
                if x_BD.shape != (cfg.batch_size, sae.cfg.d_in):
                    raise ValueError(f"cache yielded a batch of shape {tuple(x_BD.shape)}, expected ({cfg.batch_size}, {sae.cfg.d_in})")
                lr = lr_at(step, n_steps, base_lr, warmup_steps=cfg.lr_warmup_steps, decay_frac=cfg.lr_decay_frac)
                dead_F = since_fired_F >= cfg.dead_tokens_threshold
                res = train_step(sae, opt, x_BD, step=step, lr=lr, cfg=cfg, dead_mask_F=dead_F, penalty=penalty)
                fired_F, l0 = active_latents(res.out, sae.cfg.d_sae)
                since_fired_F += cfg.batch_size
                since_fired_F[fired_F] = 0
                epoch, in_epoch = (ep, i + 1)
                if step % cfg.log_every == 0 or step == n_steps - 1:
                    last = _record(step, cfg, lr, res, l0, int(dead_F.sum()), t0)
                    log.write(json.dumps(last, allow_nan=True) + "\n")
                    log.flush()
                    bar.set_postfix(loss=f"{last['loss']:.4g}", mse=f"{last.get('mse', float('nan')):.4g}",
                                    l0=f"{last['l0']:.1f}", dead=last["n_dead"], refresh=False)
                bar.update(1)
                if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < n_steps:
                    save_checkpoint(step + 1)
    finally:
        if isinstance(batches, _Prefetch):
            batches.close()
    bar.close()
    wall = time.perf_counter() - t0
    if start < n_steps:
        save_checkpoint(n_steps)
    if not last:
        last = _last_record(log_path)
    if sae.cfg.normalize_decoder:
        sae.normalize_decoder_()
    sae.eval()
    sae_dir = sae.save(out_dir / SAE_DIRNAME)
    summary = {
        "arch": sae.arch, "sae_config": sae.cfg.to_dict(), "train_config": cfg.to_dict(), "base_lr": base_lr,
        "n_steps": n_steps, "tokens": n_steps * cfg.batch_size, "resumed_from_step": start,
        "wall_time_s": round(wall, 3), "tokens_per_s": (n_steps * cfg.batch_size / wall) if wall > 0 else None,
        "n_dead_final": int((since_fired_F >= cfg.dead_tokens_threshold).sum()),
        "final": last, "penalty": type(penalty).__name__ if penalty is not None else None,
        "device": str(device), "compute_dtype": "bfloat16" if step_uses_bf16(cfg, device.type) else "float32",
        **final_penalty_ratios(_read_records(log_path), n_steps),
    }
    atomic_write_json(out_dir / SUMMARY_NAME, summary)
    return TrainResult(sae=sae, out_dir=out_dir, n_steps=n_steps, final=last, summary=summary, resumed_from=start,
                       wall_time_s=wall, log_path=log_path, sae_dir=sae_dir)


FINAL_FRAC = 0.1
"""Share of the last steps over which ``train_summary.json`` averages the penalty/MSE ratios."""


def final_penalty_ratios(records: list[dict[str, Any]], n_steps: int, frac: float = FINAL_FRAC) -> dict[str, float]:
    """Penalty/MSE ratios at the end of training: for ``penalty`` (the whole term added to the loss),
    ``penalty_coact`` (λ·α·P) and ``penalty_l1``, the mean over the logged steps ``>= n_steps·(1 − frac)``
    of ``term / mse`` (keys ``<term>_over_mse_final``; the spec expects ≲ 1e-3 for the original runs).
    Empty when no record carries a penalty."""
    start = int(n_steps * (1.0 - frac))
    tail = [r for r in records if r.get("step", -1) >= start and r.get("mse")]
    out: dict[str, float] = {}
    for term in ("penalty", "penalty_coact", "penalty_l1"):
        vals = [r[term] / r["mse"] for r in tail if term in r and r[term] is not None and math.isfinite(r[term])]
        if vals:
            out[f"{term}_over_mse_final"] = sum(vals) / len(vals)
    if out:
        out["final_frac"] = frac
        out["final_records"] = len(tail)
    return out


def _read_records(log_path: Path) -> list[dict[str, Any]]:
    lines = [ln for ln in log_path.read_text(encoding="utf-8").splitlines() if ln.strip()] if log_path.exists() else []
    return [json.loads(ln) for ln in lines]


def _last_record(log_path: Path) -> dict[str, Any]:
    lines = [ln for ln in log_path.read_text(encoding="utf-8").splitlines() if ln.strip()] if log_path.exists() else []
    return json.loads(lines[-1]) if lines else {}


def read_log(out_dir: str | Path) -> list[dict[str, Any]]:
    """All records of ``out_dir/log.jsonl``."""
    path = Path(out_dir) / LOG_NAME
    if not path.exists():
        raise FileNotFoundError(f"no training log at {path}")
    return [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
