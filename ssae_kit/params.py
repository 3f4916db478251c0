"""Each notebook's parameters, checked in one call before any work.

A notebook's setup cell calls `params = <Notebook>Params.from_namespace(globals())`.
That call refuses a key papermill injected that the parameters cell does not declare, checks each
value's type and range without reading a model or a file, and raises naming the parameter and the
fix. It also resolves the run folders: `params.run_dir` is a Path, and an empty folder of an earlier
notebook (`params.retrieval_dir`, `params.train_dir`, ...) becomes that notebook's folder next to
`run_dir`. Notebooks read folders from `params`; every other parameter keeps its own name and value.
The parameters cell keeps the defaults and their comments; these dataclasses add types and rules."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from ssae_kit.bios import LABHC_PROFESSIONS
from ssae_kit.io import check_parameters
from ssae_kit.retrieval import STRATEGIES
from ssae_kit.shift import DebiasConfig
from ssae_kit.taxonomy import PROFESSION_TAXONOMY, Tree, leaf_paths, parse_taxonomy, subtrees
from ssae_kit.tracin import TRACIN_STRATEGIES
from ssae_kit.train_config import check_finetune

__all__ = [
    "DebiasParams",
    "QuickstartParams",
    "RetrievalParams",
    "TaxonomyParams",
    "TermParams",
    "TrainParams",
    "VisualiseParams",
]

ALL_STRATEGIES = STRATEGIES + TRACIN_STRATEGIES
P = TypeVar("P", bound="NotebookParams")


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether `value` fits `hint` at the depth notebooks use (scalars, lists of scalars, dicts,
    unions); an int is a float, a bool is not a number."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_type_ok(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is Path:
        return isinstance(value, (str, Path))
    return isinstance(value, hint)


def _folder(given: str | Path, run_dir: Path, notebook: str) -> Path:
    """`given` as a Path, or `notebook`'s run folder next to `run_dir` when it is empty."""
    return Path(given) if str(given) else run_dir.parent / notebook


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _known_strategies(strategies: list[str]) -> None:
    unknown = [s for s in strategies if s not in ALL_STRATEGIES]
    _need(not unknown, f"Unknown strategies {unknown}: choose from {ALL_STRATEGIES}.")


def _at_least(one: int, **values: int) -> None:
    for name, value in values.items():
        _need(value >= one, f"{name}={value} must be >= {one}.")


@dataclass(frozen=True)
class NotebookParams:
    """What every notebook's parameters share: a run folder, a type check, and `check`."""

    run_dir: Path

    @classmethod
    def from_namespace(cls: type[P], namespace: dict[str, Any]) -> P:  # noqa: PYI019 (Self is 3.11+)
        """The notebook's parameters read from its namespace (`globals()`), checked."""
        check_parameters()
        names = [f.name for f in fields(cls) if f.init]
        if missing := [n for n in names if n not in namespace]:
            raise NameError(f"Parameter(s) {missing} are not defined: restore them in the parameters cell.")
        return cls(**{n: namespace[n] for n in names})

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in (f for f in fields(self) if f.init):
            value = getattr(self, f.name)
            if not _type_ok(value, hints[f.name]):
                raise TypeError(
                    f"{f.name}={value!r} is a {type(value).__name__}; the parameters cell expects "
                    f"{f.type} (see its comment for an example)."
                )
        object.__setattr__(self, "run_dir", Path(self.run_dir))
        self.check()

    def check(self) -> None:
        """Raise naming a bad value and the fix; resolve folders (subclasses extend it)."""

    def _resolve(self, **folders: str) -> None:
        for name, notebook in folders.items():
            object.__setattr__(self, name, _folder(getattr(self, name), self.run_dir, notebook))


@dataclass(frozen=True)
class QuickstartParams(NotebookParams):
    """Notebook 00: a model's activations, and the primer's toy SAEs."""

    model_name: str
    corpus: str
    n_docs: int
    layer: int
    ctx_len: int
    max_tokens: int
    device: str
    gsae: str
    eval_contexts: int
    toy_sparsity_coefficients: list[float]
    toy_tokens: int

    def check(self) -> None:
        _at_least(1, n_docs=self.n_docs, max_tokens=self.max_tokens, toy_tokens=self.toy_tokens)
        _at_least(1, eval_contexts=self.eval_contexts)
        _need(
            bool(self.toy_sparsity_coefficients) and min(self.toy_sparsity_coefficients) >= 0,
            f"toy_sparsity_coefficients={self.toy_sparsity_coefficients}: give at least one, each >= 0.",
        )


