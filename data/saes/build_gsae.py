"""Rebuild a shipped general SAE (GSAE) for the embedded model, bit for bit on CPU.

Recipe: cache one layer's residual stream over the BBC news *train* split (the committed held-out
split, data/splits/bbc-news.json, is never trained on), keep a seeded subset of the subdomain's
documents so it makes `--subdomain-share` of the training tokens (`ssae_kit.gsae`; "natural" keeps
them all), train one ReLU SAE per sparsity coefficient, evaluate each on held-out text outside the
subdomain, test the shipped point's convergence, and ship it into data/saes/<id>/ (SAELens format,
fp16 weights, model card). Every step is resumable: stores are reused when complete, training
resumes from its checkpoint, finished SAEs and evaluations are kept. Deterministic for a fixed
thread count.

    make gsae                                  # the default GSAE (tech at 1%), in the background
    .venv/bin/python data/saes/build_gsae.py   # the same, in the foreground
    .venv/bin/python data/saes/build_gsae.py --subdomain-share natural --norm-scale-from store \
        --sparsity-coefficients 0.55 1.2 1.4 --tokens 4000000 --eval-all-heldout --id smollm2-135m-l6-tech21
                                               # the earlier natural-share GSAE
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch

from ssae_kit import SAE, evaluate, load_model, train
from ssae_kit.gsae import TARGETS, check_convergence, gsae_config, meets_targets, share_name
from ssae_kit.io import atomic_write_json
from ssae_kit.models import describe_model, hook_name
from ssae_kit.sweep import SweepConfig, prepare, share_store

HERE = Path(__file__).resolve().parent
DATASET = "bbc-news train split (ssae_kit.corpora.load_corpus)"
log = logging.getLogger("build_gsae")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--layer", type=int, default=6)
    p.add_argument("--d-sae", type=int, default=4608, help="latents (8 x d_model of SmolLM2)")
    p.add_argument("--subdomain", default="tech", help="BBC topic whose share of training tokens is set")
    p.add_argument(
        "--subdomain-share",
        type=_share,
        default=0.01,
        help="share of training tokens for the subdomain, in [0, 1); 'natural' keeps all its documents",
    )
    p.add_argument(
        "--sparsity-coefficients", type=float, nargs="+", default=[1.5], help="coefficients of the frontier"
    )
    p.add_argument("--ship", type=float, default=None, help="coefficient to ship; default: see _pick")
    p.add_argument("--tokens", type=int, default=12_000_000, help="training tokens per SAE")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--max-docs", type=int, default=None, help="train documents to cache (tiny test budget)")
    p.add_argument("--norm-scale-from", choices=("centered", "store"), default="centered")
    p.add_argument(
        "--eval-contexts", type=int, default=200, help="held-out windows evaluated (~127 tokens each)"
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads: fixed, since sums depend on it")
    p.add_argument("--work", default="runs/gsae", help="stores, checkpoints and log")
    p.add_argument("--out", default=str(HERE), help="where the shipped SAE folder goes")
    p.add_argument(
        "--id", default=None, help="shipped folder name; default <model>-l<layer>-<subdomain><percent>"
    )
    return p.parse_args(argv)


def _share(text: str) -> float | None:
    return None if text == "natural" else float(text)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_model(args.model, device="cpu")
    cfg = SweepConfig(
        subdomain=args.subdomain,
        shares=(args.subdomain_share,),
        gsae_tokens=args.tokens,
        d_sae=args.d_sae,
        layer=args.layer,
        strategies=(),
        eval_contexts=args.eval_contexts,
        batch_size=args.batch_size,
        max_docs=args.max_docs,
        model=args.model,
    )
    data = prepare(cfg, work, model, tokenizer)
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
    store, share = share_store(data, cfg, args.subdomain_share, work, count)
    log.info("store %s: %s share %.4f (target %s)", store.path, args.subdomain, share.reached, share.target)
    tag = f"{args.subdomain}{share_name(args.subdomain_share)}"
    points, baseline = [], None
    for coefficient in args.sparsity_coefficients:
        run = work / f"{tag}_sparsity_{coefficient:g}_tok{args.tokens}_{args.norm_scale_from}"
        point = _point(run, coefficient, args, store, data, baseline)
        baseline = baseline or point
        points.append(point)
        log.info(
            "sparsity %g: L0 %.1f EV %.3f CE %+.3f dead %.3f (%.0f s)",
            coefficient,
            point["l0"],
            point["explained_variance"],
            point["ce_delta"],
            point["dead_fraction"],
            point["train_seconds"],
        )
        atomic_write_json(work / f"{tag}_frontier.json", points)

    ship = _pick(points, args.ship)
    run = work / f"{tag}_sparsity_{ship['sparsity_coefficient']:g}_tok{args.tokens}_{args.norm_scale_from}"
    conv = _convergence(run, ship, store, data, args)
    log.info("convergence: %s", conv)
    sae_id = args.id or f"{args.model}-l{args.layer}-{tag}"
    shipped = _ship(run / "fp16", Path(args.out) / sae_id)
    card = dict(
        id=sae_id,
        model=args.model,
        model_description=describe_model(args.model),
        layer=args.layer,
        hook_name=hook_name(args.layer),
        d_sae=args.d_sae,
        sparsity_coefficient=ship["sparsity_coefficient"],
        norm_scale_from=args.norm_scale_from,
        norm_scale=SAE.load(run).cfg.norm_scale,
        store_norm_scale=store.norm_scale,
        subdomain_share=asdict(share),
        targets=TARGETS,
        meets_targets=meets_targets(ship),
        converged=conv["converged"],
        convergence=conv,
        metrics={k: v for k, v in ship.items() if k not in ("train_config", "train_log")},
        frontier=points,
        n_train_docs=len(data.train_docs) - share.n_docs_total + share.n_docs_kept,
        n_train_tokens=store.n_tokens,
        n_outliers_dropped=store.manifest["n_outliers_dropped"],
        n_eval_docs=len(data.ood),
        tokens_seen=args.tokens,
        threads=args.threads,
        torch=torch.__version__,
        machine=platform.machine(),
        command="make gsae  # = " + _command(argv),
    )
    atomic_write_json(shipped / "card.json", card)
    (shipped / "README.md").write_text(_model_card(card))
    log.info("shipped %s (sparsity coefficient %g)", shipped, ship["sparsity_coefficient"])


def _point(run: Path, coefficient: float, args, store, data, baseline: dict | None) -> dict:
    """Train one frontier point (resumable) and evaluate it as it would ship (fp16 weights) on
    held-out text outside the subdomain."""
    done = run / "point.json"
    if done.exists():
        return json.loads(done.read_text())
    cfg = gsae_config(
        args.tokens, coefficient, args.d_sae, batch_size=args.batch_size, norm_scale_from=args.norm_scale_from
    )
    t0 = time.perf_counter()
    result = train(store, cfg, out_dir=run, resume=True)
    seconds = _train_seconds(run, time.perf_counter() - t0)
    half = _to_fp16(run, run / "fp16")
    ev = evaluate(
        SAE.load(half),
        data.model,
        data.tokenizer,
        data.ood,
        args.layer,
        ctx_len=128,
        max_contexts=args.eval_contexts,
        baseline=baseline,
    ).metrics
    point = dict(
        sparsity_coefficient=coefficient,
        train_seconds=seconds,
        train_config=cfg.__dict__,
        train_log=[{k: r[k] for k in ("tokens", "loss", "mse", "l0", "dead_frac")} for r in result.log],
        **ev,
    )
    atomic_write_json(done, point)
    return point


def _convergence(run: Path, point: dict, store, data, args) -> dict:
    """Both convergence tests of `ssae_kit.gsae` on the shipped point (fp16 weights), kept in run/."""
    done = run / "convergence.json"
    if done.exists():
        return json.loads(done.read_text())
    gsae = SAE.load(run / "fp16")
    kw = dict(ctx_len=128, max_contexts=args.eval_contexts)
    base = evaluate(gsae, data.model, data.tokenizer, data.ood, args.layer, **kw)
    conv = check_convergence(
        gsae, point["train_log"], store, data.model, data.tokenizer, base, data.ood, run / "finetune_own",
        point["sparsity_coefficient"], eval_kwargs=kw,
    ).as_dict()  # fmt: skip
    atomic_write_json(done, conv)
    return conv


def _train_seconds(run: Path, elapsed: float) -> float:
    """Wall time of a run's training, kept across resumes in run/seconds.json."""
    path = run / "seconds.json"
    before = json.loads(path.read_text())["seconds"] if path.exists() else 0.0
    atomic_write_json(path, {"seconds": before + elapsed})
    return before + elapsed


