"""Hand-built SAEs and evaluation results the tests of evals, latents and claims share."""

from __future__ import annotations

import numpy as np
import torch

from ssae_kit.evals import EvalResult, MetricAccumulator
from ssae_kit.sae import SAE, SAEConfig


def fixed_sae(W_enc, W_dec, b_dec=None, b_enc=None) -> SAE:
    W_enc, W_dec = torch.tensor(W_enc), torch.tensor(W_dec)
    sae = SAE(SAEConfig(d_in=W_enc.shape[0], d_sae=W_enc.shape[1]))
    with torch.no_grad():
        sae.W_enc.copy_(W_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_dec.copy_(torch.tensor(b_dec) if b_dec is not None else torch.zeros(W_enc.shape[0]))
        sae.b_enc.copy_(torch.tensor(b_enc) if b_enc is not None else torch.zeros(W_enc.shape[1]))
    return sae


def run(sae, x, ids):
    acc = MetricAccumulator(sae)
    acc.add(torch.tensor(x), torch.tensor(ids))
    return acc.result(dense_threshold=0.5)


def fake_result(ce_sae, n_targets, sq_err=None, sq_dev=None, docs="d") -> EvalResult:
    n = len(ce_sae)
    stats = dict(
        ce_sae=np.asarray(ce_sae, float),
        n_targets=np.asarray(n_targets, float),
        sq_err=np.asarray(sq_err if sq_err is not None else np.ones(n), float),
        sq_dev=np.asarray(sq_dev if sq_dev is not None else np.ones(n), float),
        n_tokens=np.ones(n),
    )
    empty = np.zeros(0)
    return EvalResult(
        dict(eval_docs=docs, ctx_len=16, max_contexts=None),
        empty,
        empty,
        empty,
        empty,
        empty,
        empty,
        empty,
        empty,
        stats,
    )
