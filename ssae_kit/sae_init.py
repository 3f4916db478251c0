"""Where a new SAE starts, measured on its training store: the decoder bias at the activations' mean
or geometric median, and the centred input scale (the default since issue 13), both read from the
store's first shards (up to 100k tokens), deterministic on CPU. `train.initial_sae` applies them."""

from __future__ import annotations

import math

import torch

from .store import ActivationStore


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
