"""What a reader sees in the executed notebooks: each figure as an image (in the .ipynb and in
nbconvert's HTML), the feature browser as a widget plus a static dashboard, and the same outputs
again when nbval re-runs a notebook.

It reads the notebooks tests/test_notebooks.py executed on smoke parameters earlier in the session
(its `runs*` folder under pytest's base temp) and executes any it does not find, so this file also
runs alone (all notebooks first: minutes).
"""
from __future__ import annotations

import base64
import functools
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import papermill
import pytest
from test_notebooks import NOTEBOOKS, NOTEBOOKS_DIR, REQUIRES, SMOKE

TESTS = Path(__file__).resolve().parent
SANITIZE = TESTS / "nbval_sanitize.cfg"
NBVAL_STEMS = ("00_quickstart", "01_retrieval", "04_visualise")  # 02, 03, 05, 06 train SAEs: too slow to re-run
WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="session")
def executed(tmp_path_factory):
    """stem -> the executed copy of that notebook from this session's smoke runs (executing it if none)."""
    base = tmp_path_factory.getbasetemp()
    own: list[Path] = []

    def run(stem: str, folder: Path) -> None:
        for dep in REQUIRES.get(stem, []):
            if not (folder / dep / "metrics.json").exists():
                run(dep, folder)
        papermill.execute_notebook(str(NOTEBOOKS_DIR / f"{stem}.ipynb"), str(folder / f"{stem}.ipynb"),
                                   parameters={**SMOKE.get(stem, {}), "run_dir": str(folder / stem)},
                                   cwd=str(NOTEBOOKS_DIR), kernel_name="python3", progress_bar=False)

    def get(stem: str) -> Path:
        done = [nb for nb in sorted(base.glob(f"runs*/{stem}.ipynb")) if (nb.with_suffix("") / "metrics.json").exists()]
        if done:
            return done[0]
        if not own:
            own.append(tmp_path_factory.mktemp("runs"))
        run(stem, own[0])
        return own[0] / f"{stem}.ipynb"

    return get


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def _figure_cells(nb) -> list:
    """Cells that make a figure: each saves it to the run folder and ends by returning it."""
    return [c for c in _code_cells(nb) if "save_figure(" in c.source]


def _png_size(b64: str) -> tuple[int, int]:
    png = base64.b64decode(b64)
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "image/png output is not a PNG"
    return struct.unpack(">II", png[16:24])  # IHDR width, height


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_figure_cell_shows_its_figure_once_as_an_image(path, executed):
    nb = nbformat.read(executed(path.stem), as_version=4)
    figures = _figure_cells(nb)
    assert figures, "no figure cells found: did save_figure get renamed?"
    for cell in figures:
        pngs = [o.data["image/png"] for o in cell.outputs if "image/png" in o.get("data", {})]
        shown = "the cell with " + next(line.strip() for line in cell.source.splitlines() if "save_figure(" in line)
        assert len(pngs) == 1, f"{shown} shows {len(pngs)} images (a bare '<Figure size ...>' means no PNG formatter)"
        width, height = _png_size(pngs[0])
        assert width > 100 and height > 100, f"{shown}: a {width}x{height} image"
    n_png = sum("image/png" in o.get("data", {}) for c in _code_cells(nb) for o in c.outputs)
    assert n_png == len(figures), f"{n_png} images for {len(figures)} figures: one is shown twice"
    errors = [o.get("ename") for c in _code_cells(nb) for o in c.outputs if o.output_type == "error"]
    assert not errors, errors


def _browser_cell(nb):
    return next(c for c in _code_cells(nb) if "feature_browser(" in c.source)


def test_feature_browser_outputs_a_widget_and_a_separate_static_dashboard(executed):
    nb = nbformat.read(executed("04_visualise"), as_version=4)
    bundles = [o.get("data", {}) for o in _browser_cell(nb).outputs]
    widgets = [b for b in bundles if WIDGET in b]
    static = [b["text/html"] for b in bundles if WIDGET not in b and "text/html" in b]
    assert len(widgets) == 1 and "text/html" not in widgets[0], "the widget's own output must not hide the HTML"
    assert len(static) == 1 and "feature-browser-snapshot" in static[0] and "feature-dashboard" in static[0]
    assert "data:image/png;base64," in static[0], "the static dashboard lost its histogram"
    # JupyterLab draws the widget of a saved notebook from the widget state papermill stored
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert widgets[0][WIDGET]["model_id"] in state


@functools.cache
def _html_exporter():
    from nbconvert import HTMLExporter

    return HTMLExporter()  # what `jupyter nbconvert --to html` uses


