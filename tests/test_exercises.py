"""Workshop mode: the checkers of `ssae_kit.exercises` and the student copies of notebooks/workshop.py.

Every checker passes the reference solution kept in the instructor notebooks and fails a deliberately
wrong version with the hint that names its mistake. The student copies are generated here: each
exercise cell is checked against its instructor cell, the exercise cells run with stubs (skipped)
and with the solutions injected back (all pass), the rest of each copy is the instructor's source
cell for cell (which tests/test_notebooks.py runs), and notebook 01's student copy runs end to end
on smoke parameters with its stubs in place.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import math
import re
import shutil
import sys
from pathlib import Path

import nbclient
import nbformat
import numpy as np
import pytest
import torch
import yaml

from ssae_kit import exercises
from ssae_kit.io import RunLayout
from ssae_kit.sae import SAE, SAEConfig

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
PRESET = yaml.safe_load((NOTEBOOKS_DIR / "workshop.yaml").read_text())
SMOKE = yaml.safe_load((NOTEBOOKS_DIR / "smoke.yaml").read_text())
sys.path.insert(0, str(NOTEBOOKS_DIR))  # workshop.py imports presets.py from its own folder, as when run
import presets

_spec = importlib.util.spec_from_file_location("workshop_script", NOTEBOOKS_DIR / "workshop.py")
workshop = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(workshop)


def _exercises(
    stem: str,
) -> list[tuple[str, nbformat.NotebookNode, nbformat.NotebookNode, nbformat.NotebookNode]]:
    """(function name, header, solution cell, check cell) of each exercise of an instructor notebook."""
    cells = nbformat.read(NOTEBOOKS_DIR / f"{stem}.ipynb", as_version=4).cells
    found = []
    for i, cell in enumerate(cells):
        if "solution" in cell.metadata.get("tags", []):
            name = next(n.name for n in ast.parse(cell.source).body if isinstance(n, ast.FunctionDef))
            found.append((name, cells[i - 1], cell, cells[i + 1]))
    return found


EXERCISES = [(stem, *ex) for stem in PRESET for ex in _exercises(stem)]


def test_every_notebook_has_two_to_four_exercises_and_every_checker_is_used():
    per_notebook = {stem: len(_exercises(stem)) for stem in PRESET}
    assert all(2 <= n <= 4 for n in per_notebook.values()), per_notebook
    assert sorted([f"check_{name}" for _, name, *_ in EXERCISES] + ["hint", "yours"]) == sorted(
        exercises.__all__
    )


@pytest.mark.parametrize("stem, name, header, solution, check", EXERCISES, ids=[e[1] for e in EXERCISES])
def test_each_exercise_states_goal_difficulty_importance_and_time_and_calls_its_checker(
    stem, name, header, solution, check
):
    assert header.cell_type == "markdown" and f"implement `{name}`" in header.source
    assert re.search(r"Difficulty [1-5]/5 · Importance [1-5]/5 · spend up to [\d-]+ minutes", header.source)
    assert "**Goal:**" in header.source
    assert check.source.strip().endswith(f"check_{name}({name})")


@pytest.mark.parametrize("stem, name, header, solution, check", EXERCISES, ids=[e[1] for e in EXERCISES])
def test_the_reference_solution_passes_its_checker(stem, name, header, solution, check, capsys):
    namespace: dict = {}
    exec(solution.source, namespace)
    exec(check.source, namespace)
    out = capsys.readouterr().out
    assert out.startswith(f"✓ {name}: all"), out


def _stub(*args):
    raise NotImplementedError


def _naive_tilted_loss(losses, t):
    return torch.log(torch.mean(torch.exp(t * losses))) / t


def _unnormalised_centroid(pool, seeds):
    return (pool @ seeds.T).mean(1)


def _stop_at_first_overflow(scores, lengths, budget):
    taken, used = [], 0
    for i in np.argsort(-scores):
        if used + lengths[i] > budget:
            break
        taken.append(i)
        used += lengths[i]
    return taken


def _strict_budget(scores, lengths, budget):
    taken, used = [], 0
    for i in np.argsort(-scores):
        if used + lengths[i] < budget:
            taken.append(i)
            used += lengths[i]
    return taken


def _bm25(stopwords):
    def scores(pool, seeds):
        import bm25s

        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize(pool, stopwords=stopwords, show_progress=False), show_progress=False)
        queries = bm25s.tokenize(seeds, stopwords=stopwords, show_progress=False, return_ids=False)
        return np.mean([retriever.get_scores(q) for q in queries], axis=0)

    return scores


def _bm25_one_query(pool, seeds):
    return _bm25("en")(pool, [" ".join(seeds)])


def _no_relu(x, W_enc, b_enc, W_dec, b_dec):
    f = (x - b_dec) @ W_enc + b_enc
    return f @ W_dec + b_dec, f


def _no_pre_encoder_bias(x, W_enc, b_enc, W_dec, b_dec):
    f = torch.relu(x @ W_enc + b_enc)
    return f @ W_dec + b_dec, f


def _ce_without_splice(model, sae, ids, layer):
    return 0.0


def _ce_without_shift(model, sae, ids, layer):
    from ssae_kit.hooks import splice

    def ce():
        return torch.nn.functional.cross_entropy(model(input_ids=ids).logits.flatten(0, 1), ids.flatten())

    with torch.no_grad():
        clean = ce()
        with splice(model, layer, lambda r: sae.decode(sae.encode(r))):
            return float(ce() - clean)


def _naive_weights(losses, t):
    return torch.exp(t * losses) / torch.exp(t * losses).sum()


def _unnormalised_cosine(a, b):
    return (a @ b.T).max(1).values


def _abs_cosine(a, b):
    a, b = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    return (a @ b.T).abs().max(1).values


def _dark_matter_with_dead(best, peak, threshold):
    new = np.flatnonzero(best < threshold)
    return new[np.argsort(-peak[new], kind="stable")]


def _ablate_dropping_error(sae, x, latents):
    f = sae.encode(x).clone()
    f[..., latents] = 0
    return sae.decode(f)


def _gradient_only(sae, resid, keep, metric):
    f = sae.encode(resid).detach().requires_grad_()
    (grad,) = torch.autograd.grad(metric(sae.decode(f) + (resid - sae.decode(f)).detach()), f)
    return (grad * keep[..., None]).sum((0, 1)) / len(resid)


def _without_error_term(sae, resid, keep, metric):
    f = sae.encode(resid).detach().requires_grad_()
    (grad,) = torch.autograd.grad(metric(sae.decode(f)), f)
    return (grad * f.detach() * keep[..., None]).sum((0, 1)) / len(resid)


def _ev_around_zero(x, x_hat):
    return float(1 - (x - x_hat).pow(2).sum() / x.pow(2).sum())


def _recovered_from_clean(ce_clean, ce_sae, ce_zero):
    return (ce_sae - ce_clean) / (ce_zero - ce_clean)


def _recovered_clipped(ce_clean, ce_sae, ce_zero):
    return max(0.0, (ce_zero - ce_sae) / (ce_zero - ce_clean))


def _raises(*args):
    raise IndexError("index 9 is out of bounds")


WRONG = [
    ("explained_variance", _ev_around_zero, "the mean token", "the baseline is the mean token"),
    ("ce_loss_recovered", _recovered_from_clean, "as good as the clean", "from the zero-ablated end"),
    ("ce_loss_recovered", _recovered_clipped, "worse than zero-ablation", "do not clip"),
    (
        "centroid_scores",
        _unnormalised_centroid,
        "pool vectors of different lengths",
        "normalise every vector",
    ),
    ("fill_budget", _stop_at_first_overflow, "second-best is too long", "do not stop at the first"),
    ("fill_budget", _strict_budget, "filled exactly", "compare with <=, not <"),
    ("bm25_scores", _bm25(None), "one seed", "stop words must go"),
    ("bm25_scores", _bm25_one_query, "two seeds", "each seed as its own query"),
    ("sae_forward", _no_relu, "zero biases", "the ReLU keeps latents >= 0"),
    ("sae_forward", _no_pre_encoder_bias, "non-zero b_dec", "subtract b_dec from x before encoding"),
    ("spliced_ce_delta", _ce_without_splice, "a random SAE", "inside `with splice"),
    ("spliced_ce_delta", _ce_without_shift, "a random SAE", "logits[:, :-1] with input_ids[:, 1:]"),
    ("tilted_loss", _naive_tilted_loss, "exp(1500) overflows", "subtract max(l) first"),
    ("term_weights", _naive_weights, "t = 1e9", "use torch.softmax"),
    ("best_decoder_cosine", _unnormalised_cosine, "different lengths", "normalise each row"),
    ("best_decoder_cosine", _abs_cosine, "unit rows", "signed (no abs)"),
    ("dark_matter", _dark_matter_with_dead, "threshold 0.7", "fire on the sample (peak > 0)"),
    (
        "ablate_keeping_error",
        _ablate_dropping_error,
        "never fire changes nothing",
        "keep the SAE's error term",
    ),
    ("shift_attribution", _gradient_only, "4 texts", "times f"),
    ("shift_attribution", _without_error_term, "4 texts", "the metric must see the true residual"),
    ("tilted_loss", _raises, "t = 1 on small losses", "raised IndexError: index 9"),
]


@pytest.mark.parametrize("name, wrong, case, hint", WRONG, ids=[f"{w[0]}-{w[1].__name__}" for w in WRONG])
def test_a_wrong_implementation_fails_naming_the_case_and_the_hint(name, wrong, case, hint, capsys):
    getattr(exercises, f"check_{name}")(wrong)
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1, out
    assert out.startswith(f"✗ {name}, case '") and case in out and hint in out, out


def test_an_unwritten_stub_is_reported_not_raised(capsys):
    exercises.check_tilted_loss(_stub)
    assert "tilted_loss: not written yet" in capsys.readouterr().out


def test_the_overflow_case_is_one_a_naive_tilted_loss_really_overflows():
    assert math.isinf(float(_naive_tilted_loss(torch.full((3,), 30.0, dtype=torch.float64), 50.0)))


@pytest.mark.parametrize("stem", list(PRESET))
def test_the_student_copy_is_the_instructor_notebook_with_stubs_and_the_workshop_parameters(stem):
    instructor = nbformat.read(NOTEBOOKS_DIR / f"{stem}.ipynb", as_version=4).cells
    student = workshop.student_copy(NOTEBOOKS_DIR / f"{stem}.ipynb", PRESET[stem]).cells
    injected = [c for c in student if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and student.index(injected[0]) == 1
    values: dict = {}
    exec(injected[0].source, values)
    assert {k: values[k] for k in PRESET[stem]} == PRESET[stem]
    student = [c for c in student if c is not injected[0]]
    assert [c.cell_type for c in student] == [c.cell_type for c in instructor]
    for s, i in zip(student, instructor):
        if "solution" not in i.metadata.get("tags", []):
            assert s.source == i.source
            continue
        stub_ns, ref_ns = {}, {}
        exec(s.source, stub_ns)
        exec(i.source, ref_ns)
        for node in ast.parse(s.source).body:
            if isinstance(node, ast.FunctionDef):
                stub, ref = stub_ns[node.name], ref_ns[node.name]
                assert inspect.signature(stub) == inspect.signature(ref) and stub.__doc__ == ref.__doc__
                assert len(node.body) == 2 and isinstance(node.body[1], ast.Raise), (
                    "the stub keeps the solution"
                )


def test_a_solution_cell_with_other_statements_is_refused_naming_the_fix():
    with pytest.raises(ValueError, match="only imports and functions with docstrings.*cell of its own"):
        workshop.stub_source('def f(x):\n    """Doc."""\n    return x\n\n\nf(1)\n')


@pytest.mark.parametrize("stem", list(PRESET))
def test_exercise_functions_are_used_later_only_through_yours(stem):
    """So a student copy runs past exercises left as stubs: `yours` falls back to the kit's function."""
    cells = nbformat.read(NOTEBOOKS_DIR / f"{stem}.ipynb", as_version=4).cells
    names = {name for s, name, *_ in EXERCISES if s == stem}
    for cell in cells:
        if cell.cell_type == "code" and "exercise" not in cell.metadata.get("tags", []):
            tree = ast.parse(cell.source)
            through_yours = {
                id(arg)
                for call in ast.walk(tree)
                if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "yours"
                for arg in call.args
            }
            used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and id(n) not in through_yours}
            assert not used & names, cell.source


