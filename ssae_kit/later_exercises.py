"""Workshop checkers of notebooks 03-06, in notebook order: the tilted loss and its token weights,
a decoder direction's best match, dark-matter latents, ablating latents while keeping the SAE's
error term, SHIFT's attribution, tree distances and Spearman's rho. Learners import them through
`exercises`, with the others; how a case is run is in `exercise_cases`.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
import torch

from .exercise_cases import Case, randn, run_cases, small_sae, term_weights_reference
from .features import Residuals, token_mean
from .latents import match_latents, ssae_only_latents
from .probe import Probe, ablation_edit
from .sae import SAE
from .shift import shift_attribution
from .taxonomy import leaf_paths, taxonomy_matrix
from .train_config import tilted_loss
from .tree_probe import spearman

# --- 03 TERM ----------------------------------------------------------------------------------


def check_tilted_loss(fn: Callable[[torch.Tensor, float], torch.Tensor]) -> None:
    """fn(losses (N,), t > 0) -> (1/t) log mean exp(t l), finite for any t; compared with `train_config.tilted_loss`."""
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
