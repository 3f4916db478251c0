"""Bootstrap intervals: the one call to `scipy.stats.bootstrap` behind every interval the kit prints."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats


def bootstrap_interval(
    data: Sequence[np.ndarray],
    statistic: Callable[..., float | np.ndarray],
    *,
    paired: bool,
    method: str = "percentile",
    vectorized: bool = True,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """(low, high) of `statistic(*data)`, resampling rows of each array (together when `paired`).

    A bound BCa cannot compute (every resample gives the same value) falls back to the statistic
    itself, so a degenerate interval reads as [estimate, estimate] rather than NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        ci = stats.bootstrap(
            tuple(data),
            statistic,
            paired=paired,
            vectorized=vectorized,
            confidence_level=confidence,
            n_resamples=n_resamples,
            method=method,
            random_state=seed,
        ).confidence_interval
    if not np.isfinite([ci.low, ci.high]).all():
        estimate = float(statistic(*data))
        return estimate, estimate
    return float(ci.low), float(ci.high)
