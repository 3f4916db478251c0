"""Train an SAE on an activation store, from scratch (GSAE) or from a general SAE (SSAE).

The loop reads like the recipe: next batch -> step -> checkpoint -> log. Budgets, the LR
schedule and the dead-latent window count tokens, not steps. A checkpoint holds everything a
resume needs (weights, Adam, counters, RNG, data position), so a killed run resumed with
`resume=True` ends bit-identical to one that was never killed (CPU, same seed). Under `torchrun`
the SAE is wrapped in DDP and each rank reads its own shards. With DDP each rank tilts (TERM) over
its own tokens; gradients are then averaged as usual.

Where a new SAE starts is measured on its training store: the decoder bias at the activations' mean
or geometric median, and the centred input scale (the default since issue 13), both read from the
store's first shards (up to 100k tokens), deterministic on CPU; `initial_sae` applies them.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .checkpoints import TrainRun, TrainState, load_checkpoint, save_checkpoint, save_finished, store_identity
from .io import CHECKPOINT_FILE, SAE_CFG_FILE, check_writable_dir, folder_lock, remove_stale_temps
from .models import resolve_device
from .sae import SAE, SAEConfig, from_sae_lens
from .store import ActivationStore
from .train_config import TrainConfig, finetune_config, get_lr, objective, per_token_loss

__all__ = [
    "fine_tune",
    "train",
]


@dataclass
class TrainResult:
    sae: SAE
    log: list[dict[str, float]]
    """One dict of metrics per `log_every` steps (step, tokens, lr, loss, mse, l0, dead_frac)."""


def fine_tune(
    gsae: SAE,
    store: ActivationStore,
    sparsity_coefficient: float,
    total_tokens: int,
    out_dir: str | Path,
    lr: float = 5e-4,
    tilt: float = 0.0,
    seed: int = 0,
    device: str = "auto",
) -> SAE:
    """`gsae` fine-tuned into an SSAE on `store` by the kit's recipe (`finetune_config`), saved in
    `out_dir` and resumed from a run left there: the one call every notebook and the sweep use."""
    cfg = finetune_config(
        gsae, store, sparsity_coefficient, total_tokens, lr=lr, tilt=tilt, seed=seed, device=device
    )
    return train(store, cfg, init=gsae, out_dir=out_dir, resume=True).sae


def train(
    store: ActivationStore,
    cfg: TrainConfig,
    init: Any = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train on `store`; `init` (a kit SAE or a SAELens SAE) is fine-tuned into an SSAE.

    A NaN/inf loss stops training with an error before the step is taken; `out_dir` then keeps
    its last checkpoint. If the final save into `out_dir` fails, the run is saved in the kit's
    cache instead and the error says where. A second run into the same `out_dir` while this one
    runs fails at once, naming it (`io.folder_lock`; under torchrun rank 0 holds it)."""
    if not isinstance(store, ActivationStore):
        raise TypeError(
            f"train() needs an ActivationStore, got {type(store).__name__} {str(store)[:60]!r}: open a cached "
            "store with ActivationStore(path), or make one with cache_activations(...)."
        )
    out = check_writable_dir(out_dir) if out_dir is not None else None
    if out is None or int(os.environ.get("RANK", "0")) != 0:
        return _train(store, cfg, init, out, resume)
    with folder_lock(out, "training run"):
        return _train(store, cfg, init, out, resume)


def _train(
    store: ActivationStore, cfg: TrainConfig, init: Any, out: Path | None, resume: bool
) -> TrainResult:
    """`train` once its output folder is checked and locked: start or resume, step, save."""
    rank, world, device = _distributed_setup(cfg)
    sae = initial_sae(store, cfg, init).to(device)
    run = TrainRun(
        cfg,
        store_identity(store),
        sae,
        torch.optim.Adam(sae.parameters(), lr=cfg.lr),
        TrainState(tokens_since_fired=torch.zeros(sae.cfg.d_sae, device=device)),
        torch.Generator().manual_seed(cfg.seed),
        rank=rank,
    )
    if out is not None and resume:
        remove_stale_temps(out)  # a checkpoint write killed mid-way
    if out is not None and (out / CHECKPOINT_FILE).exists():
        if not resume:
            raise ValueError(
                f"{out} already holds a training run: pass resume=True to continue it, or a new out_dir."
            )
        run.log = load_checkpoint(out, run)
    first_step = run.state.step
    _steps(run, store, out, world, device)
    finished_before = run.state.step == first_step and (out is not None and (out / SAE_CFG_FILE).exists())
    if out is not None and not finished_before:  # a resumed, already finished run is returned as it is
        save_finished(out, run)
    return TrainResult(run.sae, run.log)


