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


def project_2d(x: np.ndarray) -> np.ndarray:
    """First two principal components of the rows of `x` (centred), shape (n, 2)."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[:2].T


def plot_selection_quality(rows: list[dict], metrics: tuple[str, ...] = ("precision", "recall")) -> Figure:
    """Grouped bars: one panel per metric, budgets on the x-axis, one bar per strategy.

    `rows` are dicts with keys strategy, budget and the metrics.
    """
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    budgets = sorted({r["budget"] for r in rows})
    fig = Figure(figsize=(5 * len(metrics), 3.8))
    axes = fig.subplots(1, len(metrics))
    width = 0.8 / len(strategies)
    for ax, metric in zip(np.atleast_1d(axes), metrics):
        for j, strategy in enumerate(strategies):
            vals = [next((r[metric] for r in rows if r["strategy"] == strategy and r["budget"] == b), np.nan)
                    for b in budgets]
            ax.bar(np.arange(len(budgets)) + j * width, vals, width, label=strategy)
        ax.set_xticks(np.arange(len(budgets)) + 0.4 - width / 2, [f"{b:,}" for b in budgets])
        ax.set_xlabel("token budget (LM tokens)")
        ax.set_ylabel(metric)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{metric} of the subdomain in the selection")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_embedding_map(points: np.ndarray, labels: list, selected: np.ndarray, seeds: np.ndarray | None = None,
                       title: str = "pool embeddings (PCA)") -> Figure:
    """Scatter of 2-D points coloured by label; selected documents ringed, seeds as stars."""
    fig = Figure(figsize=(6.5, 5))
    ax = fig.subplots()
    labels = np.asarray([str(lab) for lab in labels])
    for lab in sorted(set(labels)):
        m = labels == lab
        ax.scatter(points[m, 0], points[m, 1], s=8, alpha=0.5, label=lab)
    ax.scatter(points[selected, 0], points[selected, 1], s=30, facecolors="none", edgecolors="black",
               linewidths=0.8, label="selected")
    if seeds is not None and len(seeds):
        ax.scatter(seeds[:, 0], seeds[:, 1], marker="*", s=180, color="red", edgecolors="black", label="seeds")
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    ax.set_title(title)
    ax.legend(fontsize=8, markerscale=1.5)
    return fig


def plot_pareto(rows: list[dict], x: str = "l0", y: str = "perplexity_sae", baseline: dict | None = None,
                title: str = "fidelity vs sparsity") -> Figure:
    """One line per strategy through its sparsity sweep: mean over seeds, bars from min to max.

    `rows` are dicts with keys strategy, l1 (the swept coefficient), seed, and the `x`/`y` metrics;
    `baseline` (e.g. the GSAE's metrics) is drawn as a star.
    """
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        points = []
        for l1 in sorted({r["l1"] for r in rows if r["strategy"] == strategy}):
            group = [r for r in rows if r["strategy"] == strategy and r["l1"] == l1]
            xs, ys = np.array([r[x] for r in group]), np.array([r[y] for r in group])
            points.append((xs.mean(), ys.mean(), ys.mean() - ys.min(), ys.max() - ys.mean()))
        points.sort()
        px, py, lo, hi = map(np.array, zip(*points))
        ax.errorbar(px, py, yerr=[lo, hi], marker="o", capsize=3, label=strategy)
    if baseline is not None:
        ax.scatter([baseline[x]], [baseline[y]], marker="*", s=200, color="black", label="GSAE", zorder=5)
    ax.set_xlabel("L0 (active latents per token)" if x == "l0" else x)
    ax.set_ylabel("perplexity with the SAE spliced in" if y == "perplexity_sae" else y)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def plot_grouped_bars(values: dict[str, dict[str, float]], ylabel: str, title: str) -> Figure:
    """Bars for {group: {series: value}}, e.g. {strategy: {"in-domain": x, "out-of-domain": y}}."""
    groups = list(values)
    series = list(dict.fromkeys(s for g in values.values() for s in g))
    fig = Figure(figsize=(max(5, 1.2 * len(groups)), 3.8))
    ax = fig.subplots()
    width = 0.8 / len(series)
    for j, name in enumerate(series):
        ax.bar(np.arange(len(groups)) + j * width, [values[g].get(name, np.nan) for g in groups], width, label=name)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_curves(curves: dict[str, tuple], xlabel: str, ylabel: str, title: str, logx: bool = False,
                logy: bool = False, marker: str | None = "o") -> Figure:
    """One line per name from {name: (x, y)}; NaNs leave gaps."""
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    for name, (x, y) in curves.items():
        ax.plot(np.asarray(x, dtype=float), np.asarray(y, dtype=float), marker=marker, markersize=4, label=name)
    ax.set_xscale("log" if logx else "linear")
    ax.set_yscale("log" if logy else "linear")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def plot_histograms(samples: dict[str, np.ndarray], xlabel: str, title: str, bins: int = 50,
                    logy: bool = False) -> Figure:
    """Overlaid step histograms (densities) of several samples on shared bins."""
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    finite = [np.asarray(v, dtype=float)[np.isfinite(v)] for v in samples.values()]
    edges = np.histogram_bin_edges(np.concatenate(finite), bins=bins)
    for (name, _), values in zip(samples.items(), finite):
        ax.hist(values, bins=edges, histtype="step", density=True, linewidth=1.5, label=name)
    ax.set_yscale("log" if logy else "linear")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig
