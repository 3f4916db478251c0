"""Every notebooks/NN_*.ipynb runs under papermill on its smoke parameters and writes metrics.

Smoke parameters live in notebooks/smoke.yaml. As under `make demo`, every notebook's run_dir
is a sibling in one parent folder (later notebooks read earlier ones' outputs from there), and a
notebook's prerequisites (REQUIRES) run first. The checks below assert on the metrics.json each
notebook writes, so a notebook that runs but computes nonsense still fails.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import re
from pathlib import Path

import nbformat
import papermill
import pytest
import yaml

from ssae_kit.claims import interval_over_seeds, verdict_over_seeds
from ssae_kit.intervals import MIN_SEEDS
from ssae_kit.io import (
    ACTS_DIR,
    BEST_SSAE_KEY,
    BEST_STRATEGY_KEY,
    MAIN_SPARSITY_KEY,
    ROWS_KEY,
    SAE_CFG_FILE,
    SAE_WEIGHTS_FILE,
    SSAE_DIRS_KEY,
    RunLayout,
)
from ssae_kit.splits import SubdomainSplit, is_near_duplicate, title_key
from ssae_kit.sweep import load_sweep, sweep_reading, sweep_rows

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
SMOKE = yaml.safe_load((NOTEBOOKS_DIR / "smoke.yaml").read_text()) or {}


def execute(notebook: Path, out: Path, parameters: dict) -> None:
    """Run `notebook` with papermill in the notebooks' folder (as `make demo` does), no progress bar."""
    papermill.execute_notebook(
        str(notebook),
        str(out),
        parameters=parameters,
        cwd=str(NOTEBOOKS_DIR),
        kernel_name="python3",
        progress_bar=False,
    )


def first_error(notebook: Path, parameters: dict, max_code_cells: int = 6) -> Exception:
    """The error a notebook stops with on `parameters`, run in this process as papermill runs it (its
    parameters cell, then the values passed, then its code cells, in the notebooks' folder). Fails if
    the first `max_code_cells` code cells run without one: a bad parameter must stop a notebook in
    its setup, before any work. In process, a case skips a kernel's start-up (about 10 s)."""
    cells = [c.source for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "code"]
    injected = "\n".join(f"{name} = {value!r}" for name, value in parameters.items())
    steps = [("parameters", cells[0]), ("injected parameters", injected)]
    steps += [(f"code cell {i}", source) for i, source in enumerate(cells[1:max_code_cells], 1)]
    namespace: dict = {"__name__": "__main__"}
    with contextlib.chdir(NOTEBOOKS_DIR):
        for where, source in steps:
            try:  # the notebook's own cells, as its kernel would run them
                exec(compile(source, f"{notebook.name}, {where}", "exec"), namespace)  # noqa: S102
            except Exception as err:  # noqa: BLE001 (the notebook's error is what the test reads)
                return err
    pytest.fail(f"{notebook.name} ran its first {max_code_cells} code cells on {parameters} without stopping")


def _precision_interval_ok(r: dict) -> bool:
    """A selection's token precision has an interval in [0, 1] around it, or none below 10 documents."""
    if r["n_docs"] < 10:
        return math.isnan(r["token_precision_low"]) and math.isnan(r["token_precision_high"])
    return 0 <= r["token_precision_low"] <= r["token_precision"] <= r["token_precision_high"] <= 1


def _seed_word(v: dict, a: str) -> str:
    """The word a band over seeds supports (`evals.paired_over_seeds`), or why there is none."""
    if math.isnan(v["low"]):
        return f"too few seeds for an interval ({len(v['per_seed'])} < {MIN_SEEDS})"
    return f"{a} higher" if v["low"] > 0 else f"{a} lower" if v["high"] < 0 else "no clear difference"


def _doc_word(v: dict, a: str, b: str, what: str) -> str:
    """How `Difference.verdict` opens for this interval: a side, no clear difference, or too few documents."""
    if math.isnan(v["low"]):
        return f"{what} of {a} minus {b}: "
    return f"{a} has" if v["low"] > 0 or v["high"] < 0 else "No clear difference"


