"""Evaluate an SAE: fidelity, sparsity, spliced-in downstream loss, and the per-token and per-latent
records the tail metrics (`latents`) and comparisons (`claims`) read.

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
- Token-activation entropy: entropy of p_j = f_j / sum_j f_j over the latents active on a token.
- Massive-norm tokens (one rule with `cache_activations`): a content token whose residual norm
  exceeds `max_norm_multiple` x its batch's median is never trained on, so `evaluate` leaves it
  clean in the spliced pass and out of every reconstruction average (as SAEBench does);
  `n_outliers` counts them. It still counts as a CE target.
- Differences between two SAEs: `claims.compare` (a paired 95% bootstrap interval over documents);
  tail coverage and the other per-latent views: `latents`.
- Health: `health_warnings` flags dead fraction > 50%, EV < 0, and spliced CE at or above
  zero-ablation CE; `evaluate` warns and records them under `health_warnings`.
Everything streams batch by batch: only per-token scalars, per-document sums and per-latent
counters are kept, and each batch's residual after the layer, shared by every pass and every SAE
evaluated on the same windows (`hooks.shared_prefix`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .corpora import Document, check_documents, content_mask, corpus_checksum, tokenize_contexts
from .hooks import replace_content, resume_after, shared_prefix
from .models import (
    check_ctx_len,
    check_layer,
    check_max_norm_multiple,
    d_model,
    full_precision,
    massive_norm_mask,
    model_precision,
    resolve_precision,
)
from .sae import SAE
from .store import ActivationStore

__all__ = [
    "evaluate",
    "evaluate_store",
]


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
    doc_stats: dict[str, np.ndarray] = field(default_factory=dict)
    """Per evaluated document (same order in every `evaluate` of the same docs): `doc` (its index
    in docs), `n_tokens`, `sq_err` and `sq_dev` (sums of ||x - x_hat||^2 and ||x - mean||^2,
    normalised units), `n_targets`, `ce_sae` and `ce_clean` (summed CE; clean is NaN when a
    baseline was reused). Empty for `evaluate_store`."""


class MetricAccumulator:
    """Streams batches of raw activations through the SAE and keeps only the statistics."""

    def __init__(self, sae: SAE, n_docs: int = 0):
        self.sae = sae
        d_sae, d_in = sae.cfg.d_sae, sae.cfg.d_in
        self.n = 0
        self.sum_x = torch.zeros(d_in, dtype=torch.float64)
        self.sum_sq_x = 0.0
        self.sum_err = 0.0
        self.counts = torch.zeros(d_sae, dtype=torch.long)
        self.f_max = torch.zeros(d_sae)
        self.f_top = torch.full((d_sae,), -1, dtype=torch.long)
        self.per_token: dict[str, list[torch.Tensor]] = {
            k: [] for k in ("ids", "mse", "l0", "max", "entropy")
        }
        self.n_docs = n_docs
        self.doc_n = torch.zeros(n_docs, dtype=torch.float64)
        self.doc_sum_x = torch.zeros(n_docs, d_in, dtype=torch.float64)
        self.doc_sq = torch.zeros(n_docs, dtype=torch.float64)
        self.doc_err = torch.zeros(n_docs, dtype=torch.float64)

    @torch.no_grad()
    def add(
        self, x: torch.Tensor, token_ids: torch.Tensor, doc_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (n, d_in) raw activations; token_ids, doc_ids: (n,). Returns the reconstruction (n, d_in)."""
        out = self.sae(x)
        f = out.feature_acts.float().cpu()
        x_n = (x * self.sae.cfg.norm_scale).double().cpu()
        self.n += len(x)
        self.sum_x += x_n.sum(0)
        self.sum_sq_x += float(x_n.pow(2).sum())
        self.sum_err += float(out.sq_error.double().sum())
        active = f > 0
        self.counts += active.sum(0)
        batch_max, where = f.max(0)
        better = batch_max > self.f_max
        self.f_max[better] = batch_max[better]
        self.f_top[better] = token_ids.cpu().long()[where[better]]
        p = f / f.sum(1, keepdim=True).clamp_min(1e-12)
        entropy = -(p * p.clamp_min(1e-12).log()).sum(1)
        for key, value in (
            ("ids", token_ids.cpu()),
            ("mse", out.sq_error.float().cpu()),
            ("l0", active.sum(1)),
            ("max", f.max(1).values),
            ("entropy", entropy),
        ):
            self.per_token[key].append(value)
        if doc_ids is not None:
            d = doc_ids.cpu().long()
            self.doc_n.index_add_(0, d, torch.ones(len(d), dtype=torch.float64))
            self.doc_sum_x.index_add_(0, d, x_n)
            self.doc_sq.index_add_(0, d, x_n.pow(2).sum(1))
            self.doc_err.index_add_(0, d, out.sq_error.double().cpu())
        return out.sae_out

    def result(self, dense_threshold: float) -> EvalResult:
        if self.n == 0:
            raise ValueError("No tokens were evaluated: give more or longer documents.")
        mean = self.sum_x / self.n
        variance = self.sum_sq_x - self.n * float(mean.pow(2).sum())  # sum ||x - mean||^2
        density = self.counts.double() / self.n
        cat = {k: torch.cat(v).numpy() for k, v in self.per_token.items()}
        metrics = dict(
            n_tokens=self.n,
            mse=self.sum_err / self.n,
            explained_variance=1 - self.sum_err / variance,
            l0=float(cat["l0"].mean()),
            dead_fraction=float((density == 0).double().mean()),
            dense_fraction=float((density > dense_threshold).double().mean()),
            mean_token_entropy=float(cat["entropy"].mean()),
            mean_max_activation=float(cat["max"].mean()),
        )
        # sum over a document's tokens of ||x - mean||^2, the mean taken over all evaluated tokens
        sq_dev = self.doc_sq - 2 * self.doc_sum_x @ mean + self.doc_n * float(mean.pow(2).sum())
        doc_stats = dict(n_tokens=self.doc_n.numpy(), sq_err=self.doc_err.numpy(), sq_dev=sq_dev.numpy())
        return EvalResult(
            metrics,
            cat["ids"],
            cat["mse"],
            cat["l0"],
            cat["max"],
            cat["entropy"],
            self.counts.numpy(),
            self.f_max.numpy(),
            self.f_top.numpy(),
            doc_stats,
        )


