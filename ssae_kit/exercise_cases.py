"""How a workshop exercise is checked: a `Case` (the input, the kit's answer on it, the hint for a
mismatch), `run_cases` (one printed line: a tick, not written yet, or the first failing case), the
comparison that says where numbers differ, and the kit's reference functions the checkers compare
a learner's work with."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import yaml

from . import retrieval
from .corpora import Document
from .latents import decoder_cosines
from .models import byte_tokenizer
from .sae import SAE, SAEConfig
from .train_config import tilted_loss


class Case(NamedTuple):
    """One input for the learner's function, the kit's answer on it, and the hint for a mismatch."""

    name: str
    """What the case tests, as the failure line names it."""
    args: tuple
    """Positional arguments for the learner's function."""
    expected: Any
    """The kit's output on `args`."""
    hint: str
    """The likely mistake when this case fails, and its fix."""
    explain: Callable[[Any, Any], str] | None = None
    """(got, expected) -> what went wrong in the learner's terms; default: where the numbers differ."""


def _float64(value: Any) -> torch.Tensor:
    """A tensor, array, number or list as a float64 tensor without autograd history."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double()
    return torch.as_tensor(np.asarray(value, dtype=np.float64))


def _mismatch(got: Any, expected: Any, rtol: float, atol: float) -> str | None:
    """None when `got` matches `expected` (arrays, tensors, numbers, lists or tuples of them), else why not."""
    if isinstance(expected, tuple):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"expected a tuple of {len(expected)} values, got {type(got).__name__}"
        for i, (g, e) in enumerate(zip(got, expected)):
            if problem := _mismatch(g, e, rtol, atol):
                return f"output {i}: {problem}"
        return None
    try:
        g = _float64(got)
    except (TypeError, ValueError, RuntimeError):
        return f"expected numbers, got {type(got).__name__}"
    e = _float64(expected)
    if g.shape != e.shape:
        return f"shape {tuple(g.shape)}, expected {tuple(e.shape)}"
    if not torch.isfinite(g).all():
        return f"got non-finite values ({g.flatten()[~torch.isfinite(g.flatten())][0].item()})"
    if torch.allclose(g, e, rtol=rtol, atol=atol):
        return None
    if g.numel() == 1:
        return f"got {g.item():.6g}, expected {e.item():.6g}"
    i = int((g - e).abs().flatten().argmax())
    return f"at flat index {i} got {g.flatten()[i].item():.6g}, expected {e.flatten()[i].item():.6g}"


def run_cases(
    exercise: str, fn: Callable, cases: Sequence[Case], rtol: float = 1e-4, atol: float = 1e-6
) -> None:
    """Run `fn` on every case and print one line: a pass, not written yet, or the failing case and its hint.

    Nothing is returned, so a check cell shows that line alone."""
    for case in cases:
        try:
            got = fn(*case.args)
        except NotImplementedError:
            print(f"… {exercise}: not written yet. Fill in the stub above, run it, then run this cell again.")
            return
        except Exception as err:  # noqa: BLE001 (the learner's bug, reported as one line, not a traceback)
            print(f"✗ {exercise}, case '{case.name}': raised {type(err).__name__}: {err}. Hint: {case.hint}")
            return
        if problem := _mismatch(got, case.expected, rtol, atol):
            if case.explain is not None:
                problem = case.explain(got, case.expected)
            print(f"✗ {exercise}, case '{case.name}': {problem}. Hint: {case.hint}")
            return
    print(f"✓ {exercise}: all {len(cases)} cases match the kit's own.")


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def explain_mask(got: Any, expected: Any) -> str:
    """A boolean-mask mismatch in the learner's terms: which tokens were flagged."""
    flagged = lambda m: np.flatnonzero(np.asarray(m, dtype=bool)).tolist()
    return f"you flagged tokens {flagged(got)}; the rule flags {flagged(expected)}"


def budget_reference(scores: list[float], lengths: list[int], budget: int) -> list[int]:
    """The kit's greedy fill (retrieval.fill_budget) on documents of the given token lengths."""
    docs = [Document("a" * n, doc_id=str(i)) for i, n in enumerate(lengths)]
    sel = retrieval.fill_budget(docs, np.array(scores), budget, byte_tokenizer(), "dense")
    return [int(d.doc_id) for d in sel.documents]


def explain_budget(got: list[int], expected: list[int]) -> str:
    """A fill_budget mismatch in the learner's terms: how many documents, which ones, in what order."""
    docs = lambda n: f"{n} document{'s' * (n != 1)}"
    if len(got) != len(expected):
        return f"you took {docs(len(got))} {got} where {docs(len(expected))} {expected} fit"
    if sorted(got) == sorted(expected):
        return f"you took the right documents in the order {got}; best score first is {expected}"
    return f"you took documents {got}; the greedy fill takes {expected}"


def small_sae(d_in: int = 8, d_sae: int = 16, seed: int = 0, biases: bool = True) -> SAE:
    """A random ReLU SAE in float64 (norm scale 1), with non-zero biases unless `biases` is False."""
    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae), seed=seed).double()
    if biases:
        with torch.no_grad():
            sae.b_enc.copy_(0.3 * randn(d_sae, seed=seed + 1))
            sae.b_dec.copy_(randn(d_in, seed=seed + 2))
    return sae


def term_weights_reference(losses: torch.Tensor, t: float) -> torch.Tensor:
    """The TERM weights as the gradient of the kit's tilted loss with respect to each token's loss."""
    with torch.enable_grad():
        l = losses.clone().requires_grad_()
        (grad,) = torch.autograd.grad(tilted_loss(l, t), l)
    return grad


def centroid_reference(pool_emb: np.ndarray, seed_emb: np.ndarray) -> np.ndarray:
    return decoder_cosines(torch.as_tensor(pool_emb), torch.as_tensor(seed_emb)).mean(1).numpy()


def sae_forward_reference(x, W_enc, b_enc, W_dec, b_dec) -> tuple[torch.Tensor, torch.Tensor]:
    sae = SAE(SAEConfig(d_in=W_enc.shape[0], d_sae=W_enc.shape[1]), seed=None)
    with torch.no_grad():
        for name, value in dict(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec).items():
            getattr(sae, name).copy_(value)
        f = sae.encode_normalized(x)
        return sae.decode_normalized(f), f


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
