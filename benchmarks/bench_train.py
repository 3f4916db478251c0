"""Tokens/s of one SAE training step: the kit (ReLU/TopK, ERM/TERM) against a plain-PyTorch step, SAELens and sparsify.

All cases run in one process on the same random activations (d_in 512, d_sae 4096, 4096 tokens
per step, a fixed pool of 8 batches reused). Each case gets a few warm-up steps, then `--steps`
timed steps; cases are interleaved over `--rounds` rounds and the best round counts
(tokens/s = batch * steps / seconds), which damps noise from other work on the machine.

Cases:
  relu, relu-term, topk, topk-term  the kit's real `ssae_kit.train.train_step` (what `train()` runs per step)
  ref-relu        a dozen-line plain-PyTorch ReLU-L1 step (Adam, decoder rows renormalised), no kit code
  saelens-relu    SAELens' StandardTrainingSAE: training_forward_pass + backward + grad clip + Adam,
                  as in its SAETrainer.train_step (skipped if sae_lens is not importable)
  sparsify-topk   EleutherAI sparsify's SparseCoder (k=32, fused sparse encoder backward, embedding_bag
                  decoder) as in its Trainer: fvu loss, backward, gradient projection, Adam, renormalise
                  (skipped if sparsify is not importable; `pip install --no-deps eai-sparsify natsort schedulefree`)

`--real` adds the case that matters for the shipped GSAE: real layer-6 activations of the embedded model
(the held-out BBC documents, cached once under the kit's cache) through the shipped GSAE's weights
(4,608 latents, ~1% firing), batch 2048 as its recipe trains:
  real-relu        the kit's step (sparse where the batch's active share is <= SPARSE_RELU_MAX_DENSITY)
  real-relu-dense  the same step forced dense
  real-ref-relu    the plain-PyTorch dense step above on the same weights and normalised activations
and prints real-relu / real-ref-relu (target >= 2). `--density` instead times sparse vs dense at
synthetic active shares, which is how SPARSE_RELU_MAX_DENSITY was chosen.

Printed ratios (targets): kit ReLU / fastest ReLU peer package (saelens-relu) >= 1.3, and for
information kit ReLU / the plain reference (ref-relu, not a peer: no constraint bookkeeping); kit TopK /
sparsify TopK >= 1.5; TERM step time / ERM step time <= 1.05 for ReLU and for TopK.

glibc's allocator settings move these numbers by 20-70% on CPU (large (B, d_sae) buffers are mmapped
and returned to the OS every step by default). Run it twice and report both:
  .venv/bin/python benchmarks/bench_train.py
  MALLOC_MMAP_THRESHOLD_=1000000000000 MALLOC_TRIM_THRESHOLD_=1000000000000 .venv/bin/python benchmarks/bench_train.py
Options: `--steps 10 --rounds 3 --warmup 3 --threads 2 --cases relu,topk,...`; `--profile topk` prints a
torch.profiler table of a few steps of one case instead of timing.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import ssae_kit.sae as sae_module
from ssae_kit.checkpoints import TrainState
from ssae_kit.sae import SAE, SAEConfig
from ssae_kit.train import train_step
from ssae_kit.train_config import TrainConfig

D_IN, D_SAE, K, SPARSITY = 512, 4096, 32, 1.0
ALL_CASES = ["relu", "relu-term", "topk", "topk-term", "ref-relu", "saelens-relu", "sparsify-topk"]
Step = Callable[[torch.Tensor], object]


def kit_case(arch: str, term: bool, batch: int) -> Step:
    cfg = TrainConfig(
        d_sae=D_SAE,
        architecture=arch,
        k=K,
        batch_size=batch,
        total_tokens=10**15,
        sparsity_coefficient=SPARSITY,
        tilt=1.0 if term else 0.0,
        warmup_tokens=0,
    )
    sae = SAE(SAEConfig(d_in=D_IN, d_sae=D_SAE, architecture=arch, k=K), seed=0)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr)
    state = TrainState(tokens_since_fired=torch.zeros(D_SAE))
    return lambda x: train_step(sae, sae, opt, x, cfg, state, world=1)


def ref_relu_case(batch: int, init: SAE | None = None, sparsity: float = SPARSITY) -> Step:
    """Plain PyTorch: relu((x - b_dec) W_enc + b_enc) W_dec + b_dec, MSE + L1, Adam, unit-norm rows;
    from `init`'s weights on normalised activations if given."""
    if init is None:
        g = torch.Generator().manual_seed(0)
        W_dec = torch.randn(D_SAE, D_IN, generator=g)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        W_enc, b_enc, b_dec = W_dec.T.clone(), torch.zeros(D_SAE), torch.zeros(D_IN)
        scale = 1.0
    else:
        W_enc, W_dec, b_enc, b_dec = (
            t.detach().clone() for t in (init.W_enc, init.W_dec, init.b_enc, init.b_dec)
        )
        scale = init.cfg.norm_scale
    W_enc, W_dec, b_enc, b_dec = (t.requires_grad_() for t in (W_enc, W_dec, b_enc, b_dec))
    opt = torch.optim.Adam([W_enc, b_enc, W_dec, b_dec], lr=1e-3)

    def step(x: torch.Tensor) -> float:
        x = x * scale
        f = F.relu((x - b_dec) @ W_enc + b_enc)
        x_hat = f @ W_dec + b_dec
        loss = (x_hat - x).pow(2).sum(-1).mean() + sparsity * f.sum(-1).mean()  # f >= 0 so |f| = f
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            W_dec.div_(W_dec.norm(dim=1, keepdim=True))
        return float(loss.detach())

    return step