def _steps(run: TrainRun, store: ActivationStore, out: Path | None, world: int, device: torch.device) -> None:
    """Train until the budget is spent: a step per batch, dead-latent resampling at each window's
    end, a log line every `log_every` steps, a checkpoint every `checkpoint_every`."""
    cfg, state = run.cfg, run.state
    model = torch.nn.parallel.DistributedDataParallel(run.sae) if world > 1 else run.sae
    batches = _batches(store, cfg, state, run.rank, world)
    bar = tqdm(
        total=cfg.total_tokens,
        initial=state.tokens,
        unit="tok",
        disable=run.rank != 0,
        desc=f"term t={cfg.tilt:g}" if cfg.tilt else "erm",
    )
    while state.tokens < cfg.total_tokens:
        x = next(batches).to(device)
        logging_step = (
            state.step + 1
        ) % cfg.log_every == 0 or state.tokens + cfg.batch_size >= cfg.total_tokens
        metrics = train_step(model, run.sae, run.opt, x, cfg, state, world, with_metrics=logging_step)
        if (
            cfg.resample_dead
            and state.tokens // cfg.dead_window_tokens
            > (state.tokens - cfg.batch_size) // cfg.dead_window_tokens
        ):
            _resample_dead(run.sae, run.opt, x, cfg, state, run.gen)
        bar.update(cfg.batch_size)
        if metrics:
            run.log.append(metrics)
            bar.set_postfix(loss=f"{metrics['loss']:.3g}", l0=f"{metrics['l0']:.1f}")
        if out is not None and cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
            save_checkpoint(out, run)
    bar.close()


def train_step(
    model,
    sae: SAE,
    opt,
    x: torch.Tensor,
    cfg: TrainConfig,
    state: TrainState,
    world: int,
    with_metrics: bool = False,
) -> dict[str, float]:
    """One Adam step under the unit-norm decoder constraint; the step's metrics if asked, else {}.

    Every step only finds which latents fired (one max over the batch); L0 and the other
    statistics cost a quarter of a TopK step, so they are computed on logging steps only."""
    lr = get_lr(state.tokens, cfg)
    out = model(x)
    losses = per_token_loss(out.sq_error, out.sparsity, cfg.sparsity_coefficient)
    loss = objective(losses, cfg.tilt, cfg.loss_scale)
    if not torch.isfinite(loss):  # never step on it: a NaN spreads to every weight through Adam
        cause = (
            "the batch holds NaN/inf activations: rebuild the store with cache_activations(dtype='float32')"
            if not torch.isfinite(x).all()
            else f"the activations are finite, so training diverged: lower lr (now {cfg.lr:g}) or sparsity_coefficient"
        )
        raise ValueError(
            f"The loss is {loss.item()} at step {state.step + 1} (after {state.tokens} tokens): {cause}. "
            "Training stopped before that step; nothing after the last checkpoint was saved."
        )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    sae.remove_gradient_parallel_to_decoder_directions()
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    sae.set_decoder_norm_to_unit_norm()
    with torch.no_grad():
        fired = out.feature_acts.amax(0) > 0
        if world > 1:
            dist.all_reduce(fired, op=dist.ReduceOp.MAX)
        state.tokens_since_fired += cfg.batch_size
        state.tokens_since_fired[fired] = 0
        state.step += 1
        state.tokens += cfg.batch_size
        if not with_metrics:
            return {}
        return dict(
            step=state.step,
            tokens=state.tokens,
            lr=lr,
            loss=float(loss),
            mse=float(out.sq_error.mean()),
            max_mse=float(out.sq_error.max()),
            l0=float((out.feature_acts > 0).sum(-1).float().mean()),
            dead_frac=float((state.tokens_since_fired >= cfg.dead_window_tokens).float().mean()),
        )


