"""ssae_kit.tree_probe: the taxonomist used as a probe, its scores and its controls."""

from __future__ import annotations

import numpy as np
import pytest

from ssae_kit.taxonomy import PROFESSION_TAXONOMY, taxonomy_matrix
from ssae_kit.tree_probe import (
    ProbeConfig,
    probe_taxonomy,
    shuffled_matrix,
    spearman,
    stress,
    summarize,
    taxonomist_map,
)


def test_spearman_and_stress_on_hand_cases():
    assert spearman(np.array([1, 2, 3, 4]), np.array([10, 20, 30, 400])) == pytest.approx(1.0)
    assert spearman(np.array([1, 2, 3]), np.array([3, 2, 1])) == pytest.approx(-1.0)
    assert spearman(np.array([1, 1, 2]), np.array([1, 2, 3])) == pytest.approx(
        0.8660254
    )  # tied ranks 1.5, 1.5, 3
    assert spearman(np.array([1, 2, 3]), np.ones(3)) is None  # a flat target has no ranks to follow
    A = np.array([1.0, 2, 3])
    assert stress(2 * A, A) == pytest.approx(0.0, abs=1e-12)  # distances equal A up to scale
    # D = (1, 1, 1) vs A = (1, 2, 3): the best scale is sum(D A) / sum(A^2) = 6/14
    D, s = np.ones(3), 6 / 14
    assert stress(D, A) == pytest.approx(np.sqrt(((D - s * A) ** 2).sum() / 3))


def test_a_shuffled_matrix_keeps_the_distances_on_other_leaves():
    _, A = taxonomy_matrix(PROFESSION_TAXONOMY)
    S = shuffled_matrix(A, seed=0)
    assert np.allclose(S, S.T) and np.all(np.diag(S) == 0) and sorted(S.ravel()) == sorted(A.ravel())
    assert not np.array_equal(S, A) and np.array_equal(S, shuffled_matrix(A, seed=0))


def _tree_features(noise: float, seed: int = 0, per_leaf: int = 10) -> tuple[np.ndarray, list[str]]:
    """Leaf centroids placed by classical MDS of A (so their distances follow the tree), plus noise dims."""
    leaves, A = taxonomy_matrix(PROFESSION_TAXONOMY)
    J = np.eye(28) - 1 / 28
    w, v = np.linalg.eigh(-0.5 * J @ (A**2) @ J)
    centres = v[:, -10:] * np.sqrt(np.clip(w[-10:], 0, None))
    rng = np.random.default_rng(seed)
    x = np.concatenate([centres[u] + noise * rng.standard_normal((per_leaf, 10)) for u in range(28)])
    x = np.concatenate([x, 0.05 * rng.standard_normal((len(x), 50))], axis=1)
    return x, [leaf for leaf in leaves for _ in range(per_leaf)]


def test_the_probe_finds_a_planted_tree_and_the_shuffled_control_does_not():
    x, names = _tree_features(noise=0.1)
    s = summarize(probe_taxonomy(x, names, PROFESSION_TAXONOMY, seeds=[0, 1]))
    assert s["taxonomy"]["rho"][0] > 0.45 and s["taxonomy"]["rho"][0] > s["shuffled"]["rho"][0] + 0.3
    assert s["flat"]["rho"] is None and 0 <= s["flat"]["stress"][0] <= 1
    assert set(s) == {"taxonomy", "flat", "shuffled", "subtree:health", "subtree:arts_and_media"}


def test_the_probe_finds_no_tree_in_noise():
    _, names = _tree_features(noise=0.1)
    noise = np.random.default_rng(1).standard_normal((len(names), 60))
    s = summarize(probe_taxonomy(noise, names, PROFESSION_TAXONOMY, seeds=[0, 1]))
    assert abs(s["taxonomy"]["rho"][0]) < 0.25


def test_the_probe_takes_a_user_tree_as_an_edge_list():
    rng = np.random.default_rng(0)
    edges = [("root", "a"), ("root", "b"), ("a", "a1"), ("a", "a2"), ("b", "b1"), ("b", "b2")]
    centres = {"a1": [0, 0], "a2": [0, 1], "b1": [5, 0], "b2": [5, 1]}
    names = [leaf for leaf in centres for _ in range(8)]
    x = np.array([centres[n] for n in names]) + 0.1 * rng.standard_normal((len(names), 2))
    rows = probe_taxonomy(x, names, edges, seeds=[0], cfg=ProbeConfig(n_components=2))
    assert next(r for r in rows if r["target"] == "taxonomy")["rho"] > 0.8
    leaves, points = taxonomist_map(x, names, edges, ProbeConfig(n_components=2))
    assert leaves == ["a1", "a2", "b1", "b2"] and points.shape == (4, 2)


def test_bad_probe_input_names_the_fix():
    x, names = _tree_features(noise=0.1, per_leaf=2)
    with pytest.raises(ValueError, match="one row per text"):
        probe_taxonomy(x[:-1], names, PROFESSION_TAXONOMY, seeds=[0])
    with pytest.raises(ValueError, match=r"\['astronaut'\] are not in the taxonomy"):
        probe_taxonomy(x, names[:-1] + ["astronaut"], PROFESSION_TAXONOMY, seeds=[0])
    with pytest.raises(ValueError, match="fewer than 2 texts"):
        probe_taxonomy(x[1:], names[1:], PROFESSION_TAXONOMY, seeds=[0])
