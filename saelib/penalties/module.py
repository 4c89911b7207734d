"""The penalty as a training-loss term: ``CoactivationPenalty(out, sae, step) -> dict`` of logged terms."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .config import PenaltyConfig, ramp_alpha, resolve_config
from .ema import DenseCoefEMA, SparseCoefEMA
from .sparse import active_set, coactivation_penalty


class CoactivationPenalty(nn.Module):
    """``forward(out, sae, step) -> dict`` with "penalty" (added to the loss: λ·α(t)·P + L1 term),
    "penalty_coact" (λ·α(t)·P), "penalty_raw" (P), "penalty_alpha" (α(t)), "penalty_lambda" (λ),
    "penalty_l1" (the L1 term), "coact_stat" (off-diagonal Σ W T², detached), "coact_pairs" and, with an
    EMA, "ema_entries"/"ema_evicted". The EMA advances once per call in training mode only. Kind "l1"
    returns the L1 term alone (``penalty_coact = 0``, no statistics)."""

    def __init__(self, cfg: PenaltyConfig, d_sae: int, k: int):
        super().__init__()
        self.cfg = resolve_config(cfg)
        if self.cfg.kind == "none":
            raise ValueError("kind='none' has no penalty module (make_penalty returns None)")
        if d_sae < 1:
            raise ValueError(f"d_sae must be >= 1, got {d_sae}")
        if self.cfg.kind == "competition" and k < 1:
            raise ValueError(f"competition needs the SAE's k (c_ij is normalised by k/F); got k={k}. "
                             "For non-TopK SAEs pass the nominal L0.")
        self.d_sae, self.k = d_sae, k
        # set True for SAEs without idx_BK (ReLU, JumpReLU, BatchTopK): the trainer then builds f_BF
        self.needs_dense_latents = False
        self.ema: DenseCoefEMA | SparseCoefEMA | None = None
        c = self.cfg
        if c.ema_decay > 0:
            dense_mb = 4.0 * d_sae * d_sae / 2**20
            storage = c.ema_storage
            if storage == "auto":
                storage = "dense" if dense_mb <= c.ema_dense_max_mb else "sparse"
            self.ema = (DenseCoefEMA(d_sae, c.ema_decay) if storage == "dense"
                        else SparseCoefEMA(d_sae, c.ema_decay, c.ema_sparse_capacity, c.ema_sparse_floor))

    def alpha(self, step: int) -> float:
        """α(t): λ·α(t) ramps from ``ramp_start_frac·λ`` to λ over ``ramp_steps``."""
        return ramp_alpha(step, self.cfg.ramp_steps, self.cfg.ramp_start_frac)

    def forward(self, out: Any, sae: Any, step: int) -> dict[str, Tensor]:
        c = self.cfg
        if getattr(out, "idx_BK", None) is None and getattr(out, "f_BF", None) is None:
            raise ValueError("the SAE output has neither idx_BK nor f_BF: for non-TopK SAEs set "
                             "penalty.needs_dense_latents = True so the trainer asks for f_BF")
        W_dec = None
        if c.target == "decoder":
            W_dec = getattr(sae, "W_dec", None)
            if W_dec is None:
                W_dec = getattr(sae, "W_dec_FD")
        alpha = self.alpha(step)
        weight = c.lam * alpha
        if c.kind == "l1":
            return self._l1_only(out, alpha)
        src = out.idx_BK if getattr(out, "idx_BK", None) is not None else out.f_BF
        with torch.autocast(device_type=src.device.type, enabled=False):  # the Gram matmuls stay fp32
            idx, val, padded = active_set(out, self.d_sae)
            if self.ema is not None:
                self.ema.to_(idx.device)  # the EMA lives on the SAE's device (moved once, after a load)
            # with zero weight (λ = 0, or α(0) = 0 in a warmup) only the statistics are needed
            with torch.set_grad_enabled(torch.is_grad_enabled() and weight > 0):
                res = coactivation_penalty(
                    idx, val, self.d_sae, kind=c.kind, k=self.k, tau=c.tau, normalise=c.normalise,
                    include_diagonal=c.include_diagonal, target=c.target, W_dec_FD=W_dec,
                    ema=self.ema, update_ema=self.training, padded=padded, block_bins=c.block_bins,
                    block_instances=c.block_instances, threads=c.threads, backend=c.backend,
                )
        coact = res.value * weight
        l1 = val.float().abs().sum(-1).mean() * c.l1_coef if c.l1_coef > 0 else torch.zeros((), device=val.device)
        logs = {
            "penalty": coact + l1,
            "penalty_coact": coact.detach(),
            "penalty_raw": res.value.detach(),
            "penalty_alpha": torch.tensor(alpha),
            "penalty_lambda": torch.tensor(c.lam),
            "penalty_l1": l1.detach(),
            "coact_stat": res.coact_stat,
            "coact_pairs": res.pairs,
        }
        for name, value in res.ema.items():
            logs[name] = torch.tensor(value)
        return logs

    def _l1_only(self, out: Any, alpha: float) -> dict[str, Tensor]:
        """The L1 control: ``l1_coef * mean_b sum_i |f_bi|``, no co-activation statistics."""
        idx, val, _ = active_set(out, self.d_sae)
        l1 = val.float().abs().sum(-1).mean() * self.cfg.l1_coef
        zero = torch.zeros((), device=l1.device)
        return {"penalty": l1, "penalty_coact": zero, "penalty_raw": zero, "penalty_alpha": torch.tensor(alpha),
                "penalty_lambda": torch.tensor(0.0), "penalty_l1": l1.detach()}

    def get_extra_state(self) -> dict[str, Any]:
        return {"ema": self.ema.state() if self.ema is not None else None}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("ema") is not None:
            if self.ema is None:
                raise ValueError("checkpoint has an EMA state but this penalty has ema_decay = 0")
            self.ema.load(state["ema"])


def make_penalty(cfg: PenaltyConfig, d_sae: int, k: int) -> CoactivationPenalty | None:
    """The penalty module for ``cfg`` (``None`` for kind "none"). ``k`` is the SAE's top-k (the
    competition normalisation k/F; unused by orthogonality); for non-TopK SAEs pass the nominal L0
    and set ``penalty.needs_dense_latents = True`` so the trainer hands over ``f_BF``."""
    cfg = resolve_config(cfg)
    if cfg.kind == "none":
        return None
    return CoactivationPenalty(cfg, d_sae, k)