def test_yours_returns_the_learners_function_when_it_passes_else_the_kits_saying_which(capsys):
    def stub(*args):
        raise NotImplementedError

    def wrong(scores, lengths, budget):  # stops at the first document that does not fit
        taken, used = [], 0
        for i in np.argsort(-scores, kind="stable"):
            if used + lengths[i] > budget:
                break
            taken.append(int(i))
            used += lengths[i]
        return taken

    def right(scores, lengths, budget):
        taken, used = [], 0
        for i in np.argsort(-scores, kind="stable"):
            if used + lengths[i] <= budget:
                taken.append(int(i))
                used += lengths[i]
        return taken

    scores, lengths = np.array([0.9, 0.8, 0.7]), np.array([40, 80, 30])
    for fn, expected_line in [(stub, "not written yet"), (wrong, "not written yet or does not pass")]:
        kit = exercises.yours("1.2", fn)
        assert kit is not fn and kit(scores, lengths, 100) == [0, 2]
        assert expected_line in capsys.readouterr().out
    assert exercises.yours("1.2", right) is right
    assert capsys.readouterr().out == "Using your fill_budget (1.2).\n"
    x = torch.randn(4, 8)
    sae = SAE(SAEConfig(d_in=8, d_sae=16), seed=1)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1), sae.b_dec.normal_()
    x_hat, f = exercises.yours("2.1", stub)(x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
    torch.testing.assert_close(f, sae.encode_normalized(x).detach())
    torch.testing.assert_close(x_hat, sae.decode_normalized(f))
    with pytest.raises(ValueError, match="used later are 1.1, 1.2, 2.1"):
        exercises.yours("3.1", stub)


def _run_exercise_cells(inject: bool) -> str:
    """Execute every exercise cell of the five student copies in one kernel; return the printed text."""
    cells = []
    for stem in PRESET:
        student = workshop.student_copy(NOTEBOOKS_DIR / f"{stem}.ipynb", PRESET[stem]).cells
        solutions = iter(sol for _, _, sol, _ in _exercises(stem))
        for cell in student:
            if "exercise" in cell.metadata.get("tags", []) and cell.cell_type == "code":
                cells.append(next(solutions) if inject and "solution" in cell.metadata["tags"] else cell)
    nb = nbformat.v4.new_notebook(cells=cells)
    nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS_DIR)}}
    ).execute()
    return "".join(o.get("text", "") for c in nb.cells for o in c.outputs)


