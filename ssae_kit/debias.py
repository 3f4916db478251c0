"""SHIFT-style debiasing (Marks et al. 2025; PAPER §4): find the SAE features a classifier uses,
decide which are spurious (gender), ablate them, and measure profession, gender and worst-group
accuracy.

The classifier is a logistic-regression head on the residual stream of one layer, mean-pooled over
text tokens. Features are standardised with the training set's mean and s.d. before the head (the
raw residual stream has norms in the hundreds, which a one-epoch AdamW head at lr 0.01 does not
survive). Ablation keeps the SAE's error term (PAPER §3): x' = decode(f with chosen latents zeroed)
+ (x - decode(f)), so only the chosen features change, not the reconstruction error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .corpora import Document, content_mask, tokenize_contexts
from .models import check_layer, forward_to_layer, splice
from .sae import SAE

Edit = Callable[[torch.Tensor], torch.Tensor]


def ablation_edit(sae: SAE, latents: Sequence[int]) -> Edit:
    """Residual-stream edit that zero-ablates `latents` of `sae` and keeps its error term."""
    index = torch.as_tensor(list(latents), dtype=torch.long)
    if len(index) == 0:
        raise ValueError("The ablation set is empty: pick at least one latent (or skip the SHIFT row).")

    def edit(resid: torch.Tensor) -> torch.Tensor:
        x = resid.to(sae.W_dec.dtype)
        f = sae.encode(x)
        error = x - sae.decode(f)
        f = f.clone()
        f[..., index.to(f.device)] = 0.0
        return (sae.decode(f) + error).to(resid.dtype)

    return edit


def _first_windows(texts: list[str], tokenizer: PreTrainedTokenizerBase, ctx_len: int):
    """(input_ids, attention_mask, content mask), each (N, T): the first window of each text."""
    ctx = tokenize_contexts([Document(t) for t in texts], tokenizer, ctx_len)
    first = torch.cat([torch.tensor([True]), ctx.doc_ids[1:] != ctx.doc_ids[:-1]])
    return ctx.input_ids[first], ctx.attention_mask[first], content_mask(ctx, tokenizer)[first]


def _token_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(B, T, F) -> (B, F): the mean over the positions where `keep` (B, T) is True."""
    k = keep[..., None].to(values.dtype)
    return (values * k).sum(1) / k.sum(1).clamp_min(1)


@dataclass
class Residuals:
    """The residual stream after one layer for a set of texts (first window each), kept in memory so
    that every intervention at that layer (ablations, attribution) costs no further model pass."""

    resid: torch.Tensor  # (N, T, d_model) float32
    keep: torch.Tensor  # (N, T) bool: text tokens
    layer: int

    def check(self, sae: SAE) -> None:
        """Refuse an SAE trained on another layer than these residuals."""
        if sae.cfg.layer not in (-1, self.layer):
            raise ValueError(f"The SAE reads layer {sae.cfg.layer} but these residuals are after layer {self.layer}: "
                             "use an SAE of the probe's layer.")


@torch.no_grad()
def residuals(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], layer: int,
              ctx_len: int = 128, batch_size: int = 16) -> Residuals:
    """Run the model to `layer` once over `texts` (N x T x d_model floats stay in memory)."""
    check_layer(model, layer)
    ids, attn, keep = _first_windows(texts, tokenizer, ctx_len)
    device = next(model.parameters()).device
    chunks = [forward_to_layer(model, ids[s : s + batch_size].to(device), layer, attn[s : s + batch_size].to(device))
              .float().cpu() for s in range(0, len(ids), batch_size)]
    return Residuals(torch.cat(chunks), keep, layer)


@torch.no_grad()
def pool(r: Residuals, edit: Edit | None = None, batch_size: int = 64) -> torch.Tensor:
    """(N, d_model) mean over text tokens of `edit(resid)` (of resid itself without an edit)."""
    out = []
    for s in range(0, len(r.resid), batch_size):
        x = r.resid[s : s + batch_size]
        out.append(_token_mean(edit(x) if edit is not None else x, r.keep[s : s + batch_size]))
    return torch.cat(out)


