"""ssae_kit.activations: the store holds exactly the model's activations, and refuses bad data."""

from __future__ import annotations

import json
import os

import pytest
import torch

from ssae_kit import ActivationStore, cache_activations
from ssae_kit.activations import subset_store
from ssae_kit.corpora import content_mask, tokenize_contexts
from ssae_kit.hooks import forward_to_layer
from ssae_kit.io import MANIFEST_FILE
from ssae_kit.models import get_blocks


def _cache(tiny, docs, out, **kw):
    model, tok = tiny
    kw = {"ctx_len": 16, "shard_tokens": 50, "batch_size": 4, **kw}
    return cache_activations(model, tok, docs, 1, out, **kw)


def test_store_holds_the_layer_activations_of_text_tokens_with_their_origin(tiny, docs, tmp_path):
    model, tok = tiny
    store = _cache(tiny, docs, tmp_path, dtype="float32")
    ctx = tokenize_contexts(docs, tok, 16)
    with torch.no_grad():
        expected = forward_to_layer(model, ctx.input_ids, 1, ctx.attention_mask)[content_mask(ctx, tok)]
    raw = ActivationStore(tmp_path, normalize=False)
    acts, tokens = map(torch.cat, zip(*(raw.read_shard(i) for i in range(raw.n_shards))))
    assert store.n_tokens == len(expected) == len(acts) and store.n_shards == -(-len(acts) // 50)
    torch.testing.assert_close(acts, expected, atol=1e-5, rtol=1e-5)
    for token_id, doc_id, pos in tokens.tolist()[::7]:  # (token id, doc, position) points at the text
        assert tok(docs[doc_id].text, add_special_tokens=False).input_ids[pos] == token_id


def test_normalised_batches_have_mean_squared_norm_d_model(tiny, docs, tmp_path):
    store = _cache(tiny, docs, tmp_path)
    x = torch.cat(list(store.batches(64)))
    assert x.pow(2).sum(1).mean().item() == pytest.approx(store.d_model, rel=1e-3)
    assert store.manifest["norm_scale"] == pytest.approx(
        (store.d_model / store.manifest["mean_sq_norm"]) ** 0.5
    )


def test_shuffled_pass_yields_every_token_once_in_seeded_order(tiny, docs, tmp_path):
    store = _cache(tiny, docs, tmp_path)
    key = lambda batches: sorted(map(tuple, torch.cat([t for _, t in batches]).tolist()))
    ordered = list(store.batches(32, shuffle=False, with_tokens=True))
    shuffled = list(store.batches(32, seed=1, buffer_shards=2, with_tokens=True))
    assert key(shuffled) == key(ordered) and len(key(ordered)) == store.n_tokens
    again = list(store.batches(32, seed=1, buffer_shards=2, with_tokens=True))
    other = list(store.batches(32, seed=2, buffer_shards=2, with_tokens=True))
    assert torch.equal(again[0][1], shuffled[0][1]) and not torch.equal(other[0][1], shuffled[0][1])
    assert all(len(b[0]) == 32 for b in shuffled[:-1])


def test_batches_read_shards_lazily(tiny, docs, tmp_path, monkeypatch):
    store = _cache(tiny, docs, tmp_path)
    reads: list[int] = []
    real = store.read_shard
    monkeypatch.setattr(store, "read_shard", lambda i, normalize=None: reads.append(i) or real(i, normalize))
    next(store.batches(8, buffer_shards=2))
    assert len(reads) == 2 < store.n_shards


def test_ranks_read_disjoint_shards_that_cover_the_store(tiny, docs, tmp_path):
    store = _cache(tiny, docs, tmp_path)
    rows = [
        torch.cat([t for _, t in store.batches(16, rank=r, world_size=2, with_tokens=True)]) for r in (0, 1)
    ]
    a, b = (set(map(tuple, r.tolist())) for r in rows)
    assert not a & b and len(a | b) == store.n_tokens
    with pytest.raises(ValueError, match="smaller shard_tokens"):
        store.shard_ids(0, store.n_shards + 1)


def test_tokens_far_above_the_median_norm_are_dropped_and_counted(tiny, docs, tmp_path):
    model, _ = tiny

    def blow_up_position_3(module, args, output):
        output = output.clone()
        output[:, 3] *= 1000.0
        return output

    handle = get_blocks(model)[1].register_forward_hook(blow_up_position_3)
    try:
        kept_all = _cache(tiny, docs, tmp_path / "all", max_norm_multiple=None)
        filtered = _cache(tiny, docs, tmp_path / "filtered")
    finally:
        handle.remove()
    n_windows = int(
        (tokenize_contexts(docs, tiny[1], 16).attention_mask.sum(1) > 3).sum()
    )  # have a position 3
    assert filtered.manifest["n_outliers_dropped"] == n_windows
    assert filtered.n_tokens == kept_all.n_tokens - n_windows
    max_norm = lambda store: (
        torch.cat(list(ActivationStore(store.path, normalize=False).batches(64))).norm(dim=1).max()
    )
    assert max_norm(filtered) * 100 < max_norm(kept_all)


def test_max_tokens_stops_early(tiny, docs, tmp_path):
    assert _cache(tiny, docs, tmp_path, max_tokens=77).n_tokens == 77


def test_same_arguments_reuse_the_store_without_rewriting(tiny, docs, tmp_path):
    _cache(tiny, docs, tmp_path)
    stamp = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    _cache(tiny, docs, tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == stamp


def test_other_arguments_never_overwrite_a_complete_store_silently(tiny, docs, tmp_path):
    _cache(tiny, docs, tmp_path)
    with pytest.raises(ValueError, match=r"ctx_len.*overwrite=True"):
        _cache(tiny, docs, tmp_path, ctx_len=12)
    assert _cache(tiny, docs, tmp_path, ctx_len=12, overwrite=True).manifest["ctx_len"] == 12


def test_killed_run_is_detected_and_rebuilt(tiny, docs, tmp_path, monkeypatch):
    model, _ = tiny
    calls = {"n": 0}

    def die_on_third_batch(module, args, output):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    handle = get_blocks(model)[0].register_forward_hook(die_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        _cache(tiny, docs, tmp_path, batch_size=2, shard_tokens=10)
    handle.remove()
    assert any(p.name.startswith("shard_") for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match="incomplete"):
        ActivationStore(tmp_path)
    (tmp_path / "notes.md").write_text("mine")  # the user's own file in the same folder
    with pytest.warns(UserWarning, match="killed run"):
        store = _cache(tiny, docs, tmp_path, batch_size=2, shard_tokens=10)
    assert store.n_tokens == len(torch.cat(list(store.batches(100))))
    assert (tmp_path / "notes.md").read_text() == "mine"


def test_truncated_shard_is_refused_and_rebuilt(tiny, docs, tmp_path):
    _cache(tiny, docs, tmp_path)
    shard = tmp_path / "shard_00001.npy"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(ValueError, match="shard_00001.npy.*truncated.*cache_activations"):
        ActivationStore(tmp_path)
    with pytest.warns(UserWarning, match="Rebuilding"):
        _cache(tiny, docs, tmp_path)
    ActivationStore(tmp_path)


def test_altered_shard_fails_its_checksum(tiny, docs, tmp_path):
    store = _cache(tiny, docs, tmp_path)
    shard = tmp_path / "shard_00000.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="Checksum mismatch in .*shard_00000.npy"):
        list(store.batches(16, shuffle=False))


@pytest.mark.parametrize("field,value", [("model", "other-model"), ("layer", 2), ("d_model", 64)])
def test_reopening_with_another_model_layer_or_width_is_refused(tiny, docs, tmp_path, field, value):
    _cache(tiny, docs, tmp_path)
    with pytest.raises(ValueError, match=f"made with {field}="):
        ActivationStore(tmp_path, **{field: value})


def test_foreign_manifest_is_refused(tmp_path):
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not an ssae-kit activation manifest"):
        ActivationStore(tmp_path)


@pytest.mark.parametrize("scale,dtype", [(float("nan"), "float32"), (1e6, "float16")])
def test_nan_or_overflowing_activations_are_refused(tiny, docs, tmp_path, scale, dtype):
    model, _ = tiny
    handle = get_blocks(model)[1].register_forward_hook(lambda m, a, o: o * scale)
    try:
        with pytest.raises(ValueError, match="NaN or inf.*dtype='float32'"):
            _cache(tiny, docs, tmp_path, dtype=dtype)
    finally:
        handle.remove()
    assert not (tmp_path / MANIFEST_FILE).exists()


def test_bad_arguments(tiny, docs, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        _cache(tiny, [], tmp_path)
    with pytest.raises(ValueError, match="dtype='bfloat8'.*float16"):
        _cache(tiny, docs, tmp_path, dtype="bfloat8")
    with pytest.raises(ValueError, match=r"blocks 0\.\.2"):
        cache_activations(*tiny, docs, 5, tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        ActivationStore(tmp_path / "nope")
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(shard_tokens=0), r"shard_tokens=0 must be a positive integer \(tokens per shard file\)"),
        (dict(batch_size=0), r"batch_size=0 must be a positive integer \(contexts per forward pass\)"),
        (dict(max_tokens=-5), r"max_tokens=-5 must be a positive integer \(or None to cache every token\)"),
        (dict(ctx_len=513), r"ctx_len=513 is more than the 512 positions of tiny-llama.*ctx_len <= 512"),
    ],
)
def test_bad_sizes_are_refused_before_any_work(tiny, docs, tmp_path, kw, match):
    model, _ = tiny
    calls: list[int] = []
    handle = get_blocks(model)[0].register_forward_hook(lambda m, a, o: calls.append(1))
    try:
        with pytest.raises(ValueError, match=match):
            _cache(tiny, docs, tmp_path / "store", **kw)
    finally:
        handle.remove()
    assert not calls and not os.listdir(tmp_path), "work was done before the arguments were checked"


def test_unwritable_out_dir_is_refused_before_any_work(tiny, docs, tmp_path):
    model, _ = tiny
    (tmp_path / "file.txt").write_text("not a folder")
    calls: list[int] = []
    handle = get_blocks(model)[0].register_forward_hook(lambda m, a, o: calls.append(1))
    try:
        with pytest.raises(ValueError, match="Cannot write to the output folder .*file.txt/store"):
            _cache(tiny, docs, tmp_path / "file.txt" / "store")
    finally:
        handle.remove()
    assert not calls


def test_fingerprint_is_equal_for_the_same_activations_only(tiny, docs, tmp_path):
    a, again = _cache(tiny, docs[:3], tmp_path / "a"), _cache(tiny, docs[:3], tmp_path / "again")
    other = _cache(tiny, docs[:2], tmp_path / "other")
    assert a.fingerprint == again.fingerprint != other.fingerprint


def test_subset_store_keeps_exactly_the_rows_of_the_chosen_documents_bit_for_bit(tiny, docs, tmp_path):
    parent = _cache(tiny, docs, tmp_path / "all", dtype="float32")
    keep = [0, 3, 4, 9]
    sub = subset_store(parent, keep, tmp_path / "sub")
    raw_parent = ActivationStore(tmp_path / "all", normalize=False)
    acts, tokens = map(torch.cat, zip(*(raw_parent.read_shard(i) for i in range(raw_parent.n_shards))))
    rows = torch.isin(tokens[:, 1], torch.tensor(keep, dtype=torch.int32))
    raw_sub = ActivationStore(tmp_path / "sub", normalize=False)
    sub_acts, sub_tokens = map(torch.cat, zip(*(raw_sub.read_shard(i) for i in range(raw_sub.n_shards))))
    assert torch.equal(sub_acts, acts[rows]) and torch.equal(sub_tokens, tokens[rows])
    assert sub.n_tokens == int(rows.sum()) and set(sub_tokens[:, 1].tolist()) == set(keep)
    assert sub.norm_scale == pytest.approx(
        (sub.d_model / sub_acts.pow(2).sum(1).mean()).sqrt().item(), rel=1e-5
    )
    before = (tmp_path / "sub" / MANIFEST_FILE).stat().st_mtime_ns
    assert subset_store(parent, keep[::-1], tmp_path / "sub").fingerprint == sub.fingerprint  # reused
    assert (tmp_path / "sub" / MANIFEST_FILE).stat().st_mtime_ns == before
    with pytest.raises(ValueError, match="at least one document id"):
        subset_store(parent, [], tmp_path / "empty")
    with pytest.raises(ValueError, match="None of the 1 document ids has rows"):
        subset_store(parent, [999], tmp_path / "none")


@pytest.mark.parametrize("bad", [dict(ctx_len=1), dict(docs=["", ""])])
def test_overwrite_with_a_bad_request_keeps_the_old_store(tiny, docs, tmp_path, bad):
    from ssae_kit.corpora import Document

    old = _cache(tiny, docs, tmp_path)
    fingerprint = old.fingerprint
    kw = {k: v for k, v in bad.items() if k != "docs"}
    new_docs = [Document(t) for t in bad["docs"]] if "docs" in bad else docs
    with pytest.raises(ValueError, match="ctx_len=1 must be a whole number >= 2|No tokens to cache"):
        _cache(tiny, new_docs, tmp_path, overwrite=True, **kw)
    assert ActivationStore(tmp_path).fingerprint == fingerprint  # nothing was deleted


def test_a_second_caching_run_into_a_folder_in_use_fails_at_once_naming_the_first(tiny, docs, tmp_path):
    from ssae_kit.io import folder_lock

    with (
        folder_lock(tmp_path, "activation caching"),
        pytest.raises(ValueError, match=rf"in use by another activation caching \(process {os.getpid()}"),
    ):
        _cache(tiny, docs, tmp_path)
    assert _cache(tiny, docs, tmp_path).n_tokens > 0  # free again once the first is done


def test_a_store_with_nan_and_a_matching_checksum_is_rebuilt_not_reused(tiny, docs, tmp_path):
    import numpy as np

    from ssae_kit.io import npy_bytes, sha256_bytes

    store = _cache(tiny, docs, tmp_path, dtype="float32")
    manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
    shard = manifest["shards"][0]
    acts = np.load(tmp_path / shard["file"])
    acts[3] = np.nan
    data = npy_bytes(acts)
    (tmp_path / shard["file"]).write_bytes(data)
    shard.update(bytes=len(data), sha256=sha256_bytes(data))  # the attacker's (or bug's) checksum matches
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    assert not ActivationStore(tmp_path).all_finite()
    with pytest.warns(UserWarning, match="holds NaN/inf activations"):
        rebuilt = _cache(tiny, docs, tmp_path, dtype="float32")
    assert rebuilt.all_finite() and rebuilt.fingerprint == store.fingerprint


def test_bad_arguments_are_refused_before_any_forward_pass(tiny, docs, tmp_path):
    with pytest.raises(ValueError, match=r"max_norm_multiple=0 must be a positive number"):
        _cache(tiny, docs, tmp_path, max_norm_multiple=0)
    with pytest.raises(TypeError, match=r"got str 'the cat sat'.*\[Document\(text\) for text in texts\]"):
        _cache(tiny, ["the cat sat", "on the mat"], tmp_path)
    store = _cache(tiny, docs, tmp_path)
    with pytest.raises(ValueError, match=r"batch_size=-4 must be a positive integer"):
        next(store.batches(-4))