def _check_00_quickstart(m: dict, params: dict) -> None:
    assert m["model"] == "smollm2-135m" and m["d_model"] == 576 and m["layer"] == 6
    assert m["n_tokens"] == params["max_tokens"]
    assert 0 < m["norm_mean"] <= m["norm_max"] < 12 * m["norm_mean"]  # sinks > 10x median dropped
    assert m["n_outliers_dropped"] >= 0
    toy = m["toy"]  # the primer
    assert toy["n_features"] == 32 and toy["d"] == 8 and 1.9 < toy["true_l0"] < 2.1
    assert sorted(toy["saes"]) == sorted(
        str(c) for c in params.get("toy_sparsity_coefficients", [3.0, 0.3, 1.0])
    )
    assert all(0 <= t["recovered"] <= 32 and t["l0"] > 0 for t in toy["saes"].values())
    g = m["gsae_metrics"]  # the shipped GSAE spliced into the embedded model
    assert g["ce_clean"] < g["ce_sae"] < g["ce_mean"] < g["ce_zero"] and 0.8 < g["ce_loss_recovered"] < 1
    assert g["ce_loss_recovered"] == pytest.approx(
        (g["ce_zero"] - g["ce_sae"]) / (g["ce_zero"] - g["ce_clean"])
    )
    # norm_scale = sqrt(d / E||x||^2) <= sqrt(d) / E||x|| (Jensen), equal only if every norm were the same
    assert 0.5 * 576**0.5 / m["norm_mean"] < m["norm_scale"] <= 576**0.5 / m["norm_mean"] * (1 + 1e-6)


def _check_01_retrieval(m: dict, params: dict) -> None:
    run = RunLayout(Path(params["run_dir"]))
    for strategy in ("dense", "bm25", "dense_tracin", "bm25_tracin", "random", "none", "seed_only"):
        assert run.selection(strategy).exists(), strategy
    assert all(run.split(part).exists() for part in ("pool", "seeds", "heldout", "ood"))
    split = SubdomainSplit.load(run.run_dir)
    assert split.near_duplicates == m["near_duplicates"] and m["pool_size"] == len(split.pool)
    by_title: dict[str, list] = {}
    for d in split.pool + split.seeds + split.heldout + split.ood:
        by_title.setdefault(title_key(d), []).append(d)
    for same in by_title.values():
        assert not any(is_near_duplicate(a, b) for a, b in itertools.combinations(same, 2))
    at = {(r["strategy"], r["budget"]): r for r in m["rows"]}
    budgets, main = params["budgets"], params["main_budget"]
    for s in ("dense_tracin", "bm25_tracin"):  # TracIn runs at the main budget only, with an interval
        assert [b for t, b in at if t == s] == [main], s
        r = at[(s, main)]
        assert _precision_interval_ok(r), s
        assert 0 < r["tokens_used"] <= main and r["n_docs"] > 0, s
    for b in budgets:  # stable across seeds: both retrievers beat the random control
        assert at[("dense", b)]["token_precision"] > at[("random", b)]["token_precision"]
        assert at[("bm25", b)]["token_precision"] > at[("random", b)]["token_precision"]
        for s in ("dense", "bm25", "random"):
            r = at[(s, b)]
            assert _precision_interval_ok(r), (s, b)
        assert at[("dense", b)]["tokens_used"] <= b
    assert at[("dense", budgets[-1])]["recall"] > at[("dense", budgets[0])]["recall"]
    assert m["dense_beats_random_every_split"] is True
    assert m["dense_beats_bm25_every_split"] in (True, False)  # reported, not asserted: not stable here
    assert set(m["stability"]) == set(params["stability_strategies"])
    assert all(len(v) == len(params["split_seeds"]) for v in m["stability"].values())
    assert m["stability"]["dense"][0] == at[("dense", main)]["token_precision"]  # split 0 is the main split
    assert "dense_tracin" in params["stability_strategies"]  # the smoke run checks TracIn over splits
    v = m["stability_differences"]["dense_tracin vs dense"]
    assert v["per_seed"] == pytest.approx(
        [x - y for x, y in zip(m["stability"]["dense_tracin"], m["stability"]["dense"])]
    )
    assert (v["mean"], v["low"], v["high"]) == pytest.approx(interval_over_seeds(v["per_seed"]), nan_ok=True)
    assert v["verdict"] == _seed_word(v, "dense_tracin")
    for name, v in m["verdicts"].items():  # each verdict is read off its interval
        a, b = name.split(" vs ")
        assert v["sentence"].startswith(_doc_word(v, a, b, "token precision")), name
    heldout = [json.loads(line)["doc_id"] for line in run.split("heldout").read_text().splitlines() if line]
    committed = json.loads((NOTEBOOKS_DIR.parent / "data" / "splits" / "bbc-news.json").read_text())[
        "heldout"
    ]
    assert heldout and set(heldout) <= set(committed)  # test text from the committed held-out split


