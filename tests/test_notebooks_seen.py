"""What a reader sees in the executed notebooks: each figure as an image (in the .ipynb, in
nbconvert's HTML and in JupyterLab drawn by headless Chromium), the feature browser as a widget
plus a static dashboard, and the same outputs again when nbval re-runs a notebook.

It reads the notebooks tests/test_notebooks.py executed on smoke parameters earlier in the session
(its `runs*` folder under pytest's base temp) and executes any it does not find, so this file also
runs alone (all notebooks first: minutes). The browser test skips itself where Chromium is absent
(`apt-get install chromium`; .ci/run installs it).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import nbformat
import papermill
import pytest
from nbval.plugin import coalesce_streams
from test_notebooks import NOTEBOOKS, NOTEBOOKS_DIR, REQUIRES, SMOKE

from ssae_kit.io import RunLayout

TESTS = Path(__file__).resolve().parent
SANITIZE = TESTS / "nbval_sanitize.cfg"
NBVAL_STEMS = (
    "00_quickstart",
    "01_retrieval",
    "04_visualise",
)  # 02, 03, 05, 06 train SAEs: too slow to re-run
BROWSER_STEMS = ("04_visualise", "03_term_vs_erm")  # the widget; the most figures
WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="session")
def executed(tmp_path_factory):
    """stem -> the executed copy of that notebook from this session's smoke runs (executing it if none)."""
    base = tmp_path_factory.getbasetemp()
    own: list[Path] = []

    def run(stem: str, folder: Path) -> None:
        for dep in REQUIRES.get(stem, []):
            if not RunLayout(folder / dep).metrics.exists():
                run(dep, folder)
        papermill.execute_notebook(
            str(NOTEBOOKS_DIR / f"{stem}.ipynb"),
            str(folder / f"{stem}.ipynb"),
            parameters={**SMOKE.get(stem, {}), "run_dir": str(folder / stem)},
            cwd=str(NOTEBOOKS_DIR),
            kernel_name="python3",
            progress_bar=False,
        )

    def get(stem: str) -> Path:
        done = [
            nb
            for nb in sorted(base.glob(f"runs*/{stem}.ipynb"))
            if RunLayout(nb.with_suffix("")).metrics.exists()
        ]
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
        shown = "the cell with " + next(
            line.strip() for line in cell.source.splitlines() if "save_figure(" in line
        )
        assert len(pngs) == 1, (
            f"{shown} shows {len(pngs)} images (a bare '<Figure size ...>' means no PNG formatter)"
        )
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
    assert len(widgets) == 1 and "text/html" not in widgets[0], (
        "the widget's own output must not hide the HTML"
    )
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
    return len(
        re.findall(r'<div class="jp-RenderedImage[^"]*"[^>]*>\s*<img [^>]*src="data:image/png;base64,', body)
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_nbconvert_html_shows_every_figure_and_the_browser_snapshot(path, executed):
    nb = nbformat.read(executed(path.stem), as_version=4)
    body, _ = _html_exporter().from_notebook_node(nb)
    assert _nbconvert_images(body) == len(_figure_cells(nb)), "a figure cell has no <img> in the HTML"
    if any("feature_browser(" in c.source for c in _code_cells(nb)):
        # outside any <script>: what a reader without the widget JavaScript (offline, GitHub) sees
        visible = re.sub(r"<script.*?</script>", "", body, flags=re.DOTALL)
        assert "feature-browser-snapshot" in visible, "the static copy shows no dashboard for the browser"


# --- nbval: a re-run with the same seeds reproduces the recorded outputs ----------------------------
def _nbval_fixture(folder: Path, name: str, *sources: str) -> Path:
    """A tiny notebook of code cells `sources`, run once in `folder`."""
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in sources])
    NotebookClient(
        nb, kernel_name="python3", timeout=60, resources={"metadata": {"path": str(folder)}}
    ).execute()
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def _random_fixture(folder: Path, name: str, rng: str) -> Path:
    """Prints a random number (from `rng`), a timing and a memory address."""
    return _nbval_fixture(
        folder,
        name,
        "import time\nimport numpy as np\nstarted = time.perf_counter()",
        f"rng = {rng}\nprint(f'mean of 1000 draws {{rng.standard_normal(1000).mean():.6f}}')",
        "print(f'took {time.perf_counter() - started:.4f} s'); object()",
    )


def _cached_fixture(folder: Path) -> Path:
    """Shows a progress bar on the first run only (the result is cached in a file), like embed_corpus."""
    return _nbval_fixture(
        folder,
        "cached",
        (
            "from pathlib import Path\nfrom tqdm.auto import tqdm\ncached = Path('cached.txt')\n"
            "if not cached.exists():\n    cached.write_text(str(sum(tqdm(range(10), desc='computing'))))\n"
            "print('result', cached.read_text())"
        ),
    )