def evaluate_store(
    sae: SAE, store: ActivationStore, batch_size: int = 4096, dense_threshold: float = 0.1
) -> EvalResult:
    """Reconstruction, sparsity and tail metrics on a cached store (no model needed, no CE)."""
    sae.check_reads(model_name=store.model_name, layer=store.layer, d_in=store.d_model)
    acc = MetricAccumulator(sae)
    device = sae.W_dec.device
    for x, tokens in store.batches(batch_size, shuffle=False, with_tokens=True, normalize=False):
        acc.add(x.to(device), tokens[:, 0])
    return _with_health(acc.result(dense_threshold), sae, store.layer)


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
    baseline: dict[str, Any] | None = None,
    max_norm_multiple: float | None = 10.0,
    precision: str = "auto",
) -> EvalResult:
    """All metrics on `docs`: the SAE's reconstruction at `layer` and its effect on the model's loss.

    `baseline`: the metrics of an earlier `evaluate` on the same documents and windows; its clean, zero-
    and mean-ablation CE are reused, so a further SAE costs one pass of the blocks after `layer`.
    `max_norm_multiple`: the massive-norm rule of `cache_activations` (module docstring); None
    scores every content token. `precision`: the model's forward in "bf16" (autocast; the SAE, the
    statistics and the loss stay fp32) or "fp32"; "auto" is bf16 where the hardware runs it natively
    (2.4x faster here, absolute CE within 0.003 nats and SAE-vs-SAE differences within 0.0001 of
    fp32: docs and `tests/test_evals.py`), else fp32.
    """
    text_id = _check_evaluation(
        sae, model, docs, layer, ctx_len, batch_size, max_contexts, max_norm_multiple, precision, baseline
    )
    with model_precision(model, text_id["precision"]):  # the SAE and the loss stay fp32 inside
        ctx = tokenize_contexts(docs, tokenizer, ctx_len, max_contexts=max_contexts)
        keep_all = content_mask(ctx, tokenizer)
        run = _SplicedRun(MetricAccumulator(sae, n_docs=len(docs)), max_norm_multiple)
        windows = _Windows(
            model, layer, ctx, keep_all, batch_size, (text_id["eval_docs"], text_id["precision"])
        )
        for start in tqdm(range(0, len(ctx), batch_size), desc="evaluating", unit="batch"):
            run.batch(model, layer, *windows.batch(start), clean=baseline is None)
        result = run.acc.result(dense_threshold)
        mean_ce = math.nan  # a baseline brings its own
        if baseline is None:
            mean_ce = _mean_ablation_ce(windows, run.resid_sum / max(run.n_scored, 1), max_norm_multiple)
        result.metrics.update(run.ce_metrics(baseline, mean_ce), **text_id)
        result.doc_stats.update(
            doc=np.arange(len(docs)),
            n_targets=run.doc_ce["targets"].numpy(),
            ce_sae=run.doc_ce["sae"].numpy(),
            ce_clean=run.doc_ce["clean"].numpy(),
        )
        return _with_health(result, sae, layer)