def _check_02_train_ssae(m: dict, params: dict) -> None:
    run_dir = Path(params["run_dir"])
    strategies = {"dense", "bm25", "dense_tracin", "bm25_tracin", "random", "none", "seed_only"}
    assert {r["strategy"] for r in m[ROWS_KEY]} == strategies
    main, others = params["ssae_sparsity_coefficients"][0], params["ssae_sparsity_coefficients"][1:]
    seeds = params["seeds"]
    assert len(m[ROWS_KEY]) == (len(strategies) * 2 + len(others) * 2) * len(
        seeds
    )  # main: both texts; others: dense, none in-domain; per seed
    ce_vs_gsae = {
        (r["strategy"], r["text"]): r["ce_vs_gsae"]
        for r in m[ROWS_KEY]
        if r["sparsity_coefficient"] == main and r["seed"] == seeds[0]
    }
    for (s, text), value in ce_vs_gsae.items():  # the in/out-of-domain table, with bootstrap intervals
        d = m["ce_vs_gsae"][s][text]
        assert d["estimate"] == pytest.approx(value, abs=1e-4), s
        assert (math.isnan(d["low"]) and math.isnan(d["high"])) or d["low"] <= d["estimate"] <= d["high"], s
    for base in ("dense", "bm25"):  # each TracIn selection is compared with the retrieval it reranks
        for text in ("in-domain", "out-of-domain"):
            assert f"{base}_tracin vs {base}, {text}" in m["verdicts"]
    assert len(seeds) > 1  # the smoke run checks the comparisons over training seeds
    main_ce = {
        (r["strategy"], r["text"], r["seed"]): r["ce_sae"]
        for r in m[ROWS_KEY]
        if r["sparsity_coefficient"] == main
    }
    pairs = [(s, "GSAE") for s in strategies] + [("dense_tracin", "dense"), ("bm25_tracin", "bm25")]
    assert set(m["over_seeds"]) == {f"{a} vs {b}" for a, b in pairs}
    for a, b in pairs:
        for text, v in m["over_seeds"][f"{a} vs {b}"].items():  # the per-seed differences of the rows
            other = [m["gsae"][text]["ce_sae"] if b == "GSAE" else main_ce[(b, text, s)] for s in seeds]
            assert v["per_seed"] == pytest.approx([main_ce[(a, text, s)] - o for s, o in zip(seeds, other)])
            assert (v["mean"], v["low"], v["high"]) == pytest.approx(
                interval_over_seeds(v["per_seed"]), nan_ok=True
            )
            assert v["verdict"] == _seed_word(v, a), (a, b, text)
    for r in m[ROWS_KEY]:
        assert 0 <= r["l0"] <= params["d_sae"] and r["ce_sae"] > 0 and 0 <= r["dead_fraction"] <= 1
        assert r["ce_vs_gsae"] == pytest.approx(r["ce_sae"] - m["gsae"][r["text"]]["ce_sae"])
        assert isinstance(r["health_warnings"], list)
    for text in ("in-domain", "out-of-domain"):
        g = m["gsae"][text]
        assert g["ce_clean"] < g["ce_zero"] and g["ce_clean"] <= g["ce_sae"] + 1e-6
    for name, v in m["verdicts"].items():  # each sentence is read off its interval
        a, b = name.split(",")[0].split(" vs ")
        assert v["sentence"].startswith(_doc_word(v, a, b, "spliced CE")), name
        assert math.isnan(v["low"]) or v["low"] <= v["estimate"] <= v["high"], name
    assert {"dense vs none, in-domain", "dense vs bm25, in-domain"} <= set(m["verdicts"]) and m[
        MAIN_SPARSITY_KEY
    ] == main
    for name, path in m[SSAE_DIRS_KEY].items():
        assert (Path(path) / SAE_CFG_FILE).exists() and (Path(path) / SAE_WEIGHTS_FILE).exists(), name
    sweep = m["rarity_sweep"]  # section 8 draws the shipped sweep and reads the pre-registered claims off it
    assert sweep["source"] == "shipped" and sweep["rows"] == json.loads(json.dumps(sweep_rows(load_sweep())))
    assert sweep["reading"] == sweep_reading(sweep["rows"]) and (run_dir / "rarity_sweep.png").exists()
    executed = nbformat.read(run_dir.parent / "02_train_ssae.ipynb", as_version=4)
    shown = "".join(
        o.get("data", {}).get("text/markdown", "")
        for c in executed.cells
        if c.cell_type == "code"
        for o in c.outputs
    )
    assert all(sentence in shown for sentence in sweep["reading"]), (
        "the notebook does not show the sweep's reading"
    )
    assert (run_dir / "pareto_in_domain.png").exists() and m[BEST_STRATEGY_KEY] in strategies
    best = Path(m[BEST_SSAE_KEY])  # notebook 04 shows this one: the best strategy's own SSAE
    assert best.name.startswith(m[BEST_STRATEGY_KEY] + "_sparsity") and str(best) in m[SSAE_DIRS_KEY].values()


