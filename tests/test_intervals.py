"""ssae_kit.intervals: the t band over seeds, the bootstrap floor and fallback, and the phrases every
table prints in place of an interval."""

from __future__ import annotations

import copy
import json
import math
import pickle

import numpy as np
import pytest
from scipy import stats

from ssae_kit.intervals import (
    MIN_DOCS,
    MIN_SEEDS,
    Difference,
    Interval,
    bootstrap_interval,
    check_confidence,
    has_interval,
    seed_band,
    span,
    too_few,
)


def test_seed_band_is_the_mean_plus_minus_t_times_the_standard_error():
    mean, low, high = seed_band([1.0, 2.0, 4.0])
    se = np.std([1.0, 2.0, 4.0], ddof=1) / math.sqrt(3)
    assert mean == pytest.approx(7 / 3)
    assert high - mean == pytest.approx(mean - low) == pytest.approx(4.302653 * se, rel=1e-6)  # t(0.975, 2)
    _, low90, high90 = seed_band([1.0, 2.0, 4.0], confidence=0.9)
    assert high90 - low90 == pytest.approx(2 * stats.t.ppf(0.95, 2) * se) and high90 - low90 < high - low


def test_seed_band_gives_no_bounds_below_the_floor_or_when_seeds_agree_exactly():
    assert MIN_SEEDS == 3
    for values in ([0.5, 0.7], [0.3, 0.3, 0.3], [0.1 + 0.2, 0.3, 0.3]):  # too few; no spread; rounding only
        mean, low, high = seed_band(values)
        assert mean == pytest.approx(np.mean(values)) and math.isnan(low) and math.isnan(high)
    assert math.isnan(seed_band([])[0])


def test_seed_band_refuses_a_nan_run_and_names_it():
    with pytest.raises(ValueError, match=r"Seed values \[1\] are NaN or inf.*drop those runs"):
        seed_band([0.1, float("nan"), 0.3])


@pytest.mark.parametrize("bad", [0, 1, 1.5, 95, -0.1, "0.95"])
def test_confidence_must_lie_strictly_between_0_and_1(bad):
    with pytest.raises(ValueError, match="must lie in \\(0, 1\\), e.g. 0.95"):
        check_confidence(bad)
    assert check_confidence(0.95) == 0.95


def test_bootstrap_interval_has_no_bounds_below_min_docs_rows():
    few = np.arange(MIN_DOCS - 1, dtype=float)
    low, high = bootstrap_interval([few], np.mean, paired=False)
    assert math.isnan(low) and math.isnan(high) and not has_interval(low, high)
    low, high = bootstrap_interval([np.arange(MIN_DOCS, dtype=float)], np.mean, paired=False)
    assert has_interval(low, high) and low < 4.5 < high


def test_bootstrap_interval_of_a_mean_matches_the_normal_interval_and_is_seeded():
    x = np.random.default_rng(0).normal(1.0, 2.0, size=400)
    low, high = bootstrap_interval([x], lambda a, axis=-1: a.mean(axis=axis), paired=False)
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x))
    assert low == pytest.approx(x.mean() - half, abs=0.05) and high == pytest.approx(
        x.mean() + half, abs=0.05
    )
    again = bootstrap_interval([x], lambda a, axis=-1: a.mean(axis=axis), paired=False)
    other = bootstrap_interval([x], lambda a, axis=-1: a.mean(axis=axis), paired=False, seed=1)
    assert again == (low, high) and other != (low, high)


def test_pairing_removes_what_two_measurements_share():
    rng = np.random.default_rng(1)
    shared = rng.normal(0, 5, size=200)  # per-document difficulty, common to both SAEs
    a, b = shared + 0.1 + rng.normal(0, 0.1, 200), shared + rng.normal(0, 0.1, 200)
    diff = lambda x, y, axis=-1: x.mean(axis=axis) - y.mean(axis=axis)
    paired = bootstrap_interval([a, b], diff, paired=True)
    unpaired = bootstrap_interval([a, b], diff, paired=False)
    assert paired[0] > 0 and paired[1] - paired[0] < 0.1 * (unpaired[1] - unpaired[0]) and unpaired[0] < 0


def test_a_degenerate_bootstrap_reads_as_the_estimate_not_nan():
    low, high = bootstrap_interval(
        [np.full(20, 2.0), np.full(20, 1.5)], lambda x, y, axis=-1: (x - y).mean(axis=axis), paired=True,
        method="BCa",
    )  # fmt: skip
    assert (low, high) == (0.5, 0.5)


