"""ssae_kit.sae: the SAE function on hand-computed cases, the decoder constraint, save/load."""

from __future__ import annotations

import json

import pytest
import torch

from ssae_kit.io import SAE_CFG_FILE, SAE_WEIGHTS_FILE
from ssae_kit.sae import SAE, SAEConfig


def build_sae(architecture="relu", norm_scale=1.0, **kw) -> SAE:
    """2x2 SAE: W_enc = W_dec = I, b_enc = [0, -1], b_dec = [1, 0]."""
    sae = SAE(SAEConfig(d_in=2, d_sae=2, architecture=architecture, norm_scale=norm_scale, **kw))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2))
        sae.W_dec.copy_(torch.eye(2))
        sae.b_enc.copy_(torch.tensor([0.0, -1.0]))
        sae.b_dec.copy_(torch.tensor([1.0, 0.0]))
    return sae


X = torch.tensor([[3.0, 2.0]])  # pre-activations: (x - b_dec) W_enc + b_enc = [2, 1]


@pytest.mark.parametrize(
    "arch,kw,latents,recon,sparsity",
    [
        ("relu", {}, [2.0, 1.0], [3.0, 1.0], 3.0),  # L1 = 2 + 1
        ("topk", {"k": 1}, [2.0, 0.0], [3.0, 0.0], 0.0),
        ("jumprelu", {"threshold": 1.5}, [2.0, 0.0], [3.0, 0.0], 1.0),  # L0 = 1
        # apply_b_dec_to_input off (Gemma Scope): pre-activations x W_enc + b_enc = [3, 1]
        ("relu", {"apply_b_dec_to_input": False}, [3.0, 1.0], [4.0, 1.0], 4.0),
        ("topk", {"k": 1, "apply_b_dec_to_input": False}, [3.0, 0.0], [4.0, 0.0], 0.0),
    ],
)
def test_forward_on_a_hand_computed_case(arch, kw, latents, recon, sparsity):
    out = build_sae(arch, **kw)(X)
    assert out.feature_acts.tolist() == [latents]
    assert out.sae_out.tolist() == [recon]
    assert out.sq_error.item() == pytest.approx(((X - torch.tensor(recon)) ** 2).sum().item())
    assert out.sparsity.item() == pytest.approx(sparsity)


def test_norm_scale_maps_raw_activations_in_and_out():
    """With s = 2, raw x/2 is encoded like x, and the reconstruction comes back in raw units."""
    sae = build_sae(norm_scale=2.0)
    out = sae(X / 2)
    assert out.feature_acts.tolist() == [[2.0, 1.0]]
    assert out.sae_out.tolist() == [[1.5, 0.5]]
    assert out.sq_error.item() == pytest.approx(1.0)  # in normalised units: ||[3,1] - [3,2]||^2
    torch.testing.assert_close(sae.decode(sae.encode(X / 2)), out.sae_out)


def test_topk_keeps_exactly_k_largest():
    sae = SAE(SAEConfig(d_in=8, d_sae=64, architecture="topk", k=5))
    x = torch.randn(10, 8) * 3
    f = sae.encode(x)
    assert ((f > 0).sum(1) <= 5).all() and ((f > 0).sum(1) == 5).float().mean() > 0.5
    pre = sae.pre_activations(
        x
    ).detach()  # the kept latents are the 5 largest pre-activations, at their values
    top = pre.topk(5, dim=1)
    expected = torch.zeros_like(pre).scatter_(1, top.indices, top.values.clamp_min(0))
    torch.testing.assert_close(f, expected)


def test_decoder_constraint_steps_keep_rows_at_unit_norm():
    sae = SAE(SAEConfig(d_in=6, d_sae=12))
    sae(torch.randn(4, 6)).sq_error.sum().backward()
    sae.remove_gradient_parallel_to_decoder_directions()
    parallel = (sae.W_dec.grad * sae.W_dec).sum(1).abs()
    assert (parallel < 1e-6 * sae.W_dec.grad.norm(dim=1).clamp_min(1)).all()
    with torch.no_grad():
        sae.W_dec.mul_(3.0)
    sae.set_decoder_norm_to_unit_norm()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(12))


def test_jumprelu_threshold_gets_a_gradient():
    sae = SAE(SAEConfig(d_in=4, d_sae=8, architecture="jumprelu", threshold=0.5, bandwidth=2.0))
    sae(torch.randn(32, 4) * 2).sparsity.sum().backward()
    assert sae.log_threshold.grad is not None and sae.log_threshold.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu"])
def test_save_load_round_trip_keeps_the_function_and_provenance(arch, tmp_path):
    cfg = SAEConfig(
        d_in=8,
        d_sae=16,
        architecture=arch,
        k=3,
        model_name="m",
        layer=4,
        hook_name="blocks.4.hook_resid_post",
        norm_scale=0.37,
    )
    sae = SAE(cfg, seed=3)
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
    sae.save(tmp_path)
    loaded = SAE.load(tmp_path)
    assert loaded.cfg == cfg
    x = torch.randn(5, 8)
    torch.testing.assert_close(loaded(x).sae_out, sae(x).sae_out, atol=1e-5, rtol=1e-5)
    on_disk = json.loads((tmp_path / SAE_CFG_FILE).read_text())
    assert on_disk["metadata"]["hook_name"] == "blocks.4.hook_resid_post"
    assert on_disk["normalize_activations"] == "none"  # the scale is folded into the weights


def test_bad_configs_and_files_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="k=40 must be between 1 and d_sae=32"):
        SAEConfig(d_in=4, d_sae=32, architecture="topk", k=40)
    with pytest.raises(ValueError, match="Unknown architecture 'gated'"):
        SAEConfig(d_in=4, d_sae=8, architecture="gated")
    with pytest.raises(ValueError, match="dtype='bfloat16': the kit computes and fine-tunes in float32"):
        SAEConfig(d_in=4, d_sae=8, dtype="bfloat16")
    with pytest.raises(ValueError, match="layer=3 but hook_name='blocks.4.hook_resid_post' reads layer 4"):
        SAEConfig(d_in=4, d_sae=8, layer=3, hook_name="blocks.4.hook_resid_post")
    SAE(SAEConfig(d_in=4, d_sae=8)).save(tmp_path)
    cfg = json.loads((tmp_path / SAE_CFG_FILE).read_text())
    (tmp_path / SAE_CFG_FILE).write_text(json.dumps({**cfg, "architecture": "gated"}))
    with pytest.raises(ValueError, match="architecture 'gated'.*'jumprelu', 'standard', 'topk'"):
        SAE.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="No SAE at"):
        SAE.load(tmp_path / "missing")


def test_check_reads_refuses_another_width_layer_or_model_and_passes_what_is_unknown():
    sae = SAE(SAEConfig(d_in=4, d_sae=8, model_name="tiny-llama", layer=1))
    sae.check_reads(model_name="tiny-llama", layer=1, d_in=4)
    sae.check_reads()  # nothing given, nothing to refuse
    with pytest.raises(
        ValueError,
        match="The SAE reads d_in=4 but these activations have d_model=32: use an SAE of this model.",
    ):
        sae.check_reads(d_in=32)
    with pytest.raises(ValueError, match="The SAE was trained on layer 1, not 2: pass layer=1."):
        sae.check_reads(layer=2)
    with pytest.raises(
        ValueError, match="trained on model 'tiny-llama', not 'gpt2': use an SAE of this model"
    ):
        sae.check_reads(model_name="gpt2")
    unknown = SAE(SAEConfig(d_in=4, d_sae=8))  # layer -1, no model name: reads any layer of any model
    unknown.check_reads(model_name="gpt2", layer=7, d_in=4)
    sae.check_reads(model_name="", layer=1)  # a caller that does not know the model passes it too


