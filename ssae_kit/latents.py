"""Per-latent and per-token-type views of an evaluation (PAPER §3): tail coverage (a token type "has
a feature" when it is the top token of some latent: the token on which that latent reaches its
largest activation in the evaluation data), error by frequency rank, how many latents fire on a
text, matching one SAE's latents to another's by decoder direction (`match_latents`) and an SSAE's latents
that match no GSAE direction (`ssae_only_latents`), decoder geometry, and on notebook 00's toy,
how well a decoder recovers the known directions (`feature_recovery`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .activations import Toy
from .claims import claim_reading, matched_l0_pair
from .evals import EvalResult
from .intervals import MIN_DOCS, Difference, bootstrap_interval, check_confidence
from .sae import SAE

__all__ = [
    "decoder_cosine_similarities",
    "error_by_rank",
    "feature_recovery",
    "firing_difference",
    "geometric_centres",
    "match_latents",
    "matched_l0_tail_claim",
    "ssae_only_latents",
    "tail_coverage",
    "tail_coverage_difference",
    "tail_summary",
]


def geometric_centres(edges: list[float]) -> np.ndarray:
    """Where to draw each log-spaced bin (tail_coverage's bin_edges, error_by_rank's rank_edges): the
    geometric mean of its two edges."""
    e = np.asarray(edges, dtype=float)
    return np.sqrt(e[:-1] * e[1:])


def tail_coverage(result: EvalResult, n_bins: int = 8) -> dict[str, Any]:
    """Fraction of token types that have a feature, by frequency bin (log-spaced), and cumulatively.

    Token frequency is counted on the evaluation tokens. The cumulative curve gives, for types
    up to each frequency, the fraction that have a feature: rare types first.
    """
    types, freq = np.unique(result.token_ids, return_counts=True)
    top = set(result.feature_top_token[result.feature_top_token >= 0].tolist())
    has = np.array([t in top for t in types])
    edges = np.unique(np.logspace(0, np.log10(freq.max() + 1), n_bins + 1).round())
    which = np.clip(np.digitize(freq, edges) - 1, 0, len(edges) - 2)
    per_bin = [
        float(has[which == b].mean()) if (which == b).any() else math.nan for b in range(len(edges) - 1)
    ]
    order = np.argsort(freq, kind="stable")
    cumulative = np.cumsum(has[order]) / np.arange(1, len(order) + 1)
    return dict(
        bin_edges=edges.tolist(),
        coverage=per_bin,
        n_types=[int((which == b).sum()) for b in range(len(edges) - 1)],
        freq_sorted=freq[order].tolist(),
        cumulative=cumulative.tolist(),
        overall=float(has.mean()),
    )


def tail_coverage_difference(
    a: EvalResult, b: EvalResult, confidence: float = 0.95, seed: int = 0
) -> Difference:
    """Overall tail coverage of a minus b (fraction of token types that have a feature), with a
    paired bootstrap interval over token types (percentile; both SAEs read the same tokens)."""
    if not np.array_equal(a.token_ids, b.token_ids):
        raise ValueError("tail_coverage_difference needs both SAEs evaluated on the same tokens.")
    types = np.unique(a.token_ids)
    has = [np.isin(types, r.feature_top_token[r.feature_top_token >= 0]).astype(float) for r in (a, b)]
    estimate = float(has[0].mean() - has[1].mean())
    if len(types) >= MIN_DOCS and np.array_equal(has[0], has[1]):
        return Difference("coverage", estimate, estimate, estimate, confidence, len(types))
    low, high = bootstrap_interval(
        (has[0], has[1]),
        lambda x, y, axis=-1: x.mean(axis) - y.mean(axis),
        paired=True,
        confidence=confidence,
        seed=seed,
    )
    return Difference("coverage", estimate, low, high, confidence, len(types))


def matched_l0_tail_claim(
    runs: dict[tuple[str, float], EvalResult],
    a: str,
    b: str,
    window: Sequence[float],
    discuss: str = "",
) -> tuple[tuple[float, float] | None, Difference | None, str]:
    """Notebook 03's pre-registered claim: among `runs` {(name, sparsity coefficient): evaluation}, the
    `a` and `b` runs whose L0s lie in `window` and are closest (`claims.matched_l0_pair`), and whether `b`
    covers more tail token types than `a` there (the interval above 0). Returns (their coefficients,
    `b` minus `a`, the sentence); (None, None, why not tested) when no pair lies in the window."""
    l0s = {key: r.metrics["l0"] for key, r in runs.items()}
    pair = matched_l0_pair(l0s, a, b, (window[0], window[1]))
    if pair is None:
        coefficients = list(dict.fromkeys(c for _, c in runs))
        found = ", ".join(f"{n} {c:g}: {v:.0f}" for (n, c), v in l0s.items())
        return (
            None,
            None,
            (
                f"No {a} and {b} SSAEs both have L0 in {list(window)} at sparsity coefficients {coefficients} "
                f"(L0s: {found}): the claim is not tested here; add coefficients that put both inside the window."
            ),
        )
    c_a, c_b = pair
    matched = tail_coverage_difference(runs[(b, c_b)], runs[(a, c_a)])
    claim = (
        f"{b} (sparsity {c_b:g}, L0 {l0s[(b, c_b)]:.0f}) covers more tail token types than "
        f"{a} (sparsity {c_a:g}, L0 {l0s[(a, c_a)]:.0f})"
    )
    return pair, matched, claim_reading(claim, matched, "above", discuss=discuss)


def tail_summary(r: EvalResult, coverage: dict[str, Any], cosines: np.ndarray) -> dict[str, float]:
    """One SAE's row of notebook 03's summary: fidelity, sparsity, tail coverage (overall and in the
    rarest bin of `tail_coverage`), worst token error, and how its latents fire and point."""
    return dict(
        ce_sae=r.metrics["ce_sae"],
        l0=r.metrics["l0"],
        explained_variance=r.metrics["explained_variance"],
        tail_coverage=coverage["overall"],
        rare_coverage=coverage["coverage"][0],
        max_error=float(r.token_mse.max()),
        mean_entropy=r.metrics["mean_token_entropy"],
        mean_max_activation=r.metrics["mean_max_activation"],
        mean_abs_cosine=float(np.abs(cosines).mean()),
    )


def match_latents(sae_a, sae_b) -> np.ndarray:
    """For each latent of `sae_a`, the largest cosine between its decoder direction and any of `sae_b`'s."""
    return decoder_cosines(sae_a.W_dec, sae_b.W_dec).max(1).values.numpy()


