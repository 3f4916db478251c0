"""Rebuild the rarity sweep: when does specialization pay, as a function of how rare the subdomain is?

For each share of the subdomain (tech) in a GSAE's training tokens, train a GSAE with the kit's
recipe (`ssae_kit.gsae`), test its convergence, fine-tune it into SSAEs on notebook 01's `dense`,
`none` and `random` selections, and compare spliced CE in and out of domain with paired 95%
bootstrap intervals over documents. Results go to data/sweeps/rarity_sweep.json (+ .csv) after each
share, so a stopped run keeps what it finished; re-running resumes (every step is checkpointed).

    make sweep                                              # in the background, log in runs/gsae/sweep.log
    .venv/bin/python data/sweeps/build_rarity_sweep.py      # the same, in the foreground
"""

from __future__ import annotations

import argparse
import logging
import platform
import time
from pathlib import Path

import torch

from ssae_kit import load_model
from ssae_kit.sweep import (
    SweepConfig,
    prepare,
    run_share,
    sweep_reading,
    sweep_rows,
    sweep_table,
    write_sweep,
)
from ssae_kit.viz import plot_rarity_sweep

HERE = Path(__file__).resolve().parent
log = logging.getLogger("build_rarity_sweep")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--shares", nargs="+", default=["0.01", "0", "natural", "0.05"], help="'natural' or [0, 1)"
    )
    p.add_argument("--gsae-tokens", type=int, default=SweepConfig.gsae_tokens)
    p.add_argument("--sparsity-coefficient", type=float, default=1.5)
    p.add_argument("--threads", type=int, default=2, help="torch threads: fixed, since sums depend on it")
    p.add_argument("--work", default="runs/gsae", help="stores and runs (shared with build_gsae.py)")
    p.add_argument("--out", default=str(HERE), help="where rarity_sweep.json/.csv go")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    shares = tuple(None if s == "natural" else float(s) for s in args.shares)
    cfg = SweepConfig(
        shares=shares, gsae_tokens=args.gsae_tokens, sparsity_coefficient=args.sparsity_coefficient
    )
    work = Path(args.work)
    model, tokenizer = load_model(cfg.model, device="cpu")
    data = prepare(cfg, work, model, tokenizer)
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
    results = []
    for share in cfg.shares:
        t0 = time.perf_counter()
        results.append(run_share(data, cfg, share, work, count))
        log.info("share %s done in %.0f s", share, time.perf_counter() - t0)
        env = dict(threads=args.threads, torch=torch.__version__, machine=platform.machine())
        write_sweep(Path(args.out), cfg, results, env)
        plot_rarity_sweep(sweep_rows(results)).savefig(Path(args.out) / "rarity_sweep.png", dpi=120)
        (Path(args.out) / "README.md").write_text(_card(cfg, results, env))
    print(sweep_table(results))


def _card(cfg: SweepConfig, results: list[dict], env: dict) -> str:
    """data/sweeps/README.md: what the sweep is, its table, the readings, how to rebuild it."""
    shares = ", ".join("natural" if s is None else f"{100 * s:g}%" for s in cfg.shares)
    done = ", ".join(r["share_name"] for r in results)
    readings = "\n".join(f"- {s}" for s in sweep_reading(sweep_rows(results)))
    return f"""# The rarity sweep: when does specialization pay?

One GSAE per share of **{cfg.subdomain}** in its training tokens ({shares}; shares done: {done}), each
trained with the kit's recipe (`ssae_kit.gsae.gsae_config`: ReLU + L1, {cfg.d_sae} latents on layer
{cfg.layer} of SmolLM2-135M-Instruct, sparsity coefficient {cfg.sparsity_coefficient:g}, centered input
scale, {cfg.gsae_tokens:,} training tokens, the same for every share; the shipped GSAE in `data/saes/`
follows this recipe at 1% tech). Each GSAE is fine-tuned for {cfg.ssae_tokens:,} tokens (lr {cfg.ssae_lr:g}) on notebook 01's
`dense`, `none` and `random` selections ({cfg.budget_tokens:,}-token budget, split seed {cfg.seed}) and
every SAE is evaluated on the first {cfg.eval_contexts} windows of {cfg.n_eval_docs} held-out {cfg.subdomain}
documents (in domain) and {cfg.n_eval_docs} held-out others (out of domain), never trained on. Cells:
spliced CE difference in nats per token, 95% paired bootstrap interval over documents; below 0, the
first SAE predicts better.

{sweep_table(results)}
![the sweep](rarity_sweep.png)

What the sweep says about the claims pre-registered in notebook 02 (computed by `ssae_kit.sweep.sweep_reading`):
{readings}

Files: `rarity_sweep.json` (config, environment, every number per share: share reached and tokens per
label, the GSAE's metrics and convergence test, each SSAE's metrics and comparisons), `rarity_sweep.csv`
(one row per share, `ssae_kit.sweep.sweep_rows`), `rarity_sweep.png`. Notebook 02 (section 8) draws them.

Rebuild: `make sweep` (= `python data/sweeps/build_rarity_sweep.py`; in the background, niced, log
in `runs/gsae/sweep.log`; resumable: every GSAE, fine-tune and finished share is kept in
`runs/gsae/`). CPU, {env["threads"]} torch threads, torch {env["torch"]}, {env["machine"]}.
"""


if __name__ == "__main__":
    main()