def _check_03_term_vs_erm(m: dict, params: dict) -> None:
    run_dir = Path(params["run_dir"])
    names = {"GSAE", "ERM"} | {f"TERM t={t:g}" for t in params["tilts"]}
    assert set(m["summary"]) == names and m["tested_term"] in names
    for name, s in m["summary"].items():
        assert 0 <= s["tail_coverage"] <= 1 and s["ce_sae"] > 0 and s["max_error"] >= 0, name
        assert 0 <= s["mean_abs_cosine"] <= 1 and s["mean_entropy"] >= 0, name
    best, erm = m["summary"][m["tested_term"]], m["summary"]["ERM"]
    assert (
        m["tested_term"] == f"TERM t={params['term_tilt']:g}"
    )  # fixed in advance, not picked on the test text
    cover = m["coverage_difference"]
    assert cover["estimate"] == pytest.approx(best["tail_coverage"] - erm["tail_coverage"])
    assert m["term_covers_more"] == (cover["low"] > 0)  # the verdict is read off the interval
    assert m["term_ce_cost"] == pytest.approx(best["ce_sae"] - erm["ce_sae"])
    assert len(m["pareto"]) == 2 * len(params["pareto_sparsity_coefficients"])
    claim = m["matched_l0_claim"]  # pre-registered: TERM covers more tail types than ERM at matched L0
    low, high = claim["l0_window"]
    if claim["pair"] is None:
        assert "the claim is not tested here" in claim["sentence"]
    else:
        c_erm, c_term = claim["pair"]
        l0 = {(p["strategy"], p["sparsity_coefficient"]): p["l0"] for p in m["pareto"]}
        assert low <= l0[("ERM", c_erm)] <= high and low <= l0[(m["tested_term"], c_term)] <= high
        assert claim["holds"] == (claim["low"] > 0) and claim["low"] <= claim["estimate"] <= claim["high"]
        if claim["holds"]:
            assert claim["sentence"].endswith("the claim holds here.")
        else:  # what was measured, then a question for the class
            assert "does not hold here. For discussion: why might TERM" in claim["sentence"]
    for fig in (
        "tail_coverage",
        "tail_coverage_cumulative",
        "error_by_rank",
        "token_entropy",
        "max_activation",
        "feature_counts",
        "log_ratio_counts",
        "decoder_cosine",
        "pareto_term_vs_erm",
    ):
        assert (run_dir / f"{fig}.png").exists(), fig


