"""Comparisons and the sentences read off them: a paired bootstrap interval between two SAEs'
evaluations (`compare`, over documents, via `scipy.stats.bootstrap`), bands over seeds and splits,
the seed-and-item bootstrap of the SHIFT table, and the readings notebooks print for pre-registered
claims, each computed from the interval (a difference is stated only when the interval excludes 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from .evals import EvalResult
from .intervals import (
    MIN_DOCS,
    MIN_SEEDS,
    Difference,
    Interval,
    bootstrap_interval,
    check_confidence,
    has_interval,
    seed_band,
    too_few,
)

__all__ = [
    "claim_reading",
    "compare",
    "interval_over_seeds",
    "paired_over_seeds",
    "rare_max_error_reading",
    "shift_reading",
    "verdict_over_seeds",
]


def compare(
    a: EvalResult,
    b: EvalResult,
    metric: Literal["ce", "ev", "mse"] = "ce",
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Difference:
    """a minus b for spliced CE (nats per target token), EV or MSE, with a `confidence` bootstrap
    interval (BCa, `scipy.stats.bootstrap`) resampling documents, paired: the same resampled
    documents for both SAEs. Both must come from `evaluate` on the same docs and windows."""
    for r in (a, b):
        if not r.doc_stats or "ce_sae" not in r.doc_stats:
            raise ValueError("compare needs per-document results of evaluate() (evaluate_store keeps none).")
    if (
        a.metrics["eval_docs"] != b.metrics["eval_docs"]
        or a.metrics["ctx_len"] != b.metrics["ctx_len"]
        or a.metrics["max_contexts"] != b.metrics["max_contexts"]
        or a.metrics.get("precision") != b.metrics.get("precision")
    ):
        raise ValueError(
            "compare needs both SAEs evaluated on the same docs, ctx_len, max_contexts and precision."
        )
    sa, sb = a.doc_stats, b.doc_stats
    used = sa["n_targets"] > 0
    if metric == "ce":
        data = (sa["ce_sae"][used], sb["ce_sae"][used], sa["n_targets"][used])

        def statistic(x, y, n, axis=-1):
            return (x.sum(axis) - y.sum(axis)) / n.sum(axis)
    elif metric == "ev":  # EV_a - EV_b = (err_b - err_a) / dev
        data = (sa["sq_err"][used], sb["sq_err"][used], sa["sq_dev"][used])

        def statistic(x, y, dev, axis=-1):
            return (y.sum(axis) - x.sum(axis)) / dev.sum(axis)
    elif metric == "mse":
        data = (sa["sq_err"][used], sb["sq_err"][used], sa["n_tokens"][used])

        def statistic(x, y, n, axis=-1):
            return (x.sum(axis) - y.sum(axis)) / n.sum(axis)
    else:
        raise ValueError(f"Unknown metric {metric!r}: use 'ce', 'ev' or 'mse'.")
    check_confidence(confidence)
    if not used.any():
        raise ValueError("compare found no evaluated document with a target token: evaluate more text.")
    estimate = float(statistic(*data))  # its interval is NaN below intervals.MIN_DOCS documents
    low, high = bootstrap_interval(
        data, statistic, paired=True, method="BCa", confidence=confidence, n_resamples=n_resamples, seed=seed
    )
    warned = [r.metrics.get("health_warnings") or [] for r in (a, b)]
    flagged = "; ".join(dict.fromkeys(w for ws in warned for w in ws)) if all(warned) else ""
    return Difference(metric, estimate, low, high, confidence, int(used.sum()), flagged)


def interval_over_seeds(
    diffs: Sequence[float],
    confidence: float = 0.95,
    bounds: tuple[float, float] | None = None,
    unit: str = "seeds",
) -> Interval:
    """(mean, low, high) of per-seed values: the mean +- the t quantile times the standard error
    (`intervals.seed_band`), the band `verdict_over_seeds` reads; NaN bounds below
    `intervals.MIN_SEEDS` seeds (no interval, no verdict). `bounds` clips it (a proportion's (0, 1));
    `unit` names what the values are over ("splits")."""
    band = seed_band(diffs, confidence, unit)
    if bounds is None or not has_interval(band.low, band.high):
        return band
    low, high = max(band.low, bounds[0]), min(band.high, bounds[1])
    return Interval(
        band.estimate,
        low,
        high,
        n=band.n,
        unit=unit,
        how=f"{band.how}, clipped to {bounds}",
        confidence=confidence,
        floor=MIN_SEEDS,
    )


def paired_over_seeds(a: Sequence[float], b: Sequence[float], name: str) -> dict[str, Any]:
    """a - b seed by seed (the i-th of each come from the same seed or split), with the band of
    `interval_over_seeds` and the words it supports: "<name> higher", "<name> lower", "no clear
    difference", or "too few seeds for an interval (2 < 3)". For CE, "lower" is the gain."""
    if len(a) != len(b) or not len(a):
        raise ValueError(f"a and b need one value per seed each; got {len(a)} and {len(b)}.")
    diffs = [float(x - y) for x, y in zip(a, b)]
    band = interval_over_seeds(diffs)
    side = band.side()
    word = band.too_few() if side == "too few" else f"{name} {side}" if side in ("higher", "lower") else side
    return dict(per_seed=diffs, mean=band.estimate, low=band.low, high=band.high, verdict=word)


def verdict_over_seeds(
    diffs: Sequence[float],
) -> Literal["better", "worse", "no clear difference", "too few seeds"]:
    """Per-seed differences (a minus b) read as a verdict: "better" or "worse" when the band of
    `interval_over_seeds` excludes 0, "no clear difference" when it holds 0, "too few seeds" when
    there is no band (fewer than `intervals.MIN_SEEDS` seeds, or no spread)."""
    side = interval_over_seeds(diffs).side()
    return {"higher": "better", "lower": "worse", "too few": "too few seeds"}.get(side, side)


def seed_item_bootstrap(
    values: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    strata: Sequence[str],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """(estimate, low, high) of `statistic(values, strata)` with a percentile bootstrap over seeds
    and items at once: each resample draws seeds with replacement, and items with replacement
    within each stratum (so every group keeps its size), the same items for every seed (they were
    scored on the same items).

    values: (S, N, ...) per seed and item (e.g. 1 when bio n was classified right under seed s);
    strata: (N,) the item's group, e.g. "female nurse" (worst-group accuracy needs each group).
    NaN bounds when a group has one item or there are fewer than `intervals.MIN_DOCS` items.
    """
    values, strata = np.asarray(values), np.asarray(strata)
    if values.ndim < 2 or values.shape[1] != len(strata) or values.shape[0] < 1:
        raise ValueError(
            f"values has shape {values.shape}: it must be (seeds, items, ...) with {len(strata)} items."
        )
    check_confidence(confidence)
    groups = [np.flatnonzero(strata == g) for g in np.unique(strata)]
    kind = dict(
        n=len(strata), unit="items", how="percentile bootstrap over seeds and items", confidence=confidence
    )
    if min(len(g) for g in groups) < 2 or len(strata) < MIN_DOCS:  # resampling would only restate them
        return Interval(float(statistic(values, strata)), math.nan, math.nan, **kind)
    rng = np.random.default_rng(seed)
    stats_ = []
    for _ in range(n_resamples):
        s = rng.integers(values.shape[0], size=values.shape[0])
        items = np.concatenate([rng.choice(g, size=len(g)) for g in groups])
        stats_.append(statistic(values[s][:, items], strata[items]))
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(stats_, [tail, 100 - tail])
    return Interval(float(statistic(values, strata)), float(low), float(high), **kind)


def claim_reading(claim: str, d: Difference, holds_if: Literal["above", "below"], discuss: str = "") -> str:
    """A pre-registered claim read off its interval: it holds when the whole interval of `d` lies
    above (or below) zero, and the sentence says what was measured either way. `discuss`: a
    question for the reader, added only when the claim was tested and did not hold."""
    side = d.interval.side()
    if side == "too few":
        return f"{claim}: measured {d.estimate:+.3f}, but with {too_few(d.n_docs, 'samples', MIN_DOCS)}, the claim is not tested here."
    holds = side == ("higher" if holds_if == "above" else "lower")
    span = f"{d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}] ({100 * d.confidence:.0f}% CI, n = {d.n_docs})"
    reading = f"{claim}: measured {span}, so the claim {'holds' if holds else 'does not hold'} here."
    return reading + (f" For discussion: {discuss}" if discuss and not holds else "")


def matched_l0_pair(
    l0: dict[tuple[str, float], float], a: str, b: str, window: tuple[float, float]
) -> tuple[float, float] | None:
    """The sparsity coefficients (one for `a`, one for `b`) whose SAEs both have L0 inside `window`
    and closest to each other, from `l0` = {(name, coefficient): L0}; None when no pair is inside.

    Comparing two objectives at one coefficient compares them at different sparsities; the paper's
    TERM-vs-ERM claims hold in a window of L0, so the kit compares them there, at matched L0."""
    inside = lambda name: [(c, v) for (n, c), v in l0.items() if n == name and window[0] <= v <= window[1]]
    pairs = [(abs(va - vb), ca, cb) for ca, va in inside(a) for cb, vb in inside(b)]
    return min(pairs)[1:] if pairs else None


def shift_reading(
    values: dict[str, np.ndarray], a: str, b: str, what: str, expect: Literal["higher", "lower"]
) -> str:
    """One sentence comparing two SAEs' distributions of `what` (median and 99th percentile), and
    whether `a`'s median sits on the `expect` side of `b`'s, as the paper expects; computed, never
    assumed. Medians within 1% of each other count as no shift."""
    x, y = (np.asarray(values[k], dtype=np.float64) for k in (a, b))
    if not (len(x) and len(y)):
        return f"{what}: no values to compare for {a} and {b}."
    (mx, px), (my, py) = ((float(np.median(v)), float(np.percentile(v, 99))) for v in (x, y))
    side = "no shift" if abs(mx - my) <= 0.01 * max(abs(my), 1e-12) else ("higher" if mx > my else "lower")
    verdict = (
        "as the paper expects"
        if side == expect
        else "no clear shift"
        if side == "no shift"
        else "not as the paper expects"
    )
    return (
        f"{what}: median {mx:.3g} for {a} vs {my:.3g} for {b}, 99th percentile {px:.3g} vs {py:.3g}; "
        f"{a}'s median is {side if side != 'no shift' else 'about the same'} ({verdict})."
    )


def rare_max_error_reading(by_rank: dict[str, dict[str, list[float]]], a: str, b: str) -> str:
    """Whether `a` lowers the worst-token error over the rarer half of the frequency-rank buckets
    (`error_by_rank`) against `b`: what TERM is meant to do."""
    half = lambda r: [v for v in r["max_error"][len(r["max_error"]) // 2 :] if math.isfinite(v)]
    ea, eb = half(by_rank[a]), half(by_rank[b])
    if not (ea and eb):
        return "Too few token ranks to compare the worst-token error at the rare end."
    ma, mb = float(np.mean(ea)), float(np.mean(eb))
    return (
        f"Over the rarer half of token ranks, the worst-token error averages {ma:.3g} for {a} and {mb:.3g} "
        f"for {b}: {a} " + ("flattens the max curve here." if ma < mb else "does not flatten it here.")
    )
