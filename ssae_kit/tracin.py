"""TracIn reranking (Pruthi et al. 2020): of the retrieved documents, keep those whose training
most lowers the SAE's loss on the seeds.

PAPER §1 (the data-selection figure): `dense_tracin` and `bm25_tracin` retrieve `rerank_factor` x
the token budget with dense or BM25, then fill the budget by each candidate's score
    score(z) = sum_c eta_c <grad l(z; theta_c), g_c>,    g_c = grad L_seeds(theta_c),
over checkpoints theta_c with learning rates eta_c: the first-order drop in the seeds' loss when
training steps on z. theta are the SAE's parameters; l(z) is the SAE's training loss on z.

Notable:
- No per-document gradient is built. <grad l(z), g> is the derivative of l(z) along g, so one
  forward-mode pass (torch.func.jvp) over a batch of tokens gives every token's term for one
  checkpoint; a document's score is the mean over its tokens. `tracin_scores_explicit` is the
  per-document-gradient reference the tests compare with. Per token, both do the same matrix
  products (forward 2, tangent or backward 3), so the jvp wins only where the per-document cost
  (a graph, gradients the size of the SAE, a dot product) is not amortised: on the shipped GSAE and
  2 CPU cores it is 4.1x the explicit loop on 16-token documents but 0.8x on BBC ones (~650 tokens),
  where forward-mode's dual tensors cost more than one backward (benchmarks/bench_tracin.py; an
  H200 gave 96x and 2.7x). No exact scorer does much better on long documents: a hand-written
  tangent takes 0.66 s on 4,096 tokens, one backward over them 0.67 s, the jvp 0.84 s; restricting
  the tangent to a token's ~68 active latents cuts its FLOPs 60x, but on a CPU the gathers cost more
  than the dense products they replace (5.5 s).
- The SAE's topk and jumprelu paths use custom autograd Functions with no forward-mode rule, so
  `token_losses` restates the per-token loss in plain ops with the same (straight-through)
  gradient; the tests check it against the SAE's own backward.
- g_c has the component parallel to each decoder row removed, as training does before each step
  (the unit-norm decoder constraint); the projection is symmetric, so <grad l(z), P g> is the
  score of the step training would take.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.func import jvp

from .activations import cache_activations
from .corpora import Document, corpus_checksum
from .embeddings import Embedder
from .io import cache_dir
from .models import check_ctx_len, check_layer, d_model, resolve_device
from .retrieval import Selection, fill_budget, select, warn_if_whole_pool
from .sae import SAE, SAEConfig
from .splits import dedupe_indices
from .store import ActivationStore
from .train import train
from .train_config import TrainConfig, per_token_loss

__all__ = ["Reranker", "select_strategy"]

logger = logging.getLogger(__name__)

Base = Literal["dense", "bm25"]
TRACIN_STRATEGIES: tuple[str, ...] = ("dense_tracin", "bm25_tracin")
"""The strategy names of `select_tracin` (base + "_tracin"), beside `retrieval.STRATEGIES`."""
Checkpoint = tuple[SAE, float]
"""An SAE at one point of training and the learning rate eta_c of the steps taken from it."""


def token_losses(
    params: dict[str, torch.Tensor], cfg: SAEConfig, x: torch.Tensor, sparsity_coefficient: float
) -> torch.Tensor:
    """(B,) per-token training loss (MSE + sparsity_coefficient x sparsity, normalised units) of the SAE
    with parameters `params` on raw activations x (B, d_in), in ops that forward-mode AD supports.

    The same function and gradient as `SAE.forward` + `train_config.per_token_loss`: JumpReLU's step
    passes its straight-through threshold gradient as `hard + s - s.detach()`."""
    x_n = x * cfg.norm_scale
    W_enc, b_enc, W_dec, b_dec = params["W_enc"], params["b_enc"], params["W_dec"], params["b_dec"]
    pre = torch.addmm(b_enc - (b_dec * cfg.apply_b_dec_to_input) @ W_enc, x_n, W_enc)  # (B, d_sae)
    sparsity = torch.zeros(len(x), dtype=x.dtype, device=x.device)
    if cfg.architecture == "relu":
        f = torch.relu(pre)
        sparsity = f.sum(-1)
    elif cfg.architecture == "topk":
        values, indices = pre.topk(cfg.k, dim=-1, sorted=False)
        f = torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
    else:
        threshold = params["log_threshold"].exp()
        kernel = (((pre - threshold).abs() < cfg.bandwidth / 2).to(pre.dtype) / cfg.bandwidth).detach()
        through = -kernel * threshold  # d step / d threshold = -kernel, and no gradient to pre (as _JumpStep)
        step = (pre > threshold).to(pre.dtype) + through - through.detach()
        f = torch.relu(pre) * step
        sparsity = step.sum(-1)
    x_hat_n = torch.addmm(b_dec, f, W_dec)  # (B, d_in)
    return per_token_loss((x_hat_n - x_n).pow(2).sum(-1), sparsity, sparsity_coefficient)


def seed_gradient(
    sae: SAE, acts: torch.Tensor, doc_ids: torch.Tensor, sparsity_coefficient: float
) -> dict[str, torch.Tensor]:
    """Gradient of the seeds' loss (the mean over seed documents of each one's mean token loss)
    by the SAE's own backward, minus its part along each decoder row, as training removes it."""
    out = sae(acts)
    losses = per_token_loss(out.sq_error, out.sparsity, sparsity_coefficient)
    loss = _doc_means(losses, doc_ids, int(doc_ids.max()) + 1).nanmean()
    names, params = zip(*sae.named_parameters())
    g = dict(zip(names, torch.autograd.grad(loss, params)))
    W_dec = sae.W_dec.detach()
    g["W_dec"] = g["W_dec"] - (g["W_dec"] * W_dec).sum(1, keepdim=True) * W_dec
    return g


