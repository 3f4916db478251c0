"""Workshop checkers: each runs a learner's function beside the kit's own on small inputs.

The cases are chosen so that the usual mistakes show (an overflow at a large tilt, a cosine without
normalising, a forgotten error term), each with the hint that fixes it. A checker prints one line:
a tick when every case matches, else the first failing case and its hint; a stub that still raises
`NotImplementedError` is reported as not written yet, so a student copy runs past unfinished
exercises. The learner's functions take plain tensors, the SAE or a tiny model, never a notebook's
own variables, so an exercise runs wherever it is placed. How a case is run and a mismatch told is
in `exercise_cases`; this module is the catalogue, one checker per exercise, in notebook order.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import yaml

from . import retrieval
from .corpora import Document
from .evals import ce_sums
from .exercise_cases import (
    Case,
    budget_reference,
    centroid_reference,
    explain_budget,
    explain_mask,
    randn,
    run_cases,
    sae_forward_reference,
    small_sae,
    term_weights_reference,
)
from .features import Residuals, token_mean
from .hooks import splice
from .latents import decoder_cosines, match_latents, ssae_only_latents
from .models import tiny_model
from .probe import Probe, ablation_edit
from .sae import SAE, SAEConfig
from .shift import shift_attribution
from .taxonomy import leaf_paths, taxonomy_matrix
from .term import tilted_loss
from .tree_probe import spearman

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


HINTS: dict[str, tuple[str, list[str]]] = {
    number: (entry["function"], entry["hints"])
    for number, entry in yaml.safe_load((Path(__file__).with_name("hints.yaml")).read_text()).items()
}
"""Progressive hints per exercise id: (the function to write, hints from a nudge to the formula), read
from hints.yaml next to this module, where a teacher edits their wording."""

_hints_given: dict[str, int] = {}


def hint(exercise: str, from_start: bool = False) -> None:
    """Print the next hint for an exercise ("2.1"): the first call a nudge, later calls more, the
    last the formula (never the code). `from_start=True` shows the first hint again."""
    if exercise not in HINTS:
        raise ValueError(f"No exercise {exercise!r}: the exercises are {', '.join(HINTS)}.")
    name, hints = HINTS[exercise]
    i = 0 if from_start else min(_hints_given.get(exercise, 0), len(hints) - 1)
    _hints_given[exercise] = i + 1
    more = "call hint again for the next" if i + 1 < len(hints) else "that was the last hint"
    print(f"Hint {i + 1}/{len(hints)} for {exercise} ({name}): {hints[i]} ({more})")


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
    for name, biases, hint in (
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
        cases.append(Case(name, args, (sae.decode(f), f), hint))
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


# --- 03 TERM ----------------------------------------------------------------------------------


def check_tilted_loss(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """fn(losses (N,), t > 0) -> (1/t) log mean exp(t l), finite for any t; compared with `term.tilted_loss`."""
    losses = randn(32, seed=3).abs()
    cases = [
        ("t = 1 on small losses", losses, 1.0, "(1/t) * log(mean(exp(t * losses)))"),
        (
            "t = 1e-6 (close to ERM)",
            losses,
            1e-6,
            "at a tiny tilt the value is the mean: divide by t after the log, not before",
        ),
        (
            "t = 50 on losses up to 30 (exp(1500) overflows)",
            losses * 10,
            50.0,
            "exp(t * l) overflows: subtract max(l) first, max + (logsumexp(t*(l - max)) - log N) / t",
        ),
        (
            "t = 1e9 on losses near 1000",
            torch.tensor([1000.0, 999.0, 10.0], dtype=torch.float64),
            1e9,
            "at a huge tilt the value is the max loss; compute it through logsumexp, shifted by the max",
        ),
    ]
    run_cases(
        "tilted_loss",
        fn,
        [Case(name, (l.clone(), t), tilted_loss(l, t), hint) for name, l, t, hint in cases],
        rtol=1e-6,
    )


def check_term_weights(term_weights: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """term_weights(losses (N,), t) -> (N,) the weight TERM's gradient gives each token, softmax(t l)."""
    losses = randn(16, seed=4).abs()
    cases = [
        ("t = 2", losses, 2.0, "the weights are softmax(t * losses); they sum to 1"),
        ("t = 1e-6 (close to ERM)", losses, 1e-6, "at a tiny tilt every token weighs 1/N, as in ERM"),
        (
            "t = 1e9",
            torch.tensor([3.0, 7.0, 5.0], dtype=torch.float64),
            1e9,
            (
                "exp(t * l) overflows at a huge tilt: use torch.softmax (it subtracts the max) rather than "
                "exp(...) / sum(exp(...)); the worst token gets all the weight"
            ),
        ),
    ]
    run_cases(
        "term_weights",
        term_weights,
        [Case(name, (l.clone(), t), term_weights_reference(l, t), hint) for name, l, t, hint in cases],
        rtol=1e-5,
    )


