"""Data flows one way through the kit: no module imports one listed after it in docs/DESIGN.md's
module table, which is the one place the order is written down (with what each module does and why
it sits where it does).

The imports are read with `ast` (module level and inside functions), so a late import cannot hide a
backwards arrow. `__init__` re-exports for the notebooks and is the one exception.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ssae_kit"
DESIGN = ROOT / "docs" / "DESIGN.md"


def design_order(text: str) -> tuple[str, ...]:
    """The modules of DESIGN.md's table (rows that start with `ssae_kit.<name>`), in data-flow order."""
    return tuple(re.findall(r"^\| `ssae_kit\.(\w+)` \|", text, flags=re.MULTILINE))


ORDER = design_order(DESIGN.read_text())


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
        f"Modules {missing} have no row in docs/DESIGN.md's module table: add each where its data comes from."
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


def test_the_design_table_is_read_in_order_and_names_each_module_once():
    assert design_order("| `ssae_kit.io` | x |\n| `ssae_kit.models` | y |\n| not a row |\n") == (
        "io",
        "models",
    )
    assert len(ORDER) == len(set(ORDER)) and ORDER[0] == "intervals" and ORDER[-1] == "exercises"
    stale = [m for m in ORDER if not (PACKAGE / f"{m}.py").exists()]
    assert not stale, f"docs/DESIGN.md lists {stale}, which have no file in ssae_kit/: remove their rows."
