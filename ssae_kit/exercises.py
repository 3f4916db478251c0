"""Workshop checkers: each runs a learner's function beside the kit's own on small inputs.

The cases are chosen so that the usual mistakes show (an overflow at a large tilt, a cosine without
normalising, a forgotten error term), each with the hint that fixes it. A checker prints one line:
a tick when every case matches, else the first failing case and its hint; a stub that still raises
`NotImplementedError` is reported as not written yet, so a student copy runs past unfinished
exercises. The learner's functions take plain tensors, the SAE or a tiny model, never a notebook's
own variables, so an exercise runs wherever it is placed. How a case is run and a mismatch told,
and the hints, are in `exercise_cases`; this module is the learners' one import: the checkers of
notebooks 00-02 in notebook order, those of 03-06 (`later_exercises`), `hint` and `yours`.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable

import numpy as np
import torch

from . import retrieval
from .corpora import Document
from .evals import ce_sums
from .exercise_cases import (
    HINTS,
    Case,
    budget_reference,
    centroid_reference,
    explain_budget,
    explain_mask,
    hint,
    randn,
    run_cases,
    sae_forward_reference,
    small_sae,
)
from .hooks import splice
from .latents import decoder_cosines
from .later_exercises import (
    check_ablate_keeping_error,
    check_best_decoder_cosine,
    check_dark_matter,
    check_shift_attribution,
    check_spearman_rho,
    check_term_weights,
    check_tilted_loss,
    check_tree_distances,
)
from .models import tiny_model
from .sae import SAE, SAEConfig

__all__ = [
    "check_ablate_keeping_error",
    "check_best_decoder_cosine",
    "check_bm25_scores",
    "check_ce_loss_recovered",
    "check_centroid_scores",
    "check_dark_matter",
    "check_explained_variance",
    "check_fill_budget",
    "check_massive_tokens",
    "check_norm_scale",
    "check_sae_forward",
    "check_shift_attribution",
    "check_spearman_rho",
    "check_spliced_ce_delta",
    "check_term_weights",
    "check_tilted_loss",
    "check_tree_distances",
    "hint",
    "yours",
]


# --- 00 quickstart --------------------------------------------------------------------------------


def check_massive_tokens(massive_tokens: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """massive_tokens(norms (N,), multiple) -> (N,) bool: the tokens the kit drops as massive-norm outliers."""
    rule = lambda n, m: n > m * n.median()  # the rule of cache_activations (activations.py)
    cases = [
        (
            "one sink among ordinary tokens",
            [1.0, 1.2, 0.9, 50.0, 1.1],
            10.0,
            "flag the norms far above a typical token's",
        ),
        (
            "two sinks that lift the mean",
            [1.0, 1.1, 0.9, 1.0, 1.2, 30.0, 40.0],
            10.0,
            "compare with the median norm, not the mean: the sinks pull the mean up and hide themselves",
        ),
        (
            "a norm exactly at the threshold",
            [1.0, 1.0, 10.0, 1.0, 1.0],
            10.0,
            "strictly above: a norm equal to multiple x median is kept (>, not >=)",
        ),
    ]
    run_cases(
        "massive_tokens",
        lambda n, m: torch.as_tensor(massive_tokens(n, m)).bool(),
        [
            Case(
                name,
                (torch.tensor(n, dtype=torch.float64), m),
                rule(torch.tensor(n, dtype=torch.float64), m),
                why,
                explain_mask,
            )
            for name, n, m, why in cases
        ],
    )


def check_norm_scale(norm_scale: Callable[[torch.Tensor], float]) -> None:
    """norm_scale(x (N, d_model)) -> the factor that makes the mean squared norm of the scaled tokens d_model."""
    reference = lambda x: float((x.shape[1] / x.pow(2).sum(1).mean()).sqrt())  # the store's norm_scale
    x, wide = randn(50, 8, seed=3) * 7.0, randn(40, 32, seed=4) * 0.05
    run_cases(
        "norm_scale",
        lambda x: float(norm_scale(x)),
        [
            Case(
                "8-dim tokens of norm ~20",
                (x,),
                reference(x),
                "the scaled tokens' mean squared norm must be d_model",
            ),
            Case(
                "32-dim tokens of norm ~0.3",
                (wide,),
                reference(wide),
                "the target is d_model (the width, x.shape[1]), not 1; and the mean is over tokens of the "
                "squared norm summed over dimensions",
            ),
        ],
        rtol=1e-6,
    )


def check_explained_variance(explained_variance: Callable[[torch.Tensor, torch.Tensor], float]) -> None:
    """explained_variance(x, x_hat) (N, d) each -> the share of x's variance around its mean token that x_hat explains."""
    reference = lambda x, x_hat: float(1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    x = randn(60, 6, seed=5) + torch.tensor([4.0, 0, 0, 0, 0, 0], dtype=torch.float64)  # a large mean
    good = x + 0.3 * randn(60, 6, seed=6)
    run_cases(
        "explained_variance",
        lambda x, x_hat: float(explained_variance(x, x_hat)),
        [
            Case(
                "every token reconstructed as the mean token",
                (x, x.mean(0).expand_as(x)),
                0.0,
                "the baseline is the mean token (variance around the mean), not zero: predicting the mean explains nothing",
            ),
            Case(
                "a close reconstruction",
                (x, good),
                reference(x, good),
                "1 minus a ratio of two sums of squared errors",
            ),
            Case(
                "a reconstruction worse than the mean",
                (x, -x),
                reference(x, -x),
                "one ratio of sums over all tokens and dimensions, not a mean of per-token or per-dimension ratios",
            ),
        ],
        rtol=1e-6,
    )


def check_ce_loss_recovered(ce_loss_recovered: Callable[[float, float, float], float]) -> None:
    """ce_loss_recovered(ce_clean, ce_sae, ce_zero) -> 1 when splicing the SAE in costs nothing, 0 when it is as bad as zero-ablation."""
    reference = lambda clean, sae, zero: (zero - sae) / (zero - clean)
    run_cases(
        "ce_loss_recovered",
        lambda *ce: float(ce_loss_recovered(*ce)),
        [
            Case(
                "an SAE as good as the clean model",
                (3.0, 3.0, 9.0),
                1.0,
                "no loss at all recovers 100% of the gap: measure from the zero-ablated end",
            ),
            Case(
                "the shipped GSAE's numbers",
                (3.874, 4.177, 14.963),
                reference(3.874, 4.177, 14.963),
                "a fraction of the gap between zero-ablation and clean",
            ),
            Case(
                "an SAE as bad as zero-ablation",
                (3.0, 9.0, 9.0),
                0.0,
                "CE equal to zero-ablation recovers nothing",
            ),
            Case(
                "an SAE worse than zero-ablation",
                (3.0, 10.5, 9.0),
                -0.25,
                "do not clip: worse than zero-ablation is below 0",
            ),
        ],
        rtol=1e-9,
    )


# --- 01 retrieval ---------------------------------------------------------------------------------


def check_centroid_scores(centroid_scores: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> None:
    """centroid_scores(pool_emb (N, D), seed_emb (S, D)) -> (N,): the mean cosine to the seeds (dense retrieval)."""
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)
    pool, seeds = randn(6, 4, seed=1).numpy(), randn(3, 4, seed=2).numpy()
    scaled_pool = pool * np.array([[0.1], [5.0], [1.0], [20.0], [0.5], [2.0]])
    expected = lambda p, s: decoder_cosines(torch.as_tensor(p), torch.as_tensor(s)).mean(1).numpy()
    run_cases(
        "centroid_scores",
        centroid_scores,
        [
            Case(
                "unit vectors, 3 seeds",
                (unit(pool), unit(seeds)),
                expected(pool, seeds),
                "score each pool row by its dot product with every seed, then average over the seeds "
                "(axis 1): one score per pool document",
            ),
            Case(
                "pool vectors of different lengths",
                (scaled_pool, seeds),
                expected(scaled_pool, seeds),
                "normalise every vector to unit length first: a raw dot product favours long vectors, "
                "not close ones",
            ),
        ],
        rtol=1e-3,
    )


def check_fill_budget(fill_budget: Callable[[np.ndarray, np.ndarray, int], list[int]]) -> None:
    """fill_budget(scores (N,), lengths (N,), budget) -> indices taken, best first, within the budget."""
    cases = [
        ("everything fits", [0.9, 0.1, 0.5], [10, 10, 10], 100, "take documents by descending score"),
        (
            "the second-best is too long, later ones fit",
            [0.9, 0.8, 0.7, 0.6],
            [40, 80, 30, 20],
            100,
            (
                "skip a document that does not fit and keep going: a shorter one further down may still fit "
                "(do not stop at the first that overflows)"
            ),
        ),
        (
            "the budget is filled exactly",
            [0.3, 0.9, 0.6],
            [50, 30, 20],
            100,
            "a document that fills the budget exactly still fits: compare with <=, not <",
        ),
    ]
    run_cases(
        "fill_budget",
        lambda s, n, b: [int(i) for i in fill_budget(s, n, b)],
        [
            Case(name, (np.array(s), np.array(n), b), budget_reference(s, n, b), why, explain_budget)
            for name, s, n, b, why in cases
        ],
    )


_BM25_POOL = [
    "The new broadband network brings faster internet to rural homes.",
    "The striker scored twice as the team won the cup final.",
    "Software makers race to ship mobile apps for the new phones.",
    "It is what it is, and that is all there is to it.",
    "Internet providers cut the price of broadband for mobile phones.",
]
_BM25_SEEDS = ["Mobile broadband and internet software", "The phones that are on the shelves"]


def check_bm25_scores(bm25_scores: Callable[[list[str], list[str]], np.ndarray]) -> None:
    """bm25_scores(pool_texts, seed_texts) -> (N,): BM25 (bm25s, English stop words) averaged over seeds."""
    expected = lambda pool, seeds: retrieval.bm25_scores(
        [Document(t) for t in pool], [Document(t) for t in seeds], "mean"
    )
    run_cases(
        "bm25_scores",
        bm25_scores,
        [
            Case(
                "one seed",
                (_BM25_POOL, _BM25_SEEDS[:1]),
                expected(_BM25_POOL, _BM25_SEEDS[:1]),
                "index the pool with bm25s.BM25() on bm25s.tokenize(..., stopwords='en') and score the seed "
                "with retriever.get_scores(tokens); stop words must go, or 'the' and 'is' count as matches",
            ),
            Case(
                "two seeds",
                (_BM25_POOL, _BM25_SEEDS),
                expected(_BM25_POOL, _BM25_SEEDS),
                "score each seed as its own query and average the scores (not one query of all seed words)",
            ),
        ],
        rtol=1e-3,
    )


# --- 02 train ---------------------------------------------------------------------------------


def check_sae_forward(sae_forward: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> None:
    """sae_forward(x, W_enc, b_enc, W_dec, b_dec) -> (x_hat, f), as `SAE.decode(SAE.encode(x))`."""
    cases = []
    for name, biases, why in (
        (
            "zero biases",
            False,
            "f = ReLU(x @ W_enc + b_enc): the ReLU keeps latents >= 0; x_hat = f @ W_dec + b_dec",
        ),
        (
            "non-zero b_dec and b_enc",
            True,
            "subtract b_dec from x before encoding (the pre-encoder bias) and add it back after decoding",
        ),
    ):
        sae, x = small_sae(biases=biases), 2 * randn(5, 8, seed=7)
        f = sae.encode(x)
        args = tuple(p.detach().clone() for p in (x, sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec))
        cases.append(Case(name, args, (sae.decode(f), f), why))
    run_cases("sae_forward", sae_forward, cases)


def check_spliced_ce_delta(spliced_ce_delta: Callable[..., float]) -> None:
    """spliced_ce_delta(model, sae, input_ids, layer) -> spliced minus clean next-token CE (nats per token)."""
    model, tokenizer = tiny_model(seed=0)
    ids = tokenizer(
        ["the cat sat on the mat", "dark matter of rare words"], return_tensors="pt", padding=True
    )
    ids = ids["input_ids"][:, :20]
    sae = SAE(SAEConfig(d_in=model.config.hidden_size, d_sae=64), seed=3)
    targets = torch.ones(ids.shape[0], ids.shape[1] - 1, dtype=torch.bool)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        clean = ce_sums(model, ids, mask, targets).sum() / targets.sum()
        with splice(model, 1, lambda r: sae.decode(sae.encode(r))):
            spliced = ce_sums(model, ids, mask, targets).sum() / targets.sum()
    run_cases(
        "spliced_ce_delta",
        lambda *a: float(spliced_ce_delta(*a)),
        [
            Case(
                "a random SAE at layer 1 of a tiny model",
                (model, sae, ids, 1),
                float(spliced - clean),
                "run the model once clean and once inside `with splice(model, layer, fn)` where fn returns "
                "sae.decode(sae.encode(resid)); CE compares logits[:, :-1] with input_ids[:, 1:] (mean over "
                "positions), and the answer is spliced minus clean",
            )
        ],
        rtol=1e-3,
        atol=1e-4,
    )


_LATER_USE: dict[str, tuple[Callable[[Callable], None], Callable]] = {
    "1.1": (check_centroid_scores, centroid_reference),
    "1.2": (check_fill_budget, budget_reference),
    "2.1": (check_sae_forward, sae_forward_reference),
}
"""Exercises whose function a later cell runs on real data: (its checker, the kit's function with its signature)."""


def yours(exercise: str, fn: Callable) -> Callable:
    """The learner's function for `exercise` if it passes its checker, else the kit's own with the same
    signature, so a later cell runs on the learner's work when there is some and never stops on a stub.
    Prints one line saying which it is."""
    if exercise not in _LATER_USE:
        raise ValueError(
            f"No later use of exercise {exercise!r}: the exercises used later are {', '.join(_LATER_USE)}."
        )
    checker, reference = _LATER_USE[exercise]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        checker(fn)
    name = HINTS[exercise][0]
    if printed.getvalue().startswith("✓"):
        print(f"Using your {name} ({exercise}).")
        return fn
    print(f"Your {name} ({exercise}) is not written yet or does not pass its check: the kit's own runs here.")
    return reference
