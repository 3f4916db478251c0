"""The rarity sweep: when does specialization pay, as a function of how rare the subdomain is in
the GSAE's training tokens? One GSAE per share (the `gsae` recipe, each with its convergence test),
each fine-tuned into SSAEs on notebook 01's `dense`, `none` and `random` selections, every SAE
compared in and out of domain with paired intervals; resumable share by share
(`data/sweeps/build_rarity_sweep.py`, `make sweep`), its results shipped in `data/sweeps/`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .activations import cache_activations, subset_store
from .claims import compare
from .corpora import Document, LabelShare, heldout_split, load_corpus, subsample_label
from .embeddings import Embedder
from .evals import EvalResult, evaluate
from .gsae import check_convergence, gsae_config, interval_dict, share_name
from .io import atomic_write_bytes, atomic_write_json
from .retrieval import select
from .splits import dedupe, split_subdomain
from .store import ActivationStore
from .train import fine_tune, train

__all__ = [
    "SweepConfig",
    "load_sweep",
    "run_sweep",
    "sweep_reading",
    "sweep_rows",
    "sweep_table",
]

SWEEP_FILE = "rarity_sweep.json"


SWEEP_PATH = Path(__file__).resolve().parents[1] / "data" / "sweeps" / SWEEP_FILE
"""The shipped rarity sweep (`data/sweeps/build_rarity_sweep.py`, `make sweep`)."""


@dataclass
class SweepConfig:
    """The rarity sweep: one GSAE per subdomain share, each fine-tuned into SSAEs per strategy."""

    subdomain: str = "tech"
    """Label of the subdomain in the BBC corpus."""
    shares: tuple[float | None, ...] = (0.0, 0.01, 0.05, None)
    """Target shares of the subdomain in each GSAE's training tokens (None: its natural share)."""
    gsae_tokens: int = 12_000_000
    """Training tokens per sweep GSAE: the shipped default's budget, at which fine-tuning it on its own
    data no longer moves held-out CE (the shipped sweep predates it: 2M tokens, see its card)."""
    sparsity_coefficient: float = 1.5
    """The GSAEs' and SSAEs' sparsity coefficient (centered input scale)."""
    d_sae: int = 4608
    """Latents of every GSAE."""
    layer: int = 6
    """Residual stream after this block."""
    strategies: tuple[str, ...] = ("dense", "none", "random")
    """Selections (notebook 01's) each GSAE is fine-tuned on."""
    budget_tokens: int = 50_000
    """Selection budget in LM tokens (notebook 01's main budget)."""
    ssae_tokens: int = 100_000
    """Fine-tuning budget per SSAE and for the convergence test (notebook 02's)."""
    ssae_lr: float = 5e-4
    """Fine-tuning learning rate (notebook 02's)."""
    eval_contexts: int = 200
    """Held-out windows per evaluation (~127 tokens each)."""
    n_eval_docs: int = 50
    """Held-out documents in and outside the subdomain (notebook 01's n_heldout and n_ood)."""
    batch_size: int = 2048
    """GSAE training batch, in tokens."""
    max_docs: int | None = None
    """Train documents to cache, spread evenly over the split (None: all; a number only for tiny test budgets)."""
    ctx_len: int = 128
    seed: int = 0
    """Seeds the share subsampling, the split's seeds, random selection and training."""
    model: str = "smollm2-135m"

    def __post_init__(self) -> None:
        if not self.shares:
            raise ValueError("shares is empty: give at least one subdomain share, e.g. (0.01,).")
        for s in self.shares:
            if s is not None and not 0 <= s < 1:
                raise ValueError(f"share {s!r} must lie in [0, 1), or be None for the natural share.")
        for name in (
            "gsae_tokens",
            "ssae_tokens",
            "budget_tokens",
            "eval_contexts",
            "d_sae",
            "n_eval_docs",
            "batch_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer.")


