"""The notebooks' figures: each plot function returns a `NotebookFigure` (a matplotlib Figure
with labelled axes and no pyplot state) that a notebook cell shows inline as a PNG by ending with
`fig`. It draws; what it draws is computed elsewhere. Feature dashboards live in `dashboards`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

__all__ = [
    "plot_curves",
    "plot_domains",
    "plot_embedding_map",
    "plot_feature_recovery",
    "plot_grouped_bars",
    "plot_histograms",
    "plot_leaf_map",
    "plot_norm_histogram",
    "plot_pareto",
    "plot_rarity_sweep",
    "plot_selection_quality",
    "plot_tree_values",
    "save_figure",
]

DPI = 110  # of the PNG shown in the notebook and of the one saved in the run folder


class NotebookFigure(Figure):
    """A Figure that IPython shows as a PNG when a cell ends with it, in a live kernel and under papermill.

    The kit never imports pyplot, so no figure sits in pyplot's registry (none to close, none shown twice
    by the inline backend's end-of-cell flush), and a figure is freed like any object once unreferenced.
    Without pyplot IPython has no formatter for Figures and prints `<Figure size ...>`; `_repr_png_`
    gives it one. Where a user has imported pyplot, the inline backend's own Figure formatter wins
    (IPython tries type printers before `_repr_png_`), so the figure still appears once.
    """

    def _repr_png_(self) -> bytes:
        buf = io.BytesIO()
        self.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
        return buf.getvalue()


def save_figure(fig: Figure, run_dir: str | Path, name: str) -> Path:
    """Save `fig` as `<run_dir>/<name>.png` (the notebooks' figures live in the run folder)."""
    path = Path(run_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def plot_norm_histogram(norms: torch.Tensor | np.ndarray, layer: int, model: str, bins: int = 60) -> Figure:
    """Histogram of per-token residual-stream L2 norms, with the mean marked."""
    norms = np.asarray(norms, dtype=np.float64)
    fig = NotebookFigure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.hist(norms, bins=bins, color="tab:blue", alpha=0.8, label=f"{len(norms):,} tokens")
    ax.axvline(norms.mean(), color="tab:red", linestyle="--", label=f"mean {norms.mean():.1f}")
    ax.set_xlabel("L2 norm of the residual stream (raw units)")
    ax.set_ylabel("number of tokens")
    ax.set_title(f"{model}: activation norms after block {layer}")
    ax.legend()
    return fig


def plot_feature_recovery(recovery: dict[str, torch.Tensor | np.ndarray], threshold: float = 0.9) -> Figure:
    """One line per SAE: each true feature's best cosine with a decoder direction, sorted from best
    to worst (notebook 00's toy), with the threshold counted as "recovered" marked."""
    fig = NotebookFigure(figsize=(6, 3.5))
    ax = fig.subplots()
    for label, values in recovery.items():
        values = np.sort(np.asarray(values, dtype=np.float64))[::-1]
        ax.plot(
            np.arange(1, len(values) + 1),
            values,
            marker=".",
            label=f"{label}: {int((values > threshold).sum())} above {threshold:g}",
        )
    ax.axhline(threshold, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("true feature (sorted by how well it is recovered)")
    ax.set_ylabel("best cosine with a decoder direction")
    lowest = min(float(np.min(np.asarray(v, dtype=np.float64))) for v in recovery.values())
    ax.set_ylim(min(lowest, threshold) - 0.05, 1.01)
    ax.set_title("Which true features did the SAE find?")
    ax.legend(fontsize=8)
    return fig


def _cell(rows: list[dict], strategy: str, budget: int, key: str) -> float:
    """rows' value of `key` for one strategy and budget; NaN where absent (no bar, or no interval)."""
    return next(
        (r.get(key, np.nan) for r in rows if r["strategy"] == strategy and r["budget"] == budget), np.nan
    )


def plot_selection_quality(
    rows: list[dict], metrics: tuple[str, ...] = ("token_precision", "recall")
) -> Figure:
    """Grouped bars: one panel per metric, budgets on the x-axis, one bar per strategy.

    `rows` are dicts with keys strategy, budget and the metrics.
    """
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    budgets = sorted({r["budget"] for r in rows})
    fig = NotebookFigure(figsize=(5 * len(metrics), 3.8))
    axes = fig.subplots(1, len(metrics))
    width = 0.8 / len(strategies)
    for ax, metric in zip(np.atleast_1d(axes), metrics):
        for j, strategy in enumerate(strategies):
            vals, low, high = (
                [_cell(rows, strategy, b, key) for b in budgets]
                for key in (metric, f"{metric}_low", f"{metric}_high")
            )
            err = None if np.isnan(low).all() else np.array([np.subtract(vals, low), np.subtract(high, vals)])
            ax.bar(np.arange(len(budgets)) + j * width, vals, width, label=strategy, yerr=err, capsize=2)
        ax.set_xticks(np.arange(len(budgets)) + 0.4 - width / 2, [f"{b:,}" for b in budgets])
        ax.set_xlabel("token budget (LM tokens)")
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{metric.replace('_', ' ')} of the subdomain in the selection")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_embedding_map(
    points: np.ndarray,
    labels: list,
    selected: dict[str, np.ndarray] | None = None,
    seeds: np.ndarray | None = None,
    title: str = "pool embeddings (PCA)",
) -> Figure:
    """Scatter of 2-D points coloured by label; each selection's documents (name -> boolean mask)
    ringed, one ring size and colour per selection so overlapping picks stay visible; seeds as stars."""
    fig = NotebookFigure(figsize=(6.5, 5))
    ax = fig.subplots()
    labels = np.asarray([str(lab) for lab in labels])
    for lab in sorted(set(labels)):
        m = labels == lab
        ax.scatter(points[m, 0], points[m, 1], s=8, alpha=0.5, label=lab)
    for j, (name, mask) in enumerate((selected or {}).items()):
        ax.scatter(
            points[mask, 0],
            points[mask, 1],
            s=30 * (j + 1),
            facecolors="none",
            edgecolors=("black", "tab:red", "tab:purple", "tab:brown")[j % 4],
            linewidths=0.8,
            label=f"selected: {name}",
        )
    if seeds is not None and len(seeds):
        ax.scatter(
            seeds[:, 0], seeds[:, 1], marker="*", s=180, color="red", edgecolors="black", label="seeds"
        )
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    ax.set_title(title)
    ax.legend(fontsize=8, markerscale=1.5)
    return fig


def plot_pareto(
    rows: list[dict],
    x: str = "l0",
    y: str = "perplexity_sae",
    baseline: dict | None = None,
    title: str = "fidelity vs sparsity",
) -> Figure:
    """One line per strategy through its sparsity sweep: mean over seeds, bars from min to max.

    `rows` are dicts with keys strategy, sparsity_coefficient (the swept one), seed, and the `x`/`y` metrics;
    `baseline` (e.g. the GSAE's metrics) is drawn as a star.
    """
    fig = NotebookFigure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        points = []
        for coefficient in sorted({r["sparsity_coefficient"] for r in rows if r["strategy"] == strategy}):
            group = [
                r for r in rows if r["strategy"] == strategy and r["sparsity_coefficient"] == coefficient
            ]
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


def plot_grouped_bars(
    values: dict[str, dict[str, float]],
    ylabel: str,
    title: str,
    intervals: dict[str, dict[str, tuple[float, float]]] | None = None,
) -> Figure:
    """Bars for {group: {series: value}}, e.g. {strategy: {"in-domain": x, "out-of-domain": y}};
    `intervals` ({group: {series: (low, high)}}) draws each bar's interval as an error bar."""
    groups = list(values)
    series = list(dict.fromkeys(s for g in values.values() for s in g))
    fig = NotebookFigure(figsize=(max(5, 1.2 * len(groups)), 3.8))
    ax = fig.subplots()
    width = 0.8 / len(series)
    for j, name in enumerate(series):
        vals = np.array([values[g].get(name, np.nan) for g in groups])
        err = None
        if intervals is not None:
            lo = np.array([intervals.get(g, {}).get(name, (np.nan, np.nan))[0] for g in groups])
            hi = np.array([intervals.get(g, {}).get(name, (np.nan, np.nan))[1] for g in groups])
            err = np.nan_to_num(np.array([vals - lo, hi - vals]))
        ax.bar(np.arange(len(groups)) + j * width, vals, width, label=name, yerr=err, capsize=3)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_rarity_sweep(rows: list[dict]) -> Figure:
    """The rarity sweep (`sweep.sweep_rows`): spliced CE differences against the subdomain's share of
    the GSAE's training tokens, in domain and out of domain, each with its 95% interval."""
    rows = sorted(rows, key=lambda r: r["reached"])
    x = np.arange(len(rows))
    fig = NotebookFigure(figsize=(10, 3.8))
    axes = fig.subplots(1, 2, sharey=True)
    names = [k.removesuffix("_in") for k in rows[0] if k.endswith("_vs_gsae_in") or k == "dense_vs_none_in"]
    for ax, tag, title in zip(axes, ("in", "ood"), ("held-out subdomain text", "held-out text outside it")):
        for j, name in enumerate(names):
            key = f"{name}_{tag}"
            y = np.array([r.get(key, np.nan) for r in rows])
            err = np.array([[r.get(key, np.nan) - r.get(f"{key}_low", np.nan) for r in rows],
                            [r.get(f"{key}_high", np.nan) - r.get(key, np.nan) for r in rows]])  # fmt: skip
            style = dict(linestyle="--", color="black") if name == "dense_vs_none" else {}
            label = name.replace("_vs_", " − ").replace("gsae", "GSAE")
            ax.errorbar(
                x + 0.06 * (j - 1.5), y, yerr=np.nan_to_num(err), marker="o", capsize=3, label=label, **style
            )
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set_xticks(x, [f"{100 * r['reached']:.1f}%" for r in rows])
        ax.set_xlabel("subdomain share of the GSAE's training tokens")
        ax.set_title(title)
    axes[0].set_ylabel("spliced CE difference (nats; below 0: first is better)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_curves(
    curves: dict[str, tuple],
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = False,
    logy: bool = False,
    marker: str | None = "o",
) -> Figure:
    """One line per name from {name: (x, y)}; NaNs leave gaps."""
    fig = NotebookFigure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    for name, (x, y) in curves.items():
        ax.plot(
            np.asarray(x, dtype=float), np.asarray(y, dtype=float), marker=marker, markersize=4, label=name
        )
    ax.set_xscale("log" if logx else "linear")
    ax.set_yscale("log" if logy else "linear")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def plot_histograms(
    samples: dict[str, np.ndarray], xlabel: str, title: str, bins: int = 50, logy: bool = False
) -> Figure:
    """Overlaid step histograms (densities) of several samples on shared bins."""
    fig = NotebookFigure(figsize=(6.5, 4.2))
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


def plot_domains(
    x: np.ndarray,
    y: np.ndarray,
    domain: np.ndarray,
    theta: np.ndarray,
    is_source: np.ndarray,
    title: str = "",
) -> Figure:
    """The DT data drawn by leaf: colour = the leaf's angle, marker = class, sources outlined in black."""
    fig = NotebookFigure(figsize=(6, 5.5))
    ax = fig.subplots()
    colours = theta[domain] / max(float(theta.max()), 1e-9)
    for label, marker in ((0, "o"), (1, "^")):
        m = y == label
        ax.scatter(
            x[m, 0],
            x[m, 1],
            c=colours[m],
            cmap="viridis",
            vmin=0,
            vmax=1,
            marker=marker,
            s=10,
            alpha=0.6,
            label=f"class {label}",
        )
    src = is_source[domain]
    ax.scatter(
        x[src, 0],
        x[src, 1],
        facecolors="none",
        edgecolors="black",
        s=14,
        linewidths=0.4,
        label="source (labelled)",
    )
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    ax.set_aspect("equal")
    ax.set_title(title or "domains by angle (colour), classes by marker")
    ax.legend(loc="lower left", fontsize=8)
    return fig


def plot_tree_values(
    paths: dict[str, list[str]],
    leaves: list[str],
    values: dict[str, np.ndarray],
    title: str,
    marked: np.ndarray | None = None,
    label: str = "accuracy",
) -> Figure:
    """One dendrogram per row of `values` ({name: one value in [0, 1] per leaf, in `leaves` order}), each
    leaf a coloured square with its value; `marked` leaves (e.g. sources) get a black frame. The tree comes
    as plain data, {leaf: node names from the root to it} (`taxonomy.leaf_paths`), so viz needs no taxonomy."""
    xpos = {leaf: i for i, leaf in enumerate(leaves)}
    depth = max(len(p) for p in paths.values())
    fig = NotebookFigure(figsize=(max(6, 0.45 * len(leaves)), 1.9 * len(values)))
    axes = np.atleast_1d(fig.subplots(len(values), 1))
    for ax, (name, vals) in zip(axes, values.items()):
        _draw_dendrogram(ax, paths, xpos, depth)
        sc = ax.scatter(
            range(len(leaves)),
            np.zeros(len(leaves)),
            c=vals,
            cmap="RdYlGn",
            vmin=0,
            vmax=1,
            marker="s",
            s=150,
            edgecolors=["black" if marked is not None and marked[i] else "none" for i in range(len(leaves))],
        )
        for i, v in enumerate(vals):
            ax.annotate(f"{100 * v:.0f}", (i, 0), ha="center", va="center", fontsize=6)
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
        ax.set_yticks([])
        ax.set_xticks([])
        ax.set_ylim(-0.6, depth)
        for side in ("top", "right", "left", "bottom"):
            ax.spines[side].set_visible(False)
    axes[-1].set_xticks(range(len(leaves)), leaves, rotation=90, fontsize=7)
    fig.colorbar(sc, ax=list(axes), shrink=0.6, label=label)
    fig.suptitle(title)
    return fig


def _draw_dendrogram(ax, paths: dict[str, list[str]], xpos: dict[str, int], depth: int) -> None:
    """Inner node at path prefix length L drawn at height depth - L, over the mean x of its children."""
    is_leaf = lambda prefix: bool(prefix) and paths.get(prefix[-1]) == list(prefix)

    def node(prefix: tuple) -> float:
        if is_leaf(prefix):
            return xpos[prefix[-1]]
        children = {}  # child prefix -> its leftmost leaf position, to draw children left to right
        for leaf, path in paths.items():
            if tuple(path[: len(prefix)]) == prefix:
                child = tuple(path[: len(prefix) + 1])
                children[child] = min(children.get(child, xpos[leaf]), xpos[leaf])
        ordered = sorted(children, key=children.get)
        xs = [node(c) for c in ordered]
        height = depth - len(prefix)
        ax.plot([min(xs), max(xs)], [height, height], color="0.4", lw=1)
        for c, xv in zip(ordered, xs):
            ax.plot([xv, xv], [0.35 if is_leaf(c) else depth - len(c), height], color="0.4", lw=1)
        return float(np.mean(xs))

    node(())


def plot_leaf_map(points: np.ndarray, leaves: list[str], groups: list[str], title: str) -> Figure:
    """Leaf centroids in 2-d (e.g. a taxonomist's points), labelled, coloured by their subtree."""
    fig = NotebookFigure(figsize=(7, 6))
    ax = fig.subplots()
    names = list(dict.fromkeys(groups))
    cmap = colormaps["tab10"]
    for k, g in enumerate(names):
        m = np.array([gg == g for gg in groups])
        ax.scatter(points[m, 0], points[m, 1], color=cmap(k % 10), label=g, s=40)
    for (px, py), leaf in zip(points, leaves):
        ax.annotate(leaf, (px, py), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("taxonomist axis 1")
    ax.set_ylabel("taxonomist axis 2")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig
