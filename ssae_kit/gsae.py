"""General SAEs: the kit's GSAE recipe, the quality it aims for, its convergence test, and the
pretrained ones a notebook starts from: those the kit ships in data/saes/ (`load_pretrained("ssae-kit",
id)`, offline, each with its model card), any other release through SAELens' registry, and
`resolve_sae`, which reads a notebook's GSAE parameter (a folder or "release:id").

The paper's claim is about concepts that are *rare* in a GSAE's training data (physics or toxicity
in web text). On BBC news the subdomain (tech) is a fifth of the tokens, so the kit's recipe takes
a subdomain label and a target share of training tokens for it (`corpora.subsample_label`), and
the sweep asks how the SSAE's gain depends on that share. A GSAE counts as converged when more
training on its own mixture no longer helps: the last quarter of training lowers the training MSE
by less than 3%, and fine-tuning it for an SSAE's budget on its own data moves held-out CE on
text outside the subdomain by at most 0.02 nats (paired interval inside +-0.03).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .claims import compare
from .corpora import Document
from .evals import EvalResult, evaluate
from .intervals import Difference
from .sae import SAE, from_sae_lens
from .store import ActivationStore
from .train import fine_tune
from .train_config import TrainConfig

__all__ = [
    "resolve_sae",
]
import torch

from .io import SAE_CFG_FILE

TARGETS = dict(max_l0=64, min_ev=0.90, max_ce_delta=0.35, max_dead=0.03)
"""Quality a shipped GSAE aims for on held-out text (dead: never active on the evaluated tokens)."""


def meets_targets(m: dict[str, float]) -> bool:
    """True when evaluation metrics `m` meet every one of `TARGETS`."""
    return (
        m["l0"] <= TARGETS["max_l0"]
        and m["explained_variance"] >= TARGETS["min_ev"]
        and m["ce_delta"] <= TARGETS["max_ce_delta"]
        and m["dead_fraction"] <= TARGETS["max_dead"]
    )


def gsae_config(
    total_tokens: int,
    sparsity_coefficient: float,
    d_sae: int = 4608,
    lr: float = 1e-3,
    batch_size: int = 2048,
    norm_scale_from: str = "centered",
    seed: int = 0,
) -> TrainConfig:
    """The kit's GSAE recipe: ReLU + L1, b_dec at the data mean, warm-up over 10% of the budget (at
    most 200k tokens), LR decay over the last 20%, checkpoints every 200 steps (resumable), metrics
    every 10 steps (enough points for `mse_drop`'s windows)."""
    return TrainConfig(
        d_sae=d_sae,
        sparsity_coefficient=sparsity_coefficient,
        lr=lr,
        batch_size=batch_size,
        norm_scale_from=norm_scale_from,
        total_tokens=total_tokens,
        warmup_tokens=min(200_000, total_tokens // 10),
        checkpoint_every=200,
        log_every=10,
        device="cpu",
        seed=seed,
    )


def mse_drop(log: Sequence[dict[str, float]], start: float = 0.75, window: float = 0.05) -> float:
    """How much the training MSE fell over the last quarter: 1 - (mean logged MSE in the final
    `window` of the budget) / (mean logged MSE in the `window` ending at `start` of it).

    Means over a window, not single steps, since one batch's MSE is noisy. NaN when a window holds
    no logged step (a run too short, or logged too rarely, to tell)."""
    if not log:
        raise ValueError("mse_drop needs a training log (train()'s result.log); this one is empty.")
    total = max(r["tokens"] for r in log)

    def mean_in(hi: float) -> float:
        rows = [r["mse"] for r in log if (hi - window) * total < r["tokens"] <= hi * total]
        return float(np.mean(rows)) if rows else math.nan

    return 1 - mean_in(1.0) / mean_in(start)


@dataclass
class Convergence:
    """The two convergence tests of a GSAE and whether each passed (module docstring)."""

    mse_drop: float
    """Relative fall of the training MSE over the last quarter (`mse_drop`)."""
    finetune_ce: dict[str, float]
    """Held-out CE of the GSAE fine-tuned on its own data minus the GSAE's: estimate, low, high, n_docs."""
    finetune_tokens: int
    max_mse_drop: float = 0.03
    max_ce_change: float = 0.02
    max_ce_bound: float = 0.03

    @property
    def mse_plateau(self) -> bool:
        return self.mse_drop < self.max_mse_drop

    @property
    def finetune_flat(self) -> bool:
        d = self.finetune_ce
        return (
            abs(d["estimate"]) <= self.max_ce_change
            and -self.max_ce_bound <= d["low"]
            and d["high"] <= self.max_ce_bound
        )

    @property
    def converged(self) -> bool:
        return self.mse_plateau and self.finetune_flat

    def as_dict(self) -> dict[str, Any]:
        return dict(
            asdict(self),
            mse_plateau=self.mse_plateau,
            finetune_flat=self.finetune_flat,
            converged=self.converged,
        )


def interval_dict(d: Difference) -> dict[str, float]:
    """A difference as the convergence test and the sweep keep it: `Difference.record` and its documents."""
    return {**d.record(), "n_docs": d.n_docs}


def check_convergence(
    gsae: SAE,
    log: Sequence[dict[str, float]],
    store: ActivationStore,
    model,
    tokenizer,
    baseline: EvalResult,
    docs: list[Document],
    out_dir: str | Path,
    sparsity_coefficient: float,
    finetune_tokens: int = 100_000,
    lr: float = 5e-4,
    eval_kwargs: dict[str, Any] | None = None,
) -> Convergence:
    """Both convergence tests: `log` is the GSAE's training log; `store` its own training data;
    `baseline` the GSAE's `evaluate` on `docs` (held-out text outside the subdomain), with the same
    `eval_kwargs`. The fine-tune uses the SSAE recipe (`fine_tune`) at the GSAE's coefficient."""
    tuned = fine_tune(gsae, store, sparsity_coefficient, finetune_tokens, out_dir, lr=lr, device="cpu")
    result = evaluate(
        tuned, model, tokenizer, docs, gsae.cfg.layer, baseline=baseline.metrics, **(eval_kwargs or {})
    )
    return Convergence(mse_drop(log), interval_dict(compare(result, baseline, "ce")), finetune_tokens)


def share_name(share: float | None) -> str:
    """A folder and id fragment for a subdomain share: 'natural', or the percent ('1', '0.5')."""
    return "natural" if share is None else f"{100 * share:g}"


SHIPPED_RELEASE = "ssae-kit"


SHIPPED_DIR = Path(__file__).resolve().parents[1] / "data" / "saes"
"""SAEs the kit ships (`load_pretrained("ssae-kit", "<folder name>")`), each with its model card."""


RENAMED_SAES = {"smollm2-135m-l6": "smollm2-135m-l6-tech21"}
"""Ids the kit shipped under another name before: old id -> current id."""


def shipped_saes() -> list[str]:
    """Ids of the SAEs in data/saes/ (folders holding a cfg.json)."""
    return sorted(p.parent.name for p in SHIPPED_DIR.glob(f"*/{SAE_CFG_FILE}"))


def load_pretrained(release: str, sae_id: str, device: str | torch.device = "cpu") -> SAE:
    """A pretrained SAE by (release, id), the call shape of SAELens' registry: release "ssae-kit"
    is one the kit ships in data/saes/ (offline); any other release goes through SAELens' registry
    (e.g. Gemma Scope as the GSAE), which needs `sae-lens` and internet or a cached download."""
    if release == SHIPPED_RELEASE:
        if sae_id in RENAMED_SAES:
            raise ValueError(
                f"The shipped SAE {sae_id!r} was renamed {RENAMED_SAES[sae_id]!r} (its id now says its subdomain "
                f"share): load that id, or the default GSAE; shipped: {shipped_saes()}."
            )
        if sae_id not in shipped_saes():
            raise ValueError(
                f"The kit ships no SAE {sae_id!r}; shipped: {shipped_saes() or 'none found in ' + str(SHIPPED_DIR)}."
            )
        return SAE.load(SHIPPED_DIR / sae_id, device=device)
    try:
        from sae_lens import SAE as LensSAE
    except ImportError as err:
        raise ValueError(
            "load_pretrained needs SAELens: run `pip install sae-lens` (or the kit's dev extra)."
        ) from err
    try:
        lens = LensSAE.from_pretrained(release, sae_id, device="cpu")
    except OSError as err:  # huggingface_hub's LocalEntryNotFoundError when offline and not cached
        raise ValueError(
            f"SAE {release!r} / {sae_id!r} is not in the local Hugging Face cache and could not be downloaded "
            "(HF_HUB_OFFLINE=1 or no internet). Go online once to cache it, or pass a local folder to SAE.load."
        ) from err
    lens = lens[0] if isinstance(lens, tuple) else lens  # SAELens < 6 returned (sae, cfg, sparsity)
    return from_sae_lens(lens).to(device)


def resolve_sae(spec: str, device: str | torch.device = "cpu") -> SAE:
    """An SAE from a notebook parameter: a folder with cfg.json, or "release:sae_id" (the kit's
    shipped release "ssae-kit" or SAELens'); a clear error otherwise, before any work."""
    if Path(spec).expanduser().is_dir():
        return SAE.load(Path(spec).expanduser(), device=device)
    release, sep, sae_id = spec.partition(":")
    if not sep or not sae_id:
        raise ValueError(
            f"SAE {spec!r} is neither a folder nor 'release:sae_id': give a folder with {SAE_CFG_FILE}, "
            f"'{SHIPPED_RELEASE}:<id>' (shipped: {shipped_saes()}), or a SAELens release and id."
        )
    return load_pretrained(release, sae_id, device=device)
