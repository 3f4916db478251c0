"""ssae_kit.tracin: forward-mode TracIn scores equal the per-document-gradient ones, a TracIn
selection fills the budget by score and repeats by seed, and bad inputs stop before any work."""

from __future__ import annotations

import pytest
import torch
from test_retrieval import FOOD, SPORT  # the same two-topic pool

from ssae_kit import tracin
from ssae_kit.activations import cache_activations
from ssae_kit.corpora import Document
from ssae_kit.embeddings import Embedder
from ssae_kit.models import hook_name
from ssae_kit.retrieval import STRATEGIES, select
from ssae_kit.sae import SAE, SAEConfig
from ssae_kit.tracin import (
    TRACIN_STRATEGIES,
    Reranker,
    build_checkpoints,
    read_store,
    seed_gradient,
    select_strategy,
    select_tracin,
    token_losses,
    tracin_scores,
    tracin_scores_explicit,
)
from ssae_kit.train_config import per_token_loss

LAYER = 1


def build_sae(architecture: str = "relu", seed: int = 0, **kwargs) -> SAE:
    """A small SAE with a non-trivial bias and scale; JumpReLU thresholds wide enough to matter."""
    cfg = dict(d_in=8, d_sae=16, architecture=architecture, k=4, threshold=0.3, bandwidth=1.0, norm_scale=0.7)
    sae = SAE(SAEConfig(**{**cfg, **kwargs}), seed=seed)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.3)
        sae.b_enc.normal_(0, 0.1)
    return sae


@pytest.mark.parametrize("architecture", ["relu", "topk", "jumprelu"])
def test_jvp_scores_equal_the_explicit_per_document_gradient_dot_products(architecture):
    checkpoints = [(build_sae(architecture, seed=0), 1e-3), (build_sae(architecture, seed=1), 5e-4)]
    acts, doc_ids = torch.randn(90, 8) * 2, torch.randint(0, 7, (90,))
    doc_ids[doc_ids == 3] = 4  # document 3 has no token
    seed_acts, seed_ids = torch.randn(30, 8) * 2, torch.arange(30) % 3
    grads = [seed_gradient(sae, seed_acts, seed_ids, 0.5) for sae, _ in checkpoints]
    fast = tracin_scores(checkpoints, grads, acts, doc_ids, 7, 0.5, chunk_tokens=16)
    slow = tracin_scores_explicit(checkpoints, grads, acts, doc_ids, 7, 0.5)
    assert torch.isnan(fast[3]) and torch.isnan(slow[3]), "a document without tokens has no score"
    keep = ~torch.isnan(slow)
    rel = (fast[keep] - slow[keep]).norm() / slow[keep].norm()
    assert rel <= 1e-5, f"jvp scores differ from the explicit gradient dot products by {rel:.2e} (relative)"


@pytest.mark.parametrize("architecture", ["relu", "topk", "jumprelu"])
def test_token_losses_have_the_saes_value_and_gradient(architecture):
    sae, x = build_sae(architecture), torch.randn(40, 8) * 2
    out = sae(x)
    ref = per_token_loss(out.sq_error, out.sparsity, 0.5)
    names, params = zip(*sae.named_parameters())
    mine = token_losses(dict(zip(names, params)), sae.cfg, x, 0.5)
    torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)
    for name, a, b in zip(
        names, torch.autograd.grad(mine.sum(), params), torch.autograd.grad(ref.sum(), params)
    ):
        torch.testing.assert_close(
            a, b, rtol=1e-4, atol=1e-5, msg=f"gradient of {name} differs from SAE.forward's"
        )


def test_seed_gradient_has_no_part_along_the_decoder_rows():
    sae = build_sae()
    g = seed_gradient(sae, torch.randn(20, 8), torch.arange(20) % 2, 0.5)
    assert (g["W_dec"] * sae.W_dec).sum(1).abs().max() < 1e-5, "training removes this part before each step"


@pytest.fixture(scope="module")
def pool():
    docs = [Document(t, "sport", f"s{i}") for i, t in enumerate(SPORT[1:])]
    return docs + [Document(t, "food", f"f{i}") for i, t in enumerate(FOOD)]


@pytest.fixture(scope="module")
def seeds():
    return [Document(SPORT[0], "sport", "seed")]


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


@pytest.fixture(scope="module")
def gsae(tiny):
    return SAE(SAEConfig(d_in=32, d_sae=64, model_name="tiny-llama", layer=LAYER, hook_name=hook_name(LAYER)))


@pytest.mark.parametrize("base", ["dense", "bm25"])
def test_tracin_selection_fills_the_budget_by_score_and_repeats_by_seed(
    pool, seeds, gsae, tiny, embedder, tmp_path, base
):
    model, tok = tiny
    kw = dict(
        budget_tokens=150,
        tokenizer=tok,
        model=model,
        layer=LAYER,
        gsae=gsae,
        n_checkpoints=2,
        steps_per_checkpoint=3,
        store_dir=tmp_path,
        device="cpu",
        embedder=embedder,
    )
    sel = select_tracin(pool, seeds, base, **kw)
    again = select_tracin(pool, seeds, base, **{**kw, "store_dir": tmp_path / "again"})
    assert sel.strategy == f"{base}_tracin" and sel.budget_tokens == 150
    assert sel.strategy in TRACIN_STRATEGIES and sel.strategy not in STRATEGIES, (
        "notebooks pick it by this name"
    )
    assert (sel.documents, sel.scores) == (again.documents, again.scores), "same seed, same selection"
    candidates = select(pool, seeds, base, 450, tok, embedder=embedder).documents
    assert {d.text for d in sel.documents} <= {d.text for d in candidates}
    length = {d.text: len(tok(d.text, add_special_tokens=False).input_ids) for d in candidates}
    assert sel.tokens_used == sum(length[d.text] for d in sel.documents) <= 150
    left = [d for d in candidates if d not in sel.documents]
    assert all(length[d.text] > 150 - sel.tokens_used for d in left), "a candidate that fits was left out"
    assert sel.scores == sorted(sel.scores, reverse=True)


