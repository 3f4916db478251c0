"""SAELens reads what the kit saves and the kit reads what SAELens saves, offline, same function.

Needs `sae-lens` (in the dev extra). Checks encode/decode on raw activations to atol 1e-5 for
the three architectures, including a non-trivial normalisation scale folded into the weights.
"""

from __future__ import annotations

import pytest
import torch
from sae_lens import SAE as LensSAE
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig, StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
from sae_lens.saes.sae import SAEMetadata

from ssae_kit.sae import SAE, SAEConfig, from_sae_lens, load_pretrained

ARCHS = ["relu", "topk", "jumprelu"]


def _random_kit_sae(arch: str) -> SAE:
    sae = SAE(SAEConfig(d_in=16, d_sae=48, architecture=arch, k=6, threshold=0.05, model_name="tiny-llama",
                        layer=1, hook_name="blocks.1.hook_resid_post", norm_scale=0.4), seed=1)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.5)
    return sae


@pytest.mark.parametrize("arch", ARCHS)
def test_sae_lens_loads_a_kit_sae_and_computes_the_same_function(arch, tmp_path):
    kit = _random_kit_sae(arch)
    kit.save(tmp_path)
    lens = LensSAE.load_from_disk(str(tmp_path), device="cpu")
    x = torch.randn(20, 16) * 3
    with torch.no_grad():
        torch.testing.assert_close(lens.encode(x), kit.encode(x), atol=1e-5, rtol=1e-5)
        f = kit.encode(x)
        torch.testing.assert_close(lens.decode(f), kit.decode(f), atol=1e-5, rtol=1e-5)
    assert lens.cfg.metadata.hook_name == "blocks.1.hook_resid_post"


def _random_lens_sae(arch: str):
    common = dict(d_in=16, d_sae=48, metadata=SAEMetadata(model_name="tiny-llama", hook_name="blocks.1.hook_resid_post"))
    lens = {"relu": lambda: StandardSAE(StandardSAEConfig(**common)),
            "topk": lambda: TopKSAE(TopKSAEConfig(k=6, **common)),
            "jumprelu": lambda: JumpReLUSAE(JumpReLUSAEConfig(**common))}[arch]()
    with torch.no_grad():
        for p in lens.parameters():
            p.normal_(0, 0.3)
        if arch == "jumprelu":
            lens.threshold.uniform_(0.0, 0.3)
    return lens


@pytest.mark.parametrize("arch", ARCHS)
def test_kit_loads_a_sae_lens_sae_and_computes_the_same_function(arch, tmp_path):
    lens = _random_lens_sae(arch)
    lens.save_model(str(tmp_path))
    for kit in (SAE.load(tmp_path), from_sae_lens(lens)):
        assert kit.cfg.architecture == arch and kit.cfg.hook_name == "blocks.1.hook_resid_post"
        x = torch.randn(20, 16) * 3
        with torch.no_grad():
            torch.testing.assert_close(kit.encode(x), lens.encode(x), atol=1e-5, rtol=1e-5)
            f = lens.encode(x)
            torch.testing.assert_close(kit.decode(f), lens.decode(f), atol=1e-5, rtol=1e-5)


def test_load_pretrained_offline_says_it_is_not_cached(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="not in the local Hugging Face cache"):
        load_pretrained("gpt2-small-res-jb", "blocks.0.hook_resid_pre")
