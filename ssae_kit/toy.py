"""Superposition in miniature, for notebook 00's primer: more sparse features than dimensions.

A toy "residual stream" is a sparse, non-negative mix of `n_features` known unit directions in
`d < n_features` dimensions, so the directions cannot all be orthogonal (Elhage et al. 2022, "Toy
Models of Superposition"). Written as an activation store, the kit's own `train` and
`evaluate_store` run on it, and `feature_recovery` scores how well an SAE's decoder found the
ground truth, which no real model offers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .activations import store_from_tensor
from .sae import SAE
from .store import ActivationStore

__all__ = ["feature_recovery", "make_toy", "one_thread", "toy_store"]


_TOY_STREAM = 7_919_000
"""Offset of the toy's random seeds: with seed s alone, `make_toy(seed=0)` drew the same numbers as
`SAE(cfg, seed=0)`'s decoder, so an SAE would start at the answer."""


@dataclass(frozen=True)
class Toy:
    """The ground truth and the activations it makes."""

    features: torch.Tensor
    """(n_features, d) unit directions: the concepts."""
    codes: torch.Tensor
    """(n_tokens, n_features) non-negative amplitudes, mostly zero: which concepts each token holds."""

    @property
    def x(self) -> torch.Tensor:
        """(n_tokens, d) activations: each token's amplitudes times the directions."""
        return self.codes @ self.features

    @property
    def interference(self) -> float:
        """Largest |cosine| between two different features: 0 only if they fit orthogonally."""
        cos = self.features @ self.features.T
        return float((cos - torch.eye(len(cos))).abs().max())


def make_toy(
    n_features: int = 32, d: int = 8, n_tokens: int = 20_000, active: float = 2.0, seed: int = 0
) -> Toy:
    """Random unit features; each token holds each one with probability `active / n_features`
    (so about `active` per token), at an amplitude uniform in [0.5, 1.5]."""
    if not (1 <= d and 1 <= n_tokens and 0 < active <= n_features):
        raise ValueError(
            f"make_toy needs d >= 1, n_tokens >= 1 and 0 < active <= n_features; got {d=}, {n_tokens=}, {active=}."
        )
    g = torch.Generator().manual_seed(_TOY_STREAM + seed)  # not an SAE's init stream: no head start
    features = torch.randn(n_features, d, generator=g)
    features /= features.norm(dim=1, keepdim=True)
    on = torch.rand(n_tokens, n_features, generator=g) < active / n_features
    codes = on * (0.5 + torch.rand(n_tokens, n_features, generator=g))
    return Toy(features, codes)


def toy_store(toy: Toy, out_dir: str | Path) -> ActivationStore:
    """The toy's activations as a store (model "toy", layer 0) that `train` and `evaluate_store` read."""
    return store_from_tensor(toy.x, out_dir, model_name="toy", layer=0)


def feature_recovery(sae: SAE, toy: Toy) -> torch.Tensor:
    """(n_features,) for each true feature, its best cosine with any of the SAE's decoder directions:
    near 1, one latent has learned that feature."""
    W_dec = sae.W_dec.detach().float().cpu()
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (toy.features @ W_dec.T).max(dim=1).values


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread inside the block, as before after it: the toy's matrices are so small that
    more threads only wait on each other (7x slower on 2 busy cores, measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
