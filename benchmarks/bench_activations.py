"""Tokens/s of a full forward, `forward_to_layer` and `cache_activations` on the embedded model.

Prints (c)/(b) (caching incl. tokenisation and disk writes vs the bare truncated forward;
target >= 0.95) and (b)/(a) (stopping at layer 6 vs running all 30 blocks + unembedding;
target >= 3), all measured in one run on the same token windows.
Run: `.venv/bin/python benchmarks/bench_activations.py [--docs 64] [--layer 6]`.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from ssae_kit import cache_activations, load_corpus, load_model
from ssae_kit.corpora import tokenize_contexts
from ssae_kit.hooks import forward_to_layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=64)
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--ctx-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model("smollm2-135m", device="cpu")
    docs = load_corpus("bbc-news")[: args.docs]
    ctx = tokenize_contexts(docs, tok, args.ctx_len)
    n_tokens = int(ctx.attention_mask.sum())
    batches = [slice(i, i + args.batch_size) for i in range(0, len(ctx), args.batch_size)]

    def timed(fn) -> float:
        fn(batches[:1])  # warm-up
        start = time.perf_counter()
        fn(batches)
        return n_tokens / (time.perf_counter() - start)

    @torch.inference_mode()
    def full(bs):
        for sl in bs:
            model(input_ids=ctx.input_ids[sl], attention_mask=ctx.attention_mask[sl], use_cache=False)

    @torch.inference_mode()
    def to_layer(bs):
        for sl in bs:
            forward_to_layer(model, ctx.input_ids[sl], args.layer, ctx.attention_mask[sl])

    def caching(bs):
        with tempfile.TemporaryDirectory() as d:
            cache_activations(
                model,
                tok,
                docs if len(bs) > 1 else docs[:2],
                args.layer,
                d,
                ctx_len=args.ctx_len,
                batch_size=args.batch_size,
            )

    a, b, c = timed(full), timed(to_layer), timed(caching)
    print(f"tokens per pass: {n_tokens} ({len(docs)} BBC docs, ctx_len {args.ctx_len}, layer {args.layer})")
    print(f"(a) full forward        {a:9.0f} tok/s")
    print(f"(b) forward_to_layer    {b:9.0f} tok/s")
    print(f"(c) cache_activations   {c:9.0f} tok/s  (tokenise + forward + fp16 shards on disk)")
    print(f"(c)/(b) = {c / b:.3f}  (target >= 0.95)")
    print(f"(b)/(a) = {b / a:.2f}   (target >= 3)")


if __name__ == "__main__":
    main()
