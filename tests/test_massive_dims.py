"""Massive dimensions: a fresh SAE must not quietly train dead or useless (issue 13, section 2).

The store holds synthetic residual streams (d_model=32): a known dictionary of 64 unit directions,
~3 active per token with amplitudes in [0.5, 1.5], plus one coordinate with a large mean (10% std)
that carries `share` of E||x||^2. At 90% (the share seen at mid depth in real models) that
coordinate is ~17x the others' RMS; at 99.7% ~100x. ReLU SAEs use TrainConfig's defaults scaled to
the tiny size (d_sae=128, 60k tokens; sparsity_coefficient and lr as shipped). CPU, ~1 minute:
    pytest tests/test_massive_dims.py
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from ssae_kit import ActivationStore, TrainConfig, train
from ssae_kit.activations import store_from_tensor
from ssae_kit.evals import evaluate_store, health_warnings
from ssae_kit.train import geometric_median, initial_sae, store_mean, store_sample

D_MODEL = 32


def massive_store(out: Path, share: float, n_tokens: int = 20_000, seed: int = 0) -> ActivationStore:
    """Sparse-feature activations plus coordinate 0 holding `share` of E||x||^2, in a store with the
    files, checksums and norm_scale caching makes."""
    g = torch.Generator().manual_seed(seed)
    n_feat = 2 * D_MODEL
    dictionary = torch.randn(n_feat, D_MODEL, generator=g)
    dictionary /= dictionary.norm(dim=1, keepdim=True)  # (n_feat, d_model)
    on = torch.rand(n_tokens, n_feat, generator=g) < 3 / n_feat
    x = (on * (0.5 + torch.rand(n_tokens, n_feat, generator=g))) @ dictionary  # (n_tokens, d_model)
    rel_std = 0.1
    mean = math.sqrt(share / (1 - share) * float(x.pow(2).sum(1).mean()) / (1 + rel_std**2))
    x[:, 0] += mean * (1 + rel_std * torch.randn(n_tokens, generator=g))
    return store_from_tensor(x, out)


def tiny_cfg(**kw) -> TrainConfig:
    """TrainConfig's defaults at the tiny size: only widths, budget and windows shrink."""
    return TrainConfig(
        **{
            **dict(
                d_sae=4 * D_MODEL,
                batch_size=256,
                total_tokens=60_000,
                warmup_tokens=2_000,
                dead_window_tokens=10_000,
                log_every=50,
            ),
            **kw,
        }
    )


def fit(store: ActivationStore, **kw) -> dict[str, float]:
    return evaluate_store(train(store, tiny_cfg(**kw)).sae, store).metrics


@pytest.fixture(scope="module")
def share_90(tmp_path_factory) -> ActivationStore:
    return massive_store(tmp_path_factory.mktemp("share_90"), share=0.9)


@pytest.fixture(scope="module")
def share_997(tmp_path_factory) -> ActivationStore:
    return massive_store(tmp_path_factory.mktemp("share_997"), share=0.997)


def test_synthetic_store_has_one_dimension_with_the_asked_share_of_the_norm(share_90, share_997):
    for store, share, ratio in ((share_90, 0.9, 17), (share_997, 0.997, 100)):
        x = store_sample(store)
        msq = x.pow(2).mean(0)  # (d_model,) E x_i^2
        assert float(msq[0] / msq.sum()) == pytest.approx(share, abs=0.005)
        assert float((msq[0] / msq[1:].mean()).sqrt()) == pytest.approx(ratio, rel=0.1)


def test_mean_b_dec_trains_a_live_sae_where_zeros_does_not(share_90):
    """With the store's scale (the scale is the next test's subject; with the centered one zeros
    reaches EV 0.74 here and the mean does better still)."""
    zeros = fit(
        share_90, b_dec_init="zeros", norm_scale_from="store"
    )  # the first defaults: dead 0.07, EV 0.13
    assert zeros["explained_variance"] < 0.5, f"zeros b_dec should fail here; got {zeros}"
    mean = fit(share_90, norm_scale_from="store")  # b_dec_init="mean": dead 0.00, EV 0.64
    assert mean["dead_fraction"] < 0.2 and mean["explained_variance"] > 0.5, (
        f"b_dec from the data mean should leave the massive offset to b_dec, not the latents; got {mean}"
    )


def test_health_warnings_flag_the_zeros_sae_at_100x(share_997):
    zeros = fit(
        share_997, b_dec_init="zeros", norm_scale_from="store"
    )  # the first defaults: dead 0.52, EV -4.3
    warned = health_warnings(zeros)
    assert any("explained variance" in w for w in warned), (zeros, warned)


def test_at_100x_the_default_trains_a_live_sae_where_the_store_scale_does_not(share_997):
    """Normalising by E||x||^2 shrinks all but the massive coordinate ~18x, so L1 silences the
    features even with b_dec at the mean; the default scale, from E||x - mean||^2, undoes that."""
    store_scale = fit(share_997, norm_scale_from="store")  # the former default: dead 0.01, EV 0.00
    assert store_scale["explained_variance"] < 0.5, store_scale
    default = fit(share_997)  # norm_scale_from="centered": dead 0.00, EV 0.91
    assert default["dead_fraction"] < 0.2 and default["explained_variance"] > 0.5, default


def test_store_scale_keeps_the_store_scale_and_the_mean_bit_for_bit(share_90):
    sae = initial_sae(share_90, TrainConfig(d_sae=64, norm_scale_from="store"), None)
    assert sae.cfg.norm_scale == share_90.norm_scale
    assert torch.equal(sae.b_dec, store_mean(share_90) * share_90.norm_scale)


def test_centered_scale_gives_the_centered_inputs_mean_squared_norm_d_model(share_90):
    sae = initial_sae(share_90, TrainConfig(d_sae=64), None)
    x = store_sample(share_90).double() * sae.cfg.norm_scale
    assert float((x - x.mean(0)).pow(2).sum(1).mean()) == pytest.approx(D_MODEL, rel=1e-6)
    torch.testing.assert_close(sae.b_dec.double(), x.mean(0), rtol=1e-5, atol=1e-5)


def test_geometric_median_matches_a_numerical_minimiser_and_ignores_outliers():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(200, 5, generator=g), 100 + torch.randn(20, 5, generator=g)])
    gm = geometric_median(x)
    points = x.double().numpy()
    ref = minimize(
        lambda p: np.linalg.norm(points - p, axis=1).sum(),
        points.mean(0),
        method="Nelder-Mead",
        options=dict(xatol=1e-8, fatol=1e-10, maxiter=20_000),
    ).x
    torch.testing.assert_close(gm, torch.from_numpy(ref).float(), atol=1e-3, rtol=0)
    assert gm.norm() < 2 < x.mean(0).norm(), "the 20 far points should barely move the median"
    line = torch.tensor([[0.0, 0], [1, 0], [2, 0], [3, 0], [100, 0]])
    torch.testing.assert_close(geometric_median(line), torch.tensor([2.0, 0]), atol=1e-4, rtol=0)


def test_geometric_median_b_dec_init_is_deterministic(share_90):
    cfg = TrainConfig(d_sae=64, b_dec_init="geometric_median")
    a, b = (initial_sae(share_90, cfg, None) for _ in range(2))
    assert torch.equal(a.b_dec, b.b_dec)
    torch.testing.assert_close(a.b_dec, geometric_median(store_sample(share_90)) * a.cfg.norm_scale)
    assert not torch.allclose(a.b_dec, store_mean(share_90) * a.cfg.norm_scale, atol=1e-3)
