"""ssae_kit.claims: paired intervals over documents, bands over seeds, and readings of claims."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sae_cases import fake_result, fixed_sae

from ssae_kit.claims import (
    claim_reading,
    compare,
    interval_over_seeds,
    matched_l0_pair,
    paired_over_seeds,
    verdict_over_seeds,
)
from ssae_kit.evals import evaluate
from ssae_kit.intervals import Difference


def test_compare_matches_the_normal_interval_for_paired_per_token_differences():
    # One target per document: the statistic is the mean paired difference, whose 95% interval is
    # about mean +- 1.96 sd / sqrt(n) for n = 400 normal differences.
    rng = np.random.default_rng(0)
    b = rng.normal(4.0, 1.0, 400)
    diff = rng.normal(-0.1, 0.5, 400)
    d = compare(fake_result(b + diff, np.ones(400)), fake_result(b, np.ones(400)), "ce")
    half = 1.96 * diff.std(ddof=1) / np.sqrt(400)
    assert d.estimate == pytest.approx(diff.mean())
    assert d.low == pytest.approx(diff.mean() - half, abs=0.15 * half)
    assert d.high == pytest.approx(diff.mean() + half, abs=0.15 * half)
    assert d.verdict("SSAE", "GSAE").startswith("SSAE has lower spliced CE than GSAE (better)")


def test_compare_weights_documents_by_their_tokens_and_reads_no_difference_off_an_interval_with_zero():
    # Per-token CE differences: +1 on 3-token documents, -1 on 1-token documents -> (3 - 1) / 4.
    d = compare(
        fake_result([3.0, -1.0] * 5, [3, 1] * 5),
        fake_result([0.0, 0.0] * 5, [3, 1] * 5),
        "ce",
        n_resamples=200,
    )
    assert d.estimate == pytest.approx(0.5) and d.low < 0 < d.high
    assert d.verdict("a", "b").startswith("No clear difference in spliced CE between a and b")
    same = compare(fake_result([1.0, 2.0] * 5, [1, 1] * 5), fake_result([1.0, 2.0] * 5, [1, 1] * 5), "ce")
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)


def test_compare_on_too_few_documents_gives_the_estimate_and_no_interval_or_verdict():
    d = compare(fake_result([3.0, -1.0], [3, 1]), fake_result([0.0, 0.0], [3, 1]), "ce")
    assert d.estimate == pytest.approx(0.5) and math.isnan(d.low) and math.isnan(d.high)
    assert d.verdict("a", "b") == (
        "spliced CE of a minus b: +0.500; too few documents for an interval (2 < 10), so no verdict."
    )
    with pytest.raises(ValueError, match=r"confidence=1.5 must lie in \(0, 1\)"):
        compare(fake_result([1.0] * 12, [1] * 12), fake_result([0.0] * 12, [1] * 12), "ce", confidence=1.5)


def test_compare_ev_is_the_difference_of_error_sums_over_the_deviation_sum():
    a = fake_result([0] * 10, [1] * 10, sq_err=[1.0, 1.2] * 5, sq_dev=[5.0] * 10)
    b = fake_result([0] * 10, [1] * 10, sq_err=[2.0, 2.2] * 5, sq_dev=[5.0] * 10)
    d = compare(a, b, "ev")
    assert d.estimate == pytest.approx(0.2) and d.verdict("a", "b").startswith(
        "a has higher explained variance"
    )


def test_compare_refuses_results_on_other_documents():
    with pytest.raises(ValueError, match="same docs"):
        compare(fake_result([1.0, 2.0], [1, 1], docs="x"), fake_result([1.0, 2.0], [1, 1], docs="y"))


def test_compare_on_real_evaluations_finds_the_identity_sae_better_than_a_null_one(tiny, docs, identity_sae):
    model, tok = tiny
    perfect = evaluate(identity_sae(32), model, tok, docs, 1, ctx_len=16)
    null = fixed_sae(torch.zeros(32, 4).tolist(), torch.zeros(4, 32).tolist())
    with pytest.warns(UserWarning):
        bad = evaluate(null, model, tok, docs, 1, ctx_len=16, baseline=perfect.metrics)
    d = compare(perfect, bad, "ce")
    assert d.estimate == pytest.approx(perfect.metrics["ce_sae"] - bad.metrics["ce_sae"], abs=1e-6)
    assert d.low <= d.estimate <= d.high  # a random tiny model barely reads layer 1: CE moves little
    ev = compare(perfect, bad, "ev")
    assert ev.estimate == pytest.approx(1.0 - bad.metrics["explained_variance"], abs=1e-6) and ev.low > 0
    assert perfect.doc_stats["n_targets"].sum() > 0 and len(perfect.doc_stats["doc"]) == len(docs)


@pytest.mark.parametrize(
    "diffs, expected",
    [
        ([0.1, 0.11, 0.12], "better"),  # mean 0.11, band +-4.30 x 0.0058
        ([-0.1, -0.11, -0.12], "worse"),
        ([0.3, -0.1, 0.1], "no clear difference"),
        ([0.2, 0.2, 0.2], "too few seeds"),  # no spread says nothing of seed noise
        ([0.2, 0.2], "too few seeds"),  # two seeds: below the floor of 3
        ([0.5], "too few seeds"),
    ],
)
def test_verdict_over_seeds_reads_the_t_band_and_says_when_there_are_too_few_seeds(diffs, expected):
    assert verdict_over_seeds(diffs) == expected
    mean, low, high = interval_over_seeds(diffs)  # the verdict is read off this band
    assert mean == pytest.approx(np.mean(diffs))
    if expected == "too few seeds":
        assert math.isnan(low) and math.isnan(high)
    else:
        assert low <= mean <= high
        assert (low > 0) == (expected == "better") and (high < 0) == (expected == "worse")


def test_paired_over_seeds_reads_the_band_of_the_per_seed_differences():
    d = paired_over_seeds(
        [4.0, 4.1, 4.2, 4.3], [4.2, 4.32, 4.39, 4.5], "tracin"
    )  # lower by ~0.2 on every seed
    assert d["per_seed"] == pytest.approx([-0.2, -0.22, -0.19, -0.2]) and d["verdict"] == "tracin lower"
    assert (d["mean"], d["low"], d["high"]) == pytest.approx(interval_over_seeds(d["per_seed"]))
    assert paired_over_seeds([0.9, 0.8, 0.7], [0.7, 0.9, 0.75], "a")["verdict"] == "no clear difference"
    assert (
        paired_over_seeds([1.0, 1.1], [0.5, 0.5], "a")["verdict"] == "too few seeds for an interval (2 < 3)"
    )
    with pytest.raises(ValueError, match=r"Seed values \[1\] are NaN or inf"):
        paired_over_seeds([1.0, float("nan"), 1.2], [0.5, 0.5, 0.5], "a")
    with pytest.raises(ValueError, match="one value per seed each; got 2 and 3"):
        paired_over_seeds([1.0, 2.0], [1.0, 2.0, 3.0], "a")


def test_the_band_over_seeds_is_the_t_quantile_times_the_standard_error():
    mean, low, high = interval_over_seeds([0.1, 0.2, 0.3])
    se = 0.1 / np.sqrt(3)  # sample sd 0.1 over 3 seeds; t(0.975, 2 dof) = 4.303
    assert (mean, low, high) == pytest.approx((0.2, 0.2 - 4.3027 * se, 0.2 + 4.3027 * se), rel=1e-4)
    assert interval_over_seeds([0.9, 0.99, 0.97], bounds=(0, 1))[2] == 1.0  # a proportion stays in [0, 1]
    assert all(math.isnan(v) for v in interval_over_seeds([0.5, 0.6])[1:])


def test_claim_reading_says_holds_only_when_the_whole_interval_is_on_the_claimed_side():
    d = lambda low, high: Difference("firing", (low + high) / 2, low, high, 0.95, 10)
    assert claim_reading("X", d(0.5, 2.0), "above").endswith("so the claim holds here.")
    assert "does not hold" in claim_reading("X", d(-0.5, 2.0), "above")
    assert claim_reading("Y", d(-2.0, -0.1), "below").endswith("holds here.")
    assert "[+0.500, +2.000] (95% CI, n = 10)" in claim_reading("X", d(0.5, 2.0), "above")
    why = "why not here?"
    assert claim_reading("X", d(-0.5, 2.0), "above", discuss=why).endswith(
        "does not hold here. For discussion: why not here?"
    )
    assert why not in claim_reading("X", d(0.5, 2.0), "above", discuss=why)  # held: nothing to discuss
    untested = Difference("firing", 0.3, math.nan, math.nan, 0.95, 4)
    assert why not in claim_reading("X", untested, "above", discuss=why)  # not tested: no prompt either


def test_matched_l0_pair_picks_the_closest_l0s_inside_the_window():
    l0 = {
        ("ERM", 1.5): 60.0,
        ("ERM", 1.0): 95.0,
        ("ERM", 0.8): 130.0,
        ("TERM", 1.5): 70.0,
        ("TERM", 1.0): 128.0,
    }
    assert matched_l0_pair(l0, "ERM", "TERM", (85, 140)) == (0.8, 1.0)  # 130 vs 128
    assert matched_l0_pair(l0, "ERM", "TERM", (40, 80)) == (1.5, 1.5)
    assert matched_l0_pair(l0, "ERM", "TERM", (200, 300)) is None


def test_shift_reading_says_whether_the_shift_is_the_expected_one_computed_not_assumed():
    from ssae_kit.claims import shift_reading

    values = {
        "TERM": np.array([1.0, 2.0, 3.0]),
        "ERM": np.array([2.0, 3.0, 4.0]),
        "same": np.array([2.0, 3.0, 4.0]),
    }
    lower = shift_reading(values, "TERM", "ERM", "entropy", expect="lower")
    assert lower.startswith("entropy: median 2 for TERM vs 3 for ERM") and lower.endswith(
        "is lower (as the paper expects)."
    )
    assert shift_reading(values, "TERM", "ERM", "peak", expect="higher").endswith(
        "(not as the paper expects)."
    )
    assert shift_reading(values, "same", "ERM", "x", expect="lower").endswith(
        "about the same (no clear shift)."
    )


def test_rare_max_error_reading_compares_the_worst_error_over_the_rarer_half_of_ranks():
    from ssae_kit.claims import rare_max_error_reading

    by_rank = {
        "TERM": dict(max_error=[9.0, 9.0, 2.0, 3.0]),  # worse on frequent tokens, better on rare ones
        "ERM": dict(max_error=[1.0, 1.0, 4.0, math.nan]),
    }
    assert rare_max_error_reading(by_rank, "TERM", "ERM").endswith(
        "averages 2.5 for TERM and 4 for ERM: TERM flattens the max curve here."
    )
    assert rare_max_error_reading(by_rank, "ERM", "TERM").endswith("ERM does not flatten it here.")
