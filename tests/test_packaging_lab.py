"""JupyterLab and nbval come with the notebooks extra; `make lab` serves them; CI has a browser."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_notebooks_extra_brings_jupyterlab_and_nbval():
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"][
        "notebooks"
    ]
    names = {re.split(r"[<>=!~ \[]", req)[0].lower() for req in extra}
    assert {"jupyterlab", "nbval"} <= names, names  # environment.yml agrees: tests/test_packaging.py


def test_make_lab_runs_the_venvs_jupyterlab_and_the_readme_says_so():
    make = (REPO / "Makefile").read_text()
    recipe = re.search(r"^lab: \$\(STAMP\)\n((?:\t.*\n)+)", make, flags=re.MULTILINE)
    assert recipe and "$(BIN)/jupyter lab" in recipe.group(1), "`make lab` must use the kit's venv"
    for var in (
        "JUPYTER_CONFIG_DIR",
        "JUPYTER_DATA_DIR",
        "JUPYTER_RUNTIME_DIR",
        "IPYTHONDIR",
        "npm_config_cache",
    ):
        assert re.search(rf"^export {var} := \$\(CACHE\)/", make, flags=re.MULTILINE), (
            f"{var} would default to $HOME"
        )
    assert "`make lab`" in (REPO / "README.md").read_text()


def test_ci_installs_chromium_before_the_tests():
    ci = (REPO / ".ci" / "run").read_text()
    assert ci.index("apt-get install -y -qq chromium") < ci.index("make test")
