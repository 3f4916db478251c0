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
- Massive-norm tokens (one rule with `cache_activations`): a content token whose residual norm
  exceeds `max_norm_multiple` x its batch's median is never trained on, so `evaluate` leaves it
  clean in the spliced pass and out of every reconstruction average (as SAEBench does);
  `n_outliers` counts them. It still counts as a CE target.
- Differences between two SAEs (`compare`) carry a 95% bootstrap interval over documents,
  paired (both SAEs scored on the same documents), from `scipy.stats.bootstrap`.
- Health: `health_warnings` flags dead fraction > 50%, EV < 0, and spliced CE at or above
  zero-ablation CE; `evaluate` warns and records them under `health_warnings`.
Everything streams batch by batch: only per-token scalars, per-document sums and per-latent
counters are kept.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .activations import ActivationStore
from .corpora import Document, check_documents, content_mask, corpus_checksum, tokenize_contexts
from .intervals import (
    MIN_DOCS,
    MIN_SEEDS,
    Difference,
    bootstrap_interval,
    check_confidence,
    has_interval,
    seed_band,
    too_few,
)
from .models import (
    check_ctx_len,
    check_layer,
    check_max_norm_multiple,
    d_model,
    full_precision,
    massive_norm_mask,
    model_precision,
    resolve_precision,
    splice,
)
from .sae import SAE