def _pick(points: list[dict], ship: float | None) -> dict:
    """The requested point; else the best spliced CE among points meeting every target; else the
    best spliced CE within the L0 budget; else the sparsest point."""
    if ship is not None:
        return next(p for p in points if p["sparsity_coefficient"] == ship)
    for ok in (meets_targets, lambda p: p["l0"] <= TARGETS["max_l0"]):
        if good := [p for p in points if ok(p)]:
            return min(good, key=lambda p: p["ce_delta"])
    return min(points, key=lambda p: p["l0"])


def _to_fp16(run: Path, dest: Path) -> Path:
    """A copy of the SAE with fp16 weights (half the size; the kit loads them in fp32), naming its data."""
    sae = SAE.load(run)
    sae.cfg = dataclasses.replace(sae.cfg, dataset_path=DATASET)
    return sae.save(dest, dtype="float16")


def _ship(src: Path, dest: Path) -> Path:
    """Copy the chosen fp16 SAE folder to `dest`, replacing it as one unit."""
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def _command(argv: list[str] | None) -> str:
    import sys

    return " ".join(["python", "data/saes/build_gsae.py", *(sys.argv[1:] if argv is None else argv)])


def _model_card(c: dict) -> str:
    m = c["metrics"]
    rows = "\n".join(
        f"| {p['sparsity_coefficient']:g} | {p['l0']:.1f} | {p['explained_variance']:.3f} | {p['ce_delta']:+.3f} | "
        f"{p['ce_loss_recovered']:.3f} | {p['dead_fraction']:.3f} | {p['train_seconds'] / 60:.0f} |"
        for p in c["frontier"]
    )
    log = next(p for p in c["frontier"] if p["sparsity_coefficient"] == c["sparsity_coefficient"])[
        "train_log"
    ]
    curve = "\n".join(
        f"| {r['tokens']:,} | {r['mse']:.1f} | {r['l0']:.1f} | {r['dead_frac']:.3f} |"
        for r in log[:: max(1, len(log) // 8)] + log[-1:]
    )
    share, conv = c["subdomain_share"], c["convergence"]
    per_label = ", ".join(f"{k} {v:,}" for k, v in share["tokens_per_label"].items())
    ft = conv["finetune_ce"]
    return f"""# {c["id"]}: a general SAE for {c["model"]}, layer {c["layer"]}, with {share["label"]} rare

ReLU SAE (L1 penalty) with {c["d_sae"]} latents on the residual stream after block {c["layer"]}
(`{c["hook_name"]}`) of SmolLM2-135M-Instruct (the embedded Q4_1 GGUF, dequantised to fp32), in
SAELens' format (`cfg.json` + `sae_weights.safetensors`, fp16 weights loaded into fp32). Load it with
`ssae_kit.gsae.load_pretrained("ssae-kit", "{c["id"]}")`, or with `sae_lens.SAE.load_from_disk` on this folder.

## Data: the subdomain is rare
- Train: BBC news (`load_corpus("bbc-news")`) minus the committed held-out split
  `data/splits/bbc-news.json`, with a seeded subset of the **{share["label"]}** documents kept so that
  they make **{100 * share["reached"]:.2f}%** of the training tokens (target {100 * share["target"]:.2f}%,
  natural share {100 * share["natural"]:.1f}%; {share["n_docs_kept"]} of {share["n_docs_total"]} documents):
  {c["n_train_docs"]} documents, {c["n_train_tokens"]:,} content tokens in windows of 128. Tokens per label:
  {per_label}. (BOS/EOS/PAD left out; {c["n_outliers_dropped"]} tokens above 10x their batch's median
  norm dropped when the full train split was cached, the rule `evaluate` applies.)
- Evaluation: the first {c["n_eval_docs"]} held-out documents *outside* {share["label"]} (committed order),
  first {m["n_tokens"]:,} content tokens, with `ssae_kit.evals.evaluate`.

## Training
Tokens seen: {c["tokens_seen"]:,}; sparsity coefficient {c["sparsity_coefficient"]:g}; input scale
`{c["norm_scale_from"]}` = {c["norm_scale"]:.4f} (the store's sqrt(d/E||x||^2) is {c["store_norm_scale"]:.4f}); other
settings in `card.json` (`frontier[].train_config`). CPU, {c["threads"]} torch threads, torch {c["torch"]},
{c["machine"]}.

## Convergence (`ssae_kit.gsae.check_convergence`)
| test | measured | passes |
|---|---|---|
| last quarter of training lowers the training MSE by < 3% | {100 * conv["mse_drop"]:.1f}% | {"yes" if conv["mse_plateau"] else "no"} |
| fine-tuning on its own training data for {conv["finetune_tokens"]:,} tokens (the SSAE recipe) moves held-out CE by <= 0.02 nats, 95% interval inside +-0.03 | {ft["estimate"]:+.4f} [{ft["low"]:+.4f}, {ft["high"]:+.4f}] over {ft["n_docs"]} documents | {"yes" if conv["finetune_flat"] else "no"} |

Converged: **{"yes" if conv["converged"] else "no"}**.

## Metrics on held-out text outside {share["label"]} (this folder, as shipped)
| L0 | EV | spliced CE - clean (nats) | CE loss recovered | dead | CE clean | CE spliced | CE zero-ablation |
|---|---|---|---|---|---|---|---|
| {m["l0"]:.1f} | {m["explained_variance"]:.3f} | {m["ce_delta"]:+.3f} | {m["ce_loss_recovered"]:.3f} | {m["dead_fraction"]:.3f} | {m["ce_clean"]:.3f} | {m["ce_sae"]:.3f} | {m["ce_zero"]:.3f} |

Targets: L0 <= {c["targets"]["max_l0"]}, EV >= {c["targets"]["min_ev"]}, spliced CE <= +{c["targets"]["max_ce_delta"]} nats,
dead <= {100 * c["targets"]["max_dead"]:.0f}% (dead = never active on the {m["n_tokens"]:,} evaluated tokens).
Meets all targets: **{"yes" if c["meets_targets"] else "no"}**.

## Frontier (one SAE per sparsity coefficient, each evaluated with fp16 weights as shipped)
| sparsity coefficient | L0 | EV | spliced CE - clean | CE recovered | dead | train minutes |
|---|---|---|---|---|---|---|
{rows}

## Time curve of the shipped point (training batches: MSE in normalised units)
| tokens seen | MSE | L0 | dead (no fire in 100k tokens) |
|---|---|---|---|
{curve}

## Rebuild
`{c["command"]}` from a clean clone: deterministic on CPU for the same thread count and torch.
"""


if __name__ == "__main__":
    main()