def _check_04_visualise(m: dict, params: dict) -> None:
    run_dir = Path(params["run_dir"])
    assert 0 <= m["n_ssae_only"] <= m["n_latents"] and -1 <= m["median_best_cosine"] <= 1
    assert len(m["dark_matter"]) <= params["n_dark"] and len(m["saes"]) >= 2
    assert (run_dir / "decoder_map.png").exists()
    claim = m["dark_matter_claim"]  # pre-registered: more SSAE-only latents fire on subdomain text
    if math.isnan(claim["low"]):  # too few windows for an interval: no verdict either way
        assert not claim["holds"] and claim["sentence"].endswith("the claim is not tested here.")
    else:
        assert claim["low"] <= claim["estimate"] <= claim["high"] and claim["holds"] == (claim["low"] > 0)
        if claim["holds"]:
            assert claim["sentence"].endswith("the claim holds here.")
        else:  # what was measured, then a question for the class
            assert "does not hold here. For discussion: why might SSAE-only latents" in claim["sentence"]
    executed = nbformat.read(run_dir.parent / "04_visualise.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert claim["sentence"] in printed, "the notebook does not show the claim's reading"
    browser_cell = next(c for c in executed.cells if c.cell_type == "code" and "feature_browser(" in c.source)
    bundles = [o.get("data", {}) for o in browser_cell.outputs]
    assert any("feature-dashboard" in b.get("text/html", "") for b in bundles), (
        "the browser left no HTML fallback"
    )
    assert any("application/vnd.jupyter.widget-view+json" in b for b in bundles), (
        "the browser is not a widget"
    )


def _check_05_debias(m: dict, params: dict) -> None:
    rows = {"Original", "GSAE SHIFT", "GSAE SHIFT + retrain", "SSAE SHIFT", "SSAE SHIFT + retrain"}
    rows |= {"Token deletion + retrain", "Oracle", "1/8 GSAE SHIFT", "1/8 SSAE SHIFT"}
    assert set(m["table"]) == rows and len(m["per_seed"]) == len(params["seeds"])
    assert m["probe_layer"] > m["layer"] and m["n_per_group"]["b"] == params["n_b_per_group"]
    for name, cells in m["table"].items():
        for metric, (mean, low, high) in cells.items():
            assert 0 <= low <= mean + 1e-9 and mean <= high + 1e-9 and high <= 1, (name, metric)
        assert cells["worst_group"][0] <= cells["profession"][0] + 1e-9, name
    for claim, d in m["claims"].items():  # each verdict is read off its interval
        assert d["holds"] == (d["low"] > 0) and d["low"] <= d["estimate"] + 1e-9 <= d["high"] + 2e-9, claim
        assert d["n_positive"] == sum(x > 0 for x in d["per_seed"]) and d["n_seeds"] == len(params["seeds"])
    diffs = [r["SSAE SHIFT"]["worst_group"] - r["GSAE SHIFT"]["worst_group"] for r in m["per_seed"]]
    assert m["ssae_minus_gsae_worst_group"] == pytest.approx(diffs)  # the conclusion reads the numbers
    for name, curve in m["curves"].items():  # the number ablated on B is read off the curve on A
        counts = [c["n_ablated"] for c in curve]
        assert counts[0] == 0 and m["chosen"][name] in counts, name
        assert counts == sorted(set(counts)), name  # one point per distinct number ablated
    assert all(len(v) == params["n_check"] for v in m["attribution_checks"].values())
    for fig in ("debias_accuracies", "ablation_curve"):
        assert (Path(params["run_dir"]) / f"{fig}.png").exists(), fig


def _check_06_taxonomy(m: dict, params: dict) -> None:
    p1, p2, n_leaves = m["part1"], m["part2"], params["n_leaves"]
    methods = {"source-only", "DANN", "TSDA", "TSDA-flat", "oracle"}
    assert set(p1["table"]) == methods and len(p1["per_seed"]) == len(params["seeds"])
    for seed, res in p1["per_seed"].items():
        for method, r in res.items():
            assert len(r["per_domain"]) == n_leaves and all(0 <= a <= 1 for a in r["per_domain"]), (
                seed,
                method,
            )
            assert r["target"] == pytest.approx(
                sum(r["per_domain"][params["n_sources"] :]) / (n_leaves - params["n_sources"])
            )
    per_seed = list(p1["per_seed"].values())
    assert p1["flat_gap"] == pytest.approx(
        [abs(r["TSDA-flat"]["target"] - r["DANN"]["target"]) for r in per_seed]
    )
    assert p1["tsda_minus_dann"] == pytest.approx(
        [r["TSDA"]["target"] - r["DANN"]["target"] for r in per_seed]
    )
    assert p1["tsda_vs_dann"] == verdict_over_seeds(p1["tsda_minus_dann"])  # the conclusion reads the numbers
    assert p1["table"]["oracle"][0] > p1["table"]["source-only"][0]  # target labels help on mirrored domains
    probe = p2["probe"]
    assert set(probe) == {
        "residual",
        "GSAE",
        "SSAE-05 (professor, nurse)",
        f"SSAE ({params.get('ssae_subtree', 'health')})",
    }
    for name, cells in probe.items():
        assert cells["flat"]["rho"] is None and {"taxonomy", "shuffled"} <= set(cells), name
        for target, c in cells.items():
            assert 0 <= c["stress"][0] <= 1 and (c["rho"] is None or -1 <= c["rho"][0] <= 1), (name, target)
    # the residual stream keeps the profession tree beyond what the probe fits to a shuffled one
    assert probe["residual"]["taxonomy"]["rho"][0] > probe["residual"]["shuffled"]["rho"][0] + 0.2
    for target, diffs in p2["ssae_minus_gsae_rho"].items():
        assert len(diffs) == len(params["probe_seeds"]) and p2["ssae_vs_gsae"][target] == verdict_over_seeds(
            diffs
        )
    for fig in ("dt_data", "dt_per_leaf", "taxonomy_probe", "taxonomist_map"):
        assert (Path(params["run_dir"]) / f"{fig}.png").exists(), fig


CHECKS = {
    "00_quickstart": _check_00_quickstart,
    "01_retrieval": _check_01_retrieval,
    "02_train_ssae": _check_02_train_ssae,
    "03_term_vs_erm": _check_03_term_vs_erm,
    "04_visualise": _check_04_visualise,
    "05_debias_bias_in_bios": _check_05_debias,
    "06_taxonomy_domain_adaptation": _check_06_taxonomy,
}


def test_notebooks_exist_and_each_has_smoke_parameters_and_checks():
    assert NOTEBOOKS, "no notebooks found"
    for nb in NOTEBOOKS:
        assert nb.stem in SMOKE, f"add smoke parameters for {nb.stem} to notebooks/smoke.yaml"
        assert nb.stem in CHECKS, f"add metric checks for {nb.stem} to tests/test_notebooks.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_stripped_with_a_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    assert "parameters" in nb.cells[0].metadata.get("tags", []), "first cell must be tagged 'parameters'"
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"cells {dirty} have outputs: strip them before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_figure_is_followed_by_a_markdown_reading(path):
    nb = nbformat.read(path, as_version=4)
    unread = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code"
        and "save_figure(" in c.source
        and (i + 1 == len(nb.cells) or nb.cells[i + 1].cell_type != "markdown")
    ]
    assert not unread, f"cells {unread} draw a figure with no markdown cell after it saying what to see"


