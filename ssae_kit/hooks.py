"""Run part of a model at a residual layer, the same way across architectures.

`forward_to_layer` stops the forward pass right after block L, so caching activations at layer 6
of 30 costs 7 blocks, not 30 plus the unembedding. `iter_residuals` is the one pipeline from token
windows to that residual, batch by batch, which caching, debiasing and dashboards all read through.
`splice` replaces the residual stream at a layer inside a full forward; `resume_after` runs the rest
of the model from a given residual (each pass of an evaluation, from one prefix: `shared_prefix`), and
`forward_from_layer` runs the blocks between two layers from one (SHIFT's attribution).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import NamedTuple
from weakref import WeakKeyDictionary

import torch
from torch import nn
from transformers import PreTrainedModel

from .models import check_ctx_len, check_layer, get_blocks

__all__ = ["splice"]


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the wanted block has run."""


def forward_to_layer(
    model: PreTrainedModel,
    input_ids: torch.Tensor,  # (B, T)
    layer: int,
    attention_mask: torch.Tensor | None = None,  # (B, T)
) -> torch.Tensor:
    """Residual stream after block `layer`, shape (B, T, d_model); later blocks never run.
    Refuses windows longer than the model's positions (rotary models would run on unseen ones)."""
    check_ctx_len(model, input_ids.shape[-1])
    block = get_blocks(model)[check_layer(model, layer)]
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, args: tuple, output: object) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _StopForward

    handle = block.register_forward_hook(hook)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured[0]


class ResidualBatch(NamedTuple):
    """One batch of windows and the residual stream after the layer, on the model's device."""

    rows: slice
    """Which windows of the input the batch holds."""
    keep: torch.Tensor  # (B, T) bool: the input's `keep` for these windows
    resid: torch.Tensor  # (B, T, d_model) in the model's dtype


def iter_residuals(
    model: PreTrainedModel,
    input_ids: torch.Tensor,  # (N, T)
    attention_mask: torch.Tensor,  # (N, T)
    keep: torch.Tensor,  # (N, T) bool
    layer: int,
    batch_size: int = 16,
    trim_padding: bool = False,
) -> Iterator[ResidualBatch]:
    """Residual stream after block `layer` over token windows (e.g. `corpora.tokenize_contexts`),
    `batch_size` windows at a time, with each batch's slice of `keep` (the positions to read).

    The layer and the window length T (the ctx_len) are checked here, when called, before any
    forward. `trim_padding` drops the columns that are padding in every window of a batch (less
    to run; T then varies between batches); without it every batch keeps all T columns.
    """
    check_layer(model, layer)
    check_ctx_len(model, input_ids.shape[1])
    return _residual_batches(model, input_ids, attention_mask, keep, layer, batch_size, trim_padding)


@torch.no_grad()
def _residual_batches(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    keep: torch.Tensor,
    layer: int,
    batch_size: int,
    trim_padding: bool,
) -> Iterator[ResidualBatch]:
    """The batches of `iter_residuals`, computed without autograd: reading a residual never needs a graph."""
    device = next(model.parameters()).device
    for start in range(0, len(input_ids), batch_size):
        rows = slice(start, start + batch_size)
        width = int(attention_mask[rows].sum(1).max()) if trim_padding else input_ids.shape[1]
        resid = forward_to_layer(
            model, input_ids[rows, :width].to(device), layer, attention_mask[rows, :width].to(device)
        )
        yield ResidualBatch(rows, keep[rows, :width].to(device), resid)