# Progress bars depend on the cache, not on the computation: a cold cache shows the embedding bar
# and a warm one does not. So nbval compares both sides without them: the recorded copy drops them
# and the re-run's kernel starts with tqdm disabled (an IPython startup file).
PROGRESS_BAR = re.compile(r"^.*\d+%\|[^|\n]*\|.*$\n?", flags=re.MULTILINE)
NO_PROGRESS_STARTUP = """import tqdm.std
_init = tqdm.std.tqdm.__init__
def _quiet_init(self, *args, **kwargs):
    kwargs["disable"] = True
    _init(self, *args, **kwargs)
tqdm.std.tqdm.__init__ = _quiet_init
"""


def _without_progress_bars(outputs: list) -> list:
    """`outputs` less tqdm bars: widget displays of a bar, and bar lines in text streams.

    Streams are merged by name first, as nbval merges them before comparing: a kernel may send a
    print's text and its newline as two messages, and the newline alone is not a bar to drop."""
    kept = []
    for out in coalesce_streams(outputs):
        if WIDGET in out.get("data", {}) and PROGRESS_BAR.fullmatch(out.data.get("text/plain", "") + "\n"):
            continue
        if out.output_type == "stream":
            text = PROGRESS_BAR.sub("", out.text.replace("\r", "\n"))
            if text != out.text and not text.strip():
                continue  # nothing but bars
            out.text = text
        kept.append(out)
    return kept


def test_progress_bars_leave_a_print_split_over_two_messages_whole():
    printed = [
        nbformat.v4.new_output("stream", name="stdout", text="✓ norm_scale: all 2 cases match."),
        nbformat.v4.new_output("stream", name="stderr", text="\rcomputing:  50%|█    | 5/10\r"),
        nbformat.v4.new_output("stream", name="stdout", text="\n"),
        nbformat.v4.new_output("stream", name="stderr", text="computing: 100%|██████████| 10/10\n"),
    ]
    kept = _without_progress_bars(printed)
    assert [(o.name, o.text) for o in kept] == [("stdout", "✓ norm_scale: all 2 cases match.\n")]
    assert (
        _without_progress_bars([nbformat.v4.new_output("stream", name="stdout", text="\n")])[0].text == "\n"
    )


