"""Taxonomy-structured domain adaptation (TSDA, Liu et al. ICML 2023, arXiv 2306.07874) in miniature.

A taxonomy is a tree whose leaves are domains; A is its normalised tree-distance matrix (see
`taxonomy`). The synthetic DT benchmark is written from the paper's description only (its
repository has no licence): leaves spread by angle theta, each domain a pair of mirrored Gaussian
blobs, so that a classifier fit at theta = 0 is wrong at theta = pi.

Models (`train_da`): source-only; DANN (encoder E, predictor F, multi-class domain discriminator
D); TSDA (E also reads its domain's row of A, and a taxonomist T maps encodings to 2-d points whose
distances across domains must rebuild A): min_{E,F} max_D L_pred - lambda_d L_D + lambda_t L_T,
T minimising L_T; and an oracle trained with every domain's labels. DANN is literally TSDA with
lambda_t = 0 and no taxonomy input, which a test checks step for step.
"""

from __future__ import annotations

import itertools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from torch import nn
from torch.nn import functional as nnf

from .taxonomy import binary_tree, check_taxonomy_matrix, flat_matrix, taxonomy_matrix

__all__ = [
    "compare_over_seeds",
    "make_dt",
]


@dataclass
class DomainData:
    """Points of all domains. Shapes: x (N, 2); y, domain (N,); theta, is_source (L,); A (L, L)."""

    x: np.ndarray
    y: np.ndarray
    domain: np.ndarray
    theta: np.ndarray
    is_source: np.ndarray
    A: np.ndarray
    leaves: list[str]


def make_dt(
    n_leaves: int = 14,
    theta_max: float = np.pi,
    n_per_class: int = 50,
    sd: float = 0.5,
    n_sources: int = 3,
    seed: int = 0,
) -> DomainData:
    """The DT benchmark: leaf u at angle theta_u in [0, theta_max] (DT-14: 14 leaves, pi; DT-40: 40
    leaves, beyond a full turn), class 0 a blob at r_u (cos, sin)(theta_u), class 1 its mirror at
    -r_u (cos, sin)(theta_u), r_u = 1 + 3 theta_u / pi; the `n_sources` leaves nearest theta = 0 are
    labelled sources, the rest unlabelled targets; A from a balanced binary tree over theta order."""
    if n_sources < 1 or n_sources >= n_leaves:
        raise ValueError(
            f"n_sources={n_sources}: need at least one source and one target among {n_leaves} leaves."
        )
    rng = np.random.default_rng(seed)
    theta = np.linspace(0.0, theta_max, n_leaves)
    leaves = [f"leaf{u:02d}" for u in range(n_leaves)]
    xs, ys, ds = [], [], []
    for u, t in enumerate(theta):
        centre = (1 + 3 * t / np.pi) * np.array([np.cos(t), np.sin(t)])
        for label, sign in ((0, 1.0), (1, -1.0)):
            xs.append(sign * centre + sd * rng.standard_normal((n_per_class, 2)))
            ys.append(np.full(n_per_class, label))
            ds.append(np.full(n_per_class, u))
    _, A = taxonomy_matrix(binary_tree(leaves), leaves)
    return DomainData(
        np.concatenate(xs).astype(np.float32),
        np.concatenate(ys),
        np.concatenate(ds),
        theta,
        np.arange(n_leaves) < n_sources,
        A,
        leaves,
    )


