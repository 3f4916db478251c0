"""ssae_kit.latents: tail coverage, error by rank, decoder geometry and latent matching on hand cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sae_cases import fixed_sae, run

from ssae_kit.evals import EvalResult
from ssae_kit.latents import (
    decoder_cosine_similarities,
    decoder_cosines,
    error_by_rank,
    firing_difference,
    geometric_centres,
    matched_l0_tail_claim,
    ssae_only_latents,
    tail_coverage,
    tail_coverage_difference,
    tail_summary,
)


def test_a_token_type_has_a_feature_when_it_is_some_latents_top_token():
    sae = fixed_sae([[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]], torch.eye(3, 2).tolist())
    r = run(sae, [[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.5, 0.0]], [5, 7, 5, 9])
    assert r.feature_top_token.tolist() == [5, 7, -1]  # latent 0 peaks on the second "5"; latent 2 is dead
    cov = tail_coverage(r)
    assert cov["overall"] == pytest.approx(2 / 3)  # types 5 and 7 have a feature, 9 does not
    assert cov["cumulative"][-1] == pytest.approx(2 / 3)
    assert sum(cov["n_types"]) == 3


def test_error_by_rank_buckets_tokens_by_frequency_rank():
    sae = fixed_sae([[1.0], [0.0]], [[0.0, 0.0]], b_enc=[-100.0])  # reconstructs 0: error = ||x||^2
    r = run(sae, [[1.0, 0.0]] * 3 + [[2.0, 0.0], [3.0, 0.0]], [4, 4, 4, 8, 9])
    out = error_by_rank(r, n_buckets=2)
    assert out["mean_error"][0] == pytest.approx(1.0)  # rank 1: the frequent token
    assert max(v for v in out["max_error"] if not math.isnan(v)) == pytest.approx(9.0)


def test_decoder_cosine_similarities_of_orthogonal_and_parallel_rows():
    sae = fixed_sae(torch.zeros(2, 3).tolist(), [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    assert sorted(decoder_cosine_similarities(sae).tolist()) == [0.0, 0.0, 1.0]


def test_decoder_cosines_between_two_decoders_on_a_hand_case():
    W_a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])  # a dead all-zero row gets cosine 0, not NaN
    W_b = torch.tensor([[2.0, 0.0], [0.0, -3.0]])
    r = 0.5**0.5
    expected = torch.tensor([[1.0, 0.0], [r, -r], [0.0, 0.0]])
    assert torch.allclose(decoder_cosines(W_a, W_b), expected), (
        "rows must be scaled to unit length before the product"
    )


def test_tail_coverage_difference_is_paired_over_token_types():
    ids = np.array([1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13])

    def result(top):
        empty = np.zeros(0)
        return EvalResult({}, ids, empty, empty, empty, empty, empty, empty, np.array(top), {})

    more, fewer = result([1, 2, 3, 4, -1]), result([1, 2, -1, -1, -1])
    d = tail_coverage_difference(more, fewer)
    assert d.estimate == pytest.approx(2 / 13) and d.n_docs == 13 and d.low <= d.estimate <= d.high
    assert d.verdict("TERM", "ERM").startswith("TERM has higher tail coverage than ERM (better)") == (
        d.low > 0
    )
    same = tail_coverage_difference(more, more)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="same tokens"):
        tail_coverage_difference(more, EvalResult({}, ids[:-1], *[np.zeros(0)] * 6, np.array([1]), {}))


def test_ssae_only_latents_are_unmatched_and_alive_strongest_first():
    best_cosine = np.array([0.9, 0.2, 0.5, 0.1, 0.3, 0.6])
    peak = np.array([1.0, 0.5, 0.0, 2.0, 0.5, 3.0], dtype=np.float32)
    # 0: matched; 2: never fires; 5: cosine at the threshold counts as matched; 1 and 4 tie: index order
    assert ssae_only_latents(best_cosine, peak, 0.6).tolist() == [3, 1, 4]
    assert ssae_only_latents(best_cosine, peak, 0.05).tolist() == []


def test_firing_difference_counts_latents_that_fire_anywhere_in_each_sample():
    a = np.zeros((4, 5), bool)
    a[0, 0] = a[1, 1] = a[3, 2] = True  # three latents fire on text a
    b = np.zeros((4, 5), bool)
    b[2, 0] = True  # one on text b
    few = firing_difference(a, b)
    assert (
        few.estimate == 2.0
        and math.isnan(few.low)
        and "too few windows of each text" in few.verdict("a", "b")
    )
    a, b = np.tile(a, (3, 1)), np.tile(b, (3, 1))  # 12 windows each: enough for an interval
    d = firing_difference(a, b, n_resamples=500)
    assert d.estimate == 2.0 and d.low <= d.estimate <= d.high and d.n_docs == 12
    same = firing_difference(a, a, n_resamples=500)
    assert same.estimate == 0.0 and same.low < 0 < same.high  # resampling moves the counts both ways
    assert "higher SSAE-only latents firing" in firing_difference(np.ones((12, 5), bool), b).verdict("a", "b")
    with pytest.raises(ValueError, match="same latents with 2\\+ windows"):
        firing_difference(a, b[:, :3])


def test_geometric_centres_are_the_geometric_means_of_neighbouring_edges():
    assert geometric_centres([1, 4, 16]).tolist() == [2.0, 8.0]
    assert geometric_centres([1.0, 100.0]).tolist() == [10.0]


def _coverage_run(l0: float, top: list[int], n_types: int = 40) -> EvalResult:
    """An evaluation whose latents' top tokens are `top` over `n_types` token types, at L0 `l0`."""
    empty = np.zeros(0)
    ids = np.arange(n_types)
    return EvalResult(dict(l0=l0), ids, empty, empty, empty, empty, empty, empty, np.array(top), {})