# --- 04 visualise -----------------------------------------------------------------------------


def check_best_decoder_cosine(
    best_decoder_cosine: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> None:
    """best_decoder_cosine(W_dec_ssae (n, D), W_dec_gsae (m, D)) -> (n,) each SSAE row's best cosine to the GSAE's."""
    unit = lambda w: w / w.norm(dim=1, keepdim=True)
    ssae, gsae = unit(randn(5, 6, seed=5)), unit(randn(7, 6, seed=6))
    flipped = torch.cat([-ssae[:2], unit(randn(5, 6, seed=8))])  # two GSAE rows point opposite to SSAE rows
    scaled = ssae * torch.tensor([[0.2], [3.0], [1.0], [10.0], [0.5]], dtype=torch.float64)
    expected = lambda a, b: match_latents(SimpleNamespace(W_dec=a), SimpleNamespace(W_dec=b))
    run_cases(
        "best_decoder_cosine",
        best_decoder_cosine,
        [
            Case(
                "unit rows, 5 SSAE vs 7 GSAE latents",
                (ssae, gsae),
                expected(ssae, gsae),
                "cosines between every SSAE row and every GSAE row, then the max over the GSAE's rows "
                "(dim 1), signed (no abs): one value per SSAE latent",
            ),
            Case(
                "GSAE rows pointing the opposite way",
                (ssae, flipped),
                expected(ssae, flipped),
                "keep the sign: a direction opposite to a GSAE direction adds the opposite vector, so it "
                "is not a match (no abs)",
            ),
            Case(
                "SSAE rows of different lengths",
                (scaled, gsae),
                expected(scaled, gsae),
                "normalise each row to unit length first: a dot product is a cosine only between unit vectors",
            ),
        ],
        rtol=1e-4,
    )


def check_dark_matter(dark_matter: Callable[[np.ndarray, np.ndarray, float], np.ndarray]) -> None:
    """dark_matter(best_cosine (n,), peak_activation (n,), threshold) -> SSAE-only latents, strongest first."""
    best = np.array([0.95, 0.2, 0.5, 0.1, 0.99, 0.3])
    peak = np.array([1.0, 0.5, 2.0, 0.0, 3.0, 4.0])
    run_cases(
        "dark_matter",
        lambda *a: [int(i) for i in dark_matter(*a)],
        [
            Case(
                "threshold 0.7",
                (best, peak, 0.7),
                ssae_only_latents(best, peak, 0.7).tolist(),
                "keep latents whose best cosine is below the threshold and that fire on the sample "
                "(peak > 0), ordered by peak activation, largest first",
            ),
            Case(
                "threshold 0.25",
                (best, peak, 0.25),
                ssae_only_latents(best, peak, 0.25).tolist(),
                "a latent that never fires (peak 0) is dead, not dark matter: drop it",
            ),
        ],
    )


# --- 05 debias --------------------------------------------------------------------------------


def check_ablate_keeping_error(ablate: Callable[[SAE, torch.Tensor, list[int]], torch.Tensor]) -> None:
    """ablate(sae, resid (..., D), latents) -> resid with `latents` zeroed in the SAE, its error term kept."""
    sae, x = small_sae(), 2 * randn(3, 4, 8, seed=9)
    f = sae.encode(x)
    silent = [int(j) for j in torch.nonzero(f.amax((0, 1)) == 0).flatten()][:2]
    active = f.amax((0, 1)).topk(3).indices.tolist()
    cases = [
        (
            "ablating latents that never fire changes nothing",
            silent or [0],
            (
                "keep the SAE's error term: return decode(f with the latents zeroed) + (x - decode(f)); "
                "without it the output is the reconstruction, not x"
            ),
        ),
        (
            "ablating the 3 most active latents",
            active,
            "zero the chosen latents in a copy of f (all positions), decode, and add the error term x - decode(f)",
        ),
    ]
    run_cases(
        "ablate_keeping_error",
        ablate,
        [Case(name, (sae, x.clone(), j), ablation_edit(sae, j)(x), hint) for name, j, hint in cases],
    )


def check_shift_attribution(attribution: Callable[..., torch.Tensor]) -> None:
    """attribution(sae, resid (N, T, D), keep (N, T), metric) -> (d_sae,) gradient x activation, as `shift_attribution`.

    `metric(x_hat)` maps a (N, T, D) residual to the summed probe loss -log p(y|x) of the N texts.
    """
    sae = small_sae().float()
    resid = randn(4, 5, 8, seed=10).float()
    keep = torch.ones(4, 5, dtype=torch.bool)
    keep[:, 3:] = False  # padding
    probe = Probe(randn(8, seed=11).float(), torch.tensor(0.1), torch.zeros(8), torch.ones(8))
    labels = torch.tensor([0, 1, 1, 0])

    def metric(x_hat: torch.Tensor) -> torch.Tensor:
        logits = probe.logits(token_mean(x_hat, keep))
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float(), reduction="sum")

    expected = shift_attribution(sae, probe, Residuals(resid, keep, layer=0), labels)
    hint = (
        "the metric must see the true residual: x_hat = sae.decode(f) + (x - sae.decode(f)).detach() "
        "(the error term, without gradient), with f = sae.encode(x) a leaf that requires grad; "
        "attribution = grad of metric(x_hat) w.r.t. f, times f, summed over kept positions, averaged over texts"
    )
    cases = [Case("4 texts with padding, a random SAE", (sae, resid.clone(), keep, metric), expected, hint)]
    run_cases("shift_attribution", attribution, cases, rtol=1e-3, atol=1e-5)