@dataclass(frozen=True)
class RetrievalParams(NotebookParams):
    """Notebook 01: selecting subdomain data by strategy and budget."""

    pool_corpus: str
    subdomain_label: str
    seeds_path: str
    n_seeds: int
    n_heldout: int
    n_ood: int
    heldout_split: str
    pool_limit: int
    budgets: list[int]
    main_budget: int
    strategies: list[str]
    combine: str
    embedder_name: str
    model_name: str
    gsae: str
    rerank_factor: float
    n_checkpoints: int
    tracin_sparsity_coefficient: float
    device: str
    split_seeds: list[int]
    stability_strategies: list[str]

    @property
    def tracin(self) -> list[str]:
        """The TracIn strategies asked for (they need a GSAE and the LM's activations)."""
        return [s for s in self.strategies if s in TRACIN_STRATEGIES]

    def check(self) -> None:
        _known_strategies(self.strategies)
        _need(
            not self.tracin or bool(self.gsae),
            f"{self.tracin} rerank with a GSAE's loss: set gsae "
            "(e.g. 'ssae-kit:smollm2-135m-l6-tech1') or drop them.",
        )
        missing = [s for s in self.stability_strategies if s not in self.strategies]
        _need(not missing, f"stability_strategies {missing} must also be in strategies={self.strategies}.")
        _need(
            self.main_budget in self.budgets,
            f"main_budget={self.main_budget} must be one of budgets={self.budgets}.",
        )
        _need(self.combine in ("mean", "max"), f"combine={self.combine!r} must be 'mean' or 'max'.")
        _need(bool(self.split_seeds), "split_seeds is empty: give at least one, e.g. [0, 1, 2].")


@dataclass(frozen=True)
class TrainParams(NotebookParams):
    """Notebook 02: fine-tuning the GSAE on each selection."""

    model_name: str
    layer: int
    retrieval_dir: Path
    strategies: list[str]
    gsae: str
    gsae_tokens: int
    gsae_epochs: int
    d_sae: int
    gsae_sparsity_coefficient: float
    ssae_tokens: int
    ssae_sparsity_coefficients: list[float]
    pareto_strategies: list[str]
    seeds: list[int]
    lr: float
    ctx_len: int
    eval_contexts: int
    device: str
    sweep: str

    def check(self) -> None:
        _known_strategies(self.strategies + self.pareto_strategies)
        check_finetune(self.ssae_sparsity_coefficients, self.ssae_tokens, lr=self.lr, device=self.device)
        _need(bool(self.seeds), "seeds is empty: give at least one training seed, e.g. [0].")
        _need(
            self.sweep in ("shipped", "recompute"),
            f"sweep={self.sweep!r} must be 'shipped' (draw data/sweeps/) or 'recompute' (hours).",
        )
        self._resolve(retrieval_dir="01_retrieval")


@dataclass(frozen=True)
class TermParams(NotebookParams):
    """Notebook 03: TERM against ERM on one selection."""

    model_name: str
    train_dir: Path
    retrieval_dir: Path
    strategy: str
    tilts: list[float]
    term_tilt: float
    sparsity_coefficient: float
    pareto_sparsity_coefficients: list[float]
    l0_window: list[float]
    ssae_tokens: int
    pareto_tokens: int
    seed: int
    ctx_len: int
    eval_contexts: int
    device: str

    def check(self) -> None:
        _known_strategies([self.strategy])
        _need(self.term_tilt in self.tilts, f"term_tilt={self.term_tilt} must be one of tilts={self.tilts}.")
        _need(
            self.pareto_tokens > 0,
            f"pareto_tokens={self.pareto_tokens} must be > 0, e.g. 400_000 (or ssae_tokens={self.ssae_tokens}).",
        )
        low_high = self.l0_window
        _need(
            len(low_high) == 2 and 0 <= low_high[0] < low_high[1],
            f"l0_window={low_high} must be [low, high] with 0 <= low < high, e.g. [85, 140].",
        )
        self._resolve(train_dir="02_train_ssae", retrieval_dir="01_retrieval")


@dataclass(frozen=True)
class VisualiseParams(NotebookParams):
    """Notebook 04: dashboards, maps and dark-matter latents."""

    model_name: str
    train_dir: Path
    term_dir: Path
    retrieval_dir: Path
    ssae: str
    match_threshold: float
    n_dark: int
    ctx_len: int
    max_contexts: int
    device: str

    def check(self) -> None:
        _need(
            0 < self.match_threshold <= 1,
            f"match_threshold={self.match_threshold} is a decoder cosine: give one in (0, 1], e.g. 0.7.",
        )
        _at_least(1, max_contexts=self.max_contexts)
        _at_least(0, n_dark=self.n_dark)
        self._resolve(train_dir="02_train_ssae", term_dir="03_term_vs_erm", retrieval_dir="01_retrieval")


