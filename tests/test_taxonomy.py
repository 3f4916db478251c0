"""ssae_kit.taxonomy (data side of TSDA): tree distances, user taxonomies, the DT generator."""

from __future__ import annotations

import numpy as np
import pytest

from ssae_kit.taxonomy import binary_tree, check_taxonomy_matrix, make_dt, taxonomy_matrix


def test_tree_distance_on_a_hand_computed_tree():
    tree = {"root": [{"medical": ["nurse", "surgeon"]}, {"academic": ["professor"]}]}
    leaves, A = taxonomy_matrix(tree)
    assert leaves == ["nurse", "surgeon", "professor"]
    # nurse-surgeon: 2 edges; nurse-professor: 4 edges (the maximum) -> normalised by 4
    np.testing.assert_allclose(A, [[0, 0.5, 1], [0.5, 0, 1], [1, 1, 0]])


def test_edge_list_gives_the_same_matrix_as_the_nested_dict():
    edges = [("root", "medical"), ("root", "academic"), ("medical", "nurse"), ("medical", "surgeon"),
             ("academic", "professor")]
    nested = {"root": [{"medical": ["nurse", "surgeon"]}, {"academic": ["professor"]}]}
    order = ["professor", "nurse", "surgeon"]
    np.testing.assert_allclose(taxonomy_matrix(edges, order)[1], taxonomy_matrix(nested, order)[1])


def test_dt14_shapes_sources_and_a_symmetric_matrix():
    d = make_dt(14, seed=0)
    assert d.x.shape == (14 * 2 * 50, 2) and set(d.y.tolist()) == {0, 1} and d.is_source.sum() == 3
    assert d.A.shape == (14, 14) and np.allclose(d.A, d.A.T) and np.all(np.diag(d.A) == 0) and d.A.max() == 1
    assert d.A[0, 1] < d.A[0, 13]  # neighbours in theta share a subtree
    assert make_dt(40, theta_max=2.5 * np.pi).theta.max() > 2 * np.pi  # DT-40 goes beyond a full turn


def test_labels_mirror_between_theta_zero_and_pi():
    d = make_dt(14, n_per_class=400, seed=1)
    mean = lambda leaf, label: d.x[(d.domain == leaf) & (d.y == label)].mean(0)  # noqa: E731
    np.testing.assert_allclose(mean(0, 0), [1, 0], atol=0.1)  # r = 1 at theta = 0
    np.testing.assert_allclose(mean(13, 0), [-4, 0], atol=0.1)  # r = 4 at theta = pi: where class 1 was
    np.testing.assert_allclose(mean(13, 1), [4, 0], atol=0.1)


def test_same_seed_same_data():
    a, b, c = make_dt(seed=3), make_dt(seed=3), make_dt(seed=4)
    assert np.array_equal(a.x, b.x) and not np.array_equal(a.x, c.x)


def test_bad_taxonomies_name_the_fix():
    with pytest.raises(ValueError, match="must be square"):
        check_taxonomy_matrix(np.zeros((3, 4)), 3)
    with pytest.raises(ValueError, match="there are 4 domains"):
        check_taxonomy_matrix(np.zeros((3, 3)), 4)
    with pytest.raises(ValueError, match="symmetric with a zero diagonal"):
        check_taxonomy_matrix(np.array([[0, 1], [0.5, 0]]), 2)
    with pytest.raises(ValueError, match=r"\['dentist'\] are not in the taxonomy"):
        taxonomy_matrix({"root": ["nurse", "surgeon"]}, ["nurse", "dentist"])
    with pytest.raises(ValueError, match="exactly one root"):
        taxonomy_matrix([("a", "x"), ("b", "y")])
    with pytest.raises(ValueError, match="at least one source"):
        make_dt(14, n_sources=0)
    with pytest.raises(ValueError, match="appears twice"):
        taxonomy_matrix(["nurse", ["nurse", "surgeon"]])


def test_binary_tree_keeps_order_and_balance():
    assert binary_tree(["a", "b", "c"]) == [["a", "b"], "c"]
