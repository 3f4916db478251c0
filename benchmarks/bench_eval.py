"""Where `evals.evaluate`'s time goes, against a bare Hugging Face forward and the machine's matmul peak.

Prints, measured in one run on the same held-out windows and batch size:
- tokens/s of `evaluate` for a further SAE (baseline reused: one spliced pass per batch), with the
  model's forward in fp32 and in bf16 (autocast; `precision="auto"` picks it where bf16 is native),
  the residual up to the layer kept from an earlier evaluation (`hooks.shared_prefix`) or run again
  (`hooks.PREFIX_CACHE_BYTES = 0`), and of a bare fp32 forward with labels; their ratios, among them
  the default (bf16, prefix kept) against evaluate as the speed issue found it (fp32, prefix run);
- the same for the first SAE's evaluation (spliced, clean, zero- and mean-ablated passes; with the
  prefix not kept it runs twice a batch, once for the first three passes and once for the last);
- the bare forward's GFLOP/s (2 x the parameters each token passes through, LM head included) against
  the fp32 matmul peak measured here (a 2048^3 product);
- the cost split of the bare forward: the prefix up to the hooked layer, the later blocks, and the LM
  head with the loss; and the SAE's own encode/decode on those tokens.
Run: `.venv/bin/python benchmarks/bench_eval.py [--windows 48] [--layer 6] [--threads 2]`.
`--batch-sizes 4 8 16 32` instead times `evaluate` (precision "auto") at each batch size on the same
windows and prints tokens/s and the ratio to the default batch (8): how `evaluate`'s default was chosen.
"""

from __future__ import annotations

import argparse
import time

import torch

from ssae_kit import evaluate, hooks, load_corpus, load_model
from ssae_kit.corpora import heldout_split, tokenize_contexts
from ssae_kit.gsae import load_pretrained
from ssae_kit.hooks import forward_to_layer