REQUIRES: dict[str, list[str]] = {
    "02_train_ssae": ["01_retrieval"],
    "03_term_vs_erm": ["02_train_ssae"],
    "04_visualise": ["03_term_vs_erm"],
    "06_taxonomy_domain_adaptation": ["05_debias_bias_in_bios"],
}


@pytest.fixture(scope="session")
def run_notebook(tmp_path_factory):
    """Runs a notebook (after its prerequisites) once per session; returns (metrics, params)."""
    root = tmp_path_factory.mktemp("runs")
    done: dict[str, tuple[dict, dict]] = {}

    def run(stem: str) -> tuple[dict, dict]:
        if stem not in done:
            for dep in REQUIRES.get(stem, []):
                run(dep)
            params = {**SMOKE.get(stem, {}), "run_dir": str(root / stem)}
            execute(NOTEBOOKS_DIR / f"{stem}.ipynb", root / f"{stem}.ipynb", params)
            done[stem] = (RunLayout(root / stem).read_metrics(), params)
        return done[stem]

    return run


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_smoke_parameters(path, run_notebook):
    metrics, params = run_notebook(path.stem)
    CHECKS[path.stem](metrics, params)


def _bad_gsae(tmp_path: Path, d_in: int, layer: int) -> str:
    from ssae_kit.sae import SAE, SAEConfig

    return str(SAE(SAEConfig(d_in=d_in, d_sae=8, layer=layer)).save(tmp_path / f"gsae_{d_in}_{layer}"))


@pytest.mark.parametrize(
    "change, expected",
    [
        (dict(strategies=["dense", "tfidf_tracin"]), r"Unknown strategies \['tfidf_tracin'\]"),
        (dict(gsae=""), r"\['dense_tracin', 'bm25_tracin'\] rerank with a GSAE's loss: set gsae"),
        (dict(gsae="no-such-release-or-folder"), "neither a folder nor 'release:sae_id'"),
        (
            dict(strategies=["dense", "bm25"], stability_strategies=["dense", "bm25_tracin"]),
            r"stability_strategies \['bm25_tracin'\] must also be in strategies",
        ),
    ],
    ids=["unknown strategy", "TracIn without a GSAE", "mistyped GSAE", "stability strategy not run"],
)
def test_bad_parameters_stop_notebook_01_in_its_setup_cell(change, expected, tmp_path):
    params = {**SMOKE["01_retrieval"], "run_dir": str(tmp_path / "01"), **change}
    err = first_error(NOTEBOOKS_DIR / "01_retrieval.ipynb", params)
    assert re.search(expected, str(err)), err
    assert not (tmp_path / "01").exists(), "the run folder was made before the inputs were checked"


def test_notebook_01_checks_the_gsae_before_writing_any_selection(tmp_path):
    run = tmp_path / "01"
    with pytest.raises(
        papermill.PapermillExecutionError, match="d_in=16 but these activations have d_model=576"
    ):
        execute(
            NOTEBOOKS_DIR / "01_retrieval.ipynb",
            tmp_path / "out.ipynb",
            {**SMOKE["01_retrieval"], "run_dir": str(run), "gsae": _bad_gsae(tmp_path, 16, 6)},
        )
    pattern = RunLayout(run).selection("*")
    assert not list(run.glob(pattern.name)), "a selection was written before the GSAE was checked"


