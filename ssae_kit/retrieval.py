"""Select subdomain data from a general pool: dense retrieval (the paper's pick), BM25, random.

PAPER §1. Every strategy fills the same LM-token budget greedily in its own ranking order, after
exact de-duplication, so strategies differ only in *which* documents they pick. Several seeds
combine by `combine="mean"` (close to the seeds' centre; the default: on BBC/tech with 5 seeds it
gave 0.93 precision at 20k tokens against 0.69 for max) or `"max"` (close to any one seed:
keeps every facet of the subdomain, but also picks up each seed's off-topic neighbours).

The two controls are different experiments (PAPER §1):
- `"none"`: no selection. The whole pool, in a shuffled order (seed stream 0), ignoring the
  budget: fine-tuning on it continues training on the general distribution, each token seen once.
- `"random"`: a random subset of the pool of the same token budget as the retrieved sets, drawn
  from its own seed stream (1), so it is not a prefix of `none`'s order; fine-tuning re-reads it
  like the retrieved sets. (When the budget exceeds the pool, it is the whole pool: a warning says so.)
`"seed_only"` returns the seeds themselves. Precision is reported at the token level first (the
share of selected LM tokens in the subdomain): counting documents misleads when lengths differ.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .corpora import Document, check_documents
from .embeddings import Embedder
from .intervals import MIN_DOCS, Difference, bootstrap_interval
from .io import atomic_write_bytes, read_jsonl
from .splits import dedupe, dedupe_indices

__all__ = [
    "Selection",
    "precision_difference",
    "select",
    "selection_report",
    "token_lengths",
]

logger = logging.getLogger(__name__)

Strategy = Literal["dense", "bm25", "random", "none", "seed_only"]
_NONE_STREAM, _RANDOM_STREAM = 0, 1  # the controls' own seed streams, so `random` is no prefix of `none`
STRATEGIES: tuple[str, ...] = ("dense", "bm25", "random", "none", "seed_only")


@dataclass
class Selection:
    """The documents a strategy picked, their scores (higher = picked earlier) and LM tokens used."""

    strategy: str
    documents: list[Document]
    scores: list[float]
    tokens_used: int
    budget_tokens: int | None

    def save(self, path: str | Path) -> Path:
        """One JSON line per document, after a header line with the strategy and budget."""
        header = {
            "strategy": self.strategy,
            "tokens_used": self.tokens_used,
            "budget_tokens": self.budget_tokens,
        }
        lines = [json.dumps(header)] + [
            json.dumps({**asdict(d), "score": s}) for d, s in zip(self.documents, self.scores)
        ]
        atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Selection:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"No selection at {path}: run notebook 01 (or ssae_kit.retrieval.select) first."
            )
        header, *rows = read_jsonl(path, "re-run notebook 01 (or select and save the selection again).")
        docs = [Document.from_row(r) for r in rows]
        return cls(
            header["strategy"],
            docs,
            [r["score"] for r in rows],
            header["tokens_used"],
            header["budget_tokens"],
        )


def select(
    pool: list[Document],
    seeds: list[Document],
    strategy: Strategy,
    budget_tokens: int | None,
    tokenizer,
    seed: int = 0,
    embedder: Embedder | None = None,
    combine: Literal["max", "mean"] = "mean",
    pool_embeddings: np.ndarray | None = None,
    index=None,
) -> Selection:
    """Pick documents of `pool` that resemble `seeds`, up to `budget_tokens` LM tokens.

    `pool_embeddings` (one row per pool document, from the same `embedder`) skips embedding the
    pool. With `index` (from `build_index` over the pool's embeddings), dense scores come from a
    faiss search of the top candidates instead of a full pool x seeds product: exact for
    combine="mean" (the mean of similarities is the similarity to the mean seed vector), and for
    "max" exact for every document that is among some seed's candidates. A budget that holds the
    whole (de-duplicated) pool makes every strategy pick all of it, which a warning points out.
    """
    _check_select(strategy, seeds, combine)
    if strategy == "seed_only":
        return fill_budget(seeds, np.zeros(len(seeds)), None, tokenizer, "seed_only")
    if not pool:
        raise ValueError(
            "The pool is empty: there is nothing to select from. Pass the documents to choose "
            "from (e.g. split.pool)."
        )
    n_given = len(pool)
    keep = dedupe_indices(pool)
    pool = [pool[i] for i in keep]
    if strategy == "none":  # shuffled, so that a token cap downstream takes an unbiased sample
        return fill_budget(
            pool, np.random.default_rng([_NONE_STREAM, seed]).random(len(pool)), None, tokenizer, "none"
        )
    if budget_tokens is None or budget_tokens <= 0:
        raise ValueError(f"Strategy {strategy!r} needs a positive budget_tokens, not {budget_tokens!r}.")
    if strategy == "random":
        scores = np.random.default_rng([_RANDOM_STREAM, seed]).random(len(pool))
    elif strategy == "bm25":
        scores = bm25_scores(pool, seeds, combine)
    else:
        embedder = embedder or Embedder()
        seed_emb = _embed_seeds(seeds, embedder, pool_embeddings, index, n_given)
        if index is not None:
            return warn_if_whole_pool(
                _select_with_index(index, pool, keep, seed_emb, combine, budget_tokens, tokenizer), len(pool)
            )
        emb = (
            pool_embeddings[keep]
            if pool_embeddings is not None
            else embedder.embed_corpus(pool, progress=False)
        )
        sims = emb @ seed_emb.T
        scores = sims.max(1) if combine == "max" else sims.mean(1)
    return warn_if_whole_pool(fill_budget(pool, scores, budget_tokens, tokenizer, strategy), len(pool))


def _check_select(strategy: str, seeds: list[Document], combine: str) -> None:
    """A ValueError naming the fix for a strategy `select` cannot run, an empty or blank seed, or a
    bad `combine`, before any work."""
    if strategy in ("dense_tracin", "bm25_tracin"):  # tracin sits above this module: it needs the LM
        raise ValueError(
            f"strategy={strategy!r} reranks by TracIn, which needs the LM and a GSAE: call "
            f"ssae_kit.tracin.select_tracin(pool, seeds, {strategy.removesuffix('_tracin')!r}, budget_tokens, "
            "tokenizer, model, layer, gsae)."
        )
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown strategy {strategy!r}; use one of {STRATEGIES}.")
    if not seeds:
        raise ValueError("The seed set is empty: give at least one example document of the subdomain.")
    if blank := [i for i, d in enumerate(check_documents(seeds)) if not d.text.strip()]:
        raise ValueError(
            f"Seed(s) {blank} have no text: dense retrieval would rank the pool by the embedding of an "
            "empty string. Drop them or give their text."
        )
    if combine not in ("max", "mean"):
        raise ValueError(f"combine={combine!r} must be 'max' or 'mean'.")


def _embed_seeds(
    seeds: list[Document], embedder: Embedder, pool_embeddings: np.ndarray | None, index, n_given: int
) -> np.ndarray:
    """The seeds' embeddings, after checking that given pool vectors (or index) match the pool and
    `embedder`."""
    if pool_embeddings is not None:
        _check_pool_vectors("pool_embeddings", pool_embeddings.shape, n_given, embedder)
    if index is not None:
        _check_pool_vectors("The index", (index.ntotal, index.d), n_given, embedder)
    return embedder.embed([s.text for s in seeds], progress=False)


def _check_pool_vectors(what: str, shape: tuple[int, ...], n_pool: int, embedder: Embedder) -> None:
    """Precomputed vectors must be one per pool document, from `embedder`."""
    if shape[0] != n_pool:
        raise ValueError(
            f"{what} holds {shape[0]} vectors for a pool of {n_pool} documents: "
            "build it from exactly this pool's embeddings, in order."
        )
    if shape[-1] != embedder.dim:
        raise ValueError(
            f"{what} holds {shape[-1]}-dimensional vectors but encoder {embedder.name!r} gives "
            f"{embedder.dim}: build it from this encoder's embeddings (embedder.embed_corpus(pool))."
        )


def warn_if_whole_pool(selection: Selection, n_pool: int) -> Selection:
    """Warn when the budget holds every document: then every strategy picks the whole pool."""
    if len(selection.documents) == n_pool:
        warnings.warn(
            f"budget_tokens={selection.budget_tokens} holds the whole pool ({selection.tokens_used} tokens "
            f"after de-duplication), so {selection.strategy!r} picks every document: 'random' (and every "
            f"strategy) equals 'none'. Use a budget below {selection.tokens_used} to compare strategies.",
            stacklevel=3,
        )
    return selection


def _select_with_index(
    index, pool: list[Document], keep: list[int], seed_emb: np.ndarray, combine: str, budget: int, tokenizer
) -> Selection:
    """Dense selection from faiss candidates, widening the search (x4) until >= 95% of the budget
    is used or every document is a candidate; the top candidates are exact for an exact index."""
    queries = seed_emb.mean(0, keepdims=True) if combine == "mean" else seed_emb
    position = {
        orig: i for i, orig in enumerate(keep)
    }  # index row (original pool position) -> deduped position
    n_cand = 64
    while True:
        scores, rows = index.search(
            np.ascontiguousarray(queries, dtype=np.float32), min(n_cand, index.ntotal)
        )
        best: dict[int, float] = {}
        for row_scores, row_ids in zip(scores, rows):
            for sc, r in zip(row_scores, row_ids):
                if r >= 0 and r in position:
                    best[position[r]] = max(best.get(position[r], -np.inf), float(sc))
        cand = sorted(best)
        sel = fill_budget(
            [pool[i] for i in cand], np.array([best[i] for i in cand]), budget, tokenizer, "dense"
        )
        if sel.tokens_used >= 0.95 * budget or n_cand >= index.ntotal:
            return sel
        n_cand *= 4


def bm25_scores(pool: list[Document], seeds: list[Document], combine: str) -> np.ndarray:
    """(len(pool),) BM25 score of each pool document (bm25s, English stop words removed) against
    the seeds, combined over seeds by "mean" or "max"; raises when no content word is left."""
    import bm25s

    retriever = bm25s.BM25()
    corpus = bm25s.tokenize([d.text for d in pool], stopwords="en", show_progress=False)
    queries = bm25s.tokenize([s.text for s in seeds], stopwords="en", show_progress=False, return_ids=False)
    wordless = [s.doc_id or s.text[:40] for s, q in zip(seeds, queries) if not q]
    if wordless:
        raise ValueError(
            f"BM25 cannot use the seeds {wordless}: no word is left once English stop words are "
            "removed. Give seeds with content words, or use strategy='dense'."
        )
    if not corpus.vocab:
        raise ValueError(
            "BM25 cannot score the pool: no document has a word left once English stop words are "
            "removed. Use strategy='dense', or a pool of real text."
        )
    retriever.index(corpus, show_progress=False)
    per_seed = np.stack([retriever.get_scores(q) for q in queries], axis=1)  # (n_pool, n_seeds)
    return per_seed.max(1) if combine == "max" else per_seed.mean(1)


def token_lengths(docs: list[Document], tokenizer) -> np.ndarray:
    """LM tokens of each document (no special tokens): what budgets and token precision count."""
    return np.array(
        [len(ids) for ids in tokenizer([d.text for d in docs], add_special_tokens=False)["input_ids"]],
        dtype=np.int64,
    )


def fill_budget(
    docs: list[Document], scores: np.ndarray, budget: int | None, tokenizer, strategy: str
) -> Selection:
    """Take documents by descending score while they fit in the budget (all of them if None)."""
    lengths = token_lengths(docs, tokenizer)
    order = np.argsort(-np.asarray(scores), kind="stable")
    picked, used = [], 0
    for i in order:
        if budget is None or used + lengths[i] <= budget:
            picked.append(int(i))
            used += int(lengths[i])
    if not picked:
        raise ValueError(
            f"budget_tokens={budget} is smaller than every candidate document (shortest: "
            f"{min(lengths)} tokens): raise the budget."
        )
    return Selection(strategy, [docs[i] for i in picked], [float(scores[i]) for i in picked], used, budget)


def selection_report(
    selection: Selection, positive_label: str, pool: list[Document], tokenizer
) -> dict[str, float]:
    """Token precision (share of the selection's LM tokens in the subdomain) with its 95% bootstrap
    interval over the selected documents, then document precision and recall (of the pool's
    subdomain documents)."""
    pos = np.array([d.label == positive_label for d in selection.documents])
    lengths = token_lengths(selection.documents, tokenizer)
    n_pool_pos = sum(d.label == positive_label for d in dedupe(pool))
    low, high = _ratio_interval(lengths * pos, lengths)
    return dict(
        token_precision=float((lengths * pos).sum() / max(lengths.sum(), 1)),
        token_precision_low=low,
        token_precision_high=high,
        doc_precision=float(pos.mean()) if len(pos) else 0.0,
        recall=float(pos.sum() / n_pool_pos) if n_pool_pos else float("nan"),
        n_docs=len(pos),
        tokens_used=selection.tokens_used,
    )


def _ratio_interval(
    num: np.ndarray, den: np.ndarray, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(num) / sum(den), resampling rows (scipy.stats.bootstrap);
    NaN below `intervals.MIN_DOCS` rows, [value, value] when every row has the same ratio."""
    if len(num) >= MIN_DOCS and np.ptp(num / np.maximum(den, 1)) == 0:
        value = float(num.sum() / max(den.sum(), 1))
        return value, value
    return bootstrap_interval(
        (num, den),
        lambda a, b, axis=-1: a.sum(axis) / b.sum(axis),
        paired=True,
        confidence=confidence,
        seed=seed,
    )


def precision_difference(
    a: Selection, b: Selection, positive_label: str, tokenizer, confidence: float = 0.95, seed: int = 0
) -> Difference:
    """Token precision of a minus b with a percentile bootstrap interval, resampling each selection's
    documents independently (the selections are different documents, so nothing is paired); no
    interval below `intervals.MIN_DOCS` documents in either. `.verdict(a, b)` reads it."""

    def parts(sel: Selection) -> tuple[np.ndarray, np.ndarray]:
        n = token_lengths(sel.documents, tokenizer)
        return n * np.array([d.label == positive_label for d in sel.documents]), n

    (pa, na), (pb, nb) = parts(a), parts(b)
    diff = lambda ia, ib: pa[ia].sum() / na[ia].sum() - pb[ib].sum() / nb[ib].sum()
    estimate = float(diff(np.arange(len(pa)), np.arange(len(pb))))
    low, high = bootstrap_interval(
        (np.arange(len(pa)), np.arange(len(pb))),
        diff,
        paired=False,
        vectorized=False,
        confidence=confidence,
        seed=seed,
    )
    return Difference("precision", estimate, low, high, confidence, min(len(pa), len(pb)))