def _batches(store: ActivationStore, cfg: TrainConfig, state: TrainState, rank: int, world: int):
    """Endless batches of this rank's share; new order each epoch; skips what a resume already saw."""
    per_rank = cfg.batch_size // world
    if store.n_tokens < cfg.batch_size:
        raise ValueError(
            f"The store has {store.n_tokens} tokens, fewer than batch_size={cfg.batch_size}; "
            "cache more tokens or lower batch_size."
        )
    while True:
        skip = state.batch_in_epoch
        # a new, reproducible order each epoch; the stride 1000 keeps seeds < 1000 apart from each other's later epochs
        it = store.batches(
            per_rank,
            seed=cfg.seed + 1000 * state.epoch,
            rank=rank,
            world_size=world,
            drop_last=True,
            normalize=False,
        )  # raw: the SAE applies its own norm_scale
        for i, x in enumerate(it):
            if i < skip:
                continue
            state.batch_in_epoch = i + 1
            yield x
        state.epoch += 1
        state.batch_in_epoch = 0


def initial_sae(store: ActivationStore, cfg: TrainConfig, init: Any) -> SAE:
    """The SAE a run starts from: a copy of `init` (fine-tuning, checked against the store), or a new
    one with the input scale `cfg.norm_scale_from` asks for and b_dec as `cfg.b_dec_init` says."""
    if init is None:
        norm_scale = store.norm_scale if cfg.norm_scale_from == "store" else centered_norm_scale(store)
        sae_cfg = SAEConfig(
            d_in=store.d_model,
            d_sae=cfg.d_sae,
            architecture=cfg.architecture,
            k=cfg.k,
            model_name=store.model_name,
            layer=store.layer,
            hook_name=store.hook_name,
            norm_scale=norm_scale,
            context_size=store.manifest.get("ctx_len", 0),  # synthetic stores have no contexts
            prepend_bos=store.manifest.get("prepend_bos", True),
            exclude_special_tokens=store.manifest.get("exclude_special", True),
        )
        sae = SAE(sae_cfg, seed=cfg.seed)
        if cfg.b_dec_init != "zeros":
            b_dec = store_mean(store) if cfg.b_dec_init == "mean" else geometric_median(store_sample(store))
            with torch.no_grad():
                sae.b_dec.copy_(b_dec * norm_scale)
        return sae
    sae = copy.deepcopy(init) if isinstance(init, SAE) else from_sae_lens(init)
    sae.check_reads(model_name=store.model_name, layer=store.layer, d_in=store.d_model)
    return sae


@torch.no_grad()
def _resample_dead(
    sae: SAE, opt, x: torch.Tensor, cfg: TrainConfig, state: TrainState, gen: torch.Generator
) -> None:
    """Point dead latents at the worst-reconstructed inputs of this batch (Anthropic, 2023), reset their Adam state."""
    dead = (state.tokens_since_fired >= cfg.dead_window_tokens).nonzero().flatten()
    if len(dead) == 0:
        return
    out = sae(x)
    x_n = x * sae.cfg.norm_scale
    picks = torch.multinomial(out.sq_error.cpu() + 1e-12, len(dead), replacement=True, generator=gen).to(
        x.device
    )
    directions = x_n[picks] - out.sae_out[picks] * sae.cfg.norm_scale
    directions /= directions.norm(dim=1, keepdim=True).clamp_min(1e-8)
    alive_norm = sae.W_enc[:, state.tokens_since_fired < cfg.dead_window_tokens].norm(dim=0).mean()
    sae.W_dec[dead] = directions
    # 0.2 x the alive encoders' mean norm: Towards Monosemanticity's resampling recipe, so a new latent starts weak
    sae.W_enc[:, dead] = directions.T * 0.2 * (alive_norm if torch.isfinite(alive_norm) else 1.0)
    sae.b_enc[dead] = 0.0
    for p in (sae.W_dec, sae.W_enc, sae.b_enc):
        for key in ("exp_avg", "exp_avg_sq"):
            if key in opt.state.get(p, {}):
                (opt.state[p][key][dead] if p is not sae.W_enc else opt.state[p][key][:, dead]).zero_()
    state.tokens_since_fired[dead] = 0