@dataclass
class SweepData:
    """What every share of a sweep shares: the model, the texts, the parent store, the selections."""

    model: Any
    tokenizer: Any
    train_docs: list[Document]
    parent: ActivationStore
    heldout: list[Document]
    """Held-out documents of the subdomain (in-domain)."""
    ood: list[Document]
    """Held-out documents outside the subdomain (out-of-domain)."""
    selection_stores: dict[str, ActivationStore]


def prepare(
    cfg: SweepConfig, work: Path, model, tokenizer, embedder_name: str = "all-MiniLM-L6-v2"
) -> SweepData:
    """Cache the BBC train split once (every share's store is a subset of it), take the held-out
    texts and, for each strategy, notebook 01's selection (same split seeds and budget), cached."""
    train_docs, heldout_docs = heldout_split(load_corpus("bbc-news"))
    if cfg.max_docs is not None:  # spread over the split, which is ordered by topic, so every topic stays
        train_docs = train_docs[:: max(1, len(train_docs) // cfg.max_docs)][: cfg.max_docs]
    parent = cache_activations(model, tokenizer, train_docs, cfg.layer, work / "acts", ctx_len=cfg.ctx_len)
    heldout = [d for d in heldout_docs if d.label == cfg.subdomain][: cfg.n_eval_docs]
    ood = [d for d in heldout_docs if d.label != cfg.subdomain][: cfg.n_eval_docs]
    stores = {}
    if cfg.strategies:
        split = split_subdomain(
            dedupe(train_docs), cfg.subdomain, seed=cfg.seed, heldout_docs=heldout_docs,
            n_heldout=cfg.n_eval_docs, n_ood=cfg.n_eval_docs,
        )  # fmt: skip
        embedder = Embedder(embedder_name) if "dense" in cfg.strategies else None
        for strategy in cfg.strategies:
            chosen = select(
                split.pool, split.seeds, strategy, cfg.budget_tokens, tokenizer, cfg.seed, embedder
            )
            stores[strategy] = cache_activations(
                model,
                tokenizer,
                chosen.documents,
                cfg.layer,
                work / "acts_selections" / strategy,
                ctx_len=cfg.ctx_len,
                max_tokens=cfg.ssae_tokens,
            )
    return SweepData(model, tokenizer, train_docs, parent, heldout, ood, stores)


def share_store(
    data: SweepData, cfg: SweepConfig, share: float | None, work: Path, count_tokens: Callable[[str], int]
) -> tuple[ActivationStore, LabelShare]:
    """The GSAE training store for one share: the parent store itself at the natural share, else
    the parent's rows of the documents `subsample_label` keeps."""
    kept, report = subsample_label(data.train_docs, cfg.subdomain, share, count_tokens, seed=cfg.seed)
    if share is None:
        return data.parent, report
    index = {id(d): i for i, d in enumerate(data.train_docs)}
    return subset_store(
        data.parent, [index[id(d)] for d in kept], work / f"acts_{cfg.subdomain}{share_name(share)}"
    ), report


_RESULT_KEYS = (
    "gsae_tokens",
    "sparsity_coefficient",
    "d_sae",
    "ssae_tokens",
    "budget_tokens",
    "eval_contexts",
    "seed",
)
"""The sweep settings a finished share's result depends on; a resumed sweep must match them."""


def _finished(done: Path, cfg: SweepConfig) -> dict[str, Any]:
    """A share's saved result, or a ValueError if other sweep settings made it (never mixed in)."""
    result = json.loads(done.read_text())
    made_with = {k: result.get("config", {}).get(k) for k in _RESULT_KEYS}
    if made_with != {k: getattr(cfg, k) for k in _RESULT_KEYS}:
        raise ValueError(
            f"{done} was made with other sweep settings ({made_with}): pass another work folder for these "
            "settings, or delete that share's folder to redo it."
        )
    return result


def run_share(
    data: SweepData, cfg: SweepConfig, share: float | None, work: Path, count_tokens: Callable[[str], int]
) -> dict[str, Any]:
    """One share of the sweep, resumable: train its GSAE, test convergence, fine-tune one SSAE per
    strategy, and compare each with the GSAE (and dense with none), in and out of domain."""
    folder = work / f"share_{share_name(share)}"
    done = folder / "result.json"
    if done.exists():
        return _finished(done, cfg)
    store, report = share_store(data, cfg, share, work, count_tokens)
    tcfg = gsae_config(
        cfg.gsae_tokens, cfg.sparsity_coefficient, cfg.d_sae, batch_size=cfg.batch_size, seed=cfg.seed
    )
    trained = train(store, tcfg, out_dir=folder / "gsae", resume=True)
    gsae = trained.sae
    kw = dict(ctx_len=cfg.ctx_len, max_contexts=cfg.eval_contexts)
    texts = {"in_domain": data.heldout, "out_of_domain": data.ood}
    base = {n: evaluate(gsae, data.model, data.tokenizer, docs, cfg.layer, **kw) for n, docs in texts.items()}
    conv = check_convergence(
        gsae, trained.log, store, data.model, data.tokenizer, base["out_of_domain"], data.ood,
        folder / "finetune_own", cfg.sparsity_coefficient, cfg.ssae_tokens, cfg.ssae_lr, kw,
    )  # fmt: skip
    ssae = {}
    for strategy, sel_store in data.selection_stores.items():
        tuned = fine_tune(
            gsae, sel_store, cfg.sparsity_coefficient, cfg.ssae_tokens, folder / f"ssae_{strategy}",
            lr=cfg.ssae_lr, seed=cfg.seed,
        )  # fmt: skip
        ssae[strategy] = {
            n: evaluate(
                tuned, data.model, data.tokenizer, texts[n], cfg.layer, baseline=base[n].metrics, **kw
            )
            for n in texts
        }
    result = dict(
        share=share,
        share_name=share_name(share),
        config={k: getattr(cfg, k) for k in _RESULT_KEYS},
        label_share=asdict(report),
        gsae_tokens=cfg.gsae_tokens,
        gsae={n: _summary(r) for n, r in base.items()},
        convergence=conv.as_dict(),
        ssae_vs_gsae={
            s: {n: interval_dict(compare(r[n], base[n], "ce")) for n in texts} for s, r in ssae.items()
        },
        ssae={s: {n: _summary(r[n]) for n in texts} for s, r in ssae.items()},
        dense_vs_none=(
            {n: interval_dict(compare(ssae["dense"][n], ssae["none"][n], "ce")) for n in texts}
            if {"dense", "none"} <= set(ssae)
            else {}
        ),
    )
    atomic_write_json(done, result)
    return result


def _summary(r: EvalResult) -> dict[str, Any]:
    keys = (
        "l0",
        "explained_variance",
        "ce_clean",
        "ce_sae",
        "ce_delta",
        "ce_zero",
        "dead_fraction",
        "n_tokens",
    )
    return {k: r.metrics[k] for k in keys} | {"health_warnings": r.metrics["health_warnings"]}


def sweep_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per share (CSV-ready): the share reached, the GSAE, its convergence, and each
    comparison's estimate and 95% interval (spliced CE, nats; negative = the first SAE is better)."""
    rows = []
    for r in results:
        row: dict[str, Any] = dict(
            share=r["share_name"],
            target=r["label_share"]["target"],
            reached=r["label_share"]["reached"],
            gsae_tokens=r["gsae_tokens"],
            converged=r["convergence"]["converged"],
            mse_drop=r["convergence"]["mse_drop"],
            **{f"own_finetune_{k}": v for k, v in r["convergence"]["finetune_ce"].items() if k != "n_docs"},
        )
        for text, tag in (("in_domain", "in"), ("out_of_domain", "ood")):
            g = r["gsae"][text]
            row |= {
                f"gsae_{tag}_l0": g["l0"],
                f"gsae_{tag}_ev": g["explained_variance"],
                f"gsae_{tag}_ce_delta": g["ce_delta"],
            }
            pairs = {f"{s}_vs_gsae": d[text] for s, d in r["ssae_vs_gsae"].items()}
            if r["dense_vs_none"]:
                pairs["dense_vs_none"] = r["dense_vs_none"][text]
            for name, d in pairs.items():
                row |= {
                    f"{name}_{tag}": d["estimate"],
                    f"{name}_{tag}_low": d["low"],
                    f"{name}_{tag}_high": d["high"],
                }
        rows.append(row)
    return rows


def sweep_table(results: Sequence[dict[str, Any]]) -> str:
    """The sweep as a Markdown table: per share, SSAE - GSAE and dense - none, in and out of domain."""

    def ci(row: dict[str, Any], key: str) -> str:
        if key not in row:
            return "-"
        return f"{row[key]:+.3f} [{row[key + '_low']:+.3f}, {row[key + '_high']:+.3f}]"

    head = (
        "| tech share (target → reached) | converged | dense − GSAE, in | dense − GSAE, out | "
        "none − GSAE, in | random − GSAE, in | dense − none, in | dense − none, out |\n"
        "|---|---|---|---|---|---|---|---|\n"
    )
    lines = [
        f"| {r['share'] if r['share'] == 'natural' else r['share'] + '%'} ({r['target']:.3f} → {r['reached']:.4f}) | "
        f"{'yes' if r['converged'] else 'no'} (training MSE fell "
        f"{'n/a' if math.isnan(r['mse_drop']) else format(100 * r['mse_drop'], '.1f') + '%'} over the last quarter; "
        f"own-data fine-tune {r['own_finetune_estimate']:+.3f}) | "
        + " | ".join(
            ci(r, k)
            for k in (
                "dense_vs_gsae_in",
                "dense_vs_gsae_ood",
                "none_vs_gsae_in",
                "random_vs_gsae_in",
                "dense_vs_none_in",
                "dense_vs_none_ood",
            )
        )
        + " |"
        for r in sweep_rows(results)
    ]
    return head + "\n".join(lines) + "\n"


def write_sweep(out: Path, cfg: SweepConfig, results: Sequence[dict[str, Any]], env: dict[str, Any]) -> None:
    """rarity_sweep.json (config, environment, every result), rarity_sweep.csv (`sweep_rows`)."""
    import csv
    import io as _io

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / SWEEP_FILE, dict(config=asdict(cfg), env=env, results=list(results)))
    rows = sweep_rows(results)
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / SWEEP_FILE.replace(".json", ".csv"), buf.getvalue().encode())


