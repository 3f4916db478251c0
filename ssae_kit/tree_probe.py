"""Does a representation keep a taxonomy of subdomains? A taxonomist used as a probe (inspired by TSDA).

Texts come from the leaves of a known tree (by default the 28 Bias in Bios professions grouped by
hand into fields). A linear taxonomist T maps each text's pooled representation to a low-dimensional
point, trained with TSDA's taxonomist loss on half of the texts; on the other half the distances
between leaf centroids of T's points are compared with the taxonomy matrix A (Spearman rho: do
close leaves stay close; stress: how much of the distances A fails to explain). Controls: a flat A
(no structure to find) and a shuffled-leaf A (structure the representation does not have).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .features import principal_components
from .intervals import Interval, seed_band
from .taxonomy import Tree, flat_matrix, leaf_paths, parse_taxonomy, subtrees, taxonomy_matrix
from .tsda import taxonomist_loss

__all__ = [
    "probe_taxonomy",
    "summarize",
    "taxonomist_map",
]


def shuffled_matrix(A: np.ndarray, seed: int) -> np.ndarray:
    """A with its leaves relabelled at random: the same distances, attached to the wrong leaves."""
    perm = np.random.default_rng(seed).permutation(len(A))
    return A[perm][:, perm]


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation (ties share ranks); None when either side is constant."""
    ra, rb = pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def stress(D: np.ndarray, A: np.ndarray) -> float:
    """Kruskal's stress-1 of distances D against targets A after the best scale s: sqrt(sum (D - sA)^2 / sum D^2),
    0 when D is A up to scale, 1 when A explains nothing."""
    s = (D * A).sum() / max((A * A).sum(), 1e-12)
    return float(np.sqrt(((D - s * A) ** 2).sum() / max((D * D).sum(), 1e-12)))