def test_span_prints_the_interval_or_why_there_is_none():
    assert span(0.95234, 0.91, 0.984, 40, "documents") == "0.952 [0.910, 0.984]"
    assert span(0.95234, math.nan, math.nan, 4, "documents") == (
        "0.952 (too few documents for an interval (4 < 10))"
    )
    assert span(0.5, math.nan, math.nan, 2, "seeds", floor=MIN_SEEDS, fmt=".1f") == (
        "0.5 (too few seeds for an interval (2 < 3))"
    )
    assert too_few(2, "splits", 3) == "too few splits for an interval (2 < 3)"
    assert not has_interval(0.1, math.inf) and has_interval(-1.0, 1.0)


@pytest.mark.parametrize(
    ("low", "high", "flagged", "expected"),
    [
        (-0.3, -0.1, "", "a has lower spliced CE than b (better): -0.200 [-0.300, -0.100]"),
        (0.1, 0.3, "", "a has higher spliced CE than b (worse)"),
        (-0.1, 0.3, "", "No clear difference in spliced CE between a and b"),
        (-0.3, -0.1, "both dead", "both SAEs are flagged unhealthy (both dead), so no verdict"),
        (math.nan, math.nan, "", "too few documents for an interval (5 < 10), so no verdict"),
    ],
)
def test_difference_verdict_reads_the_interval_and_the_health_flags(low, high, flagged, expected):
    n = 5 if math.isnan(low) else 40
    assert expected in Difference("ce", -0.2, low, high, 0.95, n, flagged).verdict("a", "b")


def test_a_higher_metric_is_better_except_for_ce_and_counts_are_neither():
    assert "(better)" in Difference("ev", 0.02, 0.01, 0.03, 0.95, 40).verdict("a", "b")
    firing = Difference("firing", 0.02, 0.01, 0.03, 0.95, 40).verdict("a", "b")
    assert "higher SSAE-only latents firing" in firing and "better" not in firing and "windows" in firing


def test_a_difference_records_its_interval_and_the_sentence_only_when_both_saes_are_named():
    d = Difference("ce", -0.2, -0.3, -0.1, 0.95, 40)
    assert d.record() == {"estimate": -0.2, "low": -0.3, "high": -0.1}
    assert d.record("SSAE", "GSAE") == {**d.record(), "sentence": d.verdict("SSAE", "GSAE")}
    assert d.record("SSAE", "GSAE")["sentence"].startswith("SSAE has lower spliced CE than GSAE (better)")


@pytest.mark.parametrize(
    "bounds, side",
    [
        ((0.1, 0.3), "higher"),
        ((-0.3, -0.1), "lower"),
        ((-0.1, 0.1), "no clear difference"),
        ((math.nan, math.nan), "too few"),
    ],
)
def test_an_interval_reads_one_side_of_zero_or_says_why_not(bounds, side):
    band = Interval(
        0.2 if side == "higher" else -0.2 if side == "lower" else 0.0,
        *bounds,
        n=12,
        unit="documents",
        how="x",
    )
    assert band.side() == side
    assert band.span("+.1f") == (
        f"{band.estimate:+.1f} [{bounds[0]:+.1f}, {bounds[1]:+.1f}]"
        if side != "too few"
        else "+0.0 (too few documents for an interval (12 < 10))"
    )


def test_an_interval_is_three_numbers_to_tables_and_json_and_keeps_how_it_was_made():
    band = seed_band([0.5, 0.7, 0.8], unit="splits")
    mean, low, high = band
    assert (mean, low, high) == (band.estimate, band.low, band.high) and low < mean < high
    assert json.loads(json.dumps({"rho": band})) == {"rho": [mean, low, high]}  # metrics.json: unchanged
    for again in (copy.deepcopy(band), pickle.loads(pickle.dumps(band))):
        assert again == band and (again.n, again.unit, again.how, again.floor) == (
            3,
            "splits",
            "mean ± t·SE",
            MIN_SEEDS,
        )
    assert band.span() == f"{mean:.3f} [{low:.3f}, {high:.3f}]"
    assert seed_band([0.5, 0.7], unit="splits").span() == "0.600 (too few splits for an interval (2 < 3))"


def test_a_difference_is_read_through_its_interval():
    d = Difference("ce", -0.05, -0.08, -0.02, 0.95, 40)
    assert d.interval == (-0.05, -0.08, -0.02) and (d.interval.n, d.interval.unit) == (40, "documents")
    assert d.interval.side() == "lower" and "(better)" in d.verdict("SSAE", "GSAE")
    assert Difference("coverage", 0.1, 0.0, 0.2, 0.95, 300).interval.unit == "token types"