@dataclass(frozen=True)
class DebiasParams(NotebookParams):
    """Notebook 05: SHIFT on Bias in Bios with a GSAE and SSAEs."""

    model_name: str
    layer: int
    probe_layer: int
    source: str
    n_bios: int
    profession_cue_rate: float
    n_train_per_group: int
    n_a_per_group: int
    n_b_per_group: int
    seeds: list[int]
    gsae: str
    general_tokens: int
    gsae_epochs: int
    d_sae: int
    compress: int
    sparsity_coefficient: float
    ssae_data: str
    ssae_bios: int
    ssae_tokens: int
    probe_epochs: int
    top_n: int
    attribution: str
    ig_steps: int
    margin: float
    attribution_bios: int
    curve_counts: list[int]
    n_check: int
    force_spurious: list[int]
    force_keep: list[int]
    ctx_len: int
    device: str

    def check(self) -> None:
        _need(bool(self.seeds), "seeds is empty: give at least one seed, e.g. seeds = [0, 1, 2, 3, 4].")
        source = self.source
        _need(
            source == "synthetic" or source.startswith("hf:") or Path(source).exists(),
            f"source={source!r} is not 'synthetic', 'hf:<dataset id>' or an existing .parquet/.jsonl file.",
        )
        _need(
            self.sparsity_coefficient >= 0 and self.compress >= 0,
            f"sparsity_coefficient={self.sparsity_coefficient} and compress={self.compress} must be >= 0.",
        )
        _need(
            self.probe_layer >= self.layer,
            f"probe_layer={self.probe_layer} is before layer={self.layer}: "
            "the probe must read at or after the edit.",
        )
        _need(
            self.ssae_data in ("bios", "retrieval"),
            f"ssae_data={self.ssae_data!r}: use 'bios' or 'retrieval'.",
        )
        _need(
            min(self.n_train_per_group, self.n_a_per_group, self.n_b_per_group) >= 1,
            "n_train_per_group, n_a_per_group and n_b_per_group must each be >= 1.",
        )
        self.shift_config()  # DebiasConfig names a bad attribution, top_n or margin now

    def shift_config(self) -> DebiasConfig:
        """The probe and SHIFT settings these parameters ask for."""
        return DebiasConfig(
            probe_epochs=self.probe_epochs,
            top_n=self.top_n,
            margin=self.margin,
            attribution_bios=self.attribution_bios,
            attribution=self.attribution,  # type: ignore[arg-type]  # DebiasConfig checks it
            ig_steps=self.ig_steps,
            force_spurious=tuple(self.force_spurious),
            force_keep=tuple(self.force_keep),
        )


@dataclass(frozen=True)
class TaxonomyParams(NotebookParams):
    """Notebook 06: TSDA on its synthetic benchmark, and a taxonomy probe of representations."""

    n_leaves: int
    theta_max: float
    n_sources: int
    n_per_class: int
    seeds: list[int]
    steps: int
    lambda_d_grid: list[float]
    lambda_t_grid: list[float]
    n_jobs: int
    model_name: str
    layer: int
    taxonomy: dict | list | None
    texts_file: str
    features_file: str
    bios_per_leaf: int
    probe_seeds: list[int]
    debias_dir: Path
    saes: dict
    ssae_subtree: str
    ssae_bios: int
    ssae_tokens: int
    sparsity_coefficient: float
    ctx_len: int
    device: str
    tree: Tree = field(init=False)
    """The taxonomy, parsed (the 28 professions by field when `taxonomy` is None)."""

    def check(self) -> None:
        tree = parse_taxonomy(PROFESSION_TAXONOMY if self.taxonomy is None else self.taxonomy)
        object.__setattr__(self, "tree", tree)
        unknown = [leaf for leaf in leaf_paths(tree) if leaf not in LABHC_PROFESSIONS]
        _need(
            not unknown or bool(self.features_file or self.texts_file),
            f"Leaves {unknown} have no synthetic bios: use LabHC profession names "
            f"{list(LABHC_PROFESSIONS)}, or give texts_file / features_file.",
        )
        groups = subtrees(tree)
        _need(
            bool(self.features_file) or self.ssae_subtree in groups,
            f"ssae_subtree={self.ssae_subtree!r} is not a subtree of the taxonomy: choose from {list(groups)}.",
        )
        self._resolve(debias_dir="05_debias_bias_in_bios")