# --- 06 taxonomy -----------------------------------------------------------------------------------


def check_tree_distances(tree_distances: Callable[[list[list[str]]], np.ndarray]) -> None:
    """tree_distances(paths) -> (L, L): edges between leaves, given each leaf's root path, divided by the largest."""
    trees = [
        ("a balanced tree", {"root": [{"a": ["a1", "a2"]}, {"b": ["b1", "b2"]}]}),
        ("leaves at different depths", {"root": ["x", {"y": ["y1", {"z": ["z1", "z2"]}]}]}),
        ("one leaf", {"root": ["only"]}),
    ]
    cases = []
    for name, tree in trees:
        leaves, A = taxonomy_matrix(tree)
        paths = [leaf_paths(tree)[leaf] for leaf in leaves]
        why = {
            "a balanced tree": "count the edges up from each leaf to their lowest common ancestor, then divide by the largest",
            "leaves at different depths": "count the steps up from BOTH leaves: a shallow and a deep leaf are "
            "(len(a) - shared) + (len(b) - shared) edges apart",
            "one leaf": "a single leaf is at distance 0 from itself: do not divide by a largest entry of 0",
        }[name]
        cases.append(Case(name, (paths,), A, why))
    run_cases("tree_distances", lambda p: np.asarray(tree_distances(p), dtype=float), cases)


def check_spearman_rho(spearman_rho: Callable[[np.ndarray, np.ndarray], float]) -> None:
    """spearman_rho(a (n,), b (n,)) -> Spearman's rank correlation, ties sharing their mean rank."""
    a = np.array([0.1, 0.5, 0.3, 0.9, 0.7])
    cases = [
        (
            "no ties",
            (a, np.array([1.0, 4.0, 2.0, 3.0, 5.0])),
            "correlate the ranks of a and b, not their values",
        ),
        (
            "a monotone but curved relation",
            (a, a**3),
            "rho is 1 for any increasing relation: rank before correlating",
        ),
        (
            "tied distances",
            (np.array([1.0, 1.0, 2.0, 2.0, 3.0, 0.5]), np.array([0.2, 0.1, 0.4, 0.3, 0.6, 0.0])),
            (
                "tied values share the mean of the ranks they span (scipy.stats.rankdata or pandas' rank), "
                "not the order argsort happens to give them"
            ),
        ),
    ]
    run_cases(
        "spearman_rho",
        lambda x, y: float(spearman_rho(x, y)),
        [Case(name, args, spearman(*args), why) for name, args, why in cases],
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
