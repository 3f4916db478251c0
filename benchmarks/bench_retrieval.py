"""Exact vs IVF faiss search against numpy brute force, and sentence-embedding throughput.

On N random unit-norm 384-d vectors (default 100k; `--data gaussian`: i.i.d. normal, no structure;
`--data clustered`: a random mixture of `--clusters` Gaussian blobs, closer to real embeddings) and
Q separate queries drawn the same way, it measures in one run:
  (1) numpy brute force (queries @ X.T, argpartition + argsort top-k) vs faiss.IndexFlatIP:
      fraction of identical top-k sets and speed ratio numpy / faiss;
  (2) the kit's IVF index (`build_index(X, ivf_threshold=0)`, which tunes nprobe on 100 of its own
      vectors): build time (train + add + nprobe tuning, reported apart), recall@k of the separate
      queries against exact search, speed vs numpy and vs faiss flat, and an nprobe sweep;
  (3) docs/s of `Embedder()` (embedded all-MiniLM-L6-v2) on BBC news documents, after a warm-up batch;
and prints the target check "IVF >= 10x brute force at recall@10 >= 0.95" from the measured numbers.
Every search time is the best of `--repeats` runs. `--nlist-sweep 256,1265,4096` also trains IVF
indexes with other nlist values and reports the smallest swept nprobe reaching the recall target.
Run: `HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_retrieval.py [--data clustered] [--n 100000]`.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import faiss
import numpy as np
import torch

from ssae_kit import load_corpus
from ssae_kit.embeddings import Embedder, build_index

NPROBES = (1, 2, 4, 8, 16, 32, 64, 128)


def make_data(kind: str, n: int, n_queries: int, dim: int, clusters: int, spread: float, seed: int):
    """(X, queries), unit-norm float32. Clustered: centre + `spread` x (unit-norm-sized) noise."""
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        x = rng.standard_normal((n + n_queries, dim), dtype=np.float32)
    else:
        centres = rng.standard_normal((clusters, dim), dtype=np.float32)
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        labels = rng.integers(clusters, size=n + n_queries)
        noise = rng.standard_normal((n + n_queries, dim), dtype=np.float32) * np.float32(
            spread / np.sqrt(dim)
        )
        x = centres[labels] + noise
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x[:n]), np.ascontiguousarray(x[n:])


def best_time(fn, repeats: int):
    """(best wall time over `repeats` calls, result of the last call)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth)]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("gaussian", "clustered"), default="gaussian")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--clusters", type=int, default=1000, help="mixture components for --data clustered")
    parser.add_argument(
        "--spread",
        type=float,
        default=1.0,
        help="clustered: noise norm / centre norm (1.0: a point has cosine ~0.71 to its centre)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--docs", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--nlist-sweep", default="", help="comma-separated nlist values to compare (slow)")
    parser.add_argument("--min-recall", type=float, default=0.95)
    parser.add_argument("--target-speedup", type=float, default=10.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    try:  # numpy's BLAS gets the same thread count, so the comparison is fair
        from threadpoolctl import threadpool_limits

        blas_limit = threadpool_limits(args.threads, user_api="blas")
    except ImportError:
        blas_limit = nullcontext()
    k, r = args.k, args.repeats

    with blas_limit:
        x, q = make_data(args.data, args.n, args.queries, args.dim, args.clusters, args.spread, args.seed)
        desc = (
            "i.i.d. normal" if args.data == "gaussian" else f"{args.clusters} clusters, spread {args.spread}"
        )
        print(
            f"data: {args.data} ({desc}), X {x.shape}, {len(q)} separate queries, k={k}, seed {args.seed}, "
            f"{args.threads} threads; search times = best of {r}"
        )

        def numpy_search():
            scores = q @ x.T
            top = np.argpartition(-scores, k, axis=1)[:, :k]
            order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
            return np.take_along_axis(top, order, axis=1)

        t_np, truth_np = best_time(numpy_search, r)
        flat = faiss.IndexFlatIP(args.dim)
        flat.add(x)
        t_flat, (_, truth) = best_time(lambda: flat.search(q, k), r)
        same = np.mean([set(a) == set(b) for a, b in zip(truth_np, truth)])
        print(
            f"[exact] numpy brute force {t_np * 1e3:8.2f} ms | faiss IndexFlatIP {t_flat * 1e3:8.2f} ms | "
            f"numpy/faiss = {t_np / t_flat:.2f}x | identical top-{k} sets: {same:.3f}"
        )
        blas_min = faiss.cvar.distance_compute_blas_threshold  # faiss uses BLAS only from this many queries
        print(
            f"        (faiss flat/IVF-quantizer use BLAS from {blas_min} queries; below that, their SIMD loop)"
        )

        start = time.perf_counter()
        ivf = build_index(x, ivf_threshold=0, min_recall=args.min_recall, seed=args.seed)
        t_build = time.perf_counter() - start
        nlist, tuned = ivf.nlist, ivf.nprobe
        t_ivf, (_, found) = best_time(lambda: ivf.search(q, k), r)
        rec = recall(found, truth)
        print(
            f"[ivf] build_index: nlist={nlist}, tuned nprobe={tuned} (self-query recall >= {args.min_recall}), "
            f"build+train+tune {t_build:.1f} s (not in search times)"
        )
        print(
            f"[ivf] nprobe={tuned}: {t_ivf * 1e3:.2f} ms, recall@{k} on separate queries {rec:.3f} | "
            f"numpy/IVF = {t_np / t_ivf:.2f}x | faiss-flat/IVF = {t_flat / t_ivf:.2f}x"
        )

        print(f"  nprobe  recall@{k}   ms      numpy/IVF  flat/IVF")
        sweep = []
        for p in NPROBES:
            if p > nlist:
                break
            ivf.nprobe = p
            t, (_, f) = best_time(lambda: ivf.search(q, k), r)
            sweep.append((p, recall(f, truth), t))
            print(f"  {p:6d}  {sweep[-1][1]:8.3f}  {t * 1e3:7.2f}  {t_np / t:8.2f}x  {t_flat / t:7.2f}x")
        ivf.nprobe = tuned

        for nl in [int(s) for s in args.nlist_sweep.split(",") if s.strip()]:
            other = faiss.IndexIVFFlat(faiss.IndexFlatIP(args.dim), args.dim, nl, faiss.METRIC_INNER_PRODUCT)
            other.cp.seed = args.seed
            start = time.perf_counter()
            other.train(x)
            other.add(x)
            t_train = time.perf_counter() - start
            hit = None
            for p in (*NPROBES, 256, 512, 1024):
                if p > nl:
                    break
                other.nprobe = p
                t, (_, f) = best_time(lambda other=other: other.search(q, k), r)
                if recall(f, truth) >= args.min_recall:
                    hit = (p, recall(f, truth), t)
                    break
            msg = (
                f"nprobe={hit[0]} recall {hit[1]:.3f} {hit[2] * 1e3:.2f} ms numpy/IVF {t_np / hit[2]:.2f}x"
                if hit
                else f"no swept nprobe <= {min(nl, 1024)} reaches recall {args.min_recall}"
            )
            print(
                f"[nlist {nl:5d}] train+add {t_train:5.1f} s | first nprobe with recall >= {args.min_recall}: {msg}"
            )

    embedder = Embedder()
    texts = [d.text for d in load_corpus("bbc-news")[: args.docs]]
    embedder.embed(texts[: embedder.batch_size], progress=False)  # warm-up
    start = time.perf_counter()
    embedder.embed(texts, progress=False)
    t_emb = time.perf_counter() - start
    print(
        f"[embed] {embedder.name}: {len(texts)} BBC docs in {t_emb:.2f} s = {len(texts) / t_emb:.1f} docs/s "
        f"(batch {embedder.batch_size}, after one warm-up batch)"
    )

    speedup = t_np / t_ivf
    ok = rec >= args.min_recall and speedup >= args.target_speedup
    print(
        f"target: IVF >= {args.target_speedup:g}x brute force at recall@{k} >= {args.min_recall} -> "
        f"{'PASS' if ok else 'FAIL'} (kit's index as built: nprobe={tuned}, {speedup:.2f}x numpy, recall {rec:.3f})"
    )
    good = [(p, rc, t) for p, rc, t in sweep if rc >= args.min_recall]
    if good:
        p, rc, t = good[0]
        print(
            f"  best swept nprobe meeting recall: {p} (recall {rc:.3f}, {t_np / t:.2f}x numpy, "
            f"{t_flat / t:.2f}x faiss flat)"
        )
    else:
        print(
            f"  no swept nprobe <= {min(NPROBES[-1], nlist)} reaches recall {args.min_recall} on the separate queries"
        )


if __name__ == "__main__":
    main()
