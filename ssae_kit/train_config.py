"""What a training run optimises, and how it is configured: the per-token loss, its ERM and tilted
(TERM) reductions (`objective`), `TrainConfig` (checked when made, naming the fix), the LR schedule
it implies (`get_lr`), and the kit's fine-tuning recipe (`finetune_config`, with `check_finetune`
for notebooks to refuse bad settings before any work).

TERM (Li et al. 2021; PAPER §2): (1/t) log mean_i exp(t l_i), whose gradient weights token i by
softmax(t l)_i, so the worst-reconstructed tokens dominate. t -> 0 gives the mean, t -> inf the max.

Scale rule. t only means something relative to the size of l, which differs across layers and
models. With `scale="mean"` (the default) the losses are divided by their batch mean (detached)
before tilting, and the result multiplied back: loss = m * tilted(l / m, t), m = mean(l).detach().
Then t = 1 weights a token with twice the average loss e times more than an average one, on any
layer; the value at t = 0 is exactly the ERM mean, and gradients keep ERM's magnitude (weights sum
to 1). `scale="none"` tilts the raw losses, as the paper's t = 500 / 1e9 did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import torch

from .sae import SAE, Architecture
from .store import ActivationStore

__all__ = [
    "TrainConfig",
    "check_finetune",
]


# --- the objective: ERM and TERM over per-token losses --------------------------------------------
ScaleRule = Literal["mean", "none"]


def per_token_loss(
    sq_error: torch.Tensor, sparsity: torch.Tensor, sparsity_coefficient: float
) -> torch.Tensor:
    """l_i = ||x_i - x_hat_i||^2 + lambda * penalty_i (PAPER §2), shape (B,)."""
    return sq_error + sparsity_coefficient * sparsity


def check_tilt(t: float) -> float:
    """Return `t` if it is a valid tilt (a number >= 0, inf allowed), else raise naming the fix."""
    if not isinstance(t, (int, float)) or math.isnan(t) or t < 0:
        raise ValueError(
            f"tilt t={t!r} must be a number >= 0 (0 is ERM, larger weights the worst tokens more)."
        )
    return float(t)


def tilted_loss(losses: torch.Tensor, t: float) -> torch.Tensor:
    """(logsumexp(t*l) - log N) / t, computed as max(l) + (logsumexp(t*(l - max)) - log N) / t.

    Shifting by the max keeps every exponent <= 0, so value and gradient stay finite for any
    finite or infinite t; t = 0 returns the mean exactly and t = inf the max.
    """
    t = check_tilt(t)
    if t == 0:
        return losses.mean()
    if math.isinf(t):
        return losses.max()
    l64 = losses.double()  # float32 cancellation at small t costs ~1e-3 relative; B floats are cheap
    top = l64.max().detach()
    value = top + (torch.logsumexp(t * (l64 - top), dim=0) - math.log(losses.numel())) / t
    return value.to(losses.dtype)


def objective(losses: torch.Tensor, t: float = 0.0, scale: ScaleRule = "mean") -> torch.Tensor:
    """The training loss: ERM mean at t = 0, TERM under the chosen scale rule otherwise."""
    if check_tilt(t) == 0:
        return losses.mean()
    if scale == "none":
        return tilted_loss(losses, t)
    if scale != "mean":
        raise ValueError(f"Unknown scale rule {scale!r}; use 'mean' or 'none'.")
    m = losses.mean().detach().clamp_min(1e-12)
    return m * tilted_loss(losses / m, t)


# --- the run's configuration ----------------------------------------------------------------------
BDecInit = Literal["mean", "zeros", "geometric_median"]


NormScaleFrom = Literal["store", "centered"]


@dataclass
class TrainConfig:
    """How to train; the SAE shape fields apply only when training from scratch (no `init`)."""

    d_sae: int = 2048
    """Latents of a new SAE."""
    architecture: Architecture = "relu"
    """Architecture of a new SAE."""
    k: int = 32
    """Active latents per token of a new topk SAE."""
    b_dec_init: BDecInit = "mean"
    """Pre-encoder bias of a new SAE: the data mean (so a constant offset, e.g. a massive
    dimension, is not the latents' job; SAELens' `b_dec_init_method`), zeros, or the geometric
    median (Weiszfeld; sparsify's init, SAELens' former option; less pulled by outlier tokens)."""
    norm_scale_from: NormScaleFrom = "centered"
    """Input scale of a new SAE: sqrt(d_model / E||x - mean||^2), which a massive constant dimension
    cannot shrink (`train.centered_norm_scale`), or the store's sqrt(d_model / E||x||^2) (SAELens'
    `expected_average_only_in`; the shipped GSAE's recipe pins it). A fine-tuned SAE keeps its init's."""
    sparsity_coefficient: float = 1.0
    """Weight of the sparsity penalty (L1 for relu, L0 for jumprelu; unused by topk)."""
    lr: float = 1e-3
    """Peak Adam learning rate."""
    warmup_tokens: int = 10_000
    """Linear LR warm-up from 0, in tokens."""
    decay_frac: float = 0.2
    """Fraction of the budget, at the end, over which the LR decays linearly to 0."""
    batch_size: int = 512
    """Tokens per optimiser step (across all ranks)."""
    total_tokens: int = 200_000
    """Training budget in tokens; the store is re-read in new orders as needed."""
    tilt: float = 0.0
    """The objective: 0 is ERM (the mean per-token loss), t > 0 is TERM, the tilted loss (see the module docstring)."""
    loss_scale: ScaleRule = "mean"
    """How per-token losses are scaled before tilting (see the module docstring)."""
    seed: int = 0
    """Seeds the SAE init, data order and resampling."""
    checkpoint_every: int = 0
    """Write a resumable checkpoint every N steps (0: only at the end)."""
    dead_window_tokens: int = 100_000
    """A latent that has not fired for this many tokens counts as dead."""
    resample_dead: bool = False
    """Re-initialise dead latents towards badly reconstructed inputs, every dead window."""
    log_every: int = 20
    """Steps between logged metrics (and progress-bar updates)."""
    device: str = "auto"
    """auto: CUDA when present, else CPU (under torchrun: this rank's GPU)."""

    def __post_init__(self) -> None:
        for name, choices in (
            ("architecture", Architecture),
            ("loss_scale", ScaleRule),
            ("b_dec_init", BDecInit),
            ("norm_scale_from", NormScaleFrom),
        ):
            if getattr(self, name) not in get_args(choices):
                raise ValueError(f"Unknown {name} {getattr(self, name)!r}; use one of {get_args(choices)}.")
        for name, ok, need in (
            ("lr", self.lr > 0 and math.isfinite(self.lr), "a positive finite number, e.g. 1e-3"),
            (
                "sparsity_coefficient",
                self.sparsity_coefficient >= 0 and math.isfinite(self.sparsity_coefficient),
                "a finite number >= 0",
            ),
            ("warmup_tokens", self.warmup_tokens >= 0, ">= 0 (0: no warm-up)"),
            ("d_sae", self.d_sae >= 1, ">= 1"),
            ("log_every", self.log_every >= 1, ">= 1 (steps between logged metrics)"),
            ("checkpoint_every", self.checkpoint_every >= 0, ">= 0 (0: checkpoint only at the end)"),
            ("dead_window_tokens", self.dead_window_tokens >= 1, ">= 1"),
            (
                "decay_frac",
                0 <= self.decay_frac <= 1,
                "in [0, 1] (the share of the budget the LR decays over)",
            ),
            ("batch_size", self.batch_size >= 1, ">= 1 (tokens per optimiser step)"),
            ("total_tokens", self.total_tokens >= 1, ">= 1 (the training budget in tokens)"),
            ("k", self.k >= 1, ">= 1 (active latents per token of a topk SAE)"),
        ):
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} must be {need}.")
        check_tilt(self.tilt)
        if self.architecture == "topk" and not 0 < self.k <= self.d_sae:
            raise ValueError(f"k={self.k} must be between 1 and d_sae={self.d_sae}.")
        if self.batch_size <= 0 or self.total_tokens < self.batch_size:
            raise ValueError(
                f"Need 0 < batch_size ({self.batch_size}) <= total_tokens ({self.total_tokens})."
            )