def fit_taxonomist(
    centroids: np.ndarray, A: np.ndarray, dim: int = 2, steps: int = 500, lr: float = 0.05, seed: int = 0
) -> torch.nn.Linear:
    """A linear taxonomist: leaf centroids -> `dim`-d points whose distances rebuild A (TSDA's loss, Adam).
    T is linear, so T of a leaf's mean feature is the mean of T's points of that leaf's texts."""
    x, A_t = torch.as_tensor(centroids, dtype=torch.float32), torch.as_tensor(A).float()
    u = torch.arange(len(x))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        T = torch.nn.Linear(x.shape[1], dim)
    opt = torch.optim.Adam(T.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        taxonomist_loss(T(x), u, A_t).backward()
        opt.step()
    return T


@dataclass(frozen=True)
class ProbeConfig:
    """How `probe_taxonomy` fits and scores. T reads the top `n_components` principal components of the
    fitting half only, so that it can pick a projection of the representation's main directions but
    cannot memorise an arbitrary target (the shuffled control checks this)."""

    dim: int = 2
    """Output dimension of the taxonomist (TSDA's is 2)."""
    n_components: int = 8
    steps: int = 500
    lr: float = 0.05
    n_shuffles: int = 3
    """Shuffled-leaf controls per seed."""


def _components(features: np.ndarray, fit: np.ndarray, k: int) -> np.ndarray:
    """Every row's top-k principal components, the PCA and scaling fit on the rows in `fit` only."""
    z = principal_components(features, k, fit)
    return z / (z[fit].std() + 1e-9)  # one scale for all: whitening would blow small, noisy components up


def _leaf_means(z: np.ndarray, leaf: np.ndarray, rows: np.ndarray, n_leaves: int) -> np.ndarray:
    """(n_leaves, k) mean of z over each leaf's texts among `rows` (a boolean mask)."""
    return np.stack([z[rows & (leaf == u)].mean(0) for u in range(n_leaves)])


def taxonomist_map(
    features: np.ndarray,
    leaf_names: list[str],
    taxonomy: Tree | list[tuple[str, str]],
    cfg: ProbeConfig = ProbeConfig(),
) -> tuple[list[str], np.ndarray]:
    """(leaves, their 2-d points) from a taxonomist fit on all texts: a picture, not a score."""
    tree = parse_taxonomy(taxonomy)
    leaves, A = taxonomy_matrix(tree, [name for name in leaf_paths(tree) if name in set(leaf_names)])
    every = np.ones(len(leaf_names), bool)
    z = _components(np.asarray(features, dtype=np.float64), every, cfg.n_components)
    centroids = _leaf_means(z, np.array([leaves.index(name) for name in leaf_names]), every, len(leaves))
    T = fit_taxonomist(centroids, A, cfg.dim, cfg.steps, cfg.lr)
    with torch.no_grad():
        return leaves, T(torch.as_tensor(centroids, dtype=torch.float32)).numpy()


def _halves(leaf: np.ndarray, n_leaves: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A split of the texts in two, half of each leaf on each side."""
    rng = np.random.default_rng(seed)
    fit = np.zeros(len(leaf), bool)
    for u in range(n_leaves):
        idx = rng.permutation(np.flatnonzero(leaf == u))
        fit[idx[: len(idx) // 2]] = True
    return fit, ~fit


def probe_once(
    features: np.ndarray,
    leaf: np.ndarray,
    A: np.ndarray,
    target: np.ndarray,
    seed: int,
    cfg: ProbeConfig = ProbeConfig(),
) -> dict:
    """Fit T on one half with `target` as taxonomy, score the other half: rho and stress of its leaf-centroid
    distances against `target` and against the true `A`."""
    n = len(A)
    fit, score = _halves(leaf, n, seed)
    z = _components(features, fit, cfg.n_components)
    T = fit_taxonomist(_leaf_means(z, leaf, fit, n), target, cfg.dim, cfg.steps, cfg.lr, seed)
    with torch.no_grad():
        points = T(torch.as_tensor(_leaf_means(z, leaf, score, n), dtype=torch.float32)).numpy()
    D = np.linalg.norm(points[:, None] - points[None], axis=-1)
    i, j = np.triu_indices(n, k=1)
    return dict(
        rho=spearman(D[i, j], target[i, j]),
        stress=stress(D[i, j], target[i, j]),
        rho_true=spearman(D[i, j], A[i, j]),
    )


def probe_taxonomy(
    features: np.ndarray,
    leaf_names: list[str],
    taxonomy: Tree | list[tuple[str, str]],
    seeds: list[int],
    cfg: ProbeConfig = ProbeConfig(),
    min_subtree_leaves: int = 4,
) -> list[dict]:
    """Score one representation (`features`: one row per text, `leaf_names`: each text's leaf) against the
    taxonomy, its flat and shuffled controls, and each subtree with >= `min_subtree_leaves` leaves (T refit
    on that subtree alone). One row per (seed, target): target, rho, stress, rho_true."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) != len(leaf_names):
        raise ValueError(
            f"features has shape {features.shape} for {len(leaf_names)} texts: give one row per text."
        )
    tree = parse_taxonomy(taxonomy)
    order, present = list(leaf_paths(tree)), set(leaf_names)
    # the tree's order; unknown names go last, where taxonomy_matrix names them in its error
    leaves, A = taxonomy_matrix(
        tree, [name for name in order if name in present] + sorted(present - set(order))
    )
    index = {name: u for u, name in enumerate(leaves)}
    leaf = np.array([index[name] for name in leaf_names])
    few = [name for name in leaves if (leaf == index[name]).sum() < 2]
    if few or len(leaves) < 3:
        raise ValueError(
            f"Leaves {few} have fewer than 2 texts (and at least 3 leaves are needed): give every "
            "leaf 2+ texts, so that both halves see it."
        )
    rows = []
    for seed in seeds:
        targets = {"taxonomy": A, "flat": flat_matrix(len(A))}
        targets.update({f"shuffled{k}": shuffled_matrix(A, seed * 100 + k) for k in range(cfg.n_shuffles)})
        for name, target in targets.items():
            rows.append(
                dict(
                    seed=seed,
                    target=name.rstrip("0123456789"),
                    **probe_once(features, leaf, A, target, seed, cfg),
                )
            )
        for name, members in subtrees(tree, min_subtree_leaves).items():
            sub = [index[m] for m in members if m in index]
            if len(sub) < min_subtree_leaves:
                continue
            keep = np.isin(leaf, sub)
            remap = np.full(len(leaves), -1)
            remap[sub] = np.arange(len(sub))
            A_sub = A[np.ix_(sub, sub)]
            rows.append(
                dict(
                    seed=seed,
                    target=f"subtree:{name}",
                    **probe_once(features[keep], remap[leaf[keep]], A_sub, A_sub, seed, cfg),
                )
            )
    return rows


def summarize(rows: list[dict]) -> dict[str, dict[str, Interval | None]]:
    """{target: {metric: (mean, low, high) over seeds, or None where rho is undefined}}: the mean and
    its 95% seed band (`intervals.seed_band`, NaN bounds below `MIN_SEEDS` seeds), as everywhere else."""
    out: dict[str, dict] = {}
    for target in dict.fromkeys(r["target"] for r in rows):
        cells = {}
        for metric in ("rho", "stress", "rho_true"):
            values = [r[metric] for r in rows if r["target"] == target and r[metric] is not None]
            cells[metric] = seed_band(values) if values else None
        out[target] = cells
    return out