def _check_evaluation(
    sae: SAE,
    model: PreTrainedModel,
    docs: list[Document],
    layer: int,
    ctx_len: int,
    batch_size: int,
    max_contexts: int | None,
    max_norm_multiple: float | None,
    precision: str,
    baseline: dict[str, Any] | None,
) -> dict[str, Any]:
    """`evaluate`'s arguments checked before any work; returns what identifies the evaluated text
    (recorded in the metrics, and what a reused baseline must match)."""
    check_layer(model, layer)
    check_ctx_len(model, ctx_len)
    check_max_norm_multiple(max_norm_multiple)
    check_documents(docs)
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer (windows per forward pass).")
    if max_contexts is not None and not (isinstance(max_contexts, int) and max_contexts >= 1):
        raise ValueError(
            f"max_contexts={max_contexts!r} must be a positive integer (windows evaluated), or None for all."
        )
    sae.check_reads(model_name=model.name_or_path, layer=layer, d_in=d_model(model))
    text_id = dict(
        eval_docs=corpus_checksum(docs),
        ctx_len=ctx_len,
        max_contexts=max_contexts,
        max_norm_multiple=max_norm_multiple,
        precision=resolve_precision(model, precision),
    )
    if baseline is not None and any(baseline.get(k) != v for k, v in text_id.items()):
        raise ValueError(
            "The baseline was computed on other documents, windows or precision: evaluate it on the same "
            "docs, ctx_len, max_contexts, max_norm_multiple and precision, or pass baseline=None."
        )
    return text_id


