"""Run every notebooks/NN_*.ipynb with papermill, in order, on its defaults (or a preset's params).

Each notebook writes into <out>/<notebook stem>/ (figures, metrics.json, artefacts) and its
executed copy goes to <out>/<notebook>.ipynb, signed as trusted (you ran it), so JupyterLab draws
its widgets from the saved state as it would had you run it there. Used by `make demo`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import nbformat
import papermill
from nbformat.sign import NotebookNotary
from presets import load_preset

HERE = Path(__file__).resolve().parent
PRESETS = ("smoke", "workshop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo", help="folder for executed notebooks and results")
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        default=None,
        help="parameters from notebooks/<preset>.yaml: smoke (fast, for checks), workshop (a teaching session)",
    )
    parser.add_argument("--only", nargs="*", default=None, help="notebook stems to run, e.g. 00_quickstart")
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    preset = load_preset(args.preset) if args.preset else {}  # refuses a key a notebook does not declare
    notebooks = sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    if args.only:
        if unknown := sorted(set(args.only) - {nb.stem for nb in notebooks}):
            parser.error(f"--only {unknown}: no such notebook; choose from {[nb.stem for nb in notebooks]}")
        notebooks = [nb for nb in notebooks if nb.stem in args.only]
    timings = []
    for nb in notebooks:
        run_dir = out / nb.stem
        params = {**preset.get(nb.stem, {}), "run_dir": str(run_dir)}
        print(f"== {nb.name} -> {run_dir}", flush=True)
        start = time.perf_counter()
        papermill.execute_notebook(
            str(nb), str(out / nb.name), parameters=params, cwd=str(HERE), kernel_name="python3"
        )
        NotebookNotary().sign(nbformat.read(out / nb.name, as_version=4))
        timings.append((nb.stem, time.perf_counter() - start, run_dir))
    print("\nDone. Executed notebooks, figures and metrics:")
    for stem, seconds, run_dir in timings:
        figures = ", ".join(p.name for p in sorted(run_dir.glob("*.png"))) or "none"
        print(f"  {stem:<32} {seconds:6.0f} s  {out / (stem + '.ipynb')}")
        print(f"  {'':<32}          metrics: {run_dir / 'metrics.json'}; figures: {figures}")


if __name__ == "__main__":
    main()