def real_relu_case(init: SAE, batch: int, limit: float | None = None) -> Step:
    """The kit's training step from the shipped GSAE's weights, at its recipe's sparsity coefficient;
    `limit` replaces SPARSE_RELU_MAX_DENSITY during the step (-1: always dense, 1: always sparse)."""
    cfg = TrainConfig(
        d_sae=init.cfg.d_sae, batch_size=batch, total_tokens=10**15, sparsity_coefficient=1.5, warmup_tokens=0
    )
    sae = copy.deepcopy(init)
    opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr)
    state = TrainState(tokens_since_fired=torch.zeros(init.cfg.d_sae))

    def step(x: torch.Tensor) -> object:
        default = sae_module.SPARSE_RELU_MAX_DENSITY
        sae_module.SPARSE_RELU_MAX_DENSITY = default if limit is None else limit
        try:
            return train_step(sae, sae, opt, x, cfg, state, world=1)
        finally:
            sae_module.SPARSE_RELU_MAX_DENSITY = default

    return step


def real_pool(batch: int, n: int) -> tuple[list[torch.Tensor], SAE]:
    """`n` batches of real layer-6 activations (held-out BBC, cached once) and the shipped GSAE."""
    from ssae_kit import load_corpus, load_model
    from ssae_kit.activations import cache_activations
    from ssae_kit.corpora import heldout_split
    from ssae_kit.gsae import load_pretrained
    from ssae_kit.io import cache_dir

    gsae = load_pretrained("ssae-kit", "smollm2-135m-l6-tech1")
    model, tok = load_model("smollm2-135m", device="cpu")
    _, held = heldout_split(load_corpus("bbc-news"))
    store = cache_activations(
        model,
        tok,
        held,
        layer=6,
        out_dir=cache_dir("bench_train_store"),
        max_tokens=batch * n,
        dtype="float32",
    )
    pool = list(store.batches(batch, seed=0, drop_last=True, normalize=False))[:n]
    return pool, gsae


def saelens_case(batch: int) -> Step:
    import sae_lens
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig

    torch.manual_seed(0)
    sae = StandardTrainingSAE(StandardTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, l1_coefficient=SPARSITY))
    sae.train()
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    since_fired = torch.zeros(D_SAE)
    n = [0]

    def step(x: torch.Tensor) -> float:  # SAETrainer.train_step without autocast, LR/coefficient schedulers
        out = sae.training_forward_pass(
            TrainStepInput(
                sae_in=x,
                coefficients={"l1": SPARSITY},
                dead_neuron_mask=since_fired > 1000,
                n_training_steps=n[0],
                is_logging_step=False,
            )
        )
        with torch.no_grad():
            did_fire = out.feature_acts.bool().float().sum(-2).bool()
            since_fired.add_(1)
            since_fired[did_fire] = 0
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        n[0] += 1
        return float(out.loss.detach())

    step.version = sae_lens.__version__  # type: ignore[attr-defined]
    return step


def sparsify_case(batch: int) -> Step:
    with contextlib.redirect_stdout(io.StringIO()):  # it prints which decoder it picked
        import sparsify
        from sparsify import SparseCoder, SparseCoderConfig
        from sparsify.utils import decoder_impl

    torch.manual_seed(0)
    sae = SparseCoder(D_IN, SparseCoderConfig(num_latents=D_SAE, k=K))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    since_fired = torch.zeros(D_SAE)

    def step(x: torch.Tensor) -> float:  # Trainer.fit's local-loss path: auxk_alpha=0, one microbatch
        sae.set_decoder_norm_to_unit_norm()
        out = sae(x)
        out.fvu.backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            since_fired.add_(x.shape[0])
            since_fired[out.latent_indices.flatten()] = 0
        return float(out.fvu.detach())

    step.version = f"{sparsify.__version__}, decoder={decoder_impl.__name__}"  # type: ignore[attr-defined]
    return step


def build(name: str, batch: int) -> Step:
    if name == "relu":
        return kit_case("relu", False, batch)
    if name == "relu-term":
        return kit_case("relu", True, batch)
    if name == "topk":
        return kit_case("topk", False, batch)
    if name == "topk-term":
        return kit_case("topk", True, batch)
    if name == "ref-relu":
        return ref_relu_case(batch)
    if name == "saelens-relu":
        return saelens_case(batch)
    if name == "sparsify-topk":
        return sparsify_case(batch)
    raise ValueError(f"Unknown case {name!r}; pick from {ALL_CASES}.")