def taxonomist_loss(points: torch.Tensor, domain: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Relative squared error of T's geometry: mean over pairs (i, j) of points from different
    domains u != v of ((|p_i - p_j| - A_uv) / A_uv)^2. Pairs with A_uv = 0 carry no target and are skipped."""
    target = A[domain][:, domain]
    keep = target > 0
    if not keep.any():
        return points.sum() * 0.0  # one domain in the batch: nothing to rebuild
    one = torch.ones_like(target)
    sq = (points[:, None, :] - points[None, :, :]).pow(2).sum(-1)
    d = torch.where(keep, sq, one).sqrt()  # no sqrt(0) on the diagonal: its gradient is inf
    return (((d - target) / torch.where(keep, target, one)).pow(2) * keep).sum() / keep.sum()


Method = Literal["source_only", "dann", "tsda", "oracle"]
METHODS: tuple[Method, ...] = get_args(Method)
"""What `DAConfig.method` accepts; `compare_methods` reports under the paper's table rows instead
("source-only", "DANN", "TSDA", "TSDA-flat": method "tsda" with a flat A, "oracle")."""


@dataclass(frozen=True)
class DAConfig:
    """One run of `train_da`. TSDA-flat is method "tsda" with `flat_matrix` as A."""

    method: Method = "tsda"
    """source_only | dann | tsda | oracle (source-only's architecture, trained on every domain's labels)."""
    lambda_d: float = 1.0
    """Weight of the adversarial domain loss (DANN, TSDA)."""
    lambda_t: float = 1.0
    """Weight of the taxonomist loss in E's objective (TSDA)."""
    taxonomy_input: bool | None = None
    """E reads x and its domain's row of A; None: only for TSDA."""
    hidden: int = 64
    steps: int = 2000
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0


def _mlp(sizes: list[int], seed: int) -> nn.Sequential:
    with torch.random.fork_rng(devices=[]):  # each network's init depends on the seed only
        torch.manual_seed(seed)
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(sizes):
            layers += [nn.Linear(a, b), nn.ReLU()]
        return nn.Sequential(*layers[:-1])


@dataclass
class DAModel:
    """A trained run: encoder, predictor, and (adversarial methods) discriminator and taxonomist."""

    cfg: DAConfig
    A: np.ndarray
    E: nn.Module
    F: nn.Module
    D: nn.Module | None = None
    T: nn.Module | None = None

    def inputs(self, x: np.ndarray, domain: np.ndarray) -> torch.Tensor:
        """E's input: x, then the domain's row of A when the method reads the taxonomy."""
        parts = [np.asarray(x, np.float32)]
        if _reads_taxonomy(self.cfg):
            parts.append(self.A[np.asarray(domain)].astype(np.float32))
        return torch.from_numpy(np.concatenate(parts, axis=1))

    @torch.no_grad()
    def logits(self, x: np.ndarray, domain: np.ndarray) -> torch.Tensor:
        """F's class logits for points `x` of domains `domain`."""
        return self.F(self.E(self.inputs(x, domain)))

    def predict(self, x: np.ndarray, domain: np.ndarray) -> np.ndarray:
        return self.logits(x, domain).argmax(-1).numpy()


def _reads_taxonomy(cfg: DAConfig) -> bool:
    return cfg.method == "tsda" if cfg.taxonomy_input is None else cfg.taxonomy_input


def check_domain_data(data: DomainData) -> None:
    """Raise naming the fix when A or the domain indices do not fit the leaves, or no source domain exists."""
    check_taxonomy_matrix(data.A, len(data.leaves))
    if len(data.is_source) != len(data.leaves):
        raise ValueError(
            f"is_source has {len(data.is_source)} entries for {len(data.leaves)} domains: one per domain."
        )
    if not data.is_source.any():
        raise ValueError("No source domain: mark at least one domain as labelled (is_source[u] = True).")
    if data.domain.min() < 0 or data.domain.max() >= len(data.leaves):
        raise ValueError(
            f"Domain indices must lie in [0, {len(data.leaves)}): one index per leaf in `leaves`."
        )


def train_da(
    data: DomainData, cfg: DAConfig, A: np.ndarray | None = None, labelled: np.ndarray | None = None
) -> DAModel:
    """Train one method on `data` (labels used only where `labelled`, by default the source domains'
    points; every label for the oracle). `A` replaces data.A as the taxonomy E and T see (TSDA-flat)."""
    if cfg.method not in METHODS:
        raise ValueError(f"Unknown method {cfg.method!r}: choose from {METHODS}.")
    check_domain_data(data)
    labelled = data.is_source[data.domain] if labelled is None else np.asarray(labelled, bool)
    if not labelled.any():
        raise ValueError(
            "No labelled point: give the source domains some points (or pass a non-empty `labelled`)."
        )
    A = check_taxonomy_matrix(data.A if A is None else A, len(data.leaves))
    if cfg.method == "oracle":
        labelled = np.ones(len(data.y), bool)
    model = _networks(cfg, A, data.x.shape[1])
    adam = lambda *nets: torch.optim.Adam(
        [p for n in nets for p in n.parameters()], lr=cfg.lr, betas=(0.5, 0.999)
    )
    opt_ef = adam(model.E, model.F)
    opt_d = adam(model.D) if model.D is not None else None
    opt_t = adam(model.T) if model.T is not None else None
    x_all, y_all = model.inputs(data.x, data.domain), torch.from_numpy(data.y).long()
    domain_all, A_t = torch.from_numpy(data.domain).long(), torch.from_numpy(A).float()
    labelled_rows, rng = np.flatnonzero(labelled), np.random.default_rng(cfg.seed)
    for _ in range(cfg.steps):
        lab_batch = torch.from_numpy(rng.choice(labelled_rows, cfg.batch_size))
        any_batch = torch.from_numpy(rng.integers(0, len(data.y), cfg.batch_size))
        loss = nnf.cross_entropy(model.F(model.E(x_all[lab_batch])), y_all[lab_batch])
        if opt_d is not None:  # D and T step on detached encodings first, then E and F play against them
            encoded, domain = model.E(x_all[any_batch]), domain_all[any_batch]
            fool, keep_taxonomy = _adversaries_step(model, opt_d, opt_t, encoded, domain, A_t)
            loss = loss - cfg.lambda_d * fool
            if keep_taxonomy is not None:
                loss = loss + cfg.lambda_t * keep_taxonomy
        opt_ef.zero_grad()
        loss.backward()
        opt_ef.step()
    return model


def _networks(cfg: DAConfig, A: np.ndarray, d_x: int) -> DAModel:
    """E and F for every method; D (domain discriminator) for DANN and TSDA; T (taxonomist) for TSDA.
    Each network's init depends on the seed and its role only."""
    n_dom, width = len(A), cfg.hidden
    d_in = d_x + (n_dom if _reads_taxonomy(cfg) else 0)
    model = DAModel(
        cfg,
        A,
        E=_mlp([d_in, width, width, width], cfg.seed * 10),
        F=_mlp([width, width, 2], cfg.seed * 10 + 1),
    )
    if cfg.method in ("dann", "tsda"):
        model.D = _mlp([width, width, n_dom], cfg.seed * 10 + 2)
    if cfg.method == "tsda":
        model.T = _mlp([width, width, 2], cfg.seed * 10 + 3)
    return model


def _adversaries_step(
    model: DAModel, opt_d, opt_t, encoded: torch.Tensor, domain: torch.Tensor, A_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One step of D (and T, for TSDA) on the detached encodings; returns their losses on the live
    encodings, which E and F then play against: D's to maximise, T's (None without T) to minimise."""
    opt_d.zero_grad()
    nnf.cross_entropy(model.D(encoded.detach()), domain).backward()
    opt_d.step()
    if model.T is None:
        return nnf.cross_entropy(model.D(encoded), domain), None
    opt_t.zero_grad()
    taxonomist_loss(model.T(encoded.detach()), domain, A_t).backward()
    opt_t.step()
    return nnf.cross_entropy(model.D(encoded), domain), taxonomist_loss(model.T(encoded), domain, A_t)


def accuracy_by_domain(model: DAModel, data: DomainData) -> np.ndarray:
    """Accuracy of `model` in each domain, shape (n_domains,)."""
    correct = model.predict(data.x, data.domain) == data.y
    return np.array([correct[data.domain == u].mean() for u in range(len(data.leaves))])


def select_on_source(
    data: DomainData, configs: list[DAConfig], A: np.ndarray | None = None, val_fraction: float = 0.25
) -> tuple[DAModel, list[tuple[float, float]]]:
    """Train each config with `val_fraction` of the source points held out; keep the most accurate
    on them, ties going to the lower cross-entropy. Target labels are never read (unsupervised DA).
    Returns the chosen model and each config's (source-val accuracy, source-val cross-entropy)."""
    if not configs:
        raise ValueError("No configs to choose from: pass at least one DAConfig.")
    src = np.flatnonzero(data.is_source[data.domain])
    if len(src) < 2:
        raise ValueError("No source domain with points to validate on: mark at least one domain as a source.")
    val = np.random.default_rng(configs[0].seed + 7).choice(
        src, max(1, int(val_fraction * len(src))), replace=False
    )
    labelled = data.is_source[data.domain].copy()
    labelled[val] = False
    models, scores = [], []
    for cfg in configs:
        m = train_da(data, cfg, A, labelled)
        logits, y = m.logits(data.x[val], data.domain[val]), torch.from_numpy(data.y[val]).long()
        models.append(m)
        scores.append((float((logits.argmax(-1) == y).float().mean()), float(nnf.cross_entropy(logits, y))))
    best = min(range(len(configs)), key=lambda k: (-scores[k][0], scores[k][1]))
    return models[best], scores


def compare_methods(
    data: DomainData,
    test: DomainData,
    seed: int,
    lambda_d_grid: tuple[float, ...] = (0.3, 1.0),
    lambda_t_grid: tuple[float, ...] = (0.3, 1.0),
    **cfg: object,
) -> dict[str, dict]:
    """One seed of the benchmark: source-only, DANN (lambda_d from its grid), TSDA and TSDA-flat (lambda_d = 1,
    lambda_t from its grid), all chosen on source validation, and the oracle; each scored per domain on `test`.
    Returns {method: {"per_domain": accuracies, "target": mean over target domains, "chosen": {...}, "source_val": [...]}}."""
    runs = {
        "source-only": ([DAConfig("source_only", seed=seed, **cfg)], None),
        "DANN": ([DAConfig("dann", lambda_d=ld, seed=seed, **cfg) for ld in lambda_d_grid], None),
        "TSDA": ([DAConfig("tsda", lambda_t=lt, seed=seed, **cfg) for lt in lambda_t_grid], None),
        "TSDA-flat": (
            [DAConfig("tsda", lambda_t=lt, seed=seed, **cfg) for lt in lambda_t_grid],
            flat_matrix(len(data.leaves)),
        ),
        "oracle": ([DAConfig("oracle", seed=seed, **cfg)], None),
    }
    out = {}
    for name, (configs, A) in runs.items():
        model, scores = (
            (train_da(data, configs[0]), []) if name == "oracle" else select_on_source(data, configs, A)
        )
        acc = accuracy_by_domain(model, test)
        grid_key = {"DANN": "lambda_d", "TSDA": "lambda_t", "TSDA-flat": "lambda_t"}.get(name)
        out[name] = dict(
            per_domain=acc.tolist(),
            target=float(acc[~test.is_source].mean()),
            source_val=scores,
            chosen={grid_key: getattr(model.cfg, grid_key)} if grid_key else {},
        )
    return out


def _one_thread() -> None:
    torch.set_num_threads(1)


def compare_over_seeds(
    datasets: dict[int, tuple[DomainData, DomainData]], n_jobs: int = 1, **kw: object
) -> dict[int, dict]:
    """`compare_methods` for each {seed: (data, test)}, over `n_jobs` processes (one thread each;
    the networks are tiny, so processes, not threads, are what scales). Same results for any n_jobs."""
    if n_jobs <= 1:
        threads = torch.get_num_threads()
        _one_thread()  # as in the workers, so that results do not depend on n_jobs
        try:
            return {seed: compare_methods(d, t, seed, **kw) for seed, (d, t) in datasets.items()}
        finally:
            torch.set_num_threads(threads)
    with ProcessPoolExecutor(
        n_jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread
    ) as pool:
        futures = {seed: pool.submit(compare_methods, d, t, seed, **kw) for seed, (d, t) in datasets.items()}
        return {seed: f.result() for seed, f in futures.items()}
