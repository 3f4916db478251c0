"""TracIn scoring speed (forward-mode jvp vs the explicit per-document-gradient loop) and the added
cost of a TracIn selection over dense retrieval alone.

On the embedded SmolLM2-135M, the shipped GSAE (smollm2-135m-l6-tech1: layer 6, 576 x 4608, relu) and
BBC news (the committed split, subdomain `--label`, 5 seeds), it measures in one run:
  (1) `select(..., "dense")` alone at `--budget` tokens (after a warm-up call that loads the
      encoder and the pool's cached embeddings) and `select_tracin(..., "dense")` with its defaults
      (3x candidates, 3 checkpoints); the ratio, the phases select_tracin logs (retrieval, caching
      the candidates' and seeds' activations, checkpoints, scores), and both selections' token
      precision;
  (2) TracIn scoring throughput in candidate tokens/s on those candidates' activations:
      `tracin_scores` (one jvp per 4096-token chunk and checkpoint, best of `--repeats`) against
      `tracin_scores_explicit` (one backward per document and checkpoint, the gradient dotted with
      g) on the first `--explicit-docs` documents, their scores' relative difference, the ratio and
      the target check "jvp >= 20x the explicit loop";
  (3) the same on `--short`-token pieces of 4096 of those tokens taken as documents, where the
      explicit loop's per-document cost (graph, gradient tensors, dot) is no longer amortised.
Both scorers do the same matrix products per token (forward 2, tangent or backward 3), so the
ratio is the per-document overhead the jvp batches away, less forward-mode's own overhead: it grows
as documents shorten. Measured 2026-11-30 on 2 idle cores at --budget 50000: selection 161 s vs
dense 1.3 s (activations 59 s, scores 97 s); scoring 0.8x on BBC documents, 4.1x on 16-token pieces.
Run: `HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_tracin.py [--budget 5000] [--threads 2]`.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch

from ssae_kit import load_corpus, load_model
from ssae_kit.corpora import heldout_split
from ssae_kit.embeddings import Embedder
from ssae_kit.gsae import load_pretrained
from ssae_kit.retrieval import select, selection_report
from ssae_kit.splits import dedupe, split_subdomain
from ssae_kit.store import ActivationStore
from ssae_kit.tracin import (
    build_checkpoints,
    read_store,
    seed_gradient,
    select_tracin,
    tracin_scores,
    tracin_scores_explicit,
)

SPARSITY = 1.0  # select_tracin's default coefficient: the loss the scores differentiate


def timed(fn):
    """(wall seconds, result) of one call."""
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def throughput(checkpoints, grads, acts, doc_ids, n_explicit: int, repeats: int, label: str) -> float:
    """Print jvp and explicit tokens/s on (acts, doc_ids); return the ratio."""
    n_docs = int(doc_ids.max()) + 1
    t_fast = min(
        timed(lambda: tracin_scores(checkpoints, grads, acts, doc_ids, n_docs, SPARSITY))[0]
        for _ in range(repeats)
    )
    fast = tracin_scores(checkpoints, grads, acts, doc_ids, n_docs, SPARSITY)
    sub = doc_ids < n_explicit
    t_slow, slow = timed(
        lambda: tracin_scores_explicit(checkpoints, grads, acts[sub], doc_ids[sub], n_explicit, SPARSITY)
    )
    keep = ~torch.isnan(slow)
    rel = float((fast[:n_explicit][keep] - slow[keep]).norm() / slow[keep].norm())
    fast_tps, slow_tps = len(acts) / t_fast, int(sub.sum()) / t_slow
    print(
        f"  {label}: jvp {fast_tps:,.0f} tok/s ({len(acts):,} tokens, {n_docs} docs, {t_fast:.2f} s); explicit "
        f"{slow_tps:,.0f} tok/s ({int(sub.sum()):,} tokens, {n_explicit} docs, {t_slow:.2f} s); "
        f"ratio {fast_tps / slow_tps:.1f}x; scores' relative difference {rel:.1e}"
    )
    return fast_tps / slow_tps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=5000, help="LM-token budget of the selections")
    parser.add_argument("--label", default="tech")
    parser.add_argument("--explicit-docs", type=int, default=12, help="documents the explicit loop scores")
    parser.add_argument("--short", type=int, default=16, help="tokens per piece in part (3)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target", type=float, default=20.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(format="  logged: %(message)s")
    logging.getLogger("ssae_kit.tracin").setLevel(logging.INFO)

    model, tok = load_model("smollm2-135m", device="cpu")
    gsae = load_pretrained("ssae-kit", "smollm2-135m-l6-tech1")
    docs, held = heldout_split(load_corpus("bbc-news"), "bbc-news")
    split = split_subdomain(dedupe(docs), args.label, 5, 50, 50, seed=0, heldout_docs=held)
    embedder = Embedder()
    print(
        f"pool {len(split.pool)} docs, {len(split.seeds)} seeds ({args.label}); budget {args.budget:,} tokens; "
        f"GSAE d_sae={gsae.cfg.d_sae}, layer {gsae.cfg.layer}; {torch.get_num_threads()} threads"
    )

    dense = lambda: select(split.pool, split.seeds, "dense", args.budget, tok, embedder=embedder)
    dense()  # warm-up: the encoder and the pool's embeddings
    t_dense, sel_dense = timed(dense)
    with tempfile.TemporaryDirectory() as tmp:
        t_tracin, sel_tracin = timed(
            lambda: select_tracin(
                split.pool,
                split.seeds,
                "dense",
                args.budget,
                tok,
                model,
                gsae.cfg.layer,
                gsae,
                sparsity_coefficient=SPARSITY,
                embedder=embedder,
                store_dir=tmp,
                device="cpu",
            )
        )
        print("(1) selection cost")
        print(
            f"  dense alone {t_dense:.2f} s; dense_tracin {t_tracin:.1f} s: {t_tracin / t_dense:.0f}x dense alone, "
            f"+{t_tracin - t_dense:.1f} s"
        )
        for sel in (sel_dense, sel_tracin):
            r = selection_report(sel, args.label, split.pool, tok)
            print(
                f"  {sel.strategy:<13} token precision {r['token_precision']:.3f} "
                f"[{r['token_precision_low']:.3f}, {r['token_precision_high']:.3f}], {r['n_docs']} docs, "
                f"{r['tokens_used']:,} tokens"
            )
        (cand_dir,), (seed_dir,) = Path(tmp).glob("candidates-*"), Path(tmp).glob("seeds-*")
        acts, doc_ids = read_store(ActivationStore(cand_dir))
        seed_store = ActivationStore(seed_dir)
        checkpoints = build_checkpoints(
            gsae, seed_store, sparsity_coefficient=SPARSITY, device="cpu"
        )  # as select_tracin's
        seed_acts, seed_ids = read_store(seed_store)
    grads = [seed_gradient(sae, seed_acts, seed_ids, SPARSITY) for sae, _ in checkpoints]
    print(f"(2, 3) scoring throughput, {len(checkpoints)} checkpoints")
    ratio = throughput(checkpoints, grads, acts, doc_ids, args.explicit_docs, args.repeats, "real documents")
    part = acts[:4096]  # the jvp's cost does not depend on where documents end; 4096 tokens keep (3) short
    pieces = torch.arange(len(part)) // args.short
    throughput(
        checkpoints, grads, part, pieces, args.explicit_docs * 8, args.repeats, f"{args.short}-token pieces"
    )
    verdict = "met" if ratio >= args.target else "NOT met"
    print(f"target jvp >= {args.target:g}x the explicit loop on real documents: {verdict} ({ratio:.1f}x)")


if __name__ == "__main__":
    main()