@dataclass
class _SplicedRun:
    """What one `evaluate` adds up over its batches: the SAE's statistics (`acc`), CE summed per
    document for the spliced, clean and zero-ablated passes, and the clean residual's sum over the
    tokens the SAE replaces (for the mean-ablation bar)."""

    acc: MetricAccumulator
    max_norm_multiple: float | None
    n_outliers: int = 0
    n_scored: int = 0
    doc_ce: dict[str, torch.Tensor] = field(init=False)
    resid_sum: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        n_docs, d_in = self.acc.n_docs, self.acc.sae.cfg.d_in  # d_in is the model's width (check_reads)
        self.doc_ce = {
            k: torch.zeros(n_docs, dtype=torch.float64) for k in ("clean", "sae", "zero", "targets")
        }
        self.resid_sum = torch.zeros(d_in, dtype=torch.float64)

    def batch(self, model, layer: int, resid, ids, mask, keep, doc, clean: bool) -> None:
        """One batch of windows from their residual after `layer` (B, T, D): the spliced pass, and the
        clean and zero-ablated ones if `clean` (no baseline to reuse), each running only the blocks
        after `layer`. ids, mask, keep: (B, T); doc: (B,) document index of each window."""
        targets = keep[:, 1:]
        self.doc_ce["targets"].index_add_(0, doc, targets.sum(1).double().cpu())
        zero = lambda r: replace_content(r, keep, torch.zeros_like(r))
        passes = dict(sae=self._reconstruct(ids, keep, doc))
        if clean:
            passes.update(clean=self._capture(keep), zero=zero)
        for name, fn in passes.items():
            with resume_after(model, layer, fn(resid)):
                self.doc_ce[name].index_add_(0, doc, ce_sums(model, ids, mask, targets))

    def _reconstruct(self, ids, keep, doc) -> Callable[[torch.Tensor], torch.Tensor]:
        """The splice: the residual (B, T, D) feeds the statistics, and its scored tokens are replaced by
        the SAE's reconstruction (a copy: the shared residual stays clean)."""
        sae = self.acc.sae

        def fn(resid: torch.Tensor) -> torch.Tensor:
            scored = keep & ~massive_norm_mask(resid, keep, self.max_norm_multiple)
            self.n_outliers += int((keep & ~scored).sum())
            with full_precision(resid.device):  # the SAE in its own dtype, even inside a bf16 forward
                x_hat = self.acc.add(
                    resid[scored].to(sae.W_dec.dtype), ids[scored], doc[:, None].expand_as(ids)[scored.cpu()]
                )
            out = resid.clone()
            out[scored] = x_hat.to(resid.dtype)
            return out

        return fn

    def _capture(self, keep) -> Callable[[torch.Tensor], torch.Tensor]:
        """The clean pass's residual at the tokens the SAE replaces, summed for the layer's mean."""

        def fn(resid: torch.Tensor) -> torch.Tensor:
            scored = keep & ~massive_norm_mask(resid, keep, self.max_norm_multiple)
            self.resid_sum += resid[scored].double().sum(0).cpu()
            self.n_scored += int(scored.sum())
            return resid

        return fn

    def ce_metrics(self, baseline: dict[str, Any] | None, mean_ce: float) -> dict[str, Any]:
        """CE per target token of each pass (clean and zero from `baseline` when given, whose
        per-document clean CE is then unknown: NaN), the loss recovered and perplexities."""
        n_targets = max(float(self.doc_ce["targets"].sum()), 1.0)
        ce = {k: float(self.doc_ce[k].sum()) / n_targets for k in ("clean", "sae", "zero")}
        ce["mean"] = mean_ce
        if baseline is not None:
            ce["clean"], ce["zero"] = baseline["ce_clean"], baseline["ce_zero"]
            ce["mean"] = baseline.get("ce_mean", math.nan)  # baselines saved before the kit measured it
            self.doc_ce["clean"][:] = math.nan
        gap, mean_gap = ce["zero"] - ce["clean"], ce["mean"] - ce["clean"]
        return dict(
            ce_clean=ce["clean"],
            ce_sae=ce["sae"],
            ce_zero=ce["zero"],
            ce_mean=ce["mean"],
            ce_delta=ce["sae"] - ce["clean"],
            ce_loss_recovered=(ce["zero"] - ce["sae"]) / gap if gap > 0 else math.nan,
            ce_loss_recovered_mean=(ce["mean"] - ce["sae"]) / mean_gap if mean_gap > 0 else math.nan,
            perplexity_clean=math.exp(ce["clean"]),
            perplexity_sae=math.exp(ce["sae"]),
            n_outliers=self.n_outliers,
        )


def _with_health(result: EvalResult, sae: SAE, layer: int) -> EvalResult:
    """`result` with its health warnings recorded in its metrics and raised as warnings."""
    result.metrics["health_warnings"] = health_warnings(result.metrics)
    for message in result.metrics["health_warnings"]:
        warnings.warn(
            f"Unhealthy SAE ({sae.cfg.model_name or 'model?'}, layer {layer}): {message}", stacklevel=3
        )
    return result