def seconds(fn, repeats: int = 1) -> float:
    """Best wall time of `repeats` calls after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_peak_gflops(n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / seconds(lambda: a @ b, repeats=5) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=48, help="held-out windows of ctx_len tokens")
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--ctx-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8, help="evaluate's default")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=[], help="time evaluate at each")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_model("smollm2-135m", device="cpu")
    sae = load_pretrained("ssae-kit", "smollm2-135m-l6-tech1")
    _, heldout = heldout_split(load_corpus("bbc-news"))
    docs = heldout[:40]
    ctx = tokenize_contexts(docs, tok, args.ctx_len, max_contexts=args.windows)
    n_tokens = int(ctx.attention_mask.sum())
    if args.batch_sizes:
        by_batch = {}
        for b in args.batch_sizes:
            kw = dict(ctx_len=args.ctx_len, max_contexts=args.windows, batch_size=b)
            base = evaluate(sae, model, tok, docs, args.layer, **kw).metrics
            run = lambda kw=kw, base=base: evaluate(sae, model, tok, docs, args.layer, baseline=base, **kw)
            by_batch[b] = n_tokens / seconds(run)
        ref = by_batch.get(8, next(iter(by_batch.values())))
        for b, tps in by_batch.items():
            print(
                f"batch {b:>3}: {tps:7.0f} tokens/s  ({tps / ref:.2f}x batch {8 if 8 in by_batch else args.batch_sizes[0]})"
            )
        return
    batches = [slice(i, i + args.batch_size) for i in range(0, len(ctx.input_ids), args.batch_size)]
    kw = dict(ctx_len=args.ctx_len, max_contexts=args.windows, batch_size=args.batch_size)

    budget = hooks.PREFIX_CACHE_BYTES
    run = lambda **more: seconds(lambda: evaluate(sae, model, tok, docs, args.layer, **kw, **more))
    t_eval, t_first = {}, {}  # (precision, prefix kept): a further SAE (baseline reused); the first SAE
    for precision in ("fp32", "bf16"):  # "auto" is bf16 where the hardware runs it natively
        kw["precision"] = precision
        base = evaluate(sae, model, tok, docs, args.layer, **kw).metrics
        for kept in (True, False):
            hooks.PREFIX_CACHE_BYTES = budget if kept else 0
            t_eval[precision, kept] = run(baseline=base)
            if precision == "bf16":
                t_first[kept] = run()
    hooks.PREFIX_CACHE_BYTES = budget

    @torch.inference_mode()
    def bare():
        for sl in batches:
            ids, mask = ctx.input_ids[sl], ctx.attention_mask[sl]
            model(
                input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100), use_cache=False
            )

    @torch.inference_mode()
    def prefix():
        return [
            forward_to_layer(model, ctx.input_ids[sl], args.layer, ctx.attention_mask[sl]) for sl in batches
        ]

    @torch.inference_mode()
    def final_hidden():
        return [
            model.model(input_ids=ctx.input_ids[sl], attention_mask=ctx.attention_mask[sl], use_cache=False)[
                0
            ]
            for sl in batches
        ]

    t_bare, t_prefix = seconds(bare), seconds(prefix)
    resid, hidden = prefix(), final_hidden()

    @torch.inference_mode()
    def head_and_loss():
        for h, sl in zip(hidden, batches):
            logits = model.lm_head(h)
            torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1), ctx.input_ids[sl][:, 1:].flatten()
            )

    @torch.inference_mode()
    def sae_pass():
        for r in resid:
            sae(r)

    t_head, t_sae = seconds(head_and_loss), seconds(sae_pass)
    t_later = t_bare - t_prefix - t_head
    n_embed = model.get_input_embeddings().weight.numel()
    per_token = 2 * (sum(p.numel() for p in model.parameters()) - n_embed + model.lm_head.weight.numel())
    gflops = per_token * n_tokens / t_bare / 1e9
    peak = matmul_peak_gflops()

    print(
        f"{n_tokens:,} tokens in {len(ctx.input_ids)} windows of {args.ctx_len}, batch {args.batch_size}, {args.threads} threads"
    )
    for (precision, kept), t in t_eval.items():
        how = "prefix kept" if kept else "prefix run"
        print(f"evaluate {precision}, {how} (a further SAE): {n_tokens / t:8.0f} tokens/s")
    print(f"bare fp32 forward with labels:              {n_tokens / t_bare:8.0f} tokens/s")
    ratios = (
        (
            "evaluate fp32 (prefix run) / bare forward",
            t_bare / t_eval["fp32", False],
            "1.0: at the model's speed",
        ),
        (
            "default (bf16, kept) / as filed (fp32, run)",
            t_eval["fp32", False] / t_eval["bf16", True],
            "target >= 2",
        ),
        ("bf16 / fp32, prefix run", t_eval["fp32", False] / t_eval["bf16", False], "bf16 alone"),
        (
            "prefix kept / run, bf16, a further SAE",
            t_eval["bf16", False] / t_eval["bf16", True],
            "at most 1/(1-prefix share)",
        ),
        (
            "prefix kept / run, bf16, the first SAE",
            t_first[False] / t_first[True],
            "4 passes; run: 2 prefixes a batch",
        ),
    )
    for name, ratio, note in ratios:
        print(f"ratio {name:<44} {ratio:5.2f}  ({note})")
    print(
        f"bare forward: {gflops:.0f} GFLOP/s; fp32 matmul peak here {peak:.0f} GFLOP/s; ratio {gflops / peak:.2f}"
    )
    print("cost split of the bare forward:")
    for name, t in (("prefix to the layer", t_prefix), ("later blocks", t_later), ("LM head + loss", t_head)):
        print(f"  {name:<22} {t:6.2f} s  {t / t_bare:5.1%}")
    print(f"  {'SAE encode + decode':<22} {t_sae:6.2f} s  {t_sae / t_bare:5.1%} (of a bare forward)")


if __name__ == "__main__":
    main()