__all__ = [
    "claim_reading",
    "compare",
    "decoder_cosine_similarities",
    "error_by_rank",
    "evaluate",
    "evaluate_store",
    "firing_difference",
    "interval_over_seeds",
    "matched_l0_pair",
    "paired_over_seeds",
    "rare_max_error_reading",
    "shift_reading",
    "ssae_only_latents",
    "tail_coverage",
    "tail_coverage_difference",
    "verdict_over_seeds",
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

    `baseline`: the metrics of an earlier `evaluate` on the same documents and windows; its clean
    and zero-ablation CE are reused, so each further SAE costs one full forward instead of three.
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
        device = next(model.parameters()).device
        run = _SplicedRun(
            MetricAccumulator(sae, n_docs=len(docs)), max_norm_multiple, len(docs), d_model(model)
        )
        for start in tqdm(range(0, len(ctx), batch_size), desc="evaluating", unit="batch"):
            sl = slice(start, start + batch_size)
            ids, mask = ctx.input_ids[sl].to(device), ctx.attention_mask[sl].to(device)
            run.batch(
                model, layer, ids, mask, keep_all[sl].to(device), ctx.doc_ids[sl], clean=baseline is None
            )
        result = run.acc.result(dense_threshold)
        mean_ce = math.nan  # a baseline brings its own
        if baseline is None:
            mean = run.resid_sum / max(run.n_scored, 1)
            mean_ce = _mean_ablation_ce(model, ctx, keep_all, layer, mean, max_norm_multiple, batch_size)
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
    n_docs: int
    d_model: int
    n_outliers: int = 0
    n_scored: int = 0
    doc_ce: dict[str, torch.Tensor] = field(init=False)
    resid_sum: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.doc_ce = {
            k: torch.zeros(self.n_docs, dtype=torch.float64) for k in ("clean", "sae", "zero", "targets")
        }
        self.resid_sum = torch.zeros(self.d_model, dtype=torch.float64)

    def batch(self, model, layer: int, ids, mask, keep, doc, clean: bool) -> None:
        """One batch of windows: the spliced forward, and the clean and zero-ablated ones if `clean`
        (no baseline to reuse). ids, mask, keep: (B, T); doc: (B,) document index of each window."""
        targets = keep[:, 1:]
        self.doc_ce["targets"].index_add_(0, doc, targets.sum(1).double().cpu())
        with splice(model, layer, self._reconstruct(ids, keep, doc)):
            self.doc_ce["sae"].index_add_(0, doc, ce_sums(model, ids, mask, targets))
        if clean:
            with splice(model, layer, self._capture(keep)):
                self.doc_ce["clean"].index_add_(0, doc, ce_sums(model, ids, mask, targets))
            with splice(model, layer, lambda r: replace_content(r, keep, torch.zeros_like(r))):
                self.doc_ce["zero"].index_add_(0, doc, ce_sums(model, ids, mask, targets))

    def _reconstruct(self, ids, keep, doc) -> Callable[[torch.Tensor], torch.Tensor]:
        """The splice: the spliced forward's own residual (B, T, D) feeds the statistics, and its scored
        tokens are replaced by the SAE's reconstruction (no second prefix pass)."""
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


def _mean_ablation_ce(
    model: PreTrainedModel,
    ctx,
    keep_all: torch.Tensor,
    layer: int,
    mean: torch.Tensor,
    max_norm_multiple: float | None,
    batch_size: int,
) -> float:
    """CE per target token with the tokens an SAE would replace replaced by the layer's mean
    activation over them: what `b_dec` alone could do, the bar a useful SAE must clear."""
    device = next(model.parameters()).device
    total, n_targets = 0.0, 0.0
    for start in range(0, len(ctx), batch_size):
        sl = slice(start, start + batch_size)
        ids, mask, keep = (
            ctx.input_ids[sl].to(device),
            ctx.attention_mask[sl].to(device),
            keep_all[sl].to(device),
        )

        def to_mean(resid: torch.Tensor, keep=keep) -> torch.Tensor:
            scored = keep & ~massive_norm_mask(resid, keep, max_norm_multiple)
            return replace_content(resid, scored, mean.to(resid.device).expand_as(resid))

        with splice(model, layer, to_mean):
            total += float(ce_sums(model, ids, mask, keep[:, 1:]).sum())
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


def replace_content(resid: torch.Tensor, keep: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """Residual stream with content positions replaced by `new`; special tokens stay clean."""
    return torch.where(keep[..., None], new.to(resid.dtype), resid)


def ce_sums(
    model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor
) -> torch.Tensor:
    """(B,) summed next-token cross-entropy per window, over positions whose target is a content token."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]  # (B, T-1, V)
    # rows of (B*(T-1), V): contiguous, ~3x faster on CPU than cross_entropy over the transposed (B, V, T-1)
    losses = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
    return (losses.view_as(targets) * targets).sum(1).double().cpu()


def compare(
    a: EvalResult,
    b: EvalResult,
    metric: Literal["ce", "ev", "mse"] = "ce",
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Difference:
    """a minus b for spliced CE (nats per target token), EV or MSE, with a `confidence` bootstrap
    interval (BCa, `scipy.stats.bootstrap`) resampling documents, paired: the same resampled
    documents for both SAEs. Both must come from `evaluate` on the same docs and windows."""
    for r in (a, b):
        if not r.doc_stats or "ce_sae" not in r.doc_stats:
            raise ValueError("compare needs per-document results of evaluate() (evaluate_store keeps none).")
    if (
        a.metrics["eval_docs"] != b.metrics["eval_docs"]
        or a.metrics["ctx_len"] != b.metrics["ctx_len"]
        or a.metrics["max_contexts"] != b.metrics["max_contexts"]
        or a.metrics.get("precision") != b.metrics.get("precision")
    ):
        raise ValueError(
            "compare needs both SAEs evaluated on the same docs, ctx_len, max_contexts and precision."
        )
    sa, sb = a.doc_stats, b.doc_stats
    used = sa["n_targets"] > 0
    if metric == "ce":
        data = (sa["ce_sae"][used], sb["ce_sae"][used], sa["n_targets"][used])

        def statistic(x, y, n, axis=-1):
            return (x.sum(axis) - y.sum(axis)) / n.sum(axis)
    elif metric == "ev":  # EV_a - EV_b = (err_b - err_a) / dev
        data = (sa["sq_err"][used], sb["sq_err"][used], sa["sq_dev"][used])

        def statistic(x, y, dev, axis=-1):
            return (y.sum(axis) - x.sum(axis)) / dev.sum(axis)
    elif metric == "mse":
        data = (sa["sq_err"][used], sb["sq_err"][used], sa["n_tokens"][used])

        def statistic(x, y, n, axis=-1):
            return (x.sum(axis) - y.sum(axis)) / n.sum(axis)
    else:
        raise ValueError(f"Unknown metric {metric!r}: use 'ce', 'ev' or 'mse'.")
    check_confidence(confidence)
    if not used.any():
        raise ValueError("compare found no evaluated document with a target token: evaluate more text.")
    estimate = float(statistic(*data))  # its interval is NaN below intervals.MIN_DOCS documents
    low, high = bootstrap_interval(
        data, statistic, paired=True, method="BCa", confidence=confidence, n_resamples=n_resamples, seed=seed
    )
    warned = [r.metrics.get("health_warnings") or [] for r in (a, b)]
    flagged = "; ".join(dict.fromkeys(w for ws in warned for w in ws)) if all(warned) else ""
    return Difference(metric, estimate, low, high, confidence, int(used.sum()), flagged)


def interval_over_seeds(
    diffs: Sequence[float], confidence: float = 0.95, bounds: tuple[float, float] | None = None
) -> tuple[float, float, float]:
    """(mean, low, high) of per-seed values: the mean +- the t quantile times the standard error
    (`intervals.seed_band`), the band `verdict_over_seeds` reads; NaN bounds below
    `intervals.MIN_SEEDS` seeds (no interval, no verdict). `bounds` clips it (a proportion's (0, 1))."""
    mean, low, high = seed_band(diffs, confidence)
    if bounds is not None and has_interval(low, high):
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return mean, low, high


def paired_over_seeds(a: Sequence[float], b: Sequence[float], name: str) -> dict[str, Any]:
    """a - b seed by seed (the i-th of each come from the same seed or split), with the band of
    `interval_over_seeds` and the words it supports: "<name> higher", "<name> lower", "no clear
    difference", or "too few seeds for an interval (2 < 3)". For CE, "lower" is the gain."""
    if len(a) != len(b) or not len(a):
        raise ValueError(f"a and b need one value per seed each; got {len(a)} and {len(b)}.")
    diffs = [float(x - y) for x, y in zip(a, b)]
    mean, low, high = interval_over_seeds(diffs)
    word = (
        too_few(len(diffs), "seeds", MIN_SEEDS)
        if not has_interval(low, high)
        else f"{name} higher"
        if low > 0
        else f"{name} lower"
        if high < 0
        else "no clear difference"
    )
    return dict(per_seed=diffs, mean=mean, low=low, high=high, verdict=word)


def verdict_over_seeds(
    diffs: Sequence[float],
) -> Literal["better", "worse", "no clear difference", "too few seeds"]:
    """Per-seed differences (a minus b) read as a verdict: "better" or "worse" when the band of
    `interval_over_seeds` excludes 0, "no clear difference" when it holds 0, "too few seeds" when
    there is no band (fewer than `intervals.MIN_SEEDS` seeds, or no spread)."""
    _, low, high = interval_over_seeds(diffs)
    if not has_interval(low, high):
        return "too few seeds"
    return "better" if low > 0 else "worse" if high < 0 else "no clear difference"


def seed_item_bootstrap(
    values: np.ndarray,
    statistic: Callable[[np.ndarray, np.ndarray], float],
    strata: Sequence[str],
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(estimate, low, high) of `statistic(values, strata)` with a percentile bootstrap over seeds
    and items at once: each resample draws seeds with replacement, and items with replacement
    within each stratum (so every group keeps its size), the same items for every seed (they were
    scored on the same items).

    values: (S, N, ...) per seed and item (e.g. 1 when bio n was classified right under seed s);
    strata: (N,) the item's group, e.g. "female nurse" (worst-group accuracy needs each group).
    NaN bounds when a group has one item or there are fewer than `intervals.MIN_DOCS` items.
    """
    values, strata = np.asarray(values), np.asarray(strata)
    if values.ndim < 2 or values.shape[1] != len(strata) or values.shape[0] < 1:
        raise ValueError(
            f"values has shape {values.shape}: it must be (seeds, items, ...) with {len(strata)} items."
        )
    check_confidence(confidence)
    groups = [np.flatnonzero(strata == g) for g in np.unique(strata)]
    if min(len(g) for g in groups) < 2 or len(strata) < MIN_DOCS:  # resampling would only restate them
        return float(statistic(values, strata)), math.nan, math.nan
    rng = np.random.default_rng(seed)
    stats_ = []
    for _ in range(n_resamples):
        s = rng.integers(values.shape[0], size=values.shape[0])
        items = np.concatenate([rng.choice(g, size=len(g)) for g in groups])
        stats_.append(statistic(values[s][:, items], strata[items]))
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(stats_, [tail, 100 - tail])
    return float(statistic(values, strata)), float(low), float(high)


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
    per_bin = [
        float(has[which == b].mean()) if (which == b).any() else math.nan for b in range(len(edges) - 1)
    ]
    order = np.argsort(freq, kind="stable")
    cumulative = np.cumsum(has[order]) / np.arange(1, len(order) + 1)
    return dict(
        bin_edges=edges.tolist(),
        coverage=per_bin,
        n_types=[int((which == b).sum()) for b in range(len(edges) - 1)],
        freq_sorted=freq[order].tolist(),
        cumulative=cumulative.tolist(),
        overall=float(has.mean()),
    )


def tail_coverage_difference(
    a: EvalResult, b: EvalResult, confidence: float = 0.95, seed: int = 0
) -> Difference:
    """Overall tail coverage of a minus b (fraction of token types that have a feature), with a
    paired bootstrap interval over token types (percentile; both SAEs read the same tokens)."""
    if not np.array_equal(a.token_ids, b.token_ids):
        raise ValueError("tail_coverage_difference needs both SAEs evaluated on the same tokens.")
    types = np.unique(a.token_ids)
    has = [np.isin(types, r.feature_top_token[r.feature_top_token >= 0]).astype(float) for r in (a, b)]
    estimate = float(has[0].mean() - has[1].mean())
    if len(types) >= MIN_DOCS and np.array_equal(has[0], has[1]):
        return Difference("coverage", estimate, estimate, estimate, confidence, len(types))
    low, high = bootstrap_interval(
        (has[0], has[1]),
        lambda x, y, axis=-1: x.mean(axis) - y.mean(axis),
        paired=True,
        confidence=confidence,
        seed=seed,
    )
    return Difference("coverage", estimate, low, high, confidence, len(types))


def ssae_only_latents(best_cosine: np.ndarray, peak_activation: np.ndarray, threshold: float) -> np.ndarray:
    """An SSAE's "dark matter": latents whose decoder direction matches no GSAE direction (best cosine
    below `threshold`) and that fire on the sample (peak activation > 0), strongest first.

    best_cosine: (d_sae,) each SSAE latent's largest decoder cosine with any GSAE latent.
    peak_activation: (d_sae,) each SSAE latent's largest activation on the sample.
    """
    new = np.flatnonzero((best_cosine < threshold) & (peak_activation > 0))
    return new[np.argsort(-peak_activation[new], kind="stable")]


def claim_reading(claim: str, d: Difference, holds_if: Literal["above", "below"], discuss: str = "") -> str:
    """A pre-registered claim read off its interval: it holds when the whole interval of `d` lies
    above (or below) zero, and the sentence says what was measured either way. `discuss`: a
    question for the reader, added only when the claim was tested and did not hold."""
    if not has_interval(d.low, d.high):
        return f"{claim}: measured {d.estimate:+.3f}, but with {too_few(d.n_docs, 'samples', MIN_DOCS)}, the claim is not tested here."
    holds = d.low > 0 if holds_if == "above" else d.high < 0
    span = f"{d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}] ({100 * d.confidence:.0f}% CI, n = {d.n_docs})"
    reading = f"{claim}: measured {span}, so the claim {'holds' if holds else 'does not hold'} here."
    return reading + (f" For discussion: {discuss}" if discuss and not holds else "")


def matched_l0_pair(
    l0: dict[tuple[str, float], float], a: str, b: str, window: tuple[float, float]
) -> tuple[float, float] | None:
    """The sparsity coefficients (one for `a`, one for `b`) whose SAEs both have L0 inside `window`
    and closest to each other, from `l0` = {(name, coefficient): L0}; None when no pair is inside.

    Comparing two objectives at one coefficient compares them at different sparsities; the paper's
    TERM-vs-ERM claims hold in a window of L0, so the kit compares them there, at matched L0."""
    inside = lambda name: [(c, v) for (n, c), v in l0.items() if n == name and window[0] <= v <= window[1]]
    pairs = [(abs(va - vb), ca, cb) for ca, va in inside(a) for cb, vb in inside(b)]
    return min(pairs)[1:] if pairs else None


def firing_difference(
    fires_a: np.ndarray,
    fires_b: np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> Difference:
    """How many latents fire on text a minus on text b, with a bootstrap interval resampling each
    text's windows (two independent samples, so unpaired).

    fires_a: (N_a, L) bool, latent l fires somewhere in window n of text a; likewise fires_b. A latent
    counts once it fires in any window of the sample, so both texts should have the same number of
    windows of the same length (notebook 04 uses `max_contexts` windows of each).
    """
    fires_a, fires_b = np.asarray(fires_a, bool), np.asarray(fires_b, bool)
    if fires_a.shape[1] != fires_b.shape[1] or min(len(fires_a), len(fires_b)) < 2:
        raise ValueError(
            f"firing_difference needs two (windows, latents) arrays over the same latents with 2+ windows each; "
            f"got {fires_a.shape} and {fires_b.shape}."
        )
    count = lambda f: int(f.any(0).sum())
    estimate = float(count(fires_a) - count(fires_b))
    n = min(len(fires_a), len(fires_b))
    if n < MIN_DOCS:
        return Difference("firing", estimate, math.nan, math.nan, check_confidence(confidence), n)
    rng = np.random.default_rng(seed)
    stats_ = [
        count(fires_a[rng.integers(len(fires_a), size=len(fires_a))])
        - count(fires_b[rng.integers(len(fires_b), size=len(fires_b))])
        for _ in range(n_resamples)
    ]
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(stats_, [tail, 100 - tail])
    return Difference("firing", estimate, float(low), float(high), confidence, n)


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


def shift_reading(
    values: dict[str, np.ndarray], a: str, b: str, what: str, expect: Literal["higher", "lower"]
) -> str:
    """One sentence comparing two SAEs' distributions of `what` (median and 99th percentile), and
    whether `a`'s median sits on the `expect` side of `b`'s, as the paper expects; computed, never
    assumed. Medians within 1% of each other count as no shift."""
    x, y = (np.asarray(values[k], dtype=np.float64) for k in (a, b))
    if not (len(x) and len(y)):
        return f"{what}: no values to compare for {a} and {b}."
    (mx, px), (my, py) = ((float(np.median(v)), float(np.percentile(v, 99))) for v in (x, y))
    side = "no shift" if abs(mx - my) <= 0.01 * max(abs(my), 1e-12) else ("higher" if mx > my else "lower")
    verdict = (
        "as the paper expects"
        if side == expect
        else "no clear shift"
        if side == "no shift"
        else "not as the paper expects"
    )
    return (
        f"{what}: median {mx:.3g} for {a} vs {my:.3g} for {b}, 99th percentile {px:.3g} vs {py:.3g}; "
        f"{a}'s median is {side if side != 'no shift' else 'about the same'} ({verdict})."
    )


def rare_max_error_reading(by_rank: dict[str, dict[str, list[float]]], a: str, b: str) -> str:
    """Whether `a` lowers the worst-token error over the rarer half of the frequency-rank buckets
    (`error_by_rank`) against `b`: what TERM is meant to do."""
    half = lambda r: [v for v in r["max_error"][len(r["max_error"]) // 2 :] if math.isfinite(v)]
    ea, eb = half(by_rank[a]), half(by_rank[b])
    if not (ea and eb):
        return "Too few token ranks to compare the worst-token error at the rare end."
    ma, mb = float(np.mean(ea)), float(np.mean(eb))
    return (
        f"Over the rarer half of token ranks, the worst-token error averages {ma:.3g} for {a} and {mb:.3g} "
        f"for {b}: {a} " + ("flattens the max curve here." if ma < mb else "does not flatten it here.")
    )


def decoder_cosines(W_a: torch.Tensor, W_b: torch.Tensor) -> torch.Tensor:
    """(n_a, n_b) cosine similarities between the rows (latent directions) of two decoders, float32 on the CPU."""
    a, b = (W.detach().float().cpu() for W in (W_a, W_b))
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return a @ b.T


def decoder_cosine_similarities(sae: SAE, max_latents: int = 4096, seed: int = 0) -> np.ndarray:
    """Pairwise cosine similarities of decoder directions (upper triangle), on at most `max_latents`."""
    W = sae.W_dec.detach().float().cpu()
    if len(W) > max_latents:
        W = W[torch.randperm(len(W), generator=torch.Generator().manual_seed(seed))[:max_latents]]
    sims = decoder_cosines(W, W)
    i, j = torch.triu_indices(len(W), len(W), offset=1)
    return sims[i, j].numpy()