def test_student_exercise_cells_skip_the_stubs_and_pass_with_the_solutions_injected():
    stubbed, solved = _run_exercise_cells(inject=False), _run_exercise_cells(inject=True)
    names = [name for _, name, *_ in EXERCISES]
    assert [line for line in stubbed.splitlines()] == [
        f"… {n}: not written yet. Fill in the stub above, run it, then run this cell again." for n in names
    ]
    assert [line.split(":")[0] for line in solved.splitlines()] == [f"✓ {n}" for n in names]


def test_make_workshop_writes_student_copies_and_solutions_html_into_an_ignored_folder(tmp_path, monkeypatch):
    repo = NOTEBOOKS_DIR.parent
    make = (repo / "Makefile").read_text()
    recipe = re.search(r"^workshop: \$\(STAMP\)\n((?:\t.*\n)+)", make, flags=re.MULTILINE)
    assert recipe and "$(BIN)/python notebooks/workshop.py --out workshop" in recipe.group(1)
    assert re.search(r"^\.PHONY:.* workshop\b", make, flags=re.MULTILINE)
    assert "workshop/" in (repo / ".gitignore").read_text().splitlines()
    assert "\nmake workshop\n" in (repo / "README.md").read_text()
    monkeypatch.setattr("sys.argv", ["workshop.py", "--out", str(tmp_path)])
    workshop.main()
    for stem in PRESET:
        student = nbformat.read(tmp_path / f"{stem}.ipynb", as_version=4)
        nbformat.validate(student)
        assert all(
            "NotImplementedError" in c.source for c in student.cells if "solution" in c.metadata["tags"]
        )
    html = (tmp_path / "solutions" / "03_term_vs_erm.html").read_text()
    assert "logsumexp" in html and "write tilted_loss, then run" not in html  # the solutions, revealed
    assert "Solution to exercise 3.1" in html and "Solution to exercise 3.2" in html


