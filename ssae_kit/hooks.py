"""Run part of a model at a residual layer, the same way across architectures.

`forward_to_layer` stops the forward pass right after block L, so caching activations at layer 6
of 30 costs 7 blocks, not 30 plus the unembedding. `iter_residuals` is the one pipeline from token
windows to that residual, batch by batch, which caching, debiasing and dashboards all read through.
`splice` replaces the residual stream at a layer inside a full forward (for spliced-in CE), and
`forward_from_layer` runs the later blocks from a given residual (SHIFT's attribution).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

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
    """Stands in for a block that `forward_from_layer` skips: hands its input on unchanged."""

    def __init__(self, as_tuple: bool):
        super().__init__()
        self.as_tuple = as_tuple

    def forward(self, *args: object, **kwargs: object) -> object:
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden,) if self.as_tuple else hidden


def _block_returns_tuple(model: PreTrainedModel, input_ids: torch.Tensor) -> bool:
    """Whether this family's blocks return a tuple (GPT-2) or a tensor (Llama in transformers 5)."""
    found: list[bool] = []
    handle = get_blocks(model)[0].register_forward_hook(
        lambda m, a, out: (found.append(isinstance(out, tuple)), _raise_stop())
    )
    try:
        model(input_ids=input_ids[:1, :1], use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return found[0]


def _raise_stop() -> None:
    raise _StopForward


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
    blocks = get_blocks(model)
    check_layer(model, start)
    check_layer(model, stop)
    if stop < start:
        raise ValueError(f"stop={stop} is before start={start}: the blocks run forward only.")
    if stop == start:
        return resid
    as_tuple = _block_returns_tuple(model, input_ids)
    originals = [blocks[i] for i in range(start + 1)]
    captured: list[torch.Tensor] = []

    def inject(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            return (resid.to(args[0].dtype),) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": resid.to(kwargs["hidden_states"].dtype)}

    def catch(module: nn.Module, args: tuple, output: object) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _StopForward

    handles = [
        blocks[start + 1].register_forward_pre_hook(inject, with_kwargs=True),
        blocks[stop].register_forward_hook(catch),
    ]
    for i in range(start + 1):
        blocks[i] = _Skip(as_tuple)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block
        for h in handles:
            h.remove()
    return captured[0]


def replace_content(resid: torch.Tensor, keep: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Residual stream with content positions replaced by `new`; special tokens stay clean."""
    return torch.where(keep[..., None], new.to(resid.dtype), resid)