def test_the_matched_l0_claim_compares_the_closest_pair_inside_the_window():
    runs = {
        ("ERM", 0.1): _coverage_run(300, list(range(5))),
        ("TERM", 0.1): _coverage_run(120, list(range(30))),  # the TERM run inside, closest to ERM 0.4
        ("ERM", 0.4): _coverage_run(110, list(range(5))),
        ("TERM", 0.4): _coverage_run(70, list(range(30))),
    }
    pair, matched, sentence = matched_l0_tail_claim(runs, "ERM", "TERM", [85, 140], discuss="why?")
    assert pair == (0.4, 0.1)
    assert matched.estimate == pytest.approx(25 / 40) and matched.low > 0
    assert sentence.startswith(
        "TERM (sparsity 0.1, L0 120) covers more tail token types than ERM (sparsity 0.4, L0 110)"
    )
    assert "the claim holds here" in sentence and "why?" not in sentence  # the question only when it fails
    _, flipped, failed = matched_l0_tail_claim(
        {("ERM", 0.4): runs[("TERM", 0.1)], ("TERM", 0.1): runs[("ERM", 0.4)]},
        "ERM",
        "TERM",
        [0, 1000],
        "why?",
    )
    assert flipped.high < 0 and "does not hold" in failed and failed.endswith("For discussion: why?")


def test_the_matched_l0_claim_says_it_is_untested_when_no_pair_is_inside():
    runs = {("ERM", 0.4): _coverage_run(110, [1]), ("TERM", 0.4): _coverage_run(70, [1])}
    pair, matched, sentence = matched_l0_tail_claim(runs, "ERM", "TERM", [85, 140])
    assert (pair, matched) == (None, None)
    assert sentence == (
        "No ERM and TERM SSAEs both have L0 in [85, 140] at sparsity coefficients [0.4] (L0s: ERM 0.4: 110, "
        "TERM 0.4: 70): the claim is not tested here; add coefficients that put both inside the window."
    )


def test_tail_summary_reads_fidelity_coverage_and_geometry_off_one_evaluation():
    sae = fixed_sae([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]])
    r = run(sae, np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]], dtype=np.float32), [5, 6, 5])
    r.metrics["ce_sae"] = 4.0
    coverage = dict(overall=0.5, coverage=[0.25, 0.75])
    row = tail_summary(r, coverage, np.array([0.5, -0.3]))
    assert row["ce_sae"] == 4.0 and row["l0"] == r.metrics["l0"] and row["tail_coverage"] == 0.5
    assert row["rare_coverage"] == 0.25 and row["mean_abs_cosine"] == pytest.approx(0.4)
    assert row["max_error"] == pytest.approx(float(r.token_mse.max()))