def _distributed_setup(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """(rank, world size, device); joins the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, resolve_device(cfg.device)
    if cfg.batch_size % world:
        raise ValueError(f"batch_size={cfg.batch_size} must divide evenly over {world} ranks.")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and cfg.device != "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    return dist.get_rank(), world, device


# --- where a new SAE starts, measured on its store ------------------------------------------------
def store_mean(store: ActivationStore, max_tokens: int = 100_000) -> torch.Tensor:
    """Mean raw activation over the store's first shards (up to `max_tokens`), deterministic."""
    total, n = torch.zeros(store.d_model, dtype=torch.float64), 0
    for i in range(store.n_shards):
        x, _ = store.read_shard(i, normalize=False)
        _check_finite(store, i, x[: max_tokens - n])
        total += x[: max_tokens - n].double().sum(0)
        n += min(len(x), max_tokens - n)
        if n >= max_tokens:
            break
    return (total / n).float()


def _check_finite(store: ActivationStore, shard: int, x: torch.Tensor) -> torch.Tensor:
    """`x` (rows of shard `shard`), or a clear error when it holds NaN/inf: a new SAE's b_dec and input
    scale are measured on these rows, before any training step could catch it."""
    if not torch.isfinite(x).all():
        raise ValueError(
            f"Shard {shard} of {store.path} holds NaN/inf activations, so b_dec cannot start at their mean "
            "(nor the input scale be measured): rebuild the store with cache_activations "
            "(dtype='float32' if float16 overflowed)."
        )
    return x


def store_sample(store: ActivationStore, max_tokens: int = 100_000) -> torch.Tensor:
    """(n, d_model) raw activations of the store's first shards (the tokens `store_mean` averages)."""
    parts, n = [], 0
    for i in range(store.n_shards):
        x, _ = store.read_shard(i, normalize=False)
        parts.append(_check_finite(store, i, x[: max_tokens - n]))
        n += len(parts[-1])
        if n >= max_tokens:
            break
    return torch.cat(parts)


def centered_norm_scale(store: ActivationStore) -> float:
    """sqrt(d_model / E||x - mean||^2) over the tokens `store_mean` averages.

    The store's scale sqrt(d_model / E||x||^2) counts a constant offset: where a near-constant
    dimension carries 90% of E||x||^2, everything else is shrunk ~3x, so the L1 coefficient bites
    ~3x harder than on a model without one. b_dec removes the offset; this scale ignores it too."""
    x = store_sample(store).double()
    return math.sqrt(store.d_model / float((x - x.mean(0)).pow(2).sum(1).mean()))


def geometric_median(
    x: torch.Tensor, max_iter: int = 100, tol: float = 1e-6, chunk: int = 8192
) -> torch.Tensor:
    """The point minimising the summed distance to the rows of x (n, d), by Weiszfeld iterations.

    Float64, fixed chunking and order, so deterministic on CPU. Starts from the mean and stops when a
    step moves less than `tol` x the mean distance to the points."""
    guess = x.double().mean(0)
    for _ in range(max_iter):
        num, den, dist_sum = torch.zeros_like(guess), 0.0, 0.0
        for part in x.split(chunk):
            part = part.double()
            dist = (part - guess).norm(dim=1)
            w = 1 / dist.clamp_min(1e-12)  # a point on the guess would divide by zero
            num += w @ part
            den += float(w.sum())
            dist_sum += float(dist.sum())
        new = num / den
        moved = float((new - guess).norm())
        guess = new
        if moved <= tol * dist_sum / len(x):
            break
    return guess.float()