def load_sweep(path: str | Path = SWEEP_PATH) -> list[dict[str, Any]]:
    """The shipped sweep's results (`write_sweep`'s JSON), or a FileNotFoundError naming `make sweep`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"No sweep results at {path}: run `make sweep` (hours on 2 cores) to build them."
        )
    return json.loads(path.read_text())["results"]


def run_sweep(cfg: SweepConfig, work: str | Path, model, tokenizer) -> list[dict[str, Any]]:
    """Every share of `cfg`, in order, resumable (`run_share`): hours on 2 cores at the defaults."""
    work = Path(work)
    data = prepare(cfg, work, model, tokenizer)
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return [run_share(data, cfg, share, work, count) for share in cfg.shares]


def _training_or_specialization(rows: Sequence[dict[str, Any]]) -> str:
    """Where the SSAEs' gain over their GSAE comes from: the share of `dense`'s in-domain gain that
    `none` (more training on the general pool) also buys, and what `dense` costs out of domain."""
    shares = [r["none_vs_gsae_in"] / r["dense_vs_gsae_in"] for r in rows if r["dense_vs_gsae_in"] < 0]
    ood = [r["dense_vs_none_ood"] for r in rows]
    low = f"{100 * min(shares):.0f}%" if shares and min(shares) >= 0 else ""
    if shares and not low:  # `none` does worse than the GSAE somewhere: it buys nothing there
        worst = max(rows, key=lambda r: r["none_vs_gsae_in"])
        low = f"nothing ({worst['none_vs_gsae_in']:+.3f} nats at {100 * worst['reached']:.1f}% tech)"
    gain = (
        f"Fine-tuning on the general pool (`none`) buys {low} to {100 * max(shares):.0f}% "
        "of `dense`'s in-domain gain over the GSAE: "
        + (
            "most of it is more training, not the subdomain's data"
            if min(shares) >= 0.5
            else "not most of it"
        )
        if len(shares) == len(rows)
        else "At some share `dense` does not beat its GSAE in domain"
    )
    cost = all(r["dense_vs_none_ood_low"] > 0 for r in rows)
    return f"{gain}. Out of domain, `dense` − `none` is {min(ood):+.3f} to {max(ood):+.3f} nats: " + (
        "specializing costs general text at every share." if cost else "not a cost at every share."
    )


def sweep_reading(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Sentences about the pre-registered claims, computed from `sweep_rows`: (1) at every share the
    SSAE (dense) beats `none` in domain, interval below 0; (2) that gain grows as the share falls:
    dense - none in domain is lower at the rarest share than at the most common one, and their
    intervals do not overlap. Each says what was measured and whether the claim holds."""
    rows = sorted(rows, key=lambda r: r["reached"])
    if "dense_vs_none_in" not in rows[0]:
        return ["The sweep has no dense and none SSAEs to compare: no claim can be read."]
    out = []
    span = lambda r: (
        f"{r['dense_vs_none_in']:+.3f} [{r['dense_vs_none_in_low']:+.3f}, {r['dense_vs_none_in_high']:+.3f}]"
    )
    wins = [r for r in rows if r["dense_vs_none_in_high"] < 0]
    out.append(
        "Claim 1 (dense beats none in domain at every share): "
        + "; ".join(f"{100 * r['reached']:.1f}% tech: {span(r)}" for r in rows)
        + f" nats. It holds at {len(wins)} of {len(rows)} shares: the claim "
        + (
            "holds."
            if len(wins) == len(rows)
            else "does not hold. For discussion: `dense` fine-tunes on nearly all-tech text and `none` on "
            "general text with tech at its natural share; where both move the GSAE about equally in domain, "
            "is the GSAE's gap on tech a gap in features, or in training, and what would tell them apart?"
        )
    )
    if len(rows) < 2:
        return out + ["Claim 2 needs at least two shares."]
    rare, common = rows[0], rows[-1]
    grows = rare["dense_vs_none_in"] < common["dense_vs_none_in"]
    apart = rare["dense_vs_none_in_high"] < common["dense_vs_none_in_low"]
    out.append(
        f"Claim 2 (the gain grows as the share falls): dense − none in domain is {span(rare)} at "
        f"{100 * rare['reached']:.1f}% tech and {span(common)} at {100 * common['reached']:.1f}%: "
        + (
            "larger at the rare share, with intervals apart: the claim holds."
            if grows and apart
            else "larger at the rare share, but the intervals overlap: not shown at this precision."
            if grows
            else "not larger at the rare share: the claim does not hold. For discussion: a GSAE that never "
            "saw tech still reconstructs tech text with features of other topics; which tech tokens would "
            "need a feature of their own, and how many of them does the held-out text hold?"
        )
    )
    out.append(_training_or_specialization(rows))
    failed = [r for r in rows if not r["converged"]]
    mse, own = [r["mse_drop"] for r in failed], [r["own_finetune_estimate"] for r in failed]
    out.append(
        f"{len(rows) - len(failed)} of {len(rows)} sweep GSAEs pass the convergence test"
        + (
            f"; {'their' if len(failed) == len(rows) else f'for the {len(failed)} that fail,'} training MSE fell "
            f"{100 * min(mse):.1f}% to {100 * max(mse):.1f}% "
            f"over the last quarter, and fine-tuning each on its own data moved held-out CE by {min(own):+.3f} "
            f"to {max(own):+.3f} nats: part of their SSAEs' gains may be more training, not specialization."
            if failed
            else "."
        )
    )
    return out