@pytest.mark.parametrize(
    "case",
    [
        "unknown strategy",
        "notebook 01 not run",
        "GSAE of another width",
        "GSAE of another layer",
        "mistyped GSAE",
        "negative ssae_sparsity_coefficients",
        "negative lr",
        "ctx_len 0",
    ],
)
def test_bad_parameters_stop_notebook_02_early_naming_the_fix(case, tmp_path, run_notebook):
    _, retrieval = run_notebook("01_retrieval")
    params = {
        **SMOKE["02_train_ssae"],
        "run_dir": str(tmp_path / "02"),
        "retrieval_dir": retrieval["run_dir"],
    }
    params.update(
        {
            "unknown strategy": dict(strategies=["dense", "tfidf"]),
            "notebook 01 not run": dict(retrieval_dir=str(tmp_path / "nothing_here")),
            "GSAE of another width": dict(gsae=_bad_gsae(tmp_path, 16, 15)),
            "GSAE of another layer": dict(gsae=_bad_gsae(tmp_path, 576, 3), layer=6),
            "mistyped GSAE": dict(gsae=str(tmp_path / "no_such_gsae")),
            "negative ssae_sparsity_coefficients": dict(ssae_sparsity_coefficients=[-1.0]),
            "negative lr": dict(lr=-1.0),
            "ctx_len 0": dict(ctx_len=0),
        }[case]
    )
    expected = {
        "unknown strategy": "Unknown strategies \\['tfidf'\\]",
        "notebook 01 not run": "run notebook 01 first",
        "GSAE of another width": "d_in=16.*use an SAE of this model",
        "GSAE of another layer": "trained on layer 3, not 6: pass layer=3",
        "mistyped GSAE": "neither a folder nor 'release:sae_id'",
        "negative ssae_sparsity_coefficients": "sparsity_coefficient=-1.0 must be a finite number >= 0",
        "negative lr": "lr=-1.0 must be a positive finite number",
        "ctx_len 0": "ctx_len=0 must be a whole number >= 2",
    }[case]
    err = first_error(NOTEBOOKS_DIR / "02_train_ssae.ipynb", params)
    assert re.search(expected, str(err)), err
    assert not (tmp_path / "02" / ACTS_DIR).exists(), "work started before the inputs were checked"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_papermill_reads_every_parameter(path):
    """`papermill --help-notebook` and its type checks see each parameter (a quote or '=' in a comment breaks them)."""
    import ast

    cell = nbformat.read(path, as_version=4).cells[0].source
    assigned = [t.id for node in ast.parse(cell).body if isinstance(node, ast.Assign) for t in node.targets]
    inspected = papermill.inspect_notebook(str(path))
    assert list(inspected) == assigned
    assert all(p["help"] for p in inspected.values()), "every parameter needs a comment saying what it is"


@pytest.mark.parametrize(
    "case", ["unknown subtree", "leaf without bios", "notebook 05 not run", "SAE of another layer"]
)
def test_bad_parameters_stop_notebook_06_early_naming_the_fix(case, tmp_path, run_notebook):
    _, debias = run_notebook("05_debias_bias_in_bios")
    params = {
        **SMOKE["06_taxonomy_domain_adaptation"],
        "run_dir": str(tmp_path / "06"),
        **{
            "unknown subtree": dict(ssae_subtree="law"),
            "leaf without bios": dict(
                taxonomy={"root": [{"health": ["nurse", "surgeon"]}, {"space": ["astronaut"]}]}
            ),
            "notebook 05 not run": dict(debias_dir=str(tmp_path / "nothing_here")),
            "SAE of another layer": dict(
                debias_dir=debias["run_dir"], saes={"other": _bad_gsae(tmp_path, 576, 3)}
            ),
        }[case],
    }
    expected = {
        "unknown subtree": "ssae_subtree='law' is not a subtree.*choose from",
        "leaf without bios": r"Leaves \['astronaut'\] have no synthetic bios",
        "notebook 05 not run": "run notebook 05 first",
        "SAE of another layer": "trained on layer 3, not 6: pass layer=3",
    }[case]
    err = first_error(NOTEBOOKS_DIR / "06_taxonomy_domain_adaptation.ipynb", params)
    assert re.search(expected, str(err)), err
    assert not (tmp_path / "06").exists(), "work started before the inputs were checked"


