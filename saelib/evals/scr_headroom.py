"""Oracle headroom of an SCR task: how far S could move if the spurious attribute were removed exactly.

SCR's score S_n = (acc_ablated − acc_biased) / (acc_oracle − acc_biased) only means something when
removing the spurious attribute B *can* lift the biased probe on the target attribute A. This
module measures that on the model side, with no SAE: the spurious probe's own direction u = w_B
(the probe trained on B's balanced set) is mean-ablated from every mean-pooled residual,

    x' = x − ((x − μ_B) · û) û,      û = u / ‖u‖,  μ_B = mean of B's balanced train residuals,

and the biased probe is re-tested on A's balanced test set. S_oracle is S with that accuracy in
place of acc_ablated (same guard on the denominator as SCR). A task is trusted for SCR when
S_oracle ≥ :data:`MIN_ORACLE_S` (issue 13: 0.5). ``rounds`` > 1 repeats the removal with a B probe
retrained on the already-projected residuals, its direction orthogonalised against the ones already
removed (so each round removes one more direction and none comes back), for a spurious attribute
spread over several directions.

Everything here is a pure function of pooled residual arrays and the SCR sets/probes of
:mod:`saelib.evals.scr`; the headroom row of the SCR notebook comes from :func:`headroom_rows`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .probing import train_torch_probe
from .scr import DIRECTIONS, ScrConfig, ScrModelSide, make_scr_sets, scr_model_side, scr_score

MIN_ORACLE_S = 0.5
"""S_oracle a task must reach before its SCR scores are trusted."""


def remove_direction(x_ND: Tensor, u_D: Tensor, center_D: Tensor | None = None) -> Tensor:
    """``x − ((x − c) · û) û``: the component of each row along ``u`` set to that of ``c`` (0 when
    ``c`` is None), every orthogonal component unchanged."""
    x = torch.as_tensor(x_ND).float()
    u = torch.as_tensor(u_D).float().reshape(-1)
    norm = u.norm()
    if x.ndim != 2 or x.shape[1] != u.shape[0]:
        raise ValueError(f"x must be (N, {u.shape[0]}), got {tuple(x.shape)}")
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("cannot remove a zero (or non-finite) direction")
    u_hat = u / norm
    shifted = x if center_D is None else x - torch.as_tensor(center_D).float().reshape(1, -1)
    return x - (shifted @ u_hat)[:, None] * u_hat[None, :]


@dataclass
class OracleHeadroom:
    """Oracle-ablation result of one SCR direction."""

    direction: int
    """1: remove B (spurious), test on A; 2: remove A, test on B (SCR's dir1 / dir2)."""
    acc_biased: float
    """Biased probe on the evaluated attribute's balanced test set, clean (S = 0)."""
    acc_oracle: float
    """The evaluated attribute's own probe on that set (S = 1)."""
    acc_removed: float
    """Biased probe on that set after removing the other attribute's probe direction(s)."""
    removed_probe_acc: float
    """The removed attribute's probe on its own test set after the removal (chance when the direction
    carried it all)."""
    s_oracle: float
    """(acc_removed − acc_biased) / (acc_oracle − acc_biased); 0 below SCR's denominator guard."""
    rounds: int
    """Directions removed (orthonormalised; fewer than asked when a retrained probe adds no new one)."""

    @property
    def trusted(self) -> bool:
        """S_oracle ≥ :data:`MIN_ORACLE_S`."""
        return self.s_oracle >= MIN_ORACLE_S


def oracle_headroom(side: ScrModelSide, xbar_ND: Tensor, *, direction: int = 1, rounds: int = 1,
                    cfg: ScrConfig | None = None) -> OracleHeadroom:
    """Oracle headroom of one direction of a prepared SCR task.

    ``xbar_ND`` are the mean-pooled residuals indexed by the rows of ``side.sets`` (as for
    :func:`saelib.evals.scr.scr_for_sae`); ``cfg`` gives the probe training of extra rounds and the
    denominator guard."""
    cfg = cfg or ScrConfig()
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 1 or 2, got {direction}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    removed_key, eval_key = DIRECTIONS[direction]
    sets = side.sets
    tr_rm, y_tr_rm = sets.rows["train"][removed_key], sets.labels["train"][removed_key]
    te_rm, y_te_rm = sets.rows["test"][removed_key], sets.labels["test"][removed_key]
    x0 = torch.as_tensor(xbar_ND).float()
    center = x0[tr_rm].mean(0)
    x, basis = x0, []
    probe = side.probes[removed_key]
    for r in range(rounds):
        if r > 0:
            probe, _ = train_torch_probe(x[tr_rm], y_tr_rm, x[te_rm], y_te_rm, cfg.probe)
        u = probe.weight_D.float().clone()
        for b in basis:  # Gram-Schmidt: each round removes one new direction, earlier ones stay removed
            u = u - (u @ b) * b
        if u.norm() < 1e-6 * probe.weight_D.norm():
            break
        basis.append(u / u.norm())
        x = x0
        for b in basis:
            x = remove_direction(x, b, center)
    te, y_te = sets.rows["test"][eval_key], sets.labels["test"][eval_key]
    acc_removed = side.probes["biased"].accuracy(x[te], y_te)
    removed_acc = side.probes[removed_key].accuracy(x[te_rm], y_te_rm)
    base, oracle = side.clean[f"biased_on_{eval_key}"], side.clean[eval_key]
    s = scr_score(acc_removed, base, oracle, min_denominator=cfg.min_denominator)
    return OracleHeadroom(direction, base, oracle, acc_removed, removed_acc, float(s), len(basis))


def oracle_headroom_from_quadrants(xbar_ND: Tensor, quadrants: dict[str, dict[str, np.ndarray]], *,
                                   cfg: ScrConfig | None = None, seed: int = 0, rounds: int = 1
                                   ) -> dict[int, OracleHeadroom]:
    """Both directions' headroom straight from pooled residuals and quadrant row indices
    (``quadrants[split][{"pp","pn","np","nn"}]``, as :func:`saelib.data.tasks.scr_quadrants` gives):
    builds the SCR sets and probes, then :func:`oracle_headroom`."""
    cfg = cfg or ScrConfig()
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    side = scr_model_side(torch.as_tensor(xbar_ND).float(), make_scr_sets(quadrants, seed=seed), cfg)
    return {d: oracle_headroom(side, xbar_ND, direction=d, rounds=rounds, cfg=cfg) for d in DIRECTIONS}


def headroom_rows(prep, *, rounds: int = 1):
    """One row per prepared SCR task and direction (pandas): clean accuracies, the oracle-removed
    accuracy, S_oracle, whether it clears :data:`MIN_ORACLE_S`, and the test texts per quadrant
    (S_n moves in steps of 1 / (4 q_test) / (acc_oracle − acc_biased))."""
    import pandas as pd

    rows = []
    for name, td in prep.tasks.items():
        for d in DIRECTIONS:
            h = oracle_headroom(td.side, td.source.pooled.xbar_ND, direction=d, rounds=rounds, cfg=prep.cfg.scr)
            q_test = td.side.sets.q["test"]
            gap = h.acc_oracle - h.acc_biased
            rows.append({"task": name, "direction": d, "acc_biased (S=0)": h.acc_biased, "acc_oracle (S=1)": h.acc_oracle,
                         "acc_removed": h.acc_removed, "removed_probe_acc": h.removed_probe_acc, "S_oracle": h.s_oracle,
                         "trusted": h.trusted, "q_test": q_test,
                         "S_step": (1.0 / (4 * q_test) / gap) if gap > 0 else float("nan")})
    return pd.DataFrame(rows)


__all__ = ["MIN_ORACLE_S", "remove_direction", "OracleHeadroom", "oracle_headroom", "oracle_headroom_from_quadrants",
           "headroom_rows"]