def ssae_only_latents(best_cosine: np.ndarray, peak_activation: np.ndarray, threshold: float) -> np.ndarray:
    """An SSAE's "dark matter": latents whose decoder direction matches no GSAE direction (best cosine
    below `threshold`) and that fire on the sample (peak activation > 0), strongest first.

    best_cosine: (d_sae,) each SSAE latent's largest decoder cosine with any GSAE latent.
    peak_activation: (d_sae,) each SSAE latent's largest activation on the sample.
    """
    new = np.flatnonzero((best_cosine < threshold) & (peak_activation > 0))
    return new[np.argsort(-peak_activation[new], kind="stable")]


def firing_difference(
    fires_a: np.ndarray,
    fires_b: np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Difference:
    """How many latents fire on text a minus on text b, with a bootstrap interval resampling each
    text's windows (two independent samples, so unpaired).

    fires_a: (N_a, L) bool, latent l fires somewhere in window n of text a; likewise fires_b. A latent
    counts once it fires in any window of the sample, so both texts should have the same number of
    windows of the same length (notebook 04 uses `max_contexts` windows of each).
    """
    fires_a, fires_b = np.asarray(fires_a, bool), np.asarray(fires_b, bool)
    if fires_a.shape[1] != fires_b.shape[1] or min(len(fires_a), len(fires_b)) < 2:
        raise ValueError(
            f"firing_difference needs two (windows, latents) arrays over the same latents with 2+ windows each; "
            f"got {fires_a.shape} and {fires_b.shape}."
        )
    count = lambda f: int(f.any(0).sum())
    estimate = float(count(fires_a) - count(fires_b))
    n = min(len(fires_a), len(fires_b))
    if n < MIN_DOCS:
        return Difference("firing", estimate, math.nan, math.nan, check_confidence(confidence), n)
    rng = np.random.default_rng(seed)
    stats_ = [
        count(fires_a[rng.integers(len(fires_a), size=len(fires_a))])
        - count(fires_b[rng.integers(len(fires_b), size=len(fires_b))])
        for _ in range(n_resamples)
    ]
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(stats_, [tail, 100 - tail])
    return Difference("firing", estimate, float(low), float(high), confidence, n)


def error_by_rank(result: EvalResult, n_buckets: int = 8) -> dict[str, list[float]]:
    """Mean and max per-token error for token types bucketed by frequency rank (log-spaced)."""
    types, inverse, freq = np.unique(result.token_ids, return_inverse=True, return_counts=True)
    rank = np.empty(len(types), dtype=np.int64)
    rank[np.argsort(-freq, kind="stable")] = np.arange(1, len(types) + 1)
    token_rank = rank[inverse]
    edges = np.unique(np.logspace(0, np.log10(len(types) + 1), n_buckets + 1).round())
    which = np.clip(np.digitize(token_rank, edges) - 1, 0, len(edges) - 2)
    mean, mx = [], []
    for b in range(len(edges) - 1):
        errs = result.token_mse[which == b]
        mean.append(float(errs.mean()) if len(errs) else math.nan)
        mx.append(float(errs.max()) if len(errs) else math.nan)
    return dict(rank_edges=edges.tolist(), mean_error=mean, max_error=mx)


def decoder_cosines(W_a: torch.Tensor, W_b: torch.Tensor) -> torch.Tensor:
    """(n_a, n_b) cosine similarities between the rows (latent directions) of two decoders, float32 on the CPU."""
    a, b = (W.detach().float().cpu() for W in (W_a, W_b))
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return a @ b.T


def decoder_cosine_similarities(sae: SAE, max_latents: int = 4096, seed: int = 0) -> np.ndarray:
    """Pairwise cosine similarities of decoder directions (upper triangle), on at most `max_latents`."""
    W = sae.W_dec.detach().float().cpu()
    if len(W) > max_latents:
        W = W[torch.randperm(len(W), generator=torch.Generator().manual_seed(seed))[:max_latents]]
    sims = decoder_cosines(W, W)
    i, j = torch.triu_indices(len(W), len(W), offset=1)
    return sims[i, j].numpy()


def feature_recovery(sae: SAE, toy: Toy) -> torch.Tensor:
    """(n_features,) for each true feature, its best cosine with any of the SAE's decoder directions:
    near 1, one latent has learned that feature."""
    W_dec = sae.W_dec.detach().float().cpu()
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (toy.features @ W_dec.T).max(dim=1).values