@pytest.fixture(scope="session")
def nbval_failures(executed, tmp_path_factory) -> dict[str, list[str]]:
    """Runs `pytest --nbval` once over re-runnable copies of NBVAL_STEMS and two tiny fixtures;
    returns {notebook stem: [failed cells' reports]} for every notebook it checked."""
    folder = tmp_path_factory.mktemp("nbval")
    ipython_dir = folder / "ipython"
    (ipython_dir / "profile_default" / "startup").mkdir(parents=True)
    (ipython_dir / "profile_default" / "startup" / "00-no-progress.py").write_text(NO_PROGRESS_STARTUP)
    files = [
        _random_fixture(folder, "seeded", "np.random.default_rng(0)"),
        _random_fixture(folder, "unseeded", "np.random.default_rng()"),
        _cached_fixture(folder),
    ]
    for stem in NBVAL_STEMS:
        source = executed(stem)
        nb = nbformat.read(source, as_version=4)
        injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
        # a fresh run folder (nothing cached from the first run); earlier notebooks' results as before
        injected.source += f"\nrun_dir = {str(folder / stem)!r}\n" + "".join(
            f"{name} = {str(source.parent / dep)!r}\n"
            for name, dep in (
                ("retrieval_dir", "01_retrieval"),
                ("train_dir", "02_train_ssae"),
                ("term_dir", "03_term_vs_erm"),
            )
            if re.search(rf"^{name} = ", nb.cells[0].source, flags=re.MULTILINE)
        )
        nbformat.write(nb, folder / f"{stem}.ipynb")
        files.append(folder / f"{stem}.ipynb")
    for file in files:
        nb = nbformat.read(file, as_version=4)
        for cell in _code_cells(nb):
            cell.outputs = _without_progress_bars(cell.outputs)
        nbformat.write(nb, file)
    (folder / "pytest.ini").write_text("[pytest]\n")  # keep the repo's pytest options out of the inner run
    report = folder / "nbval.xml"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "--nbval",
        "--nbval-current-env",
        f"--nbval-sanitize-with={SANITIZE}",
        "-p",
        "no:cacheprovider",
        "-q",
        f"--junitxml={report}",
        "-o",
        "junit_family=xunit1",
        *map(str, files),
    ]
    done = subprocess.run(
        command,
        cwd=folder,
        timeout=900,
        capture_output=True,
        text=True,
        check=False,
        # the outer run's PYTEST_ADDOPTS (e.g. --basetemp) must not reach the inner pytest
        env={
            **{k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"},
            "IPYTHONDIR": str(ipython_dir),
        },
    )
    assert done.returncode in (0, 1) and report.exists(), (
        f"nbval did not run:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    )
    failures: dict[str, list[str]] = {f.stem: [] for f in files}
    cases = list(ET.parse(report).iter("testcase"))
    for case in cases:
        failures[Path(case.get("file")).stem] += [
            re.sub(r"#x1B\[\d+m", "", bad.get("message", ""))
            for bad in case
            if bad.tag in ("failure", "error")
        ]
    assert len(cases) >= sum(len(_code_cells(nbformat.read(f, as_version=4))) for f in files), (
        "nbval skipped cells"
    )
    return failures


@pytest.mark.parametrize("stem", NBVAL_STEMS)
def test_nbval_rerun_reproduces_the_executed_notebook(stem, nbval_failures):
    assert not nbval_failures[stem], "\n".join(nbval_failures[stem])


def test_nbval_fails_when_a_printed_result_changes_between_runs_with_the_same_seed(nbval_failures):
    assert not nbval_failures["seeded"], "a seeded notebook failed: is a timing or address left unsanitised?"
    assert len(nbval_failures["unseeded"]) == 1 and "mean of 1000 draws" in nbval_failures["unseeded"][0], (
        "an unseeded random number changed between runs and nbval did not notice"
    )


def test_nbval_passes_a_cell_whose_progress_bar_only_shows_on_a_cold_cache(nbval_failures):
    assert not nbval_failures["cached"], "\n".join(nbval_failures["cached"])


# --- a real browser: JupyterLab in headless Chromium --------------------------------------------------
CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
)

# Read from the rendered page. `windowingMode: none` (set below) keeps every cell in the DOM.
PAGE_STATE_JS = """(() => {
  const nb = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
  if (!nb) return null;
  const box = e => { const r = e.getBoundingClientRect(); return [r.width, r.height]; };
  return {
    cells: nb.querySelectorAll('.jp-Cell').length,
    images: [...nb.querySelectorAll('.jp-RenderedImage img')].map(i => [i.naturalWidth, ...box(i)]),
    widget: !!nb.querySelector('.jupyter-widgets .widget-dropdown select'),
    widget_dashboard: !!nb.querySelector('.jupyter-widgets .feature-dashboard'),
    snapshot: !!nb.querySelector('.jp-RenderedHTMLCommon .feature-browser-snapshot .feature-dashboard'),
    errors: [...nb.querySelectorAll('.jp-OutputArea-output')].map(o => o.innerText)
      .filter(t => /Traceback|Error displaying widget|model not found/.test(t)).map(t => t.slice(0, 300)),
  };
})()"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(what: str, check, timeout: float, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited with {proc.returncode}")
        try:
            if (value := check()) is not None:
                return value
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not ready after {timeout:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to this process only (JupyterLab then shuts down its kernels), SIGKILL if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _DevTools:
    """Just enough of the Chrome DevTools protocol: call a method on a page and wait for its answer."""

    def __init__(self, ws_url: str):
        from tornado.websocket import websocket_connect

        async def connect():
            return await websocket_connect(ws_url, max_message_size=1 << 28)

        self.loop = asyncio.new_event_loop()
        self.ws = self.loop.run_until_complete(connect())
        self.next_id = 0

    def __call__(self, method: str, **params):
        async def call():
            self.next_id += 1
            await self.ws.write_message(json.dumps({"id": self.next_id, "method": method, "params": params}))
            while True:  # events arrive only for enabled domains; none are
                reply = json.loads(await self.ws.read_message())
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]

        return self.loop.run_until_complete(asyncio.wait_for(call(), 60))

    def close(self) -> None:
        self.ws.close()
        self.loop.close()


@pytest.fixture(scope="module")
def lab_page(executed, tmp_path_factory):
    """(open(stem) -> page state, screenshot(path) -> bytes): JupyterLab on copies of the executed
    notebooks, signed as trusted as `make demo` does, opened in one headless Chromium tab."""
    if CHROMIUM is None:
        pytest.skip(
            "Chromium not found: `apt-get install chromium` (.ci/run installs it) to run the browser test"
        )
    root = tmp_path_factory.mktemp("lab")
    env = {
        **os.environ,
        **{
            var: str(root / sub)
            for var, sub in (
                ("JUPYTER_CONFIG_DIR", "config"),
                ("JUPYTER_DATA_DIR", "data"),
                ("JUPYTER_RUNTIME_DIR", "runtime"),
                ("JUPYTERLAB_SETTINGS_DIR", "settings"),
                ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
                ("IPYTHONDIR", "ipython"),
            )
        },
    }
    for var in ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR"):
        Path(env[var]).mkdir()
    for name, settings in (
        ("notebook-extension/tracker", {"windowingMode": "none"}),  # all cells drawn, not only those in view
        ("apputils-extension/notification", {"fetchNews": "false", "checkForUpdates": False}),
    ):
        (root / "settings" / "@jupyterlab" / f"{name}.jupyterlab-settings").parent.mkdir(
            parents=True, exist_ok=True
        )
        (root / "settings" / "@jupyterlab" / f"{name}.jupyterlab-settings").write_text(json.dumps(settings))
    (root / "config" / "jupyter_server_config.json").write_text(
        json.dumps(  # server extensions the test needs not
            {"ServerApp": {"jpserver_extensions": {"jupyter_lsp": False, "jupyter_server_terminals": False}}}
        )
    )
    from nbformat.sign import NotebookNotary

    notary = NotebookNotary(data_dir=env["JUPYTER_DATA_DIR"])
    (root / "notebooks").mkdir()
    for stem in BROWSER_STEMS:
        nb = nbformat.read(executed(stem), as_version=4)
        notary.sign(nb)
        nbformat.write(nb, root / "notebooks" / f"{stem}.ipynb")
    port, token = _free_port(), secrets.token_hex(16)
    lab = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}",
            f"--ServerApp.root_dir={root / 'notebooks'}",
            "--LabApp.news_url=None",
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(root / "lab.log", "w"),  # noqa: SIM115 (the server keeps it until it stops)
    )
    chromium = None
    try:
        _wait_for(
            "JupyterLab",
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}"),
            120,
            lab,
        )
        profile = root / "chromium"
        chromium = subprocess.Popen(
            [
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "--window-size=1400,1000",
                "about:blank",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        devtools_port = _wait_for(
            "Chromium", lambda: (profile / "DevToolsActivePort").read_text().split()[0], 60, chromium
        )
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{devtools_port}/json/list"))
        page = _DevTools(next(p for p in pages if p["type"] == "page")["webSocketDebuggerUrl"])

        def open_notebook(stem: str, ready) -> dict:
            page("Page.navigate", url=f"http://127.0.0.1:{port}/lab/tree/{stem}.ipynb?reset&token={token}")
            state: dict = {}

            def rendered():
                state.update(
                    page("Runtime.evaluate", expression=PAGE_STATE_JS, returnByValue=True)["result"].get(
                        "value"
                    )
                    or {}
                )
                return state if state and ready(state) else None

            try:
                return _wait_for(f"{stem} in JupyterLab", rendered, 240)
            except TimeoutError:
                return state  # the test's asserts say what is missing

        def screenshot(selector: str, path: Path) -> int:
            page(
                "Runtime.evaluate",
                expression=f"document.querySelector('{selector}')?.closest('.jp-Cell')?.scrollIntoView()",
            )
            png = base64.b64decode(page("Page.captureScreenshot", format="png")["data"])
            path.write_bytes(png)
            return len(png)

        yield open_notebook, screenshot
        page.close()
    finally:
        if chromium is not None:
            _stop(chromium)
        _stop(lab)


@pytest.mark.parametrize("stem", BROWSER_STEMS)
def test_jupyterlab_in_chromium_draws_each_figure_and_the_live_browser(stem, lab_page, executed, tmp_path):
    open_notebook, screenshot = lab_page
    nb = nbformat.read(executed(stem), as_version=4)
    n_figures = len(_figure_cells(nb))
    n_png = sum("image/png" in o.get("data", {}) for c in _code_cells(nb) for o in c.outputs)
    has_browser = any("feature_browser(" in c.source for c in _code_cells(nb))
    state = open_notebook(
        stem,
        lambda s: (
            s["cells"] == len(nb.cells)
            and len(s["images"]) >= n_png
            and all(w > 0 for w, _, _ in s["images"])
            and (s["widget_dashboard"] or not has_browser)
        ),
    )
    assert state.get("cells") == len(nb.cells), (
        f"JupyterLab drew {state.get('cells')} of {len(nb.cells)} cells"
    )
    images = state["images"]
    assert len(images) == n_png == n_figures, f"{len(images)} <img> for {n_figures} figures"
    assert all(natural > 0 and w > 0 and h > 0 for natural, w, h in images), f"an image drew empty: {images}"
    assert not state["errors"], state["errors"]
    if has_browser:
        assert state["widget"] and state["widget_dashboard"], "the feature browser widget was not drawn"
        assert state["snapshot"], "the static snapshot of the browser is missing"
        size = screenshot(".feature-browser-snapshot", tmp_path / f"{stem}.png")
        assert size > 10_000, "the screenshot is blank"
