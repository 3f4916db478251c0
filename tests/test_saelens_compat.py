"""SAELens reads what the kit saves and the kit reads what SAELens saves, offline, to the same function.

Needs `sae-lens` (in the dev extra). SAEs are built with SAELens' own classes (Standard, TopK,
JumpReLU, BatchTopK in its inference form), with each flag that changes the function on and off,
in float32 and bfloat16, and the kit's encode/decode are compared with SAELens' own on the same
inputs to relative error 1e-5. The kit computes in float32, so a bfloat16 SAE is compared with
SAELens run in float32 on the same stored weights. A cfg.json field the kit cannot honour is
refused by name.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from sae_lens import SAE as LensSAE
from sae_lens import (
    BatchTopKTrainingSAE,
    BatchTopKTrainingSAEConfig,
    GatedSAE,
    GatedSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
)
from sae_lens.saes.sae import SAEMetadata

from ssae_kit import cache_activations
from ssae_kit.gsae import load_pretrained
from ssae_kit.sae import SAE, SAEConfig, from_sae_lens
from ssae_kit.train import train
from ssae_kit.train_config import TrainConfig

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def store(tiny, docs, tmp_path_factory):
    """Layer-1 activations of the tiny model, as in test_train.py."""
    model, tok = tiny
    return cache_activations(
        model, tok, docs * 4, 1, tmp_path_factory.mktemp("store"), ctx_len=16, shard_tokens=500
    )


def _lens_sae(arch: str, dtype: str = "float32", d_in: int = 16, hook_name: str = HOOK, **flags: Any) -> Any:
    """A SAELens SAE with random weights: non-zero b_dec, decoder rows of uneven norm (so that
    rescale_acts_by_decoder_norm matters), thresholds that silence part of the latents.
    batchtopk is SAELens' training class; SAELens saves it as jumprelu (save_inference_model)."""
    common = dict(
        d_in=d_in, d_sae=48, dtype=dtype, metadata=SAEMetadata(model_name="tiny-llama", hook_name=hook_name)
    )
    lens = {
        "standard": lambda: StandardSAE(StandardSAEConfig(**common, **flags)),
        "topk": lambda: TopKSAE(TopKSAEConfig(k=6, **common, **flags)),
        "jumprelu": lambda: JumpReLUSAE(JumpReLUSAEConfig(**common, **flags)),
        "batchtopk": lambda: BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(k=6, **common, **flags)),
    }[arch]()
    with torch.no_grad():
        for p in lens.parameters():
            p.normal_(0, 0.3)
        lens.W_dec.mul_(torch.rand(48, 1) * 2 + 0.5)
        if arch == "jumprelu":
            lens.threshold.uniform_(0.0, 1.0)
        if arch == "batchtopk":
            lens.topk_threshold.fill_(0.5)
    return lens


def _assert_same_function(kit: SAE, lens: Any, x: torch.Tensor) -> None:
    """The kit's encode and decode equal SAELens' on x, to relative error 1e-5."""
    with torch.no_grad():
        f = lens.encode(x)
        for name, mine, theirs in (("encode", kit.encode(x), f), ("decode", kit.decode(f), lens.decode(f))):
            err = ((mine - theirs).norm() / theirs.norm()).item()
            assert err <= 1e-5, f"{name} differs from SAELens': relative error {err:.1e}"


LENS_CASES = [
    *[("standard", {"apply_b_dec_to_input": a}) for a in (True, False)],
    *[("jumprelu", {"apply_b_dec_to_input": a}) for a in (True, False)],
    *[
        ("topk", {"apply_b_dec_to_input": a, "rescale_acts_by_decoder_norm": r})
        for a in (True, False)
        for r in (True, False)
    ],
    *[("batchtopk", {"rescale_acts_by_decoder_norm": r}) for r in (True, False)],
]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("arch,flags", LENS_CASES, ids=[f"{a}-{f}" for a, f in LENS_CASES])
def test_kit_loads_a_sae_lens_sae_to_sae_lens_function_and_saves_it_back(arch, flags, dtype, tmp_path):
    lens = _lens_sae(arch, dtype, **flags)
    (lens.save_inference_model if arch == "batchtopk" else lens.save_model)(str(tmp_path / "lens"))
    reference = LensSAE.load_from_disk(
        str(tmp_path / "lens"), dtype="float32"
    )  # the stored weights, in float32
    x = torch.randn(20, 16)
    assert 0.05 < (reference.encode(x) > 0).float().mean() < 0.95, "the test SAE should silence some latents"
    for kit in (SAE.load(tmp_path / "lens"), from_sae_lens(lens)):
        assert all(p.dtype == torch.float32 for p in kit.parameters()) and kit.cfg.dtype == "float32"
        assert kit.cfg.layer == 1 and kit.cfg.apply_b_dec_to_input == flags.get("apply_b_dec_to_input", True)
        _assert_same_function(kit, reference, x)
    kit.save(tmp_path / "kit")
    _assert_same_function(kit, LensSAE.load_from_disk(str(tmp_path / "kit")), x)