def time_cases(steps: dict[str, Step], pool: list[torch.Tensor], args) -> dict[str, float]:
    """Best tokens/s of each case over interleaved rounds, after warm-up steps."""
    for name, step in steps.items():
        if hasattr(step, "version"):
            print(f"{name}: {step.version}")
        for i in range(args.warmup):
            step(pool[i % len(pool)])
    best: dict[str, float] = {name: 0.0 for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            for i in range(args.steps):
                step(pool[i % len(pool)])
            batch = len(pool[0])
            best[name] = max(best[name], batch * args.steps / (time.perf_counter() - start))
    return best


def report(best: dict[str, float], batch: int) -> None:
    print(f"\n{'case':<17}{'tokens/s':>10}{'ms/step':>10}")
    for name, tps in best.items():
        print(f"{name:<17}{tps:>10.0f}{1000 * batch / tps:>10.1f}")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per case per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the best counts")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cases", default=",".join(ALL_CASES), help=f"comma-separated subset of {ALL_CASES}")
    parser.add_argument("--profile", default="", help="profile a few steps of this case instead of timing")
    parser.add_argument("--real", action="store_true", help="the shipped GSAE on real layer-6 activations")
    parser.add_argument("--density", action="store_true", help="sparse vs dense ReLU step by active share")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for var in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        print(f"{var}={os.environ.get(var, '(unset)')}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
        f"d_in {D_IN}, d_sae {D_SAE}, k {K}, warmup {args.warmup}, steps {args.steps} x {args.rounds} rounds"
    )
    gen = torch.Generator().manual_seed(0)
    pool = [torch.randn(args.batch_size, D_IN, generator=gen) for _ in range(8)]

    if args.profile:
        step = build(args.profile, args.batch_size)
        for i in range(args.warmup):
            step(pool[i % len(pool)])
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for i in range(max(args.steps, 1)):
                step(pool[i % len(pool)])
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        return

    if args.density:
        pool, gsae = real_pool(2048, 8)
        print(f"{'b_enc shift':>12}{'active share':>14}{'sparse / dense tokens/s':>25}")
        for shift in (0.0, 0.5, 0.6, 0.7, 0.8, 1.0):
            shifted = copy.deepcopy(gsae)
            with torch.no_grad():
                shifted.b_enc += shift
                active = float((shifted.encode(torch.cat(pool)) > 0).float().mean())
            steps = {
                "sparse": real_relu_case(shifted, 2048, 1.0),
                "dense": real_relu_case(shifted, 2048, -1.0),
            }
            best = time_cases(steps, pool, args)
            print(f"{shift:>12.2f}{active:>14.4f}{best['sparse'] / best['dense']:>25.2f}")
        return

    if args.real:
        pool, gsae = real_pool(2048, 8)
        steps = {
            "real-relu": real_relu_case(gsae, 2048),
            "real-relu-dense": real_relu_case(gsae, 2048, limit=-1.0),
            "real-ref-relu": ref_relu_case(2048, init=gsae, sparsity=1.5),
        }
        with torch.no_grad():
            active = float((gsae.encode(torch.cat(pool)) > 0).float().mean())
        print(
            f"real layer-6 activations: {len(pool)} x 2048 tokens, d_sae {gsae.cfg.d_sae}, active share {active:.4f}"
        )
        best = time_cases(steps, pool, args)
        report(best, 2048)
        for num, den, target in [
            ("real-relu", "real-ref-relu", ">= 2"),
            ("real-relu", "real-relu-dense", "none: the sparse path alone"),
        ]:
            print(f"{num} / {den} = {best[num] / best[den]:.2f}  (target {target})")
        return

    steps: dict[str, Step] = {}
    for name in [c.strip() for c in args.cases.split(",") if c.strip()]:
        try:
            steps[name] = build(name, args.batch_size)
        except ImportError as err:
            print(f"skip {name}: {err} (not installed)")
    best = time_cases(steps, pool, args)
    report(best, args.batch_size)

    def ratio(label: str, num: str, dens: list[str], target: str) -> None:
        dens = [d for d in dens if d in best]
        if num not in best or not dens:
            print(f"{label}: n/a (needs {num} and one of {dens or 'its peers'})")
            return
        den = max(dens, key=best.__getitem__)
        print(f"{label} = {best[num] / best[den]:.2f}  (vs {den}; target {target})")

    ratio("kit ReLU / fastest ReLU peer", "relu", ["saelens-relu"], ">= 1.3")
    ratio("kit ReLU / plain reference  ", "relu", ["ref-relu"], "none: for information")
    ratio("kit TopK / sparsify TopK    ", "topk", ["sparsify-topk"], ">= 1.5")
    for arch in ("relu", "topk"):
        if arch in best and f"{arch}-term" in best:
            t = best[arch] / best[f"{arch}-term"]  # step-time ratio = inverse tokens/s ratio
            print(f"kit {arch} TERM / ERM step time = {t:.3f}  (target <= 1.05)")
        else:
            print(f"kit {arch} TERM / ERM step time: n/a (needs {arch} and {arch}-term)")


if __name__ == "__main__":
    main()
