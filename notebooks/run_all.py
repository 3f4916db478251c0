"""Run every notebooks/NN_*.ipynb with papermill, in order, on its defaults (or a preset's params).

Each notebook writes into <out>/<notebook stem>/ (figures, metrics.json, artefacts) and its
executed copy goes to <out>/<notebook>.ipynb, signed as trusted (you ran it), so JupyterLab draws
its widgets from the saved state as it would had you run it there. Each notebook's start and end are
printed with its wall time and an estimate of what remains (from the last run's times with
the same preset, in <out>/timings_<preset>.json), and a table of times closes the run. Used by `make demo`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nbformat
import papermill
from nbformat.sign import NotebookNotary
from presets import load_preset

HERE = Path(__file__).resolve().parent
PRESETS = ("smoke", "workshop")
TIMINGS_FILE = "timings_{preset}.json"  # per preset: the defaults and the smoke run differ tenfold


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
    timings_path = out / TIMINGS_FILE.format(preset=args.preset or "defaults")
    previous = read_timings(timings_path)  # the last run's wall times here: the estimate of what remains
    timings: dict[str, float] = {}
    started = time.perf_counter()
    for i, nb in enumerate(notebooks, 1):
        run_dir = out / nb.stem
        params = {**preset.get(nb.stem, {}), "run_dir": str(run_dir)}
        print(f"== [{i}/{len(notebooks)}] {nb.name} -> {run_dir}", flush=True)
        start = time.perf_counter()
        papermill.execute_notebook(
            str(nb), str(out / nb.name), parameters=params, cwd=str(HERE), kernel_name="python3"
        )
        NotebookNotary().sign(nbformat.read(out / nb.name, as_version=4))
        timings[nb.stem] = time.perf_counter() - start
        timings_path.write_text(json.dumps({**previous, **timings}, indent=1))
        remaining = [n.stem for n in notebooks[i:]]
        print(f"== {nb.stem} done in {timings[nb.stem]:.0f} s; {estimate(previous, remaining)}", flush=True)
    print("\nDone. Executed notebooks, figures and metrics:")
    for stem, seconds in timings.items():
        run_dir = out / stem
        figures = ", ".join(p.name for p in sorted(run_dir.glob("*.png"))) or "none"
        print(f"  {stem:<32} {seconds:6.0f} s  {out / (stem + '.ipynb')}")
        print(f"  {'':<32}          metrics: {run_dir / 'metrics.json'}; figures: {figures}")
    print("\n" + timing_table(timings, time.perf_counter() - started))


def read_timings(path: Path) -> dict[str, float]:
    """{notebook stem: seconds} of the last run with these parameters, or {} (first run, or unreadable)."""
    try:
        return {str(k): float(v) for k, v in json.loads(path.read_text()).items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def estimate(previous: dict[str, float], remaining: list[str]) -> str:
    """What is left, from the last run's times of the notebooks still to run."""
    if not remaining:
        return "all notebooks done"
    if missing := [s for s in remaining if s not in previous]:
        return f"{len(remaining)} to go (no earlier time for {', '.join(missing)}, so no estimate)"
    return f"{len(remaining)} to go, about {sum(previous[s] for s in remaining) / 60:.0f} min left (the last run's times)"


def timing_table(timings: dict[str, float], total: float) -> str:
    """A Markdown table of wall time per notebook, with the total."""
    rows = [f"| {stem} | {seconds:.0f} s |" for stem, seconds in timings.items()]
    return "\n".join(["| notebook | wall time |", "|---|---|", *rows, f"| total | {total / 60:.1f} min |"])


if __name__ == "__main__":
    main()