@torch.no_grad()
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
    edit at the probe layer itself, `pool(residuals(...), edit)` gives the same without a new pass.
    """
    check_layer(model, layer)
    edit_layer = layer if edit_layer is None else edit_layer
    if edit is not None and edit_layer > layer:
        raise ValueError(f"The SAE edit is at layer {edit_layer}, after the probe layer {layer}: it cannot reach the probe.")
    ids, attn, keep = _first_windows(texts, tokenizer, ctx_len)
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(ids), batch_size):
        with splice(model, edit_layer, edit) if edit is not None else nullcontext():
            resid = forward_to_layer(model, ids[s : s + batch_size].to(device), layer, attn[s : s + batch_size].to(device))
        out.append(_token_mean(resid, keep[s : s + batch_size].to(device)).float().cpu())
    return torch.cat(out)


@dataclass
class Probe:
    """Logistic regression on standardised features: p(y=1|x) = sigmoid(w . (x - mean)/std + b)."""

    weight: torch.Tensor  # (D,)
    bias: torch.Tensor  # ()
    mean: torch.Tensor  # (D,)
    std: torch.Tensor  # (D,)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std) @ self.weight + self.bias

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return float(((self.logits(x) > 0).long() == y).float().mean())


def train_probe(x: torch.Tensor, y: torch.Tensor, lr: float = 0.01, epochs: int = 1, batch_size: int = 16,
                seed: int = 0) -> Probe:
    """AdamW logistic regression (the reference: lr 0.01, one epoch) on (N, D) features, labels in {0, 1}."""
    if len(torch.unique(y)) < 2:
        raise ValueError("The probe's training labels have a single class: it needs both classes.")
    gen = torch.Generator().manual_seed(seed)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    weight = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros((), requires_grad=True)
    opt = torch.optim.AdamW([weight, bias], lr=lr)
    z = (x - mean) / std
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=gen).split(batch_size):
            loss = F.binary_cross_entropy_with_logits(z[batch] @ weight + bias, y[batch].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
    return Probe(weight.detach(), bias.detach(), mean, std)


def group_accuracies(probe: Probe, x: torch.Tensor, y: torch.Tensor, groups: Sequence[str]) -> dict[str, float]:
    """Accuracy per group (e.g. "female professor"), plus "overall" and "worst_group"."""
    groups = np.asarray(groups)
    out = {g: probe.accuracy(x[torch.from_numpy(groups == g)], y[torch.from_numpy(groups == g)]) for g in sorted(set(groups))}
    return {**out, "overall": probe.accuracy(x, y), "worst_group": min(out.values())}


def shift_attribution(sae: SAE, probe: Probe, r: Residuals, labels: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """(d_sae,) attribution of the probe's metric -log p(y|x) to each latent of `sae` at the probe
    layer (`r` holds that layer): gradient x activation (attribution patching), summed over
    positions, mean over examples. Its negative is the first-order effect of ablating the latent."""
    r.check(sae)
    total = torch.zeros(sae.cfg.d_sae)
    for s in range(0, len(r.resid), batch_size):
        x = r.resid[s : s + batch_size].to(sae.W_dec.dtype)
        keep = r.keep[s : s + batch_size]
        f = sae.encode(x).detach().requires_grad_()
        x_hat = sae.decode(f) + (x - sae.decode(f)).detach()  # the error term carries no gradient
        metric = F.binary_cross_entropy_with_logits(probe.logits(_token_mean(x_hat, keep).float()),
                                                    labels[s : s + batch_size].float(), reduction="sum")
        (grad,) = torch.autograd.grad(metric, f)
        total += (grad * f.detach() * keep[..., None]).sum((0, 1)).float()
    return total / len(r.resid)


def spurious_latents(
    candidates: Sequence[int],
    latent_means: torch.Tensor,
    gender: torch.Tensor,
    profession: torch.Tensor,
    margin: float = 0.1,
    force_spurious: Sequence[int] = (),
    force_keep: Sequence[int] = (),
) -> list[int]:
    """The automatic rule: a candidate latent is spurious when, on a gender- and profession-balanced
    set, its mean activation separates gender better than profession by more than `margin`
    (separation = |AUC - 0.5| x 2). `force_spurious` / `force_keep` override it by hand.

    latent_means: (N, d_sae) per-text mean activation of each latent on that balanced set.
    """
    chosen = []
    for j in candidates:
        if j in force_keep:
            continue
        score = latent_means[:, j]
        if j in force_spurious or _separation(score, gender) > _separation(score, profession) + margin:
            chosen.append(int(j))
    return sorted(set(chosen) | {int(j) for j in force_spurious})


def _separation(score: torch.Tensor, label: torch.Tensor) -> float:
    """2 |AUC - 0.5|: 0 when `score` says nothing about `label`, 1 when it separates it perfectly."""
    pos, neg = score[label == 1], score[label == 0]
    if len(pos) == 0 or len(neg) == 0:
        return 0.0
    greater = (pos[:, None] > neg[None, :]).float().mean() + 0.5 * (pos[:, None] == neg[None, :]).float().mean()
    return float(2 * abs(greater - 0.5))


@torch.no_grad()
def latent_means(sae: SAE, r: Residuals, batch_size: int = 64) -> torch.Tensor:
    """(N, d_sae) mean activation of every latent over each text's tokens."""
    r.check(sae)
    return torch.cat([_token_mean(sae.encode(r.resid[s : s + batch_size].to(sae.W_dec.dtype)), r.keep[s : s + batch_size]).float()
                      for s in range(0, len(r.resid), batch_size)])