@pytest.mark.parametrize("apply_b_dec_to_input", [True, False])
@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu"])
def test_sae_lens_loads_a_kit_sae_to_the_kit_function(arch, apply_b_dec_to_input, tmp_path):
    kit = SAE(
        SAEConfig(
            d_in=16,
            d_sae=48,
            architecture=arch,
            k=6,
            threshold=0.05,
            model_name="tiny-llama",
            layer=1,
            hook_name=HOOK,
            norm_scale=0.4,
            apply_b_dec_to_input=apply_b_dec_to_input,
        ),
        seed=1,
    )
    with torch.no_grad():
        kit.b_enc.normal_(0, 0.1)
        kit.b_dec.normal_(0, 0.5)
    kit.save(tmp_path)
    lens = LensSAE.load_from_disk(str(tmp_path))
    assert lens.cfg.metadata.hook_name == HOOK and lens.cfg.apply_b_dec_to_input == apply_b_dec_to_input
    _assert_same_function(kit, lens, torch.randn(20, 16) * 3)
    assert SAE.load(tmp_path).cfg == kit.cfg


@pytest.mark.parametrize(
    "hook_name,layer", [("blocks.15.hook_resid_post", 15), ("blocks.16.hook_resid_pre", 15)]
)
def test_layer_is_read_from_the_hook_name(hook_name, layer, tmp_path):
    _lens_sae("standard", hook_name=hook_name).save_model(str(tmp_path))
    assert SAE.load(tmp_path).cfg.layer == layer


def test_layer_guards_refuse_a_sae_lens_sae_of_another_layer(store):
    lens = _lens_sae("standard", d_in=store.d_model, hook_name="blocks.2.hook_resid_post")
    with pytest.raises(ValueError, match="trained on layer 2, not 1: pass layer=2"):
        train(store, TrainConfig(batch_size=64, total_tokens=64), init=lens)


def test_fine_tuning_from_a_bfloat16_sae_lens_sae_gives_a_float32_sae(store):
    lens = _lens_sae("jumprelu", "bfloat16", d_in=store.d_model, apply_b_dec_to_input=False)  # as Gemma Scope
    result = train(
        store, TrainConfig(batch_size=64, total_tokens=64 * 5, warmup_tokens=0, log_every=1), init=lens
    )
    assert all(p.dtype == torch.float32 for p in result.sae.parameters())
    assert result.sae.cfg.layer == 1 and not result.sae.cfg.apply_b_dec_to_input
    assert len(result.log) == 5 and all(math.isfinite(m["loss"]) for m in result.log)


@pytest.mark.parametrize(
    "lens,match",
    [
        (lambda: GatedSAE(GatedSAEConfig(d_in=4, d_sae=8)), "architecture 'gated'"),
        (
            lambda: BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=4, d_sae=8, k=2)),
            "architecture 'batchtopk'.*save_inference_model saves a batchtopk SAE as jumprelu",
        ),
    ],
    ids=["gated", "batchtopk-training-checkpoint"],
)
def test_an_architecture_the_kit_does_not_compute_is_refused_by_name(lens, match, tmp_path):
    lens().save_model(str(tmp_path))
    with pytest.raises(ValueError, match=match):
        SAE.load(tmp_path)


@pytest.mark.parametrize(
    "edit,match",
    [
        ({"normalize_activations": "layer_norm"}, "normalize_activations='layer_norm'"),
        ({"reshape_activations": "hook_z"}, "reshape_activations='hook_z'"),
        ({"dtype": "int8"}, "dtype='int8'"),
        ({"metadata": {"sae_lens_version": "5.9.0"}}, "sae_lens_version='5.9.0'"),
        (
            {"metadata": {"sae_lens_version": "6.0.0", "hook_name": "blocks.3.hook_mlp_out"}},
            "hook_name='blocks.3.hook_mlp_out' is not the residual stream after a block",
        ),
        (
            {"metadata": {"sae_lens_version": "6.0.0", "hook_name": "blocks.0.hook_resid_pre"}},
            "hook_name='blocks.0.hook_resid_pre' is not the residual stream after a block",
        ),
    ],
    ids=[
        "normalize_activations",
        "reshape_activations",
        "dtype",
        "pre-6-format",
        "hook-not-resid",
        "hook-embeddings",
    ],
)
def test_a_cfg_field_the_kit_cannot_honour_is_refused_by_name(edit, match, tmp_path):
    StandardSAE(StandardSAEConfig(d_in=4, d_sae=8)).save_model(str(tmp_path))
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, **edit}))
    with pytest.raises(ValueError, match=match):
        SAE.load(tmp_path)


