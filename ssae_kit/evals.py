"""Evaluate an SAE: fidelity, sparsity, spliced-in downstream loss, and tail-concept metrics.

Definitions (PAPER §3; one code path for training logs and evals):
- MSE: per token, the sum over d_in of (x - x_hat)^2 in normalised units, then the mean over
  tokens (never divided by d_in or the batch again).
- Explained variance: 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2, the mean taken per
  dimension over the evaluation tokens (variance about the mean, not about zero).
- L0: mean number of latents > 0 per token. Density of a latent: fraction of tokens where it is
  > 0. Dead: density 0 over the `n_tokens` evaluated. Dense: density > `dense_threshold`.
- CE loss recovered: (CE_zero - CE_sae) / (CE_zero - CE_clean); CE_zero zero-ablates the layer's
  output. Special tokens (BOS/EOS/PAD) keep their clean value in spliced passes and are never
  prediction targets.
- A token type "has a feature" when it is the top token of some latent: the token on which that
  latent reaches its largest activation in the evaluation data.
- Token-activation entropy: entropy of p_j = f_j / sum_j f_j over the latents active on a token.
Everything streams batch by batch: only per-token scalars and per-latent counters are kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .activations import ActivationStore
from .corpora import Document, content_mask, corpus_checksum, tokenize_contexts
from .models import check_layer, forward_to_layer, splice
from .sae import SAE


@dataclass
class EvalResult:
    """Scalar metrics plus the per-token and per-latent arrays the tail figures need."""

    metrics: dict[str, float]
    token_ids: np.ndarray  # (N,) token id of each evaluated token
    token_mse: np.ndarray  # (N,) squared error, normalised units
    token_l0: np.ndarray  # (N,) active latents
    token_max_act: np.ndarray  # (N,) largest latent activation
    token_entropy: np.ndarray  # (N,) entropy of the token's latent activations (nats)
    feature_counts: np.ndarray  # (d_sae,) tokens on which each latent fired
    feature_max: np.ndarray  # (d_sae,) largest activation of each latent
    feature_top_token: np.ndarray  # (d_sae,) token id where that maximum occurred; -1 if dead


class _Accumulator:
    """Streams batches of raw activations through the SAE and keeps only the statistics."""

    def __init__(self, sae: SAE):
        self.sae = sae
        d_sae, d_in = sae.cfg.d_sae, sae.cfg.d_in
        self.n = 0
        self.sum_x = torch.zeros(d_in, dtype=torch.float64)
        self.sum_sq_x = 0.0
        self.sum_err = 0.0
        self.counts = torch.zeros(d_sae, dtype=torch.long)
        self.f_max = torch.zeros(d_sae)
        self.f_top = torch.full((d_sae,), -1, dtype=torch.long)
        self.per_token: dict[str, list[torch.Tensor]] = {k: [] for k in ("ids", "mse", "l0", "max", "entropy")}

    @torch.no_grad()
    def add(self, x: torch.Tensor, token_ids: torch.Tensor) -> None:
        """x: (n, d_in) raw activations; token_ids: (n,)."""
        out = self.sae(x)
        f = out.feature_acts.float().cpu()
        x_n = (x * self.sae.cfg.norm_scale).double().cpu()
        self.n += len(x)
        self.sum_x += x_n.sum(0)
        self.sum_sq_x += float(x_n.pow(2).sum())
        self.sum_err += float(out.mse.double().sum())
        active = f > 0
        self.counts += active.sum(0)
        batch_max, where = f.max(0)
        better = batch_max > self.f_max
        self.f_max[better] = batch_max[better]
        self.f_top[better] = token_ids.cpu().long()[where[better]]
        p = f / f.sum(1, keepdim=True).clamp_min(1e-12)
        entropy = -(p * p.clamp_min(1e-12).log()).sum(1)
        for key, value in (("ids", token_ids.cpu()), ("mse", out.mse.float().cpu()), ("l0", active.sum(1)),
                           ("max", f.max(1).values), ("entropy", entropy)):
            self.per_token[key].append(value)

    def result(self, dense_threshold: float) -> EvalResult:
        if self.n == 0:
            raise ValueError("No tokens were evaluated: give more or longer documents.")
        mean = self.sum_x / self.n
        variance = self.sum_sq_x - self.n * float(mean.pow(2).sum())  # sum ||x - mean||^2
        density = self.counts.double() / self.n
        cat = {k: torch.cat(v).numpy() for k, v in self.per_token.items()}
        metrics = dict(
            n_tokens=self.n, mse=self.sum_err / self.n, explained_variance=1 - self.sum_err / variance,
            l0=float(cat["l0"].mean()), dead_fraction=float((density == 0).double().mean()),
            dense_fraction=float((density > dense_threshold).double().mean()),
            mean_token_entropy=float(cat["entropy"].mean()), mean_max_activation=float(cat["max"].mean()),
        )
        return EvalResult(metrics, cat["ids"], cat["mse"], cat["l0"], cat["max"], cat["entropy"],
                          self.counts.numpy(), self.f_max.numpy(), self.f_top.numpy())


def evaluate_store(sae: SAE, store: ActivationStore, batch_size: int = 4096, dense_threshold: float = 0.1) -> EvalResult:
    """Reconstruction, sparsity and tail metrics on a cached store (no model needed, no CE)."""
    if sae.cfg.d_in != store.d_model:
        raise ValueError(f"The SAE reads d_in={sae.cfg.d_in} but the store holds d_model={store.d_model}.")
    acc = _Accumulator(sae)
    device = sae.W_dec.device
    for x, tokens in store.batches(batch_size, shuffle=False, with_tokens=True, normalize=False):
        acc.add(x.to(device), tokens[:, 0])
    return acc.result(dense_threshold)


@torch.no_grad()
def evaluate(
    sae: SAE,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    docs: list[Document],
    layer: int,
    ctx_len: int = 128,
    batch_size: int = 8,
    max_contexts: int | None = None,
    dense_threshold: float = 0.1,
    baseline: dict[str, float] | None = None,
) -> EvalResult:
    """All metrics on `docs`: the SAE's reconstruction at `layer` and its effect on the model's loss.

    `baseline`: the metrics of an earlier `evaluate` on the same documents and windows; its clean
    and zero-ablation CE are reused, so each further SAE costs one full forward instead of three.
    """
    check_layer(model, layer)
    text_id = dict(eval_docs=corpus_checksum(docs), ctx_len=ctx_len, max_contexts=max_contexts)
    if baseline is not None and any(baseline.get(k) != v for k, v in text_id.items()):
        raise ValueError("The baseline was computed on other documents or windows: evaluate it on the same "
                         "docs, ctx_len and max_contexts, or pass baseline=None.")
    if sae.cfg.layer not in (-1, layer):
        raise ValueError(f"The SAE was trained on layer {sae.cfg.layer}, not {layer}: pass layer={sae.cfg.layer}.")
    ctx = tokenize_contexts(docs, tokenizer, ctx_len, max_contexts=max_contexts)
    keep_all = content_mask(ctx, tokenizer)
    device = next(model.parameters()).device
    acc = _Accumulator(sae)
    ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    n_targets = 0
    for start in tqdm(range(0, len(ctx), batch_size), desc="evaluating", unit="batch"):
        sl = slice(start, start + batch_size)
        ids, mask = ctx.input_ids[sl].to(device), ctx.attention_mask[sl].to(device)
        keep = keep_all[sl].to(device)
        resid = forward_to_layer(model, ids, layer, mask)  # (B, T, D)
        acc.add(resid[keep].to(sae.W_dec.dtype), ids[keep])
        targets = keep[:, 1:]
        n_targets += int(targets.sum())
        with splice(model, layer, lambda r: _replace(r, keep, sae.decode(sae.encode(r.to(sae.W_dec.dtype))))):
            ce["sae"] += _ce_sum(model, ids, mask, targets)
        if baseline is None:
            ce["clean"] += _ce_sum(model, ids, mask, targets)
            with splice(model, layer, lambda r: _replace(r, keep, torch.zeros_like(r))):
                ce["zero"] += _ce_sum(model, ids, mask, targets)
    result = acc.result(dense_threshold)
    ce = {k: v / max(n_targets, 1) for k, v in ce.items()}
    if baseline is not None:
        ce["clean"], ce["zero"] = baseline["ce_clean"], baseline["ce_zero"]
    gap = ce["zero"] - ce["clean"]
    result.metrics.update(
        ce_clean=ce["clean"], ce_sae=ce["sae"], ce_zero=ce["zero"], ce_delta=ce["sae"] - ce["clean"],
        ce_loss_recovered=(ce["zero"] - ce["sae"]) / gap if gap > 0 else math.nan,
        perplexity_clean=math.exp(ce["clean"]), perplexity_sae=math.exp(ce["sae"]), **text_id,
    )
    return result


def _replace(resid: torch.Tensor, keep: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Residual stream with content positions replaced by `new`; special tokens stay clean."""
    return torch.where(keep[..., None], new.to(resid.dtype), resid)


