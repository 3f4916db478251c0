"""Write the workshop's student copies, and the solutions-revealed HTML, from the instructor notebooks.

The notebooks in notebooks/ are the instructor copy: each exercise's reference solution sits in a code
cell tagged `solution`. The student copy replaces every such cell by a stub made from it (its imports,
and each function's signature and docstring over a body that raises NotImplementedError) and carries
the workshop preset (notebooks/workshop.yaml) as papermill's injected parameters. Every other cell is
the instructor's, unchanged. Used by `make workshop`; with `--execute` the solutions handout is the
solved copies run on the preset, outputs and figures included, each solution cell under a banner.
"""

from __future__ import annotations

import argparse
import ast
import re
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert import HTMLExporter
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook
from presets import check_keys, load_preset

from ssae_kit.exercises import HINTS

HERE = Path(__file__).resolve().parent
SOLUTION_TAG = "solution"


def stub_source(source: str) -> str:
    """The stub of a solution cell: its imports, then each function's signature and docstring over
    `raise NotImplementedError`, so the learner sees what to write and not how."""
    tree = ast.parse(source)
    lines = source.splitlines()
    imports, stubs = [], []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imports.append(ast.get_source_segment(source, node))
        elif isinstance(node, ast.FunctionDef) and ast.get_docstring(node):
            start = min([node.lineno] + [d.lineno for d in node.decorator_list]) - 1
            head = "\n".join(lines[start : node.body[0].end_lineno])
            stubs.append(
                f'{head}\n    raise NotImplementedError("write {node.name}, then run the check below")'
            )
        else:
            raise ValueError(
                f"A `{SOLUTION_TAG}` cell may hold only imports and functions with docstrings, but line "
                f"{node.lineno} is a {type(node).__name__}: move it to a cell of its own.\n{source}"
            )
    if not stubs:
        raise ValueError(f"A `{SOLUTION_TAG}` cell defines no function to stub:\n{source}")
    return "\n\n\n".join(["\n".join(imports)] * bool(imports) + stubs)


def student_copy(path: Path, parameters: dict, solved: bool = False) -> nbformat.NotebookNode:
    """The student copy of the instructor notebook at `path`: solutions replaced by stubs (kept with
    `solved`, the copy a teacher hands out afterwards), `parameters` injected (read with papermill's
    loader, which gives every cell the tags list it expects)."""
    check_keys(path, parameters)
    out = load_notebook_node(str(path))
    for cell in out.cells:
        if SOLUTION_TAG in cell.metadata.get("tags", []) and not solved:
            cell.source = stub_source(cell.source)
    return parameterize_notebook(out, parameters, report_mode=False)


def mark_solutions(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """`nb` with a banner above each solution cell naming its exercise, for the solutions handout."""
    cells = []
    for cell in nb.cells:
        if SOLUTION_TAG in cell.metadata.get("tags", []):
            header = cells[-1].source if cells else ""
            number = re.search(r"Exercise (\d+\.\d+)", header)
            banner = f"**Solution to exercise {number.group(1)}**" if number else "**Solution**"
            key = (
                f" The key line: {HINTS[number.group(1)][1][-1]}"
                if number and number.group(1) in HINTS
                else ""
            )
            cells.append(
                nbformat.v4.new_markdown_cell(
                    f"{banner} (the kit's reference; yours may differ and still pass the check below).{key}"
                )
            )
        cells.append(cell)
    nb.cells = cells
    return nb


def execute(nb: nbformat.NotebookNode, timeout: int = 900) -> float:
    """Run `nb` top to bottom in a fresh kernel, from notebooks/ as papermill does; its wall seconds."""
    started = time.perf_counter()
    NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(HERE)}}
    ).execute()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="workshop", help="folder for the student copies")
    parser.add_argument(
        "--execute",
        action="store_true",
        help="run the solved copies on the preset, in order, for solutions with outputs and figures "
        "(minutes; also converts the model and embeds the corpus, so a machine is ready for the session)",
    )
    args = parser.parse_args()
    out = Path(args.out)
    (out / "solutions").mkdir(parents=True, exist_ok=True)
    preset = load_preset("workshop")  # refuses a key a notebook does not declare
    exporter = HTMLExporter()
    seconds = {}
    for stem, parameters in preset.items():
        nbformat.write(student_copy(HERE / f"{stem}.ipynb", parameters), out / f"{stem}.ipynb")
        if args.execute:
            solved = student_copy(HERE / f"{stem}.ipynb", parameters, solved=True)
            seconds[stem] = execute(solved)
        else:
            solved = nbformat.read(HERE / f"{stem}.ipynb", as_version=4)
        html, _ = exporter.from_notebook_node(mark_solutions(solved))
        (out / "solutions" / f"{stem}.html").write_text(html)
        took = f", ran in {seconds[stem]:.0f} s" if stem in seconds else ""
        print(
            f"{out / (stem + '.ipynb')}  (solutions: {out / 'solutions' / (stem + '.html')}{took})",
            flush=True,
        )
    if seconds:
        print(f"All {len(seconds)} notebooks ran in {sum(seconds.values()) / 60:.1f} minutes.")


if __name__ == "__main__":
    main()