@contextmanager
def splice(model: PreTrainedModel, layer: int, fn: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Within the block, the residual stream after `layer` is replaced by `fn(resid)` (B, T, D)."""
    block = get_blocks(model)[check_layer(model, layer)]

    def hook(module: nn.Module, args: tuple, output: object) -> object:
        if isinstance(output, tuple):
            return (fn(output[0]),) + tuple(output[1:])
        return fn(output)

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class _Skip(nn.Module):
    """Stands in for a block that `resume_after` skips: hands its input on unchanged."""

    def __init__(self, as_tuple: bool):
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, *args: object, **kwargs: object) -> object:
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden,) if self.as_tuple else hidden


class _Resume(_Skip):
    """Stands in for the last skipped block: hands on `resid` (in the dtype the blocks are handed)."""

    def __init__(self, resid: torch.Tensor, as_tuple: bool):
        super().__init__(as_tuple)
        self.resid = resid

    def forward(self, *args: object, **kwargs: object) -> object:
        hidden = args[0] if args else kwargs["hidden_states"]
        resid = self.resid.to(hidden.dtype)
        return (resid,) if self.as_tuple else resid


def _block_returns_tuple(model: PreTrainedModel) -> bool:
    """Whether this family's blocks return a tuple (GPT-2) or a tensor (Llama in transformers 5)."""
    found: list[bool] = []
    handle = get_blocks(model)[0].register_forward_hook(
        lambda m, a, out: (found.append(isinstance(out, tuple)), _raise_stop())
    )
    one_token = torch.zeros(1, 1, dtype=torch.long, device=next(model.parameters()).device)
    try:
        model(input_ids=one_token, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return found[0]


def _raise_stop() -> None:
    raise _StopForward


@contextmanager
def resume_after(model: PreTrainedModel, layer: int, resid: torch.Tensor) -> Iterator[None]:
    """Within the block, a forward of the model skips blocks 0..`layer` and runs the rest from `resid`
    (B, T, d_model), the residual stream after `layer` for the windows the forward is given (e.g.
    `forward_to_layer`'s). The same values as splicing `resid` in at `layer`, without the prefix's cost.
    Hooks on the later blocks (and the model's embedding, positions and mask) run as usual."""
    blocks = get_blocks(model)
    check_layer(model, layer)
    as_tuple = _block_returns_tuple(model)
    originals = [blocks[i] for i in range(layer + 1)]
    for i in range(layer):
        blocks[i] = _Skip(as_tuple)
    blocks[layer] = _Resume(resid, as_tuple)
    try:
        yield
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block


def forward_from_layer(
    model: PreTrainedModel,
    resid: torch.Tensor,  # (B, T, d_model): the residual stream after block `start`
    start: int,
    stop: int,
    input_ids: torch.Tensor,  # (B, T): the windows `resid` came from (positions, padding)
    attention_mask: torch.Tensor | None = None,  # (B, T)
) -> torch.Tensor:
    """Residual stream after block `stop`, computed from the one after block `start` (B, T, d_model):
    blocks start+1..stop run on `resid`, blocks 0..start are skipped. So an edit made to a cached
    residual reaches a later layer only through the blocks after it (SHIFT, PAPER §4). Differentiable;
    hooks on blocks start+1..stop (e.g. `splice`) apply."""
    check_layer(model, start)
    check_layer(model, stop)
    if stop < start:
        raise ValueError(f"stop={stop} is before start={start}: the blocks run forward only.")
    if stop == start:
        return resid
    with resume_after(model, start, resid):
        return forward_to_layer(model, input_ids, stop, attention_mask)


PREFIX_CACHE_BYTES = 2**30
"""Memory `shared_prefix` may hold, all models and sets together (on the model's device); the least
recently used batches go first, and a batch larger than this is computed each time instead."""

_prefixes: WeakKeyDictionary = WeakKeyDictionary()  # model -> OrderedDict[key, _Prefix]; gone with the model


class _Prefix(NamedTuple):
    weights: tuple  # (id, version) of every parameter when it was computed
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    resid: torch.Tensor


def shared_prefix(
    model: PreTrainedModel, layer: int, input_ids: torch.Tensor, attention_mask: torch.Tensor, key: Hashable
) -> torch.Tensor:
    """`forward_to_layer(model, input_ids, layer, attention_mask)`, computed once and kept in memory
    under `key` (what the caller knows of the windows and the precision), so that every SAE evaluated
    on the same windows shares one prefix. Kept while the model lives, its weights are unchanged (no
    parameter replaced or modified in place) and the same windows come under the same key; within
    `PREFIX_CACHE_BYTES`. Hooks on blocks 0..`layer` added after a batch was kept are not seen."""
    _evict(PREFIX_CACHE_BYTES)  # the budget as it is now: it may have been lowered since
    kept = _prefixes.setdefault(model, OrderedDict())
    weights = tuple((id(p), p._version) for p in model.parameters())
    full_key = (key, layer)
    hit = kept.get(full_key)
    if (
        hit is not None
        and hit.weights == weights
        and torch.equal(hit.input_ids, input_ids)
        and torch.equal(hit.attention_mask, attention_mask)
    ):
        kept.move_to_end(full_key)
        return hit.resid
    resid = forward_to_layer(model, input_ids, layer, attention_mask)
    kept[full_key] = _Prefix(weights, input_ids, attention_mask, resid)
    kept.move_to_end(full_key)
    _evict(PREFIX_CACHE_BYTES)  # this batch too, if it alone is larger than the budget
    return resid


def _evict(budget: int) -> None:
    """Drop kept batches, least recently used first (model by model), until all fit in `budget` bytes."""
    total = sum(p.resid.nbytes for kept in _prefixes.values() for p in kept.values())
    for kept in list(_prefixes.values()):
        while kept and total > budget:
            total -= kept.popitem(last=False)[1].resid.nbytes


def replace_content(resid: torch.Tensor, keep: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Residual stream with content positions replaced by `new`; special tokens stay clean."""
    return torch.where(keep[..., None], new.to(resid.dtype), resid)
