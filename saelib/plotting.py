"""Seaborn styling and small figure helpers shared by the notebooks."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns


def set_style() -> None:
    """One look for every figure: seaborn whitegrid, colour-blind palette, readable sizes."""
    sns.set_theme(style="whitegrid", context="notebook", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight"})


def save_figure(fig: plt.Figure, path_stem: str | Path) -> list[Path]:
    """Save ``fig`` as PNG and PDF next to each other (atomic: temp file then rename)."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for ext in ("png", "pdf"):
        target = stem.with_suffix(f".{ext}")
        fd, tmp = tempfile.mkstemp(suffix=f".{ext}", dir=stem.parent)
        os.close(fd)
        try:
            fig.savefig(tmp, format=ext, metadata={"CreationDate": None} if ext == "pdf" else {"Software": None})
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        written.append(target)
    return written


def plot_training_curve(curve: pd.DataFrame, title: str = "") -> plt.Figure:
    """Reconstruction loss, L0 and the penalty's share of the loss against training tokens."""
    set_style()
    panels = [("mse", "reconstruction loss (sum over d) ↓"), ("l0", "L0 (active latents per token)")]
    if "penalty_over_mse" in curve and curve["penalty_over_mse"].abs().sum() > 0:
        panels.append(("penalty_over_mse", "penalty / reconstruction loss"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2))
    for ax, (col, label) in zip(axes, panels):
        ax.plot(curve["tokens"] if "tokens" in curve else curve["step"], curve[col])
        ax.set_xlabel("training tokens" if "tokens" in curve else "step")
        ax.set_ylabel(label)
        if col in ("mse", "penalty_over_mse") and (curve[col] > 0).all():
            ax.set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
