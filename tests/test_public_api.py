"""`__all__` is the API the notebooks use, per stage, and nothing else.

The notebooks' import statements are read with `ast`: the package's `__all__` must be exactly the
names they take from `ssae_kit`, and each module's `__all__` exactly the names they take from it,
directly or through the package. A module the notebooks do not use declares no `__all__`.
"""

from __future__ import annotations

import ast
import importlib
import json
from collections import defaultdict
from pathlib import Path

import ssae_kit

REPO = Path(__file__).resolve().parents[1]


def _notebook_imports() -> dict[str, set[str]]:
    """{"ssae_kit" or "ssae_kit.<module>": names the notebooks import from it}."""
    found: dict[str, set[str]] = defaultdict(set)
    for nb in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(nb.read_text())["cells"]:
            if cell["cell_type"] != "code":
                continue
            source = "".join(cell["source"])
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ssae_kit"):
                    found[node.module].update(alias.name for alias in node.names)
    return found


def test_the_package_exports_what_the_notebooks_import_from_it():
    assert sorted(ssae_kit.__all__) == sorted(_notebook_imports()["ssae_kit"])
    for name in ssae_kit.__all__:
        assert hasattr(ssae_kit, name), name


def test_each_module_exports_what_the_notebooks_take_from_it():
    imports = _notebook_imports()
    expected: dict[str, set[str]] = defaultdict(set)
    for module, names in imports.items():
        if module != "ssae_kit":
            expected[module] |= names
    for name in imports["ssae_kit"]:  # a package-level name counts for the module that defines it
        obj = getattr(ssae_kit, name)
        expected[obj.__module__].add(name)
    modules = [f"ssae_kit.{p.stem}" for p in sorted((REPO / "ssae_kit").glob("*.py")) if p.stem != "__init__"]
    for module in modules:
        declared = getattr(importlib.import_module(module), "__all__", None)
        if module in expected:
            assert declared is not None, f"{module} is used by the notebooks but declares no __all__"
            assert sorted(declared) == sorted(expected[module]), module
        else:
            assert declared is None, f"{module} is not used by the notebooks but declares __all__"
