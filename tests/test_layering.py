"""Data flows one way through the kit: no module imports one listed after it in `ORDER` (what each
module does: README's "The package" table).

The imports are read with `ast` (module level and inside functions), so a late import cannot hide a
backwards arrow. `__init__` re-exports for the notebooks and is the one exception.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ssae_kit"

# The pipeline's stages in data-flow order: the single place the order is written down. A name with
# no file yet (a module still to come) keeps its place; every file in the package must have one.
# bio_templates holds bios' sentence templates, so it sits just before bios.
# intervals holds the bootstrap every stage's comparisons share, so it comes first.
# tracin reranks retrieval's candidates with SAEs and short training runs, so it follows train.
# toy (notebook 00's superposition primer) writes a store and scores an SAE's decoder; it sits with evals.
# gsae (the GSAE recipe, its convergence test, the rarity sweep) trains and evaluates, so it follows evals.
ORDER = (
    "intervals",
    "io",
    "models",
    "corpora",
    "retrieval",
    "activations",
    "sae",
    "term",
    "train",
    "tracin",
    "evals",
    "toy",
    "gsae",
    "features",
    "viz",
    "bio_templates",
    "bios",
    "debias",
    "taxonomy",
    "tsda",
    "tree_probe",
    "exercises",
)


def kit_imports(source: str) -> set[str]:
    """Names of the ssae_kit modules that `source` imports, relatively or absolutely, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif node.level == 0 and node.module and node.module.split(".")[0] == "ssae_kit":
                parts = node.module.split(".")
                found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("ssae_kit.")}
    return found & set(ORDER)


def later_imports(module: str, source: str) -> list[str]:
    """The modules `source` (the text of `module`) imports that come after `module` in ORDER."""
    return sorted((m for m in kit_imports(source) if ORDER.index(m) > ORDER.index(module)), key=ORDER.index)


def _modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def test_every_module_has_a_place_in_the_order():
    missing = [m for m in _modules() if m not in ORDER]
    assert not missing, (
        f"Modules {missing} are not in ORDER: add each where its data comes from (and to README's 'The package' table)."
    )


@pytest.mark.parametrize("module", [m for m in _modules() if m in ORDER])
def test_no_module_imports_a_later_stage(module):
    later = later_imports(module, (PACKAGE / f"{module}.py").read_text())
    assert not later, (
        f"ssae_kit.{module} imports {later}, listed after it in ORDER: move the shared piece down "
        f"to {module} (or earlier), or pass plain data in, so that data flows one way."
    )


def test_the_check_sees_every_import_form():
    source = (
        "from .tsda import x\nfrom . import tree_probe\nimport ssae_kit.exercises\n"
        "from ssae_kit.debias import y\ndef f():\n    from .io import z\n"
    )
    assert later_imports("taxonomy", source) == ["tsda", "tree_probe", "exercises"]
    assert later_imports("viz", source) == ["debias", "tsda", "tree_probe", "exercises"]
    assert later_imports("exercises", source) == []
