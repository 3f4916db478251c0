"""Per-text features on top of the residual iterator: residuals kept in memory, mean pooling
(with SAE edits), per-text latent means, and the principal-component maps figures draw.

Debiasing (`debias`), the taxonomy notebook and the tree probe read texts through these, so every
one of them runs the model the same way (`hooks.iter_residuals`) and gets its checks. A text's
tokens are its content tokens: BOS/EOS/PAD and padding are left out (PAPER §3).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.decomposition import PCA
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .corpora import Document, content_mask, tokenize_contexts
from .hooks import iter_residuals, splice
from .models import check_layer, d_model
from .sae import SAE

__all__ = [
    "latent_means",
    "mean_pool",
    "project_2d",
    "residuals",
]

Edit = Callable[[torch.Tensor], torch.Tensor]


def token_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(B, T, F) -> (B, F): the mean over the positions where `keep` (B, T) is True."""
    k = keep[..., None].to(values.dtype)
    return (values * k).sum(1) / k.sum(1).clamp_min(1)


def _first_windows(texts: list[str], tokenizer: PreTrainedTokenizerBase, ctx_len: int):
    """(input_ids, attention_mask, content mask), each (N, T): the first window of each text."""
    ctx = tokenize_contexts([Document(t) for t in texts], tokenizer, ctx_len)
    first = torch.cat([torch.tensor([True]), ctx.doc_ids[1:] != ctx.doc_ids[:-1]])
    return ctx.input_ids[first], ctx.attention_mask[first], content_mask(ctx, tokenizer)[first]


@dataclass
class Residuals:
    """The residual stream after one layer for a set of texts (first window each), kept in memory so
    that every intervention at that layer (ablations, attribution) costs no further model pass."""

    resid: torch.Tensor  # (N, T, d_model) float32
    keep: torch.Tensor  # (N, T) bool: text tokens
    layer: int
    input_ids: torch.Tensor | None = None  # (N, T): to run later blocks on an edited resid
    attention_mask: torch.Tensor | None = None  # (N, T)

    def take(self, rows: slice | torch.Tensor) -> Residuals:
        """The residuals of some texts only (e.g. a sample to attribute on)."""
        pick = lambda t: None if t is None else t[rows]
        return Residuals(
            self.resid[rows], self.keep[rows], self.layer, pick(self.input_ids), pick(self.attention_mask)
        )


def residuals(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    layer: int,
    ctx_len: int = 128,
    batch_size: int = 16,
) -> Residuals:
    """Run the model to `layer` once over `texts` (N x T x d_model floats stay in memory).

    Texts run shortest first with each batch's all-padding columns dropped (windows are right-padded,
    so this changes no value), which saves about a third of the work on bios of varied length."""
    ids, attn, keep = _first_windows(texts, tokenizer, ctx_len)
    order = attn.sum(1).argsort(stable=True)
    resid = torch.zeros(*ids.shape, d_model(model))
    for b in iter_residuals(
        model, ids[order], attn[order], keep[order], layer, batch_size, trim_padding=True
    ):
        resid[order[b.rows], : b.resid.shape[1]] = b.resid.float().cpu()
    return Residuals(resid, keep, layer, ids, attn)


@torch.no_grad()
def mean_pool(r: Residuals, edit: Edit | None = None, batch_size: int = 64) -> torch.Tensor:
    """(N, d_model) mean over text tokens of `edit(resid)` (of resid itself without an edit)."""
    out = []
    for s in range(0, len(r.resid), batch_size):
        x = r.resid[s : s + batch_size]
        out.append(token_mean(edit(x) if edit is not None else x, r.keep[s : s + batch_size]))
    return torch.cat(out)


def pooled_activations(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    layer: int,
    ctx_len: int = 128,
    batch_size: int = 16,
    edit: Edit | None = None,
    edit_layer: int | None = None,
) -> torch.Tensor:
    """(N, d_model) residual stream after `layer`, mean-pooled over each text's tokens (first window).

    With `edit`, the residual stream after `edit_layer` (default `layer`, which must not be later)
    is replaced by `edit(resid)` first, so an ablation at an earlier layer reaches the probe. For an
    edit at the probe layer itself, `mean_pool(residuals(...), edit)` gives the same without a new pass.
    """
    check_layer(model, layer)
    edit_layer = layer if edit_layer is None else edit_layer
    if edit is not None and edit_layer > layer:
        raise ValueError(
            f"The SAE edit is at layer {edit_layer}, after the probe layer {layer}: it cannot reach the probe."
        )
    with splice(model, edit_layer, edit) if edit is not None else nullcontext():
        return mean_pool(residuals(model, tokenizer, texts, layer, ctx_len, batch_size))


@torch.no_grad()
def latent_means(sae: SAE, r: Residuals, batch_size: int = 64) -> torch.Tensor:
    """(N, d_sae) mean activation of every latent over each text's tokens."""
    sae.check_reads(layer=r.layer, d_in=r.resid.shape[-1])
    return torch.cat(
        [
            token_mean(
                sae.encode(r.resid[s : s + batch_size].to(sae.W_dec.dtype)), r.keep[s : s + batch_size]
            ).float()
            for s in range(0, len(r.resid), batch_size)
        ]
    )


def principal_components(x: np.ndarray, k: int = 2, fit: np.ndarray | None = None) -> np.ndarray:
    """Every row of `x` on the top-`k` principal components of the rows in `fit` (default: all), shape (n, k).

    scikit-learn's PCA with the exact SVD (its randomised solver would tie the axes to a seed); an axis's
    sign is sklearn's convention and carries no meaning. `k` is capped at the fitted rows' rank bound."""
    x = np.asarray(x, dtype=np.float64)
    rows = x if fit is None else x[fit]
    return PCA(min(k, *rows.shape), svd_solver="full").fit(rows).transform(x)


def project_2d(x: np.ndarray) -> np.ndarray:
    """First two principal components of the rows of `x` (centred), shape (n, 2): the 2-d maps of notebooks 01 and 04."""
    return principal_components(x, 2)
