"""Cache one layer's residual-stream activations to disk shards (`cache_activations`), write a store
from a tensor, or subset one; the layout and how a store is read back are in `store`.

Notebook 00's primer makes a store too: superposition in miniature (`make_toy`, `toy_store`). A toy
"residual stream" is a sparse, non-negative mix of `n_features` known unit directions in
`d < n_features` dimensions, so the directions cannot all be orthogonal (Elhage et al. 2022, "Toy
Models of Superposition"). Written as an activation store, the kit's own `train` and
`evaluate_store` run on it, and `latents.feature_recovery` scores how well an SAE's decoder found
the ground truth, which no real model offers.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .corpora import Document, check_documents, content_mask, corpus_checksum, tokenize_contexts
from .hooks import iter_residuals
from .io import (
    MANIFEST_FILE,
    atomic_write_bytes,
    atomic_write_json,
    check_writable_dir,
    folder_lock,
    npy_bytes,
    sha256_bytes,
)
from .models import check_ctx_len, check_layer, check_max_norm_multiple, d_model, hook_name, massive_norm_mask
from .store import FORMAT, VERSION, ActivationStore

__all__ = [
    "cache_activations",
    "make_toy",
    "one_thread",
    "toy_store",
]

DTYPES = ("float16", "float32")
_SHARD_RE = re.compile(r"^shard_\d{5}(\.tokens)?\.npy$")


def cache_activations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    docs: list[Document],
    layer: int,
    out_dir: str | Path,
    ctx_len: int = 128,
    batch_size: int = 16,
    dtype: str = "float16",
    max_tokens: int | None = None,
    exclude_special: bool = True,
    prepend_bos: bool = True,
    shard_tokens: int = 2**16,
    max_norm_multiple: float | None = 10.0,
    overwrite: bool = False,
) -> ActivationStore:
    """Run `model` to `layer` over `docs` and write the residual stream to `out_dir`.

    Reuses a complete store made with the same arguments; rebuilds a half-written one; refuses
    to replace a complete store made with other arguments unless `overwrite=True`.
    `exclude_special` leaves BOS/EOS/PAD positions out (PAPER §3). `max_norm_multiple` drops
    tokens whose norm exceeds that multiple of the batch's median norm: attention-sink tokens
    (in SmolLM2 at layer 15, the first token of a window, ~60x the median) would otherwise
    dominate the reconstruction loss, and TERM, which up-weights the worst tokens, above all.
    The number dropped is recorded in the manifest; None keeps every token.
    """
    check_layer(model, layer)
    check_ctx_len(model, ctx_len)
    check_max_norm_multiple(max_norm_multiple)
    check_documents(docs)
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; use one of {DTYPES}.")
    for name, value, fix in (
        ("batch_size", batch_size, "contexts per forward pass"),
        ("shard_tokens", shard_tokens, "tokens per shard file"),
        ("max_tokens", max_tokens, "or None to cache every token"),
    ):
        if value is not None and value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer ({fix}).")
    if not docs:
        raise ValueError("No documents to cache: the corpus is empty.")
    out = Path(out_dir)
    request = dict(
        model=model.name_or_path,
        layer=layer,
        ctx_len=ctx_len,
        dtype=dtype,
        max_tokens=max_tokens,
        exclude_special=exclude_special,
        prepend_bos=prepend_bos,
        shard_tokens=shard_tokens,
        max_norm_multiple=max_norm_multiple,
        n_docs=len(docs),
        corpus=corpus_checksum(docs),
    )
    if _reusable(out, request, overwrite):
        return ActivationStore(out)
    check_writable_dir(out)  # a complete store is reused read-only; building one needs writing
    with folder_lock(out, "activation caching"):
        return _build_store(model, tokenizer, docs, out, request, batch_size)


def _build_store(model, tokenizer, docs: list[Document], out: Path, request: dict[str, Any], batch_size: int):
    """`cache_activations` once its arguments are checked (they are in `request`) and its folder locked."""
    layer, ctx_len, dtype, max_tokens = (
        request["layer"],
        request["ctx_len"],
        request["dtype"],
        request["max_tokens"],
    )
    exclude_special, prepend_bos = request["exclude_special"], request["prepend_bos"]
    max_norm_multiple, shard_tokens = request["max_norm_multiple"], request["shard_tokens"]
    contexts = tokenize_contexts(docs, tokenizer, ctx_len, prepend_bos)  # raises on ctx_len < 2
    keep = content_mask(contexts, tokenizer) if exclude_special else contexts.attention_mask.bool()
    if not keep.any():  # before the old store is removed: a bad request never destroys saved work
        raise ValueError("No tokens to cache: the documents are empty after removing special tokens.")
    _remove_store_files(out)
    batches = iter_residuals(
        model, contexts.input_ids, contexts.attention_mask, keep, layer, batch_size, trim_padding=True
    )
    writer = _ShardWriter(out, dtype, shard_tokens, d_model(model))
    n_outliers = 0
    bar = tqdm(total=max_tokens or int(keep.sum()), desc=f"caching layer {layer}", unit="tok")
    with torch.inference_mode():
        for b, (rows, kept, resid) in enumerate(batches):  # resid (B, T, D), kept (B, T)
            outlier = massive_norm_mask(resid, kept, max_norm_multiple)
            n_outliers += int(outlier.sum())
            kept &= ~outlier
            acts = resid[kept].float().cpu()  # (n, D) float32
            tokens = _token_info(contexts, rows, resid.shape[1], kept.cpu(), prepend_bos)  # (n, 3)
            if max_tokens is not None:
                acts, tokens = acts[: max_tokens - writer.n_tokens], tokens[: max_tokens - writer.n_tokens]
            acts = acts.to(getattr(torch, dtype))
            if not torch.isfinite(acts).all():
                raise ValueError(
                    f"Activations at layer {layer} contain NaN or inf (batch {b}). With dtype="
                    f"{dtype!r} this is usually overflow: pass dtype='float32', or exclude_special="
                    "True to drop BOS, whose norm is often huge."
                )
            writer.add(acts, tokens)
            bar.update(len(acts))
            if max_tokens is not None and writer.n_tokens >= max_tokens:
                break
    bar.close()
    if writer.n_tokens == 0:
        raise ValueError("No tokens were cached: the documents are empty after removing special tokens.")
    manifest = dict(
        format=FORMAT,
        version=VERSION,
        **request,
        hook_name=hook_name(layer),
        d_model=d_model(model),
        n_tokens=writer.n_tokens,
        n_outliers_dropped=n_outliers,
        **writer.finish(),
        request=request,
    )
    atomic_write_json(out / MANIFEST_FILE, manifest)
    return ActivationStore(out)


def store_from_tensor(
    x: torch.Tensor, out_dir: str | Path, model_name: str = "synthetic", layer: int = 0
) -> ActivationStore:
    """A store holding the rows of `x` (N, d_model) as they are, for activations made without a model
    (notebook 00's toy, tests): the same shards, checksums and input scale caching writes. Rows are
    their own documents (token id 0, position 0); an existing store in `out_dir` is replaced."""
    if x.ndim != 2 or len(x) == 0 or not torch.isfinite(x).all():
        raise ValueError(
            f"store_from_tensor needs finite (N >= 1, d_model) activations; got shape {tuple(x.shape)}."
        )
    out = Path(out_dir)
    check_writable_dir(out)
    _remove_store_files(out)
    writer = _ShardWriter(out, "float32", 1 << 16, x.shape[1])
    ids = torch.arange(len(x), dtype=torch.int32)
    writer.add(x.float(), torch.stack([torch.zeros_like(ids), ids, torch.zeros_like(ids)], 1))
    manifest = dict(
        format=FORMAT,
        version=VERSION,
        model=model_name,
        layer=layer,
        hook_name=hook_name(layer),
        d_model=x.shape[1],
        n_tokens=writer.n_tokens,
        n_outliers_dropped=0,
        **writer.finish(),
    )
    atomic_write_json(out / MANIFEST_FILE, manifest)
    return ActivationStore(out)


def subset_store(store: ActivationStore, doc_ids: Iterable[int], out_dir: str | Path) -> ActivationStore:
    """A new store holding only the rows of `store` whose document id is in `doc_ids`, in order.

    Caching once and filtering is how the rarity sweep gets one store per subdomain share in seconds
    rather than a forward pass each. The rows are the parent's, bit for bit (the massive-norm rule
    was applied when the parent was cached); the input scale is measured on the kept rows. Reused
    when complete and made from the same parent and ids."""
    keep = sorted({int(i) for i in doc_ids})
    if not keep:
        raise ValueError("subset_store needs at least one document id to keep.")
    out = Path(out_dir)
    request = dict(
        derived_from=store.fingerprint,
        doc_ids=sha256_bytes(json.dumps(keep).encode())[:16],
        n_docs=len(keep),
    )
    if _reusable(out, request, overwrite=False):
        return ActivationStore(out)
    check_writable_dir(out)
    _remove_store_files(out)
    parent = store.manifest
    writer = _ShardWriter(out, parent["dtype"], parent["shard_tokens"], parent["d_model"])
    wanted = torch.tensor(keep, dtype=torch.int32)
    for i in range(store.n_shards):
        shard = parent["shards"][i]
        acts = torch.from_numpy(store._read(shard["file"], shard["sha256"]))
        tokens = torch.from_numpy(store._read(shard["tokens_file"], shard["tokens_sha256"]))
        rows = torch.isin(tokens[:, 1], wanted)
        if rows.any():
            writer.add(acts[rows], tokens[rows])
    if writer.n_tokens == 0:
        raise ValueError(f"None of the {len(keep)} document ids has rows in {store.path}: check the ids.")
    fields = (
        "model",
        "layer",
        "ctx_len",
        "dtype",
        "exclude_special",
        "prepend_bos",
        "shard_tokens",
        "max_norm_multiple",
    )
    manifest = dict(
        format=FORMAT,
        version=VERSION,
        **{k: parent[k] for k in fields},
        parent=str(store.path),
        hook_name=parent["hook_name"],
        d_model=parent["d_model"],
        n_tokens=writer.n_tokens,
        n_outliers_dropped=parent["n_outliers_dropped"],
        **writer.finish(),
        request=request,
    )
    atomic_write_json(out / MANIFEST_FILE, manifest)
    return ActivationStore(out)


def _token_info(contexts, sl: slice, width: int, kept: torch.Tensor, prepend_bos: bool) -> torch.Tensor:
    """(n, 3) int32 rows of (token id, document id, position in document) for kept tokens."""
    ids = contexts.input_ids[sl, :width]
    offset = 1 if prepend_bos else 0
    pos = contexts.starts[sl, None] + torch.arange(width)[None, :] - offset
    doc = contexts.doc_ids[sl, None].expand_as(ids)
    return torch.stack([ids[kept], doc[kept], pos[kept]], dim=1).to(torch.int32)


class _ShardWriter:
    """Buffers rows and writes fixed-size shards atomically, remembering sizes and checksums."""

    def __init__(self, out: Path, dtype: str, shard_tokens: int, d_model: int):
        self.out, self.dtype, self.shard_tokens, self.d_model = out, dtype, shard_tokens, d_model
        self.buf_acts: list[torch.Tensor] = []
        self.buf_tokens: list[torch.Tensor] = []
        self.buffered = 0
        self.n_tokens = 0
        self.shards: list[dict[str, Any]] = []
        self.sum_sq_norm = 0.0

    def add(self, acts: torch.Tensor, tokens: torch.Tensor) -> None:
        self.buf_acts.append(acts)
        self.buf_tokens.append(tokens)
        self.buffered += len(acts)
        self.n_tokens += len(acts)
        self.sum_sq_norm += float(acts.float().pow(2).sum(1).sum())
        while self.buffered >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def _flush(self, n: int) -> None:
        acts, tokens = torch.cat(self.buf_acts), torch.cat(self.buf_tokens)
        self.buf_acts, self.buf_tokens = [acts[n:]], [tokens[n:]]
        self.buffered -= n
        name = f"shard_{len(self.shards):05d}"
        entry: dict[str, Any] = {"file": f"{name}.npy", "tokens_file": f"{name}.tokens.npy", "n_tokens": n}
        for key, arr in (("", acts[:n].numpy()), ("tokens_", tokens[:n].numpy())):
            data = npy_bytes(arr)
            atomic_write_bytes(self.out / entry[f"{key}file"], data)
            entry[f"{key}bytes"], entry[f"{key}sha256"] = len(data), sha256_bytes(data)
        self.shards.append(entry)

    def finish(self) -> dict[str, Any]:
        if self.buffered:
            self._flush(self.buffered)
        mean_sq = self.sum_sq_norm / max(self.n_tokens, 1)
        scale = math.sqrt(self.d_model / mean_sq) if mean_sq > 0 else 1.0
        return dict(shards=self.shards, mean_sq_norm=mean_sq, norm_scale=scale)


def _reusable(out: Path, request: dict[str, Any], overwrite: bool) -> bool:
    """True if `out` holds a complete, intact store made with `request`; raise if it would be lost."""
    manifest_path = out / MANIFEST_FILE
    if not manifest_path.exists():
        if out.exists() and any(_SHARD_RE.match(p.name) for p in out.iterdir()):
            warnings.warn(f"{out} holds shards but no manifest (a killed run?); rebuilding it.")
        return False
    try:
        store = ActivationStore(out)
    except ValueError as err:
        warnings.warn(f"Rebuilding the activation store in {out}: {err}")
        return False
    if store.manifest.get("request") == request:
        if not store.all_finite():  # a matching checksum proves the bytes, not that they are numbers
            warnings.warn(f"Rebuilding the activation store in {out}: it holds NaN/inf activations.")
            return False
        return True
    if overwrite:
        return False
    old = store.manifest.get("request", {})
    diff = {k: (old.get(k), request.get(k)) for k in {**old, **request} if old.get(k) != request.get(k)}
    raise ValueError(
        f"{out} already holds a complete activation store made with other arguments "
        f"(old, new): {diff}. Choose another out_dir, or pass overwrite=True to replace it."
    )


def _remove_store_files(out: Path) -> None:
    """Delete only the files a store consists of; anything else in the folder is left alone."""
    if not out.exists():
        return
    for p in out.iterdir():
        if (
            _SHARD_RE.match(p.name)
            or p.name == MANIFEST_FILE
            or (p.name.startswith(".") and p.name.endswith(".tmp"))
        ):
            p.unlink()


# --- notebook 00's toy: superposition in miniature, written as a store ----------------------------
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