def test_make_workshop_execute_hands_out_the_solved_copies_with_their_outputs(tmp_path, monkeypatch, capsys):
    ran = []

    def fake_execute(nb):  # stands in for a run on the preset: it records the copy and leaves an output
        ran.append(nb)
        cell = next(c for c in nb.cells if "solution" in c.metadata.get("tags", []))
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"ran solved copy {len(ran)}")]
        return 2.0

    monkeypatch.setattr(workshop, "execute", fake_execute)
    monkeypatch.setattr("sys.argv", ["workshop.py", "--out", str(tmp_path), "--execute"])
    workshop.main()
    assert len(ran) == len(PRESET)
    for nb in ran:  # solved, with the preset injected
        assert not any(
            "NotImplementedError" in c.source for c in nb.cells if "solution" in c.metadata.get("tags", [])
        )
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    html = (tmp_path / "solutions" / "00_quickstart.html").read_text()
    assert "ran solved copy 1" in html and "Solution to exercise 0.1" in html
    assert (
        f"All {len(PRESET)} notebooks ran in {2.0 * len(PRESET) / 60:.1f} minutes." in capsys.readouterr().out
    )


def test_a_preset_key_a_notebook_does_not_declare_is_refused_naming_key_notebook_and_parameters(tmp_path):
    """05's workshop preset once passed n_test_per_group after 05 renamed it: papermill injected it
    and 05 ran on its default, then crashed pointing at a parameter that no longer existed."""
    shutil.copy(NOTEBOOKS_DIR / "05_debias_bias_in_bios.ipynb", tmp_path)
    (tmp_path / "workshop.yaml").write_text(
        "05_debias_bias_in_bios:\n  n_bios: 300\n  n_test_per_group: 20\n"
    )
    with pytest.raises(ValueError, match=r"pass \['n_test_per_group'\] to 05_debias_bias_in_bios.ipynb") as e:
        presets.load_preset("workshop", tmp_path)
    assert "n_a_per_group" in str(e.value) and "n_b_per_group" in str(e.value)
    (tmp_path / "workshop.yaml").write_text("05_debias_bias_in_bios:\n  n_bios: 300\n")
    assert presets.load_preset("workshop", tmp_path) == {"05_debias_bias_in_bios": {"n_bios": 300}}
    (tmp_path / "workshop.yaml").write_text("05_debias:\n  n_bios: 300\n")
    with pytest.raises(ValueError, match="names '05_debias', which is not a notebook"):
        presets.load_preset("workshop", tmp_path)
    with pytest.raises(ValueError, match=r"pass \['typo'\] to 01_retrieval.ipynb"):
        workshop.student_copy(NOTEBOOKS_DIR / "01_retrieval.ipynb", {"typo": 1})


