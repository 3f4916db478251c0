"""ssae_kit.features: residuals kept in memory pool like a fresh pass, latent means, and the checks
every per-text feature gets from the residual iterator."""

from __future__ import annotations

import pytest
import torch
from test_debias import TEXTS  # the same gendered snippets

from ssae_kit.corpora import Document
from ssae_kit.dashboards import collect_feature_activations
from ssae_kit.features import latent_means, mean_pool, pooled_activations, residuals
from ssae_kit.hooks import forward_to_layer
from ssae_kit.probe import ablation_edit
from ssae_kit.sae import SAE, SAEConfig


def test_pooled_activations_are_the_mean_over_text_tokens(tiny, identity_sae):
    model, tok = tiny
    pooled = pooled_activations(model, tok, TEXTS[:2], 1, ctx_len=32)
    enc = tok([tok.bos_token + TEXTS[0]], return_tensors="pt", add_special_tokens=False)
    resid = forward_to_layer(model, enc.input_ids, 1)
    torch.testing.assert_close(pooled[0], resid[0, 1:].mean(0))  # BOS left out
    same = pooled_activations(
        model, tok, TEXTS[:2], 1, ctx_len=32, edit=ablation_edit(identity_sae(32), [0]), edit_layer=0
    )
    assert not torch.allclose(same, pooled)  # an edit at an earlier layer reaches the probe layer
    with pytest.raises(ValueError, match="after the probe layer"):
        pooled_activations(model, tok, TEXTS, 0, edit=lambda r: r, edit_layer=2)


def test_cached_residuals_pool_like_a_fresh_pass_with_and_without_an_edit(tiny):
    model, tok = tiny
    r = residuals(model, tok, TEXTS, 1, ctx_len=32)
    torch.testing.assert_close(mean_pool(r), pooled_activations(model, tok, TEXTS, 1, ctx_len=32))
    edit = ablation_edit(SAE(SAEConfig(d_in=32, d_sae=64, layer=1), seed=1), [0, 5, 9])
    torch.testing.assert_close(
        mean_pool(r, edit), pooled_activations(model, tok, TEXTS, 1, ctx_len=32, edit=edit)
    )


def test_latent_means_average_each_text(tiny, identity_sae):
    model, tok = tiny
    means = latent_means(identity_sae(32), residuals(model, tok, TEXTS[:2], 1, ctx_len=32))
    pooled = pooled_activations(model, tok, TEXTS[:2], 1, ctx_len=32)
    torch.testing.assert_close(
        means[:, :32] - means[:, 32:], pooled, atol=1e-5, rtol=1e-5
    )  # relu(x) - relu(-x) = x


def test_ctx_len_past_the_models_positions_is_refused_before_any_forward(tiny):
    model, tok = tiny  # 512 positions
    handle = model.register_forward_pre_hook(
        lambda *args: pytest.fail("a forward ran before ctx_len was checked")
    )
    try:
        with pytest.raises(ValueError, match="ctx_len=513 is more than the 512 positions of tiny-llama"):
            residuals(model, tok, TEXTS, 1, ctx_len=513)
        with pytest.raises(ValueError, match="ctx_len=513 is more than the 512 positions of tiny-llama"):
            collect_feature_activations(
                SAE(SAEConfig(d_in=32, d_sae=8, layer=1)),
                model,
                tok,
                [Document(t) for t in TEXTS],
                1,
                ctx_len=513,
            )
    finally:
        handle.remove()