def test_load_pretrained_offline_says_it_is_not_cached(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="not in the local Hugging Face cache"):
        load_pretrained("gpt2-small-res-jb", "blocks.0.hook_resid_pre")


def test_a_topk_cfg_without_k_reads_as_sae_lens_reads_it(tmp_path):
    lens = TopKSAE(TopKSAEConfig(d_in=16, d_sae=128, k=6, metadata=SAEMetadata(hook_name=HOOK)))
    with torch.no_grad():
        for p in lens.parameters():
            p.normal_(0, 0.3)
    lens.save_model(str(tmp_path))
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    del cfg["k"]
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    reference = LensSAE.load_from_disk(str(tmp_path))
    kit = SAE.load(tmp_path)
    assert kit.cfg.k == reference.cfg.k == 100
    _assert_same_function(kit, reference, torch.randn(20, 16))


def test_sae_lens_metadata_wins_over_the_kits_copy_after_an_edit_in_sae_lens(tmp_path):
    """A kit SAE re-saved by SAELens with another hook and model: the kit reads SAELens' fields."""
    SAE(SAEConfig(d_in=16, d_sae=48, model_name="tiny-llama", layer=1, hook_name=HOOK)).save(tmp_path / "kit")
    lens = LensSAE.load_from_disk(str(tmp_path / "kit"))
    lens.cfg.metadata.hook_name = "blocks.2.hook_resid_post"
    lens.cfg.metadata.model_name = "tiny-gpt2"
    lens.save_model(str(tmp_path / "edited"))
    cfg = SAE.load(tmp_path / "edited").cfg
    assert (cfg.layer, cfg.hook_name, cfg.model_name) == (2, "blocks.2.hook_resid_post", "tiny-gpt2")


def test_the_stored_dtype_is_stated_in_cfg_json_and_read_back(tmp_path):
    kit = SAE(SAEConfig(d_in=16, d_sae=48, norm_scale=0.5), seed=2)
    kit.save(tmp_path, dtype="float16")
    assert json.loads((tmp_path / "cfg.json").read_text())["dtype"] == "float16"
    lens = LensSAE.load_from_disk(str(tmp_path))
    assert lens.W_enc.dtype == torch.float16
    back = SAE.load(tmp_path)
    assert back.W_enc.dtype == torch.float32
    torch.testing.assert_close(back.W_dec, (kit.W_dec / 0.5).half().float() * 0.5)
    with pytest.raises(ValueError, match="dtype='int8': store SAE weights as one of"):
        kit.save(tmp_path / "bad", dtype="int8")


@pytest.mark.parametrize("name", ["smollm2-135m-l6-tech1", "smollm2-135m-l6-tech21"])
def test_sae_lens_activations_store_builds_from_a_shipped_sae(name):
    """SAELens' ActivationsStore.from_sae needs the context size, BOS and hook from cfg.json."""
    from datasets import Dataset
    from sae_lens.training.activations_store import ActivationsStore
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    path = Path(__file__).resolve().parents[1] / "data" / "saes" / name
    raw = json.loads((path / "cfg.json").read_text())
    meta = raw["metadata"]
    assert (meta["context_size"], meta["prepend_bos"], meta["exclude_special_tokens"]) == (128, True, True)
    assert meta["dataset_path"] and raw["dtype"] == "float16"
    lens = LensSAE.load_from_disk(str(path))
    model = HookedTransformer(
        HookedTransformerConfig(n_layers=7, d_model=576, n_ctx=128, d_head=64, d_vocab=300, act_fn="relu")
    )
    tokens = Dataset.from_dict({"input_ids": [list(range(1, 129))] * 4})
    store = ActivationsStore.from_sae(
        model, lens, dataset=tokens, streaming=False, store_batch_size_prompts=2
    )
    assert store.context_size == 128 and store.hook_name == "blocks.6.hook_resid_post" and store.prepend_bos
    acts = store.get_activations(store.get_batch_tokens())
    assert acts.shape[-1] == 576 and torch.isfinite(acts).all()


def test_a_trained_sae_states_its_context_and_special_tokens(store):
    cfg = train(store, TrainConfig(batch_size=64, total_tokens=64, warmup_tokens=0)).sae.cfg
    assert (cfg.context_size, cfg.prepend_bos, cfg.exclude_special_tokens) == (16, True, True)