def get_lr(tokens: int, cfg: TrainConfig) -> float:
    """Warm-up, constant, then linear decay to 0 over the last `decay_frac` of the budget."""
    warm = min(1.0, (tokens + 1) / cfg.warmup_tokens) if cfg.warmup_tokens else 1.0
    decay_start = cfg.total_tokens * (1 - cfg.decay_frac)
    decay = (
        1.0
        if tokens < decay_start
        else max(0.0, (cfg.total_tokens - tokens) / (cfg.total_tokens - decay_start))
    )
    return cfg.lr * warm * decay


def finetune_config(
    gsae: SAE,
    store: ActivationStore,
    sparsity_coefficient: float,
    total_tokens: int,
    lr: float = 5e-4,
    tilt: float = 0.0,
    seed: int = 0,
    device: str = "auto",
) -> TrainConfig:
    """The notebooks' recipe for fine-tuning `gsae` into an SSAE on `store`: no warm-up (the weights
    are trained already), 512-token batches (the whole store if smaller), ERM, or TERM when `tilt` > 0."""
    return TrainConfig(
        d_sae=gsae.cfg.d_sae,
        sparsity_coefficient=sparsity_coefficient,
        total_tokens=total_tokens,
        lr=lr,
        warmup_tokens=0,
        batch_size=store.capped_batch(),
        tilt=tilt,
        seed=seed,
        device=device,
    )


def check_finetune(
    sparsity_coefficients: list[float],
    total_tokens: int,
    lr: float = 5e-4,
    tilts: tuple[float, ...] | list[float] = (0.0,),
    device: str = "auto",
) -> None:
    """Refuse fine-tuning settings that `finetune_config` would refuse only after caching and training
    other SSAEs: the notebooks call this in their first cells, before any work."""
    if not sparsity_coefficients:
        raise ValueError("The list of sparsity coefficients is empty: give at least one, e.g. [1.5].")
    for coefficient in sparsity_coefficients:
        for tilt in tilts:
            TrainConfig(
                sparsity_coefficient=coefficient, total_tokens=total_tokens, lr=lr, tilt=tilt, device=device
            )