def test_notebook_06_probes_user_features_against_a_user_taxonomy(tmp_path):
    """Own features (.npz) and own tree (a nested dict: papermill passes JSON, so no tuples): no model, no SAE."""
    import numpy as np

    rng = np.random.default_rng(0)
    centres = {"a1": 0.0, "a2": 1.0, "b1": 6.0, "b2": 7.0}
    leaves = [leaf for leaf in centres for _ in range(8)]
    features = np.array([[centres[leaf]] * 3 for leaf in leaves]) + 0.1 * rng.standard_normal(
        (len(leaves), 3)
    )
    np.savez(tmp_path / "mine.npz", features=features, leaves=np.array(leaves))
    params = {
        **SMOKE["06_taxonomy_domain_adaptation"],
        "run_dir": str(tmp_path / "06"),
        "features_file": str(tmp_path / "mine.npz"),
        "taxonomy": {"root": [{"a": ["a1", "a2"]}, {"b": ["b1", "b2"]}]},
        "debias_dir": str(tmp_path / "no_05_needed"),
    }
    execute(NOTEBOOKS_DIR / "06_taxonomy_domain_adaptation.ipynb", tmp_path / "out.ipynb", params)
    m = RunLayout(tmp_path / "06").read_metrics()["part2"]
    assert list(m["probe"]) == ["features"] and m["n_texts"] == len(leaves) and m["ssae_minus_gsae_rho"] == {}
    assert m["probe"]["features"]["taxonomy"]["rho"][0] > 0.5  # a1-a2 and b1-b2 close, a-b far: found


@pytest.mark.parametrize(
    "case", ["unknown source", "no seeds", "mistyped GSAE", "probe before the SAE layer", "unknown SSAE data"]
)
def test_bad_parameters_stop_notebook_05_before_any_work(case, tmp_path):
    params = {
        **SMOKE["05_debias_bias_in_bios"],
        "run_dir": str(tmp_path / "05"),
        **{
            "unknown source": dict(source="bios.csv"),
            "no seeds": dict(seeds=[]),
            "mistyped GSAE": dict(gsae="ssae-kit:no-such-gsae"),
            "probe before the SAE layer": dict(probe_layer=5),
            "unknown SSAE data": dict(ssae_data="wiki"),
        }[case],
    }
    expected = {
        "unknown source": "source='bios.csv' is not 'synthetic'",
        "no seeds": "seeds is empty",
        "mistyped GSAE": "ships no SAE 'no-such-gsae'",
        "probe before the SAE layer": "probe_layer=5 is before layer=6",
        "unknown SSAE data": "ssae_data='wiki': use 'bios' or 'retrieval'",
    }[case]
    err = first_error(NOTEBOOKS_DIR / "05_debias_bias_in_bios.ipynb", params)
    assert re.search(expected, str(err)), err
    assert not (tmp_path / "05").exists(), "work started before the inputs were checked"


def test_notebook_05_runs_unchanged_on_a_local_labhc_file_and_fine_tunes_on_its_unused_bios(tmp_path):
    """The real-data path offline: a LabHC-format .jsonl (text, profession code, gender code) in place
    of the synthetic bios; the SSAE is fine-tuned on the file's bios that no split uses."""
    from ssae_kit.bios import PROFESSION_CODES, synthetic_bios

    bios = synthetic_bios(600, seed=5, professions=["professor", "nurse", "attorney"])
    rows = [
        {
            "hard_text": b.text,
            "profession": PROFESSION_CODES[b.profession],
            "gender": int(b.gender == "female"),
        }
        for b in bios
    ]
    source = tmp_path / "labhc.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    params = {**SMOKE["05_debias_bias_in_bios"], "source": str(source), "run_dir": str(tmp_path / "05")}
    params["ssae_bios"] = 10_000  # more than the file has left over: synthetic bios would give all 10,000
    execute(NOTEBOOKS_DIR / "05_debias_bias_in_bios.ipynb", tmp_path / "out.ipynb", params)
    m = RunLayout(tmp_path / "05").read_metrics()
    _check_05_debias(m, params)
    assert m["source"] == str(source) and m["ssae_data"]["kind"] == "bios"
    assert 0 < m["ssae_data"]["documents"] < len(rows), "the SSAE's bios are the file's unused ones"
    printed = "".join(
        o.get("text", "")
        for c in nbformat.read(tmp_path / "out.ipynb", as_version=4).cells
        for o in c.get("outputs", [])
    )
    assert f"(bios, {source})" in printed, "the notebook says which bios the SSAE is fine-tuned on"