def _ce_sum(model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor) -> float:
    """Summed next-token cross-entropy over positions whose target is a content token."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]  # (B, T-1, V)
    losses = F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)
    return float(losses[targets].sum())


def tail_coverage(result: EvalResult, n_bins: int = 8) -> dict[str, Any]:
    """Fraction of token types that have a feature, by frequency bin (log-spaced), and cumulatively.

    Token frequency is counted on the evaluation tokens. The cumulative curve gives, for types
    up to each frequency, the fraction that have a feature: rare types first.
    """
    types, freq = np.unique(result.token_ids, return_counts=True)
    top = set(result.feature_top_token[result.feature_top_token >= 0].tolist())
    has = np.array([t in top for t in types])
    edges = np.unique(np.logspace(0, np.log10(freq.max() + 1), n_bins + 1).round())
    which = np.clip(np.digitize(freq, edges) - 1, 0, len(edges) - 2)
    per_bin = [float(has[which == b].mean()) if (which == b).any() else math.nan for b in range(len(edges) - 1)]
    order = np.argsort(freq, kind="stable")
    cumulative = np.cumsum(has[order]) / np.arange(1, len(order) + 1)
    return dict(bin_edges=edges.tolist(), coverage=per_bin, n_types=[int((which == b).sum()) for b in range(len(edges) - 1)],
                freq_sorted=freq[order].tolist(), cumulative=cumulative.tolist(), overall=float(has.mean()))


def error_by_rank(result: EvalResult, n_buckets: int = 8) -> dict[str, list[float]]:
    """Mean and max per-token error for token types bucketed by frequency rank (log-spaced)."""
    types, inverse, freq = np.unique(result.token_ids, return_inverse=True, return_counts=True)
    rank = np.empty(len(types), dtype=np.int64)
    rank[np.argsort(-freq, kind="stable")] = np.arange(1, len(types) + 1)
    token_rank = rank[inverse]
    edges = np.unique(np.logspace(0, np.log10(len(types) + 1), n_buckets + 1).round())
    which = np.clip(np.digitize(token_rank, edges) - 1, 0, len(edges) - 2)
    mean, mx = [], []
    for b in range(len(edges) - 1):
        errs = result.token_mse[which == b]
        mean.append(float(errs.mean()) if len(errs) else math.nan)
        mx.append(float(errs.max()) if len(errs) else math.nan)
    return dict(rank_edges=edges.tolist(), mean_error=mean, max_error=mx)


def decoder_cosine_similarities(sae: SAE, max_latents: int = 4096, seed: int = 0) -> np.ndarray:
    """Pairwise cosine similarities of decoder directions (upper triangle), on at most `max_latents`."""
    W = sae.W_dec.detach().float().cpu()
    if len(W) > max_latents:
        W = W[torch.randperm(len(W), generator=torch.Generator().manual_seed(seed))[:max_latents]]
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sims = W @ W.T
    i, j = torch.triu_indices(len(W), len(W), offset=1)
    return sims[i, j].numpy()
