"""ssae_kit.taxonomy: tree distances, user taxonomies (nested dict or edge list), their checks."""

from __future__ import annotations

import numpy as np
import pytest

from ssae_kit.taxonomy import binary_tree, check_taxonomy_matrix, taxonomy_matrix


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
    with pytest.raises(ValueError, match="appears twice"):
        taxonomy_matrix(["nurse", ["nurse", "surgeon"]])


def test_binary_tree_keeps_order_and_balance():
    assert binary_tree(["a", "b", "c"]) == [["a", "b"], "c"]
