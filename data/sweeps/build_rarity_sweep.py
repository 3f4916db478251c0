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
from ssae_kit.gsae import SweepConfig, prepare, run_share, sweep_table, write_sweep

HERE = Path(__file__).resolve().parent
log = logging.getLogger("build_rarity_sweep")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--shares", nargs="+", default=["0.01", "0", "natural", "0.05"], help="'natural' or [0, 1)"
    )
    p.add_argument("--gsae-tokens", type=int, default=2_000_000)
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
        write_sweep(
            Path(args.out),
            cfg,
            results,
            dict(threads=args.threads, torch=torch.__version__, machine=platform.machine()),
        )
    print(sweep_table(results))


if __name__ == "__main__":
    main()