def _nbconvert_images(body: str) -> int:
    return len(re.findall(r'<div class="jp-RenderedImage[^"]*"[^>]*>\s*<img [^>]*src="data:image/png;base64,', body))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_nbconvert_html_shows_every_figure_and_the_browser_snapshot(path, executed):
    nb = nbformat.read(executed(path.stem), as_version=4)
    body, _ = _html_exporter().from_notebook_node(nb)
    assert _nbconvert_images(body) == len(_figure_cells(nb)), "a figure cell has no <img> in the HTML"
    if any("feature_browser(" in c.source for c in _code_cells(nb)):
        # outside any <script>: what a reader without the widget JavaScript (offline, GitHub) sees
        visible = re.sub(r"<script.*?</script>", "", body, flags=re.S)
        assert "feature-browser-snapshot" in visible, "the static copy shows no dashboard for the browser"


# --- nbval: a re-run with the same seeds reproduces the recorded outputs ----------------------------
def _nbval_fixture(folder: Path, name: str, rng: str) -> Path:
    """A tiny notebook printing a random number (from `rng`), a timing and a memory address, run once."""
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in (
        "import time\nimport numpy as np\nstarted = time.perf_counter()",
        f"rng = {rng}\nprint(f'mean of 1000 draws {{rng.standard_normal(1000).mean():.6f}}')",
        "print(f'took {time.perf_counter() - started:.4f} s'); object()",
    )])
    NotebookClient(nb, kernel_name="python3", timeout=60, resources={"metadata": {"path": str(folder)}}).execute()
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture(scope="session")
def nbval_failures(executed, tmp_path_factory) -> dict[str, list[str]]:
    """Runs `pytest --nbval` once over re-runnable copies of NBVAL_STEMS and two tiny fixtures;
    returns {notebook stem: [failed cells' reports]} for every notebook it checked."""
    folder = tmp_path_factory.mktemp("nbval")
    files = [_nbval_fixture(folder, "seeded", "np.random.default_rng(0)"),
             _nbval_fixture(folder, "unseeded", "np.random.default_rng()")]
    for stem in NBVAL_STEMS:
        source = executed(stem)
        nb = nbformat.read(source, as_version=4)
        injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
        # a fresh run folder (nothing cached from the first run); earlier notebooks' results as before
        injected.source += f"\nrun_dir = {str(folder / stem)!r}\n" + "".join(
            f"{name} = {str(source.parent / dep)!r}\n" for name, dep in
            (("retrieval_dir", "01_retrieval"), ("train_dir", "02_train_ssae"), ("term_dir", "03_term_vs_erm"))
            if re.search(rf"^{name} = ", nb.cells[0].source, flags=re.M))
        nbformat.write(nb, folder / f"{stem}.ipynb")
        files.append(folder / f"{stem}.ipynb")
    (folder / "pytest.ini").write_text("[pytest]\n")  # keep the repo's pytest options out of the inner run
    report = folder / "nbval.xml"
    command = [sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env", f"--nbval-sanitize-with={SANITIZE}",
               "-p", "no:cacheprovider", "-q", f"--junitxml={report}", "-o", "junit_family=xunit1", *map(str, files)]
    done = subprocess.run(command, cwd=folder, timeout=900, capture_output=True, text=True)
    assert done.returncode in (0, 1) and report.exists(), f"nbval did not run:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    failures: dict[str, list[str]] = {f.stem: [] for f in files}
    cases = list(ET.parse(report).iter("testcase"))
    for case in cases:
        failures[Path(case.get("file")).stem] += [re.sub(r"#x1B\[\d+m", "", bad.get("message", ""))
                                                  for bad in case if bad.tag in ("failure", "error")]
    assert len(cases) >= sum(len(_code_cells(nbformat.read(f, as_version=4))) for f in files), "nbval skipped cells"
    return failures


@pytest.mark.parametrize("stem", NBVAL_STEMS)
def test_nbval_rerun_reproduces_the_executed_notebook(stem, nbval_failures):
    assert not nbval_failures[stem], "\n".join(nbval_failures[stem])


def test_nbval_fails_when_a_printed_result_changes_between_runs_with_the_same_seed(nbval_failures):
    assert not nbval_failures["seeded"], "a seeded notebook failed: is a timing or address left unsanitised?"
    assert len(nbval_failures["unseeded"]) == 1 and "mean of 1000 draws" in nbval_failures["unseeded"][0], (
        "an unseeded random number changed between runs and nbval did not notice")
