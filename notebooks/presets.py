"""Presets (notebooks/<name>.yaml) checked against the parameters each notebook declares.

A preset key a notebook does not declare would be injected by papermill and ignored, so the notebook
would run on its default silently (05's workshop preset once passed a renamed parameter). `run_all.py`,
`workshop.py` and the tests load presets through `load_preset`, which refuses such a key by name.
"""

from __future__ import annotations

from pathlib import Path

import papermill
import yaml

HERE = Path(__file__).resolve().parent


def declared(notebook: Path) -> list[str]:
    """The parameters a notebook declares: the names its `parameters` cell assigns."""
    return sorted(papermill.inspect_notebook(str(notebook)))


def check_keys(notebook: Path, params: dict, source: str = "the parameters") -> dict:
    """`params` if every key is a parameter of `notebook` (run_dir always is), else raise naming them."""
    known = declared(notebook)
    if unknown := sorted(set(params) - set(known)):
        raise ValueError(
            f"{source} pass {unknown} to {notebook.name}, which declares no such parameter: rename or drop "
            f"{'it' if len(unknown) == 1 else 'them'}. {notebook.stem} declares: {', '.join(known)}."
        )
    return params


def load_preset(name: str, folder: Path = HERE) -> dict[str, dict]:
    """notebooks/<name>.yaml as {notebook stem: parameters}, every stem and key checked."""
    path = folder / f"{name}.yaml"
    preset = yaml.safe_load(path.read_text()) or {}
    for stem, params in preset.items():
        notebook = folder / f"{stem}.ipynb"
        if not notebook.exists():
            raise ValueError(f"{path} names {stem!r}, which is not a notebook in {folder}: fix the name.")
        check_keys(notebook, params or {}, f"{path.name}'s {stem} section")
    return preset
