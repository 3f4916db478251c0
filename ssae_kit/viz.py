"""Figures for the notebooks. Each function returns a matplotlib Figure with labelled axes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure


def save_figure(fig: Figure, run_dir: str | Path, name: str) -> Path:
    """Save `fig` as `<run_dir>/<name>.png` (the notebooks' figures live in the run folder)."""
    path = Path(run_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_norm_histogram(norms: torch.Tensor | np.ndarray, layer: int, model: str, bins: int = 60) -> Figure:
    """Histogram of per-token residual-stream L2 norms, with the mean marked."""
    norms = np.asarray(norms, dtype=np.float64)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.hist(norms, bins=bins, color="tab:blue", alpha=0.8, label=f"{len(norms):,} tokens")
    ax.axvline(norms.mean(), color="tab:red", linestyle="--", label=f"mean {norms.mean():.1f}")
    ax.set_xlabel("L2 norm of the residual stream (raw units)")
    ax.set_ylabel("number of tokens")
    ax.set_title(f"{model}: activation norms after block {layer}")
    ax.legend()
    return fig
