"""ssae_kit.train_config's TERM: the tilted loss against a float64 reference, its limits, and its stability."""

from __future__ import annotations

import math

import pytest
import torch

from ssae_kit.train_config import objective, per_token_loss, tilted_loss


def reference(losses: torch.Tensor, t: float) -> float:
    l64 = losses.double()
    return float((torch.logsumexp(t * l64, 0) - math.log(len(l64))) / t)


@pytest.mark.parametrize("t", [1e-3, 0.1, 1.0, 10.0, 100.0])
def test_matches_the_float64_definition(t):
    losses = torch.rand(257) * 3
    assert tilted_loss(losses, t).item() == pytest.approx(reference(losses, t), rel=1e-5)


def test_limits_are_the_mean_and_the_max():
    losses = torch.tensor([0.5, 1.0, 4.0, 2.0])
    assert tilted_loss(losses, 0.0).item() == losses.mean().item()
    assert tilted_loss(losses, 1e-7).item() == pytest.approx(losses.mean().item(), rel=1e-5)
    assert tilted_loss(losses, 1e9).item() == pytest.approx(4.0, rel=1e-6)
    assert tilted_loss(losses, float("inf")).item() == 4.0


@pytest.mark.parametrize("t", [500.0, 1e9, 1e30, float("inf")])
def test_value_and_gradient_stay_finite_for_huge_tilts(t):
    losses = (torch.rand(1000) * 50).requires_grad_()
    value = tilted_loss(losses, t)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(losses.grad).all()
    assert losses.grad.sum().item() == pytest.approx(1.0, abs=1e-5)  # softmax weights sum to 1
    assert losses.grad.argmax() == losses.argmax()


def test_gradient_weights_tokens_by_softmax_of_t_times_loss():
    losses = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    tilted_loss(losses, 2.0).backward()
    torch.testing.assert_close(losses.grad, torch.softmax(2.0 * losses.detach(), 0))


def test_mean_scale_rule_makes_t_independent_of_the_loss_scale():
    losses = torch.rand(64) + 0.5
    small, big = losses.clone().requires_grad_(), (1000 * losses).requires_grad_()
    objective(small, 3.0, "mean").backward()
    objective(big, 3.0, "mean").backward()
    torch.testing.assert_close(small.grad, big.grad)  # the same token weights at any loss scale
    assert objective(losses, 0.0).item() == losses.mean().item()


@pytest.mark.parametrize("bad", [-1.0, float("nan"), "high"])
def test_negative_nan_or_non_numeric_tilt_is_refused(bad):
    with pytest.raises(ValueError, match="must be a number >= 0"):
        tilted_loss(torch.rand(3), bad)


def test_per_token_loss_adds_the_weighted_penalty():
    assert per_token_loss(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]), 0.5).tolist() == [2.5, 4.0]