def test_each_selected_document_carries_its_own_tracin_score(pool, seeds, gsae, tiny, tmp_path):
    model, tok = tiny
    sel = select_tracin(
        pool,
        seeds,
        "bm25",
        150,
        tok,
        model,
        LAYER,
        gsae,
        n_checkpoints=2,
        steps_per_checkpoint=3,
        sparsity_coefficient=0.5,
        store_dir=tmp_path,
        device="cpu",
    )
    candidates = select(pool, seeds, "bm25", 450, tok).documents
    stores = {  # cached afresh, in folders select_tracin never wrote
        what: cache_activations(
            model, tok, docs, LAYER, tmp_path / f"explicit-{what}", ctx_len=128, dtype="float32"
        )
        for docs, what in ((candidates, "candidates"), (seeds, "seeds"))
    }
    checkpoints = build_checkpoints(gsae, stores["seeds"], 2, 3, sparsity_coefficient=0.5, device="cpu")
    grads = [seed_gradient(sae, *read_store(stores["seeds"]), 0.5) for sae, _ in checkpoints]
    explicit = tracin_scores_explicit(
        checkpoints, grads, *read_store(stores["candidates"]), len(candidates), 0.5
    )
    by_text = {d.text: float(s) for d, s in zip(candidates, explicit)}
    torch.testing.assert_close(
        torch.tensor(sel.scores),
        torch.tensor([by_text[d.text] for d in sel.documents]),
        rtol=1e-5,
        atol=0,
        msg="a score belongs to another candidate, or the scores are wrong",
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(rerank_factor=0.5), r"rerank_factor=0.5 must be >= 1"),
        (dict(seeds=[]), r"The seed set is empty"),
        (dict(gsae_layer=2), r"The SAE was trained on layer 2, not 1: pass layer=2"),
        (dict(gsae_model="gpt2"), r"The SAE was trained on model 'gpt2', not 'tiny-llama'"),
        (dict(gsae_d_in=16), r"The SAE reads d_in=16 but these activations have d_model=32"),
        (dict(lr=-1.0), r"lr=-1.0 must be a positive finite number"),
        (dict(sparsity_coefficient=float("nan")), r"sparsity_coefficient=nan must be a finite number"),
        (dict(ctx_len=0), r"ctx_len=0 must be a whole number >= 2"),
    ],
)
def test_bad_inputs_are_refused_before_any_model_pass(pool, seeds, tiny, monkeypatch, change, message):
    def no_work(*args, **kwargs):
        raise AssertionError("select_tracin started work before checking its inputs")

    monkeypatch.setattr(tracin, "select", no_work)
    monkeypatch.setattr(tracin, "cache_activations", no_work)
    layer = change.pop("gsae_layer", LAYER)
    gsae = SAE(
        SAEConfig(
            d_in=change.pop("gsae_d_in", 32),
            d_sae=64,
            model_name=change.pop("gsae_model", "tiny-llama"),
            layer=layer,
            hook_name=hook_name(layer),
        )
    )
    args = dict(
        pool=pool,
        seeds=seeds,
        base="bm25",
        budget_tokens=150,
        tokenizer=tiny[1],
        model=tiny[0],
        layer=LAYER,
        gsae=gsae,
    )
    with pytest.raises(ValueError, match=message):
        select_tracin(**{**args, **change})


def test_select_strategy_dispatches_by_name_and_a_tracin_name_needs_a_reranker(
    pool, seeds, gsae, tiny, embedder, tmp_path, monkeypatch
):
    model, tok = tiny
    dense = select_strategy(pool, seeds, "dense", 150, tok, embedder=embedder)
    assert dense.documents == select(pool, seeds, "dense", 150, tok, embedder=embedder).documents
    with pytest.raises(ValueError, match="reranker=Reranker"):
        select_strategy(pool, seeds, "bm25_tracin", 150, tok, embedder=embedder)
    monkeypatch.setenv("SSAE_KIT_CACHE", str(tmp_path))
    settings = dict(rerank_factor=2.0, n_checkpoints=2, sparsity_coefficient=0.5, device="cpu")
    reranker = Reranker(model, gsae, **settings)
    sel = select_strategy(pool, seeds, "bm25_tracin", 150, tok, embedder=embedder, reranker=reranker)
    direct = select_tracin(pool, seeds, "bm25", 150, tok, model, LAYER, gsae, embedder=embedder, **settings)
    assert sel.strategy == "bm25_tracin" and (sel.documents, sel.scores) == (direct.documents, direct.scores)