def test_from_dict_ignores_unknown_fields():
    cfg = SAEConfig.from_dict({"d_in": 4, "d_sae": 8, "some_future_field": 1})
    assert (cfg.d_in, cfg.d_sae, cfg.architecture) == (4, 8, "relu")


@pytest.mark.parametrize("apply_b_dec_to_input", [True, False])
def test_sparse_topk_forward_matches_the_dense_path_in_value_and_gradient(apply_b_dec_to_input):
    sae = SAE(
        SAEConfig(
            d_in=16,
            d_sae=64,
            architecture="topk",
            k=5,
            norm_scale=0.7,
            apply_b_dec_to_input=apply_b_dec_to_input,
        ),
        seed=4,
    )
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.b_enc.normal_(0, 0.1)
    x = torch.randn(32, 16) * 2
    x_n = x * 0.7
    dense = (sae.decode_normalized(sae.encode_normalized(x_n)) - x_n).pow(2).sum(-1).mean()
    dense.backward()
    expected = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    out = sae(x)
    out.sq_error.mean().backward()
    assert out.sq_error.mean().item() == pytest.approx(dense.item(), rel=1e-6)
    torch.testing.assert_close(out.feature_acts, sae.encode(x))
    for name, p in sae.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], atol=1e-5, rtol=1e-5, msg=f"gradient of {name}")


def _saved(tmp_path, architecture="relu", **edit):
    """A saved SAE folder whose weights file is rewritten with `edit` (name -> tensor, or None to drop it)."""
    from safetensors.torch import load_file, save_file

    sae = SAE(SAEConfig(d_in=4, d_sae=8, architecture=architecture, k=2))
    sae.save(tmp_path)
    weights = load_file(str(tmp_path / SAE_WEIGHTS_FILE))
    for name, value in edit.items():
        weights.pop(name) if value is None else weights.__setitem__(name, value)
    save_file(weights, str(tmp_path / SAE_WEIGHTS_FILE))
    return tmp_path


def test_loading_refuses_nan_weights_and_missing_or_stray_tensors_naming_the_tensor(tmp_path):
    nan = torch.full((4,), float("nan"))
    with pytest.raises(ValueError, match=r"Tensor 'b_dec' of .* holds NaN/inf"):
        SAE.load(_saved(tmp_path / "a", b_dec=nan))
    with pytest.raises(ValueError, match=r"lacks the tensor\(s\) \['threshold'\] that a jumprelu SAE needs"):
        SAE.load(_saved(tmp_path / "b", "jumprelu", threshold=None))
    with pytest.raises(
        ValueError, match=r"holds a `threshold` tensor, but its cfg.json says architecture 'relu'"
    ):
        SAE.load(_saved(tmp_path / "c", threshold=torch.ones(8)))
    folder = _saved(tmp_path / "d")
    (folder / SAE_WEIGHTS_FILE).write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=r"is not a readable safetensors file"):
        SAE.load(folder)


@pytest.mark.parametrize("arch", ["relu", "topk", "jumprelu"])
def test_forward_takes_batch_seq_inputs_and_casts_their_dtype(arch):
    """(batch, seq, d_in) in any float dtype, as SAELens accepts: the same as the flat float32 batch."""
    sae = SAE(SAEConfig(d_in=8, d_sae=32, architecture=arch, k=4), seed=0)
    x = (torch.randn(2, 5, 8) * 3).bfloat16()
    flat = sae(x.float().reshape(10, 8))
    out = sae(x)
    assert (
        out.sae_out.shape == (2, 5, 8)
        and out.feature_acts.shape == (2, 5, 32)
        and out.sq_error.shape == (2, 5)
    )
    for mine, ref in zip(out, flat, strict=True):
        torch.testing.assert_close(mine.reshape(ref.shape), ref)
    torch.testing.assert_close(sae.encode(x), sae.encode(x.float()))
