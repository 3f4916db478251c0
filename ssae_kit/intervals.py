"""Intervals: `Interval`, the one type every producer returns (with the one reading of it, `side`),
the one call to `scipy.stats.bootstrap` behind every bootstrap interval the kit prints, the t band
over seeds, and the one rule for when an interval may be printed at all.

Below `MIN_DOCS` documents (or `MIN_SEEDS` seeds or splits) a resampled interval only restates the
few values it resamples, so the kit reports the estimate, says there are too few for an interval,
and gives no verdict: bounds are NaN, and every verdict reads NaN bounds as "too few".
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats

__all__ = [
    "MIN_SEEDS",
    "has_interval",
    "span",
    "too_few",
]

Side = Literal["higher", "lower", "no clear difference", "too few"]
"""Where an interval lies with respect to 0: the one reading every verdict of the kit is worded from."""

MIN_DOCS = 10
"""Fewest documents (or other resampled items) that get a bootstrap interval."""
MIN_SEEDS = 3
"""Fewest seeds (or splits) that get a band over seeds."""


class Interval(tuple):
    """(estimate, low, high), and how it was computed: `n` items of `unit` ("documents", "seeds",
    "bios"), `how` ("paired BCa bootstrap", "mean ± t·SE"), `confidence`, and `floor`, the fewest items
    that get an interval (NaN bounds below it). A tuple, so tables and metrics.json keep three numbers."""

    def __new__(  # noqa: PYI034 (typing.Self needs Python 3.11; the kit supports 3.10)
        cls,
        estimate: float,
        low: float,
        high: float,
        *,
        n: int,
        unit: str,
        how: str,
        confidence: float = 0.95,
        floor: int = MIN_DOCS,
    ) -> Interval:
        self = super().__new__(cls, (estimate, low, high))
        self.n, self.unit, self.how, self.confidence, self.floor = n, unit, how, confidence, floor
        return self

    def __getnewargs_ex__(self) -> tuple[tuple, dict[str, Any]]:
        return tuple(self), dict(
            n=self.n, unit=self.unit, how=self.how, confidence=self.confidence, floor=self.floor
        )

    estimate = property(lambda self: self[0])
    low = property(lambda self: self[1])
    high = property(lambda self: self[2])

    def side(self) -> Side:
        """ "higher" (the interval lies above 0), "lower" (below), "no clear difference" (it holds 0),
        or "too few" (no interval: fewer than `floor` items, or no spread)."""
        if not has_interval(self.low, self.high):
            return "too few"
        return "higher" if self.low > 0 else "lower" if self.high < 0 else "no clear difference"

    def too_few(self) -> str:
        """Why there is no interval: "too few seeds for an interval (2 < 3)"."""
        return too_few(self.n, self.unit, self.floor)

    def span(self, fmt: str = ".3f") -> str:
        """ "0.952 [0.912, 0.984]", or the estimate with why there is no interval (`span`)."""
        return span(self.estimate, self.low, self.high, self.n, self.unit, self.floor, fmt)


_UNITS = {"coverage": "token types", "firing": "windows of each text"}
"""What a `Difference` resamples, by metric (documents unless named here)."""


@dataclass(frozen=True)
class Difference:
    """`metric` of SAE a minus SAE b on the same text, with a paired bootstrap interval (over
    documents; over token types for tail coverage, where `n_docs` counts types)."""

    metric: str
    estimate: float
    low: float
    high: float
    confidence: float
    n_docs: int
    flagged: str = ""
    """Why neither SAE is healthy (their health warnings), or '': no verdict ranks two broken SAEs."""

    def record(self, a: str | None = None, b: str | None = None) -> dict[str, Any]:
        """What metrics.json keeps of it: estimate, low, high, and the verdict sentence when the two
        SAEs are named. The one way a notebook writes a difference down."""
        out: dict[str, Any] = dict(estimate=self.estimate, low=self.low, high=self.high)
        if a is not None and b is not None:
            out["sentence"] = self.verdict(a, b)
        return out

    @property
    def interval(self) -> Interval:
        """The estimate and bounds as an `Interval` over the documents (or token types, or windows)."""
        return Interval(
            self.estimate,
            self.low,
            self.high,
            n=self.n_docs,
            unit=_UNITS.get(self.metric, "documents"),
            how="paired BCa bootstrap",
            confidence=self.confidence,
        )

    def verdict(self, a: str, b: str) -> str:
        """One sentence read off the interval: a difference only when it excludes 0."""
        better = "lower" if self.metric == "ce" else "higher"
        what = {
            "ce": "spliced CE",
            "ev": "explained variance",
            "mse": "MSE",
            "coverage": "tail coverage",
            "firing": "SSAE-only latents firing",
            "precision": "token precision",
        }[self.metric]
        units = self.interval.unit
        side = self.interval.side()
        if side == "too few":
            return f"{what} of {a} minus {b}: {self.estimate:+.3f}; {self.interval.too_few()}, so no verdict."
        span = f"{self.estimate:+.3f} [{self.low:+.3f}, {self.high:+.3f}], {100 * self.confidence:.0f}% CI over {self.n_docs} {units}"
        if self.flagged:
            return f"{what} of {a} minus {b}: {span}; both SAEs are flagged unhealthy ({self.flagged}), so no verdict."
        if side != "no clear difference":
            if self.metric == "firing":  # a count, neither better nor worse
                return f"{a} has {side} {what} than {b}: {span}."
            good = "better" if side == better else "worse"
            return f"{a} has {side} {what} than {b} ({good}): {span}."
        return f"No clear difference in {what} between {a} and {b}: {span}."


def check_confidence(confidence: float) -> float:
    """`confidence` if it lies in (0, 1), else a ValueError naming the fix (1.5 once printed "150% CI")."""
    if not (isinstance(confidence, float | int) and 0 < confidence < 1):
        raise ValueError(f"confidence={confidence!r} must lie in (0, 1), e.g. 0.95 for a 95% interval.")
    return float(confidence)


def seed_band(values: Sequence[float], confidence: float = 0.95, unit: str = "seeds") -> Interval:
    """(mean, low, high) over seeds: the mean +- the Student t quantile for n - 1 degrees of freedom
    times the standard error (with 2 seeds a 95% band is +-12.7 SE, not +-2). Bounds are NaN below
    `MIN_SEEDS` values, or when the values do not vary (a zero SE says nothing of seed noise)."""
    check_confidence(confidence)
    x = np.asarray(values, dtype=float)
    if bad := [i for i, v in enumerate(x) if not math.isfinite(v)]:
        raise ValueError(f"Seed values {bad} are NaN or inf ({x.tolist()}): fix or drop those runs first.")
    mean = float(x.mean()) if len(x) else math.nan
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0
    band = dict(n=len(x), unit=unit, how="mean ± t·SE", confidence=confidence, floor=MIN_SEEDS)
    if len(x) < MIN_SEEDS or se <= 1e-12 * max(1.0, abs(mean)):  # identical up to rounding
        return Interval(mean, math.nan, math.nan, **band)
    half = float(stats.t.ppf((1 + confidence) / 2, len(x) - 1)) * se
    return Interval(mean, mean - half, mean + half, **band)


def too_few(n: int, unit: str, floor: int) -> str:
    """The phrase printed in place of an interval: "too few documents for an interval (4 < 10)"."""
    return f"too few {unit} for an interval ({n} < {floor})"


def span(
    estimate: float, low: float, high: float, n: int, unit: str, floor: int = MIN_DOCS, fmt: str = ".3f"
) -> str:
    """An estimate with its interval, "0.952 [0.912, 0.984]", or with the reason there is none,
    "0.952 (too few documents for an interval (4 < 10))": what every table in the notebooks prints."""
    if has_interval(low, high):
        return f"{estimate:{fmt}} [{low:{fmt}}, {high:{fmt}}]"
    return f"{estimate:{fmt}} ({too_few(n, unit, floor)})"


def has_interval(low: float, high: float) -> bool:
    """Whether (low, high) is an interval the kit may print and read a verdict from."""
    return math.isfinite(low) and math.isfinite(high)


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

    (NaN, NaN) below `MIN_DOCS` rows (module docstring). A bound BCa cannot compute (every resample
    gives the same value) falls back to the statistic itself, so a degenerate interval reads as
    [estimate, estimate] rather than NaN."""
    check_confidence(confidence)
    if min(len(d) for d in data) < MIN_DOCS:
        return math.nan, math.nan
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