@dataclass
class _Windows:
    """An evaluation's windows, batch by batch, with their residual after `layer` (`hooks.shared_prefix`,
    keyed by `key`: the evaluated text and the precision)."""

    model: PreTrainedModel
    layer: int
    ctx: Any  # corpora.Contexts
    keep: torch.Tensor  # (N, T) bool
    batch_size: int
    key: tuple

    def batch(self, start: int) -> tuple[torch.Tensor, ...]:
        """resid (B, T, D), ids, mask, keep (B, T) on the model's device, and doc (B,) of the windows from `start`."""
        sl, device = slice(start, start + self.batch_size), next(self.model.parameters()).device
        ids, mask = self.ctx.input_ids[sl].to(device), self.ctx.attention_mask[sl].to(device)
        resid = shared_prefix(self.model, self.layer, ids, mask, (*self.key, self.batch_size, start))
        return resid, ids, mask, self.keep[sl].to(device), self.ctx.doc_ids[sl]


def _mean_ablation_ce(windows: _Windows, mean: torch.Tensor, max_norm_multiple: float | None) -> float:
    """CE per target token with the tokens an SAE would replace replaced by the layer's mean
    activation over them: what `b_dec` alone could do, the bar a useful SAE must clear."""
    total, n_targets = 0.0, 0.0
    for start in range(0, len(windows.ctx), windows.batch_size):
        resid, ids, mask, keep, _ = windows.batch(start)
        scored = keep & ~massive_norm_mask(resid, keep, max_norm_multiple)
        at_mean = replace_content(resid, scored, mean.to(resid.device).expand_as(resid))
        with resume_after(windows.model, windows.layer, at_mean):
            total += float(ce_sums(windows.model, ids, mask, keep[:, 1:]).sum())
        n_targets += float(keep[:, 1:].sum())
    return total / max(n_targets, 1.0)


def health_warnings(metrics: dict[str, Any]) -> list[str]:
    """Plain sentences for the signs of a broken SAE: NaN metrics, most latents dead, EV below 0,
    spliced CE no better than zero-ablating the layer or replacing it by its mean. Empty when none applies."""
    out = []
    optional = ("ce_loss_recovered", "ce_loss_recovered_mean", "ce_mean")  # NaN when not measured
    nan = sorted(
        k for k, v in metrics.items() if isinstance(v, float) and math.isnan(v) and k not in optional
    )
    if nan:
        out.append(
            f"{', '.join(nan)} {'is' if len(nan) == 1 else 'are'} NaN: the SAE or the activations hold NaN/inf."
        )
    if metrics.get("dead_fraction", 0.0) > 0.5:
        out.append(
            f"{100 * metrics['dead_fraction']:.0f}% of latents are dead (never active on "
            f"{metrics.get('n_tokens', 0):,} tokens)."
        )
    if metrics.get("explained_variance", 1.0) < 0:
        out.append(
            f"explained variance is {metrics['explained_variance']:.2f}: the reconstruction is worse than the mean."
        )
    if "ce_sae" in metrics and metrics["ce_sae"] >= metrics.get("ce_zero", math.inf):
        out.append(
            f"spliced CE {metrics['ce_sae']:.3f} is no better than zero-ablation ({metrics['ce_zero']:.3f})."
        )
    elif "ce_sae" in metrics and metrics["ce_sae"] >= metrics.get("ce_mean", math.inf) > metrics["ce_clean"]:
        out.append(
            f"spliced CE {metrics['ce_sae']:.3f} is no better than replacing the layer by its mean "
            f"({metrics['ce_mean']:.3f}): the SAE does worse than its decoder bias alone could."
        )
    return out


def ce_sums(
    model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """(B,) summed next-token cross-entropy per window, over positions whose target is a content token."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]  # (B, T-1, V)
    # rows of (B*(T-1), V): contiguous, ~3x faster on CPU than cross_entropy over the transposed (B, V, T-1)
    losses = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    return (losses.view_as(targets) * targets).sum(1).double().cpu()