@pytest.mark.parametrize("name", ["workshop", "smoke"])
def test_the_shipped_presets_pass_only_declared_parameters(name):
    assert presets.load_preset(name, NOTEBOOKS_DIR)


def test_a_notebook_run_with_an_undeclared_parameter_stops_in_its_setup_cell(tmp_path):
    import papermill

    with pytest.raises(
        papermill.PapermillExecutionError, match=r"Unknown parameter\(s\) \['n_test_per_group'\]"
    ):
        papermill.execute_notebook(
            str(NOTEBOOKS_DIR / "00_quickstart.ipynb"),
            str(tmp_path / "out.ipynb"),
            parameters={"run_dir": str(tmp_path / "00"), "n_test_per_group": 20},
            cwd=str(NOTEBOOKS_DIR),
            kernel_name="python3",
            progress_bar=False,
        )
    assert not (tmp_path / "00").exists(), "work started before the parameters were checked"


def test_hints_are_progressive_per_exercise_and_the_last_repeats(capsys):
    for start in (True, False, False, False, True):
        exercises.hint("2.1", from_start=start)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" for ")[0] for line in lines] == [
        "Hint 1/3",
        "Hint 2/3",
        "Hint 3/3",
        "Hint 3/3",
        "Hint 1/3",
    ]
    assert "ReLU" not in lines[0] and "f = ReLU((x - b_dec) W_enc + b_enc)" in lines[2]
    assert lines[3].endswith("(that was the last hint)") and lines[4] == lines[0]
    with pytest.raises(ValueError, match="No exercise '9.9': the exercises are 0.1, 0.2, 0.3, 0.4, 1.1"):
        exercises.hint("9.9")


