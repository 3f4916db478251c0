"""ssae_kit.taxonomy: tree distances, user taxonomies (nested dict or edge list), their checks, the profession tree."""

from __future__ import annotations

import numpy as np
import pytest

from ssae_kit.bios import LABHC_PROFESSIONS
from ssae_kit.taxonomy import (
    PROFESSION_TAXONOMY,
    binary_tree,
    check_taxonomy_matrix,
    subtrees,
    taxonomy_matrix,
)


def test_tree_distance_on_a_hand_computed_tree():
    tree = {"root": [{"medical": ["nurse", "surgeon"]}, {"academic": ["professor"]}]}
    leaves, A = taxonomy_matrix(tree)
    assert leaves == ["nurse", "surgeon", "professor"]
    # nurse-surgeon: 2 edges; nurse-professor: 4 edges (the maximum) -> normalised by 4
    np.testing.assert_allclose(A, [[0, 0.5, 1], [0.5, 0, 1], [1, 1, 0]])


def test_edge_list_gives_the_same_matrix_as_the_nested_dict():
    edges = [
        ("root", "medical"),
        ("root", "academic"),
        ("medical", "nurse"),
        ("medical", "surgeon"),
        ("academic", "professor"),
    ]
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


def test_the_profession_tree_covers_the_28_labhc_professions_at_three_distances():
    leaves, A = taxonomy_matrix(PROFESSION_TAXONOMY)
    assert sorted(leaves) == sorted(LABHC_PROFESSIONS)
    assert sorted(set(np.round(A[np.triu_indices(28, 1)], 6))) == [
        pytest.approx(1 / 3),
        pytest.approx(2 / 3),
        1.0,
    ]
    fields = subtrees(PROFESSION_TAXONOMY)
    assert sum(map(len, fields.values())) == 28 and len(fields["health"]) == 9
    assert list(subtrees(PROFESSION_TAXONOMY, min_leaves=4)) == ["health", "arts_and_media"]
