"""Taxonomies: trees whose leaves are domains (or subdomains), turned into distance matrices.

Convention used everywhere in the kit: the taxonomy matrix A holds the *normalised tree distance*
between leaves, the number of edges on the path between them divided by the largest such number,
so A is symmetric, A_ii = 0 (same leaf) and max A = 1 (farthest leaves). A tree is a nested
dict/list or an edge list [(parent, child), ...]. `PROFESSION_TAXONOMY` groups the 28 Bias in
Bios professions by hand into fields. `tsda` and `tree_probe` read their trees and A from here.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "binary_tree",
    "leaf_paths",
    "subtrees",
]

Tree = str | dict | list  # a leaf name, {name: subtree(s)}, or a list of subtrees


def parse_taxonomy(taxonomy: Tree | list[tuple[str, str]]) -> Tree:
    """Accept a nested dict/list tree, or an edge list [(parent, child), ...] with a single root."""
    if (
        isinstance(taxonomy, list)
        and taxonomy
        and all(isinstance(e, tuple) and len(e) == 2 for e in taxonomy)
    ):
        children: dict[str, list[str]] = {}
        for parent, child in taxonomy:
            children.setdefault(parent, []).append(child)
        roots = set(children) - {c for _, c in taxonomy}
        if len(roots) != 1:
            raise ValueError(
                f"The edge list has roots {sorted(roots)}: a taxonomy needs exactly one root (a tree)."
            )
        build = lambda node: {node: [build(c) for c in children[node]]} if node in children else node
        return build(roots.pop())
    return taxonomy


def leaf_paths(tree: Tree) -> dict[str, list[str]]:
    """{leaf: path of node names from the root to the leaf} (inner list nodes get positional names)."""
    paths: dict[str, list[str]] = {}

    def walk(node: Tree, path: list[str]) -> None:
        if isinstance(node, str):
            if node in paths:
                raise ValueError(f"Leaf {node!r} appears twice in the taxonomy: leaf names must be unique.")
            paths[node] = path + [node]
        elif isinstance(node, dict):
            for name, sub in node.items():
                for child in sub if isinstance(sub, list) else [sub]:
                    walk(child, path + [f"{name}"])
        else:
            for i, child in enumerate(node):
                walk(child, path + [f"{'/'.join(path)}#{i}"])

    walk(tree, [])
    return paths


def taxonomy_matrix(
    taxonomy: Tree | list[tuple[str, str]], leaves: list[str] | None = None
) -> tuple[list[str], np.ndarray]:
    """(leaf names, A) with A the normalised tree distance between leaves, in `leaves` order."""
    paths = leaf_paths(parse_taxonomy(taxonomy))
    leaves = list(paths) if leaves is None else list(leaves)
    unknown = [leaf for leaf in leaves if leaf not in paths]
    if unknown:
        raise ValueError(
            f"Leaves {unknown} are not in the taxonomy (its leaves: {sorted(paths)}): fix the names."
        )
    n = len(leaves)
    dist = np.zeros((n, n))
    for i, a in enumerate(leaves):
        for j, b in enumerate(leaves):
            pa, pb = paths[a], paths[b]
            common = next((k for k, (u, v) in enumerate(zip(pa, pb)) if u != v), min(len(pa), len(pb)))
            dist[i, j] = (len(pa) - common) + (len(pb) - common)
    return leaves, dist / dist.max() if dist.max() > 0 else dist


def check_taxonomy_matrix(A: np.ndarray, n_domains: int) -> np.ndarray:
    """Return A as float if it is a valid taxonomy matrix for `n_domains` domains, else raise naming the fix."""
    A = np.asarray(A, dtype=float)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(
            f"The taxonomy matrix has shape {A.shape}; it must be square (n_domains x n_domains)."
        )
    if A.shape[0] != n_domains:
        raise ValueError(
            f"The taxonomy matrix is {A.shape[0]}x{A.shape[0]} but there are {n_domains} domains: "
            "give one row per domain, in the domains' order."
        )
    if not np.allclose(A, A.T) or np.abs(np.diag(A)).max() > 1e-9:
        raise ValueError(
            "The taxonomy matrix must be symmetric with a zero diagonal (a distance between domains)."
        )
    return A


def binary_tree(leaves: list[str]) -> Tree:
    """A balanced binary tree over `leaves` in their order (neighbours in the list share subtrees)."""
    if len(leaves) == 1:
        return leaves[0]
    half = (len(leaves) + 1) // 2
    return [binary_tree(leaves[:half]), binary_tree(leaves[half:])]


def flat_matrix(n_domains: int) -> np.ndarray:
    """The flat taxonomy (every leaf a child of the root): 1 between distinct domains, 0 on the diagonal."""
    return 1.0 - np.eye(n_domains)


def subtrees(taxonomy: Tree | list[tuple[str, str]], min_leaves: int = 1) -> dict[str, list[str]]:
    """{child of the root: its leaves}, keeping those with at least `min_leaves` leaves."""
    groups: dict[str, list[str]] = {}
    for leaf, path in leaf_paths(parse_taxonomy(taxonomy)).items():
        groups.setdefault(path[1] if len(path) > 2 else leaf, []).append(leaf)
    return {name: leaves for name, leaves in groups.items() if len(leaves) >= min_leaves}


# The 28 LabHC professions by field and subfield: a hand-made tree, so leaves in one subfield are at
# distance 1/3, in one field 2/3, in different fields 1.
PROFESSION_TAXONOMY: Tree = {
    "professions": [
        {
            "health": [
                {"clinical": ["physician", "surgeon", "nurse", "dentist", "chiropractor"]},
                {"wellbeing": ["psychologist", "dietitian", "personal_trainer", "yoga_teacher"]},
            ]
        },
        {"law_and_business": [{"law": ["attorney", "paralegal"]}, {"finance": ["accountant"]}]},
        {"education_and_faith": [{"teaching": ["professor", "teacher"]}, {"faith": ["pastor"]}]},
        {
            "arts_and_media": [
                {"music": ["composer", "rapper", "dj"]},
                {"visual": ["painter", "photographer", "filmmaker", "model"]},
                {"words": ["poet", "journalist", "comedian"]},
            ]
        },
        {
            "design_and_technology": [
                {"design": ["architect", "interior_designer"]},
                {"software": ["software_engineer"]},
            ]
        },
    ]
}