def tracin_scores(
    checkpoints: list[Checkpoint],
    seed_grads: list[dict[str, torch.Tensor]],
    acts: torch.Tensor,
    doc_ids: torch.Tensor,
    n_docs: int,
    sparsity_coefficient: float,
    chunk_tokens: int = 4096,
) -> torch.Tensor:
    """(n_docs,) TracIn score of each document, sum_c eta_c <grad l(doc; theta_c), g_c>, where l is
    the mean training loss over the document's tokens in `acts` (B, d_in) (`doc_ids` (B,) say whose).

    The mean, not the sum: the budget is counted in tokens, so documents are ranked by influence
    per token spent. One jvp per chunk of tokens and checkpoint; NaN for a document with no token."""
    sums, counts = _influence_sums(
        checkpoints, seed_grads, acts, doc_ids, n_docs, sparsity_coefficient, chunk_tokens
    )
    return sums / counts.where(counts > 0, torch.nan)


def _influence_sums(
    checkpoints: list[Checkpoint],
    seed_grads: list[dict[str, torch.Tensor]],
    acts: torch.Tensor,
    doc_ids: torch.Tensor,
    n_docs: int,
    sparsity_coefficient: float,
    chunk_tokens: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per document: the sum over its tokens of sum_c eta_c <grad l_token, g_c>, and its token count."""
    device = checkpoints[0][0].W_dec.device  # sums stay there: no copy back per chunk
    sums, on_device = torch.zeros(n_docs, dtype=torch.float64, device=device), doc_ids.long().to(device)
    for (sae, eta), g in zip(checkpoints, seed_grads):
        params = {name: p.detach() for name, p in sae.named_parameters()}
        tangent = {name: g[name] for name in params}
        for x, ids in zip(acts.split(chunk_tokens), on_device.split(chunk_tokens)):
            x = x.to(device)
            loss_of = partial(token_losses, cfg=sae.cfg, x=x, sparsity_coefficient=sparsity_coefficient)
            with torch.no_grad():
                _, along_g = jvp(loss_of, (params,), (tangent,))  # (B,) <grad l_token, g_c>
            sums.index_add_(0, ids, eta * along_g.double())
    return sums.cpu(), torch.bincount(doc_ids.long().cpu(), minlength=n_docs).double()


def tracin_scores_explicit(
    checkpoints: list[Checkpoint],
    seed_grads: list[dict[str, torch.Tensor]],
    acts: torch.Tensor,
    doc_ids: torch.Tensor,
    n_docs: int,
    sparsity_coefficient: float,
) -> torch.Tensor:
    """The same scores as `tracin_scores` the slow way: each document's gradient by the SAE's own
    backward, materialised, dotted with g_c. The reference for tests and the benchmark."""
    scores = torch.full((n_docs,), torch.nan, dtype=torch.float64)
    doc_ids = doc_ids.long().cpu()
    counts = torch.bincount(doc_ids, minlength=n_docs)
    order = torch.argsort(doc_ids, stable=True).to(acts.device)
    for doc, x in zip(counts.nonzero().flatten().tolist(), acts[order].split(counts[counts > 0].tolist())):
        scores[doc] = 0.0
        for (sae, eta), g in zip(checkpoints, seed_grads):
            names, params = zip(*sae.named_parameters())
            out = sae(x.to(sae.W_dec.device))
            loss = per_token_loss(out.sq_error, out.sparsity, sparsity_coefficient).mean()
            grads = torch.autograd.grad(loss, params)
            scores[doc] += eta * float(sum((gr * g[n]).sum() for n, gr in zip(names, grads)))
    return scores


def build_checkpoints(
    gsae: SAE,
    seed_store: ActivationStore,
    n_checkpoints: int = 3,
    steps_per_checkpoint: int = 10,
    lr: float = 5e-4,
    sparsity_coefficient: float = 1.0,
    seed: int = 0,
    device: str = "auto",
) -> list[Checkpoint]:
    """The GSAE, then n_checkpoints - 1 SAEs each `steps_per_checkpoint` steps further fine-tuned on
    the seeds' activations, each with the learning rate of its steps.

    Each stretch is a `train` run from the previous checkpoint (so the steps are the SSAE's own:
    its loss, the unit-norm decoder constraint, the NaN guard) at a constant LR (no warm-up, no
    decay), so eta_c is exactly the LR used; Adam's moments restart each stretch. Stretch c reads
    the seeds in the order of seed `seed + c`."""
    current = copy.deepcopy(gsae).to(resolve_device(device))
    checkpoints = [(current, lr)]
    batch = seed_store.capped_batch()
    for c in range(1, n_checkpoints):
        cfg = TrainConfig(
            sparsity_coefficient=sparsity_coefficient,
            lr=lr,
            warmup_tokens=0,
            decay_frac=0.0,
            batch_size=batch,
            total_tokens=steps_per_checkpoint * batch,
            log_every=steps_per_checkpoint,
            seed=seed + c,
            device=device,
        )
        current = train(seed_store, cfg, init=current).sae
        checkpoints.append((current, lr))
    return checkpoints


def read_store(store: ActivationStore) -> tuple[torch.Tensor, torch.Tensor]:
    """All of a store's raw activations (n, d_model) and each row's document id (n,), in store order."""
    parts = [store.read_shard(i, normalize=False) for i in range(store.n_shards)]
    return torch.cat([a for a, _ in parts]), torch.cat([t[:, 1] for _, t in parts])


def select_tracin(
    pool: list[Document],
    seeds: list[Document],
    base: Base,
    budget_tokens: int,
    tokenizer,
    model,
    layer: int,
    gsae: SAE,
    rerank_factor: float = 3.0,
    n_checkpoints: int = 3,
    steps_per_checkpoint: int = 10,
    lr: float = 5e-4,
    sparsity_coefficient: float = 1.0,
    seed: int = 0,
    embedder: Embedder | None = None,
    combine: Literal["max", "mean"] = "mean",
    pool_embeddings: np.ndarray | None = None,
    index=None,
    ctx_len: int = 128,
    store_dir: str | Path | None = None,
    device: str = "auto",
) -> Selection:
    """`dense_tracin` / `bm25_tracin`: retrieve `rerank_factor` x `budget_tokens` with `base`, score
    the candidates by TracIn against the seeds, fill the budget by score.

    Args:
        model, layer, gsae: whose activations and which SAE the loss is of; the GSAE must read
            this model and layer (checked before any work).
        n_checkpoints, steps_per_checkpoint, lr, sparsity_coefficient: the checkpoints (`build_checkpoints`):
            the GSAE and short fine-tuning stretches on the seeds, with the SSAE's LR and coefficient.
        embedder, combine, pool_embeddings, index: passed to `retrieval.select` for the candidates.
        store_dir: where the candidates' and seeds' float32 activations are cached, one folder per
            model, layer, ctx_len and documents (default: the kit's cache), for reruns to reuse.
    """
    _check_tracin(base, seeds, budget_tokens, rerank_factor, n_checkpoints, steps_per_checkpoint)
    _check_reads(model, layer, ctx_len, gsae)
    TrainConfig(lr=lr, sparsity_coefficient=sparsity_coefficient, device=device)  # the checkpoints' steps

    started = time.perf_counter()
    kw = dict(seed=seed, embedder=embedder, combine=combine, pool_embeddings=pool_embeddings, index=index)
    candidates = _candidates(pool, seeds, base, math.ceil(rerank_factor * budget_tokens), tokenizer, **kw)
    retrieved = time.perf_counter()
    cand_store = _cached_store(candidates, model, tokenizer, layer, ctx_len, store_dir, "candidates")
    seed_store = _cached_store(seeds, model, tokenizer, layer, ctx_len, store_dir, "seeds")
    cached = time.perf_counter()
    checkpoints = build_checkpoints(
        gsae, seed_store, n_checkpoints, steps_per_checkpoint, lr, sparsity_coefficient, seed, device
    )
    scores = _scores(checkpoints, seed_store, cand_store, len(candidates), sparsity_coefficient)
    logger.info(
        "%s_tracin: %d candidates (%d tokens) retrieved in %.1f s, activations %.1f s, checkpoints and scores %.1f s",
        *(base, len(candidates), cand_store.n_tokens, retrieved - started, cached - retrieved),
        time.perf_counter() - cached,
    )
    selection = fill_budget(candidates, scores, budget_tokens, tokenizer, f"{base}_tracin")
    return warn_if_whole_pool(selection, len(dedupe_indices(pool)))


def _check_tracin(
    base: str, seeds: list[Document], budget_tokens: int, rerank_factor: float, n_checkpoints: int, steps: int
) -> None:
    """Refuse `select_tracin` settings before any work, naming the fix."""
    if base not in ("dense", "bm25"):
        raise ValueError(f"base={base!r} must be 'dense' or 'bm25' (the retrieval TracIn reranks).")
    if not (isinstance(rerank_factor, (int, float)) and rerank_factor >= 1):
        raise ValueError(
            f"rerank_factor={rerank_factor!r} must be >= 1: the candidates are rerank_factor x "
            "budget_tokens retrieved tokens; use the default 3, or 1 to rerank exactly the budget."
        )
    if not seeds:
        raise ValueError(
            "The seed set is empty: TracIn scores candidates by their influence on the seeds' loss; "
            "give at least one example document of the subdomain."
        )
    if budget_tokens is None or budget_tokens <= 0:
        raise ValueError(f"budget_tokens={budget_tokens!r} must be a positive number of LM tokens.")
    if n_checkpoints < 1 or steps < 1:
        raise ValueError(
            f"n_checkpoints={n_checkpoints} and steps_per_checkpoint={steps} must be "
            ">= 1 (1 checkpoint: the GSAE alone)."
        )


def _check_reads(model, layer: int, ctx_len: int, gsae: SAE) -> None:
    """Refuse a layer or context the model lacks, or a GSAE that reads another model or layer."""
    check_layer(model, layer)
    check_ctx_len(model, ctx_len)
    gsae.check_reads(model_name=model.name_or_path, layer=layer, d_in=d_model(model))


def _candidates(
    pool: list[Document], seeds: list[Document], base: Base, tokens: int, tokenizer, **select_kw: Any
) -> list[Document]:
    """The documents TracIn reranks: `base`'s selection of `tokens` LM tokens (a set holding the whole
    pool is fine: TracIn then ranks it all)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*holds the whole pool")
        return select(pool, seeds, base, tokens, tokenizer, **select_kw).documents


def _scores(
    checkpoints: list,
    seed_store: ActivationStore,
    cand_store: ActivationStore,
    n_docs: int,
    coefficient: float,
) -> np.ndarray:
    """Each candidate document's TracIn score against the seeds' loss gradients at every checkpoint;
    -inf for a document with no cached token, so it goes last."""
    seed_acts, seed_ids = read_store(seed_store)
    seed_grads = [
        seed_gradient(sae, seed_acts.to(sae.W_dec.device), seed_ids, coefficient) for sae, _ in checkpoints
    ]
    acts, doc_ids = read_store(cand_store)
    scores = tracin_scores(checkpoints, seed_grads, acts, doc_ids, n_docs, coefficient)
    return scores.nan_to_num(nan=-math.inf).numpy()


@dataclass(frozen=True)
class Reranker:
    """What a TracIn strategy needs beyond retrieval: the LM and the GSAE whose loss it differentiates
    (at the GSAE's layer), and the reranking settings `select_tracin` documents."""

    model: Any
    gsae: SAE
    rerank_factor: float = 3.0
    n_checkpoints: int = 3
    sparsity_coefficient: float = 1.0
    device: str = "auto"


def select_strategy(
    pool: list[Document],
    seeds: list[Document],
    strategy: str,
    budget_tokens: int,
    tokenizer,
    embedder: Embedder | None = None,
    combine: Literal["max", "mean"] = "mean",
    pool_embeddings: np.ndarray | None = None,
    reranker: Reranker | None = None,
) -> Selection:
    """Any strategy of the kit by name: retrieval's `select`, or a TracIn rerank of dense or BM25
    (`dense_tracin`, `bm25_tracin`), which needs `reranker`. Notebook 01 compares them through this."""
    if strategy not in TRACIN_STRATEGIES:
        return select(
            pool,
            seeds,
            strategy,  # type: ignore[arg-type]  # select names a bad one
            budget_tokens,
            tokenizer,
            embedder=embedder,
            combine=combine,
            pool_embeddings=pool_embeddings,
        )
    if reranker is None:
        raise ValueError(f"{strategy} reranks with a GSAE's loss: pass reranker=Reranker(model, gsae).")
    return select_tracin(
        pool,
        seeds,
        strategy.removesuffix("_tracin"),  # type: ignore[arg-type]  # "dense" or "bm25" here
        budget_tokens,
        tokenizer,
        reranker.model,
        reranker.gsae.cfg.layer,
        reranker.gsae,
        rerank_factor=reranker.rerank_factor,
        n_checkpoints=reranker.n_checkpoints,
        sparsity_coefficient=reranker.sparsity_coefficient,
        device=reranker.device,
        embedder=embedder,
        combine=combine,
        pool_embeddings=pool_embeddings,
    )


def _cached_store(
    docs: list[Document], model, tokenizer, layer: int, ctx_len: int, store_dir: str | Path | None, what: str
) -> ActivationStore:
    """A float32 store of `docs` at `layer`, in a folder named by model, layer, ctx_len and documents."""
    key = hashlib.sha256(
        f"{model.name_or_path}|{layer}|{ctx_len}|{corpus_checksum(docs)}".encode()
    ).hexdigest()[:16]
    root = Path(store_dir) if store_dir is not None else cache_dir("tracin")
    return cache_activations(
        model, tokenizer, docs, layer, root / f"{what}-{key}", ctx_len=ctx_len, dtype="float32"
    )


def _doc_means(values: torch.Tensor, doc_ids: torch.Tensor, n_docs: int) -> torch.Tensor:
    """(n_docs,) mean of `values` over each document's rows; NaN for a document with none."""
    ids = doc_ids.long().to(values.device)
    sums = torch.zeros(n_docs, dtype=values.dtype, device=values.device).index_add(0, ids, values)
    counts = torch.bincount(ids, minlength=n_docs).to(values.dtype)
    return sums / counts.where(counts > 0, torch.nan)