def test_every_exercise_has_hints_and_its_header_points_to_them():
    ids = {name: ex for ex, (name, _) in exercises.HINTS.items()}
    assert sorted(ids) == sorted(name for _, name, *_ in EXERCISES)
    for _, name, header, _, _ in EXERCISES:
        assert f'`hint("{ids[name]}")`' in header.source


@pytest.mark.parametrize("stem", list(PRESET))
def test_the_student_copy_names_no_reference_function_and_gives_no_formula(stem):
    student = workshop.student_copy(NOTEBOOKS_DIR / f"{stem}.ipynb", PRESET[stem]).cells
    text = "\n".join(c.source for c in student if "exercise" in c.metadata.get("tags", []))
    for giveaway in (
        "The kit's own",
        "ReLU((x",
        "softmax",
        "logsumexp",
        "x - decode(f)",
        "<details><summary>Why",
    ):
        assert giveaway not in text, giveaway


def test_a_fill_budget_mistake_is_told_in_the_learners_terms(capsys):
    exercises.check_fill_budget(_stop_at_first_overflow)
    out = capsys.readouterr().out
    assert "you took 1 document [0] where 3 documents [0, 2, 3] fit" in out, out


WORKSHOP_ORDER = sorted(PRESET)  # 00 to 06: each reads the runs of the ones before it


def test_every_student_copy_runs_to_the_end_on_the_workshop_preset_then_passes_with_the_solutions(tmp_path):
    """As a workshop runs them: 00-06 in order on notebooks/workshop.yaml, each student copy to its
    last cell with every exercise unfilled (each check cell says "not written yet", nothing later
    crashes); then, in the same kernel, the reference solutions and their checks run and all pass.
    A second full run with the solutions in would add nothing the kernel does not already show: no
    cell outside an exercise uses an exercise's function
    (test_exercise_functions_are_not_used_by_the_rest_of_the_notebook)."""
    assert WORKSHOP_ORDER == [p.stem for p in sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))]
    for stem in WORKSHOP_ORDER:
        params = {**PRESET[stem], "run_dir": str(tmp_path / stem)}
        nb = workshop.student_copy(NOTEBOOKS_DIR / f"{stem}.ipynb", params)
        n_cells = len(nb.cells)
        for _, _, solution, check in _exercises(stem):
            nb.cells += [nbformat.v4.new_code_cell(solution.source), check]
        workshop.execute(nb)
        printed = lambda cells: [
            "".join(o.get("text", "") for o in c.get("outputs", [])).strip()
            for c in cells
            if "exercise" in c.metadata.get("tags", [])
            and "solution" not in c.metadata["tags"]
            and "check_" in c.source
        ]
        names = [name for s, name, *_ in EXERCISES if s == stem]
        unfilled, solved = printed(nb.cells[:n_cells]), printed(nb.cells[n_cells:])
        assert [line[: len(f"… {n}: not written yet")] for line, n in zip(unfilled, names, strict=True)] == [
            f"… {n}: not written yet" for n in names
        ], stem
        assert [line[: len(f"✓ {n}: all")] for line, n in zip(solved, names, strict=True)] == [
            f"✓ {n}: all" for n in names
        ], stem
        assert RunLayout(tmp_path / stem).metrics.exists(), f"{stem} did not reach its last cell"


def test_the_solutions_handout_marks_each_solution_under_its_exercise_number():
    nb = nbformat.read(NOTEBOOKS_DIR / "00_quickstart.ipynb", as_version=4)
    n_solutions = sum("solution" in c.metadata.get("tags", []) for c in nb.cells)
    marked = workshop.mark_solutions(nb).cells
    banners = [c.source.split("**")[1] for c in marked if c.source.startswith("**Solution")]
    assert banners == [f"Solution to exercise 0.{i}" for i in range(1, n_solutions + 1)]
    for i, cell in enumerate(marked):
        if "solution" in cell.metadata.get("tags", []):
            assert marked[i - 1].source.startswith("**Solution to exercise")
    key_line = next(c.source for c in marked if c.source.startswith("**Solution to exercise 0.4**"))
    assert key_line.endswith(f"The key line: {exercises.HINTS['0.4'][1][-1]}")
