"""Each notebook's parameter dataclass: it declares exactly the parameters cell's names, accepts the
defaults and every preset, resolves the run folders, and refuses a bad value naming it and the fix."""

from __future__ import annotations

import ast
import re
from dataclasses import fields
from pathlib import Path

import nbformat
import pytest
import yaml

from ssae_kit.io import assigned_names
from ssae_kit.params import (
    DebiasParams,
    QuickstartParams,
    RetrievalParams,
    TaxonomyParams,
    TermParams,
    TrainParams,
    VisualiseParams,
)
from ssae_kit.taxonomy import leaf_paths, subtrees

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PARAMS = {
    "00_quickstart": QuickstartParams,
    "01_retrieval": RetrievalParams,
    "02_train_ssae": TrainParams,
    "03_term_vs_erm": TermParams,
    "04_visualise": VisualiseParams,
    "05_debias_bias_in_bios": DebiasParams,
    "06_taxonomy_domain_adaptation": TaxonomyParams,
}


def _defaults(stem: str) -> dict:
    """The notebook's parameters cell run on its own: its defaults by name."""
    nb = nbformat.read(NOTEBOOKS / f"{stem}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    namespace: dict = {}
    exec(cell.source, namespace)  # noqa: S102 (the notebook's own cell of plain assignments)
    return {k: v for k, v in namespace.items() if k in assigned_names(cell.source)}


def _with(stem: str, **change):
    return PARAMS[stem].from_namespace({**_defaults(stem), **change})


def test_every_notebook_has_a_dataclass_declaring_exactly_its_parameters():
    assert sorted(PARAMS) == sorted(p.stem for p in NOTEBOOKS.glob("0*.ipynb"))
    for stem, cls in PARAMS.items():
        declared = {f.name for f in fields(cls) if f.init}
        assert declared == set(_defaults(stem)), stem


@pytest.mark.parametrize("preset", ["defaults", "smoke", "workshop"])
def test_defaults_and_presets_pass(preset):
    presets = {} if preset == "defaults" else yaml.safe_load((NOTEBOOKS / f"{preset}.yaml").read_text())
    for stem in PARAMS:
        params = _with(stem, **presets.get(stem, {}))
        assert isinstance(params.run_dir, Path)


def test_a_parameter_missing_from_the_namespace_is_named():
    namespace = {k: v for k, v in _defaults("03_term_vs_erm").items() if k != "term_tilt"}
    with pytest.raises(NameError, match=r"\['term_tilt'\] are not defined"):
        TermParams.from_namespace(namespace)


def test_extra_names_in_the_namespace_are_ignored():
    params = RetrievalParams.from_namespace({**_defaults("01_retrieval"), "In": [], "np": object()})
    assert params.main_budget == 50_000


def test_empty_folders_resolve_next_to_run_dir_and_given_ones_are_kept(tmp_path):
    run = tmp_path / "runs" / "04_visualise"
    params = _with("04_visualise", run_dir=str(run), term_dir=str(tmp_path / "mine"))
    assert params.run_dir == run
    assert params.train_dir == tmp_path / "runs" / "02_train_ssae"
    assert params.retrieval_dir == tmp_path / "runs" / "01_retrieval"
    assert params.term_dir == tmp_path / "mine"
    assert _with("02_train_ssae", run_dir=str(run)).retrieval_dir == tmp_path / "runs" / "01_retrieval"
    assert _with("03_term_vs_erm", run_dir=str(run)).train_dir == tmp_path / "runs" / "02_train_ssae"
    assert _with("06_taxonomy_domain_adaptation", run_dir=str(run)).debias_dir == (
        tmp_path / "runs" / "05_debias_bias_in_bios"
    )


@pytest.mark.parametrize(
    "stem, change, names",
    [
        ("01_retrieval", {"strategies": ["dense", "desne"]}, ["desne", "choose from"]),
        ("01_retrieval", {"strategies": ["dense_tracin", "dense"], "gsae": ""}, ["set gsae"]),
        ("01_retrieval", {"main_budget": 7}, ["main_budget=7", "budgets="]),
        (
            "01_retrieval",
            {"stability_strategies": ["bm25"], "strategies": ["dense"]},
            ["stability_strategies"],
        ),
        ("01_retrieval", {"combine": "median"}, ["combine='median'"]),
        ("02_train_ssae", {"pareto_strategies": ["nope"]}, ["nope"]),
        ("02_train_ssae", {"seeds": []}, ["seeds is empty"]),
        ("02_train_ssae", {"sweep": "recompte"}, ["sweep='recompte'", "recompute"]),
        ("02_train_ssae", {"ssae_sparsity_coefficients": []}, ["sparsity coefficients is empty"]),
        ("03_term_vs_erm", {"term_tilt": 3.0}, ["term_tilt=3.0", "tilts="]),
        ("03_term_vs_erm", {"l0_window": [140, 85]}, ["l0_window"]),
        ("03_term_vs_erm", {"pareto_tokens": 0}, ["pareto_tokens=0"]),
        ("04_visualise", {"match_threshold": 1.5}, ["match_threshold=1.5"]),
        ("05_debias_bias_in_bios", {"probe_layer": 3}, ["probe_layer=3", "layer=6"]),
        ("05_debias_bias_in_bios", {"attribution": "shap"}, ["attribution='shap'"]),
        ("05_debias_bias_in_bios", {"source": "no/such/bios.parquet"}, ["source='no/such/bios.parquet'"]),
        ("05_debias_bias_in_bios", {"ssae_data": "web"}, ["ssae_data='web'"]),
        ("06_taxonomy_domain_adaptation", {"ssae_subtree": "sport"}, ["ssae_subtree='sport'", "health"]),
        ("06_taxonomy_domain_adaptation", {"taxonomy": {"a": ["wizard", "nurse"]}}, ["wizard", "texts_file"]),
        ("00_quickstart", {"toy_sparsity_coefficients": []}, ["toy_sparsity_coefficients"]),
    ],
)
def test_a_bad_value_is_refused_naming_it(stem, change, names):
    with pytest.raises(ValueError) as error:
        _with(stem, **change)
    for name in names:
        assert name in str(error.value)


@pytest.mark.parametrize(
    "stem, change",
    [
        ("01_retrieval", {"budgets": "50000"}),
        ("02_train_ssae", {"seeds": [0.5]}),
        ("03_term_vs_erm", {"ssae_tokens": 1e5}),
        ("05_debias_bias_in_bios", {"force_spurious": 12}),
        ("00_quickstart", {"layer": True}),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_naming_it(stem, change):
    ((name, value),) = change.items()
    with pytest.raises(TypeError, match=re.escape(f"{name}={value!r}")):
        _with(stem, **change)


def test_an_int_is_a_float_but_not_the_other_way():
    assert _with("02_train_ssae", lr=1).lr == 1
    assert _with("06_taxonomy_domain_adaptation", theta_max=3).theta_max == 3


def test_taxonomy_is_parsed_once_and_the_shift_config_follows_the_parameters():
    params = _with(
        "06_taxonomy_domain_adaptation",
        taxonomy={"all": [{"health": ["nurse", "physician"]}, {"law": ["attorney"]}]},
    )
    assert set(leaf_paths(params.tree)) == {"nurse", "physician", "attorney"}
    assert set(subtrees(params.tree)) >= {"health", "law"}
    cfg = _with("05_debias_bias_in_bios", top_n=7, force_keep=[3]).shift_config()
    assert (cfg.top_n, cfg.force_keep) == (7, (3,))


def test_no_notebook_reassigns_a_parameter_after_its_parameters_cell():
    """A later `run_dir = Path(run_dir)` would make the value a reader sees differ from the one
    passed; resolved values live on the dataclass instead (`params.run_dir`)."""
    for stem in PARAMS:
        nb = nbformat.read(NOTEBOOKS / f"{stem}.ipynb", as_version=4)
        declared = set(_defaults(stem))
        for cell in nb.cells[1:]:
            if cell.cell_type != "code":
                continue
            for node in ast.parse(cell.source).body:
                targets = [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.For)) else []
                targets += node.targets if isinstance(node, ast.Assign) else []
                names = {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
                assert not names & declared, (
                    f"{stem} reassigns {sorted(names & declared)}: {cell.source[:80]}"
                )
