"""What a training run carries and saves: `TrainRun` (config, store identity, SAE, optimiser,
counters, RNG, log), and the atomic checkpoint that lets a killed run resume bit-identically; a
checkpoint is read with `weights_only=True`, so a shared run folder cannot execute code."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .io import CHECKPOINT_FILE, LOG_FILE, atomic_write_json, atomic_write_with, cache_dir
from .sae import SAE
from .store import ActivationStore
from .train_config import TrainConfig


@dataclass
class TrainState:
    """Counters a resume restores."""

    step: int = 0
    tokens: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens_since_fired: torch.Tensor = field(default_factory=lambda: torch.zeros(0))


@dataclass
class TrainRun:
    """What a training run carries from step to step and a checkpoint saves: its config, the store
    it trains on (`trained_on`: the store's identity), the SAE, the optimiser, the counters, the
    resampling generator, the metrics log, and this process's rank (only rank 0 writes)."""

    cfg: TrainConfig
    trained_on: dict[str, Any]
    sae: SAE
    opt: torch.optim.Optimizer
    state: TrainState
    gen: torch.Generator
    log: list[dict[str, float]] = field(default_factory=list)
    rank: int = 0


def store_identity(store: ActivationStore) -> dict[str, Any]:
    """What a checkpoint records of its store, so that a resume continues on the same data."""
    return dict(
        model=store.model_name,
        layer=store.layer,
        n_tokens=store.n_tokens,
        norm_scale=store.norm_scale,
        fingerprint=store.fingerprint,
    )


def save_checkpoint(out: Path, run: TrainRun) -> None:
    """Everything a resume needs, written atomically (and fsynced) by rank 0; never NaN weights."""
    cfg, sae, state = run.cfg, run.sae, run.state
    if run.rank == 0:
        if not all(torch.isfinite(p).all() for p in sae.parameters()):
            raise ValueError(
                f"The SAE's weights hold NaN/inf at step {state.step}; {out} keeps its last good "
                f"checkpoint. Lower lr (now {cfg.lr:g}) or check the activations for NaN/inf."
            )
        payload = dict(
            cfg=asdict(cfg),
            store=run.trained_on,
            sae_cfg=asdict(sae.cfg),
            sae=sae.state_dict(),
            opt=run.opt.state_dict(),
            state=asdict(state),
            gen=run.gen.get_state(),
            torch_rng=torch.get_rng_state(),
            log=run.log,
        )
        atomic_write_with(out / CHECKPOINT_FILE, lambda f: torch.save(payload, f))
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _read_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """The checkpoint's tensors and plain data, read without running code: `weights_only=True`
    refuses any pickled object other than tensors and Python containers of numbers and strings, so a
    shared or downloaded run folder cannot execute anything on resume. A truncated, zeroed or
    foreign file is refused naming it."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError or EOFError by corruption kind
        raise ValueError(
            f"Cannot resume from {path}: it is not a checkpoint the kit can read safely ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}). It may be truncated, or hold code rather than data. Delete it "
            "to start that run afresh, or train into a new out_dir."
        ) from err
    if not isinstance(ckpt, dict) or not {"cfg", "sae", "opt", "state", "gen", "torch_rng", "log"} <= set(
        ckpt
    ):
        raise ValueError(
            f"Cannot resume from {path}: it is not an ssae-kit training checkpoint. Delete it, or train into a new out_dir."
        )
    return ckpt


def load_checkpoint(out: Path, run: TrainRun) -> list[dict[str, float]]:
    """Restore `run` from `out`'s checkpoint (refused, naming the change, if the config or the store
    differ) and return its log."""
    cfg, trained_on = run.cfg, run.trained_on
    ckpt = _read_checkpoint(out / CHECKPOINT_FILE, run.sae.W_dec.device)
    for what, fix, old, new in (
        ("the config changed since it was written", "the old config", ckpt["cfg"], asdict(cfg)),
        (
            "it was trained on another activation store",
            "the store it was trained on",
            ckpt.get("store", trained_on),
            trained_on,
        ),  # checkpoints from before this check record no store
    ):
        changed = {k: (v, new.get(k)) for k, v in old.items() if new.get(k) != v}
        if changed:
            raise ValueError(
                f"Cannot resume {out}: {what} (old, new): {changed}. "
                f"Resume with {fix}, or train into a new out_dir."
            )
    run.sae.load_state_dict(ckpt["sae"])
    run.opt.load_state_dict(ckpt["opt"])
    for k, v in ckpt["state"].items():
        setattr(run.state, k, v)
    run.gen.set_state(ckpt["gen"])
    torch.set_rng_state(ckpt["torch_rng"])
    return ckpt["log"]


def save_finished(out: Path, run: TrainRun) -> None:
    """The finished run into `out`; if that fails (disk full, folder gone), into the kit's cache,
    and the error says where it went."""
    try:
        _save_run(out, run)
    except OSError as err:
        rescue = cache_dir("rescued_runs") / f"{out.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        _save_run(rescue, run)
        raise ValueError(
            f"Could not save the finished run in {out} ({err}); it is saved in {rescue} instead: "
            f"move that folder to {out}, or SAE.load it from there."
        ) from err


def _save_run(out: Path, run: TrainRun) -> None:
    """The final checkpoint, the SAE (SAELens format) and the metrics log."""
    save_checkpoint(out, run)
    if run.rank == 0:
        run.sae.save(out)
        atomic_write_json(out / LOG_FILE, run.log)
