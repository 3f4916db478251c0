"""ERM and tilted ERM (TERM) as two reductions of one per-token loss vector.

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
from typing import Literal

import torch

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
