"""Notebook 00's primer: the superposition toy, its store, and the recovery score."""

from __future__ import annotations

import pytest
import torch

from ssae_kit import SAE, ActivationStore, TrainConfig, train
from ssae_kit.activations import make_toy, one_thread, store_from_tensor, toy_store
from ssae_kit.latents import feature_recovery
from ssae_kit.sae import SAEConfig


def test_the_toy_packs_more_unit_features_than_dimensions_with_the_asked_sparsity():
    toy = make_toy(n_features=32, d=8, n_tokens=20_000, active=2.0, seed=0)
    assert toy.features.shape == (32, 8) and toy.codes.shape == (20_000, 32) and toy.x.shape == (20_000, 8)
    assert torch.allclose(toy.features.norm(dim=1), torch.ones(32))
    assert (toy.codes >= 0).all() and ((toy.codes == 0) | (toy.codes >= 0.5)).all()
    assert (toy.codes > 0).sum(1).float().mean() == pytest.approx(2.0, abs=0.05)
    assert 0.3 < toy.interference < 1  # 32 directions cannot be orthogonal in 8 dimensions
    assert make_toy(n_features=4, d=4, seed=1).x.shape[1] == 4
    assert torch.equal(make_toy(seed=3).codes, make_toy(seed=3).codes)


@pytest.mark.parametrize("bad", [dict(d=0), dict(n_tokens=0), dict(active=0.0), dict(active=40.0)])
def test_make_toy_refuses_impossible_settings_by_name(bad):
    with pytest.raises(ValueError, match="make_toy needs"):
        make_toy(n_features=32, **bad)


def test_the_toy_store_holds_the_toy_activations_and_their_input_scale(tmp_path):
    toy = make_toy(n_tokens=3_000)
    store = toy_store(toy, tmp_path / "toy")
    raw = torch.cat(list(ActivationStore(store.path, normalize=False).batches(1_000, shuffle=False)))
    assert torch.equal(raw, toy.x)
    assert store.norm_scale == pytest.approx(float((8 / toy.x.pow(2).sum(1).mean()).sqrt()), rel=1e-6)
    assert store.model_name == "toy" and store.layer == 0 and store.n_tokens == 3_000


@pytest.mark.parametrize("x", [torch.zeros(5), torch.zeros(0, 4), torch.tensor([[1.0, float("nan")]])])
def test_store_from_tensor_refuses_what_is_not_finite_rows(x, tmp_path):
    with pytest.raises(ValueError, match="finite \\(N >= 1, d_model\\) activations"):
        store_from_tensor(x, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_feature_recovery_is_one_for_a_decoder_holding_the_features_at_any_length():
    toy = make_toy(n_features=6, d=4, n_tokens=10)
    sae = SAE(SAEConfig(d_in=4, d_sae=8), seed=0)
    with torch.no_grad():
        sae.W_dec[:6] = 3.0 * toy.features
    assert torch.allclose(feature_recovery(sae, toy), torch.ones(6), atol=1e-6)
    with torch.no_grad():
        sae.W_dec[:6] = -toy.features  # opposite directions are not the feature
    assert (feature_recovery(sae, toy) < 1 - 1e-3).all()


def test_the_kits_training_recovers_the_toy_features_an_untrained_sae_does_not(tmp_path):
    toy = make_toy(n_tokens=20_000)
    store = toy_store(toy, tmp_path / "toy")
    cfg = TrainConfig(
        d_sae=64, sparsity_coefficient=3.0, total_tokens=1_000_000, batch_size=256, lr=3e-3,
        warmup_tokens=2_000, dead_window_tokens=20_000,
    )  # fmt: skip
    with one_thread():
        trained = train(store, cfg).sae
    untrained = SAE(
        SAEConfig(d_in=8, d_sae=64, model_name="toy", layer=0), seed=cfg.seed
    )  # where training starts
    found, chance = ((feature_recovery(s, toy) > 0.9).sum().item() for s in (trained, untrained))
    assert found >= 28 and chance <= 4, (found, chance)


def test_one_thread_restores_the_thread_count_even_after_an_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), one_thread():
        assert torch.get_num_threads() == 1
        raise RuntimeError
    assert torch.get_num_threads() == before
