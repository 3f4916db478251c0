"""The SHIFT case study on Bias in Bios (PAPER §4): build the three sets (the ambiguous training
set, balanced sets A and B) once, run every row of the table for one seed (`shift_case_study`), and
put intervals on the table over B's bios and seeds at once (`summarize_seeds`, `row_difference`).
The classifier and its edits live in `probe`, the feature pick and one row in `shift`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .bios import Bio, BiosSplits, group_of
from .claims import seed_item_bootstrap
from .features import residuals
from .intervals import Interval
from .io import RunLayout
from .probe import probe_inputs, train_probe
from .sae import SAE
from .shift import DebiasConfig, DebiasData, find_spurious, report_row
from .store import ActivationStore
from .train import fine_tune, train
from .train_config import TrainConfig

__all__ = [
    "build_debias_data",
    "claim_line",
    "fine_tune_each",
    "fit_gsae",
    "row_difference",
    "shift_case_study",
    "summarize_seeds",
]


def fit_gsae(
    store: ActivationStore,
    d_sae: int,
    out_dir: Path,
    *,
    sparsity_coefficient: float,
    epochs: int,
    device: str = "auto",
) -> SAE:
    """A GSAE trained here on general text (`epochs` passes over `store`): the case study's when no
    GSAE is given, and its compressed variant. Resumes a run left in `out_dir`."""
    cfg = TrainConfig(
        d_sae=d_sae,
        sparsity_coefficient=sparsity_coefficient,
        total_tokens=epochs * store.n_tokens,
        lr=1e-3,
        warmup_tokens=5_000,
        batch_size=store.capped_batch(),
        device=device,
    )
    return train(store, cfg, out_dir=out_dir, resume=True).sae


def fine_tune_each(
    gsaes: Mapping[str, SAE],
    store: ActivationStore,
    sparsity_coefficient: float,
    total_tokens: int,
    seed: int,
    layout: RunLayout,
    device: str = "auto",
) -> dict[str, SAE]:
    """The case study's SAEs for one seed: each GSAE ("GSAE", "1/8 GSAE"), and its SSAE fine-tuned
    with this seed on `store` ("SSAE", "1/8 SSAE"). The full GSAE's SSAE is saved at
    `layout.bios_ssae(seed)`, where notebook 06 reads the first seed's."""
    out = dict(gsaes)
    for name, gsae in gsaes.items():
        out_dir = layout.bios_ssae(seed) if name == "GSAE" else layout.sae(f"ssae_compressed_seed{seed}")
        out[name.replace("GSAE", "SSAE")] = fine_tune(
            gsae, store, sparsity_coefficient, total_tokens, out_dir, seed=seed, device=device
        )
    return out


def build_debias_data(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    splits: BiosSplits,
    layer: int,
    ctx_len: int = 128,
    transform: Callable[[Bio], str] | None = None,
    probe_layer: int | None = None,
    n_a_per_group: int | None = None,
) -> DebiasData:
    """Residuals at the SAE `layer` and the probe's clean inputs at `probe_layer` (default `layer`)
    of the three sets. The balanced test set is split per group into A and B: `n_a_per_group` bios
    of each group go to A (default half), the rest to B. `transform` rewrites each bio's text first
    (e.g. the token-deletion baseline)."""
    probe_layer = layer if probe_layer is None else probe_layer
    if probe_layer < layer:
        raise ValueError(
            f"probe_layer={probe_layer} is before the SAE layer {layer}: SHIFT's edit must run before the "
            "probe reads, so pass probe_layer >= layer."
        )
    text = transform or (lambda b: b.text)
    a, b = [], []
    for group in sorted({group_of(x) for x in splits.balanced_test}):
        members = [x for x in splits.balanced_test if group_of(x) == group]
        n_a = len(members) // 2 if n_a_per_group is None else n_a_per_group
        if not 0 < n_a < len(members):
            raise ValueError(
                f"n_a_per_group={n_a_per_group} leaves no bio of {group!r} for A or for B "
                f"(it has {len(members)}): pass 0 < n_a_per_group < {len(members)}."
            )
        a += members[:n_a]
        b += members[n_a:]
    prof = lambda bios: torch.tensor([int(x.profession == "professor") for x in bios])
    gender = lambda bios: torch.tensor([int(x.gender == "female") for x in bios])
    sets = {
        name: residuals(model, tokenizer, [text(x) for x in bios], layer, ctx_len)
        for name, bios in (("train", splits.ambiguous_train), ("a", a), ("b", b))
    }
    clean = {k: probe_inputs(model, r, probe_layer) for k, r in sets.items()}
    return DebiasData(
        sets["train"],
        prof(splits.ambiguous_train),
        sets["a"],
        prof(a),
        gender(a),
        sets["b"],
        prof(b),
        gender(b),
        [group_of(x) for x in b],
        [group_of(x) for x in a],
        probe_layer,
        clean,
    )


@dataclass
class ShiftStudy:
    """One seed of the SHIFT case study (PAPER §4): the table's rows and what SHIFT picked."""

    rows: dict[str, dict]
    """Row name ("Original", "<SAE> SHIFT", ...) -> `report_row` accuracies on balanced set B."""
    picks: dict[str, dict]
    """SAE name -> `find_spurious` output, plus "ablated": the latents SHIFT zeroed."""


def shift_case_study(
    model: PreTrainedModel,
    data: DebiasData,
    saes: dict[str, SAE],
    cfg: DebiasConfig,
    retrain: Sequence[str] = (),
    deleted: DebiasData | None = None,
    max_ablated: Mapping[str, int] | None = None,
) -> ShiftStudy:
    """Every row of the SHIFT table for one seed: the original probe, SHIFT with each SAE (plus
    "+ retrain", a new head on the edited ambiguous set, for the SAEs named in `retrain`), the
    token-deletion baseline (when `deleted`, the same sets with gendered words removed, is given)
    and the oracle. Each SAE ablates its spurious latents, at most `max_ablated[name]` of them
    (chosen on A) in attribution order; an SAE whose rule picks none ablates nothing."""
    original = train_probe(
        data.clean["train"], data.train_profession, lr=cfg.probe_lr, epochs=cfg.probe_epochs, seed=cfg.seed
    )
    rows, picks = {"Original": report_row(data, cfg, original)}, {}
    for name, sae in saes.items():
        picks[name] = find_spurious(sae, original, data, cfg, model)
        ablated = picks[name]["spurious"][: (max_ablated or {}).get(name)]
        picks[name]["ablated"] = ablated
        ablations = {data.train.layer: (sae, ablated)} if ablated else None
        x = data.inputs(model, ablations)
        edited = replace(data, clean=x)  # computed once, read by both rows
        rows[f"{name} SHIFT"] = report_row(edited, cfg, original)
        if name in retrain:
            rows[f"{name} SHIFT + retrain"] = report_row(edited, cfg, None)
    if deleted is not None:
        rows["Token deletion + retrain"] = report_row(deleted, cfg, None)
    rows["Oracle"] = report_row(data, cfg, oracle=True)
    return ShiftStudy(rows, picks)


def worst_group_accuracy(correct: np.ndarray, groups: np.ndarray) -> float:
    """Mean over seeds of the lowest per-group accuracy; correct: (S, N) 0/1, groups: (N,)."""
    per_group = [correct[:, groups == g].mean(1) for g in np.unique(groups)]  # each (S,)
    return float(np.min(per_group, axis=0).mean())


def _accuracy(correct: np.ndarray, groups: np.ndarray) -> float:
    return float(correct.mean())


def summarize_seeds(
    per_seed: Sequence[dict[str, dict]], groups: Sequence[str], n_resamples: int = 2000
) -> dict[str, dict[str, Interval]]:
    """Row -> metric -> (mean over seeds, 95% low, high), the interval bootstrapped over B's bios
    (within group) and seeds at once (`claims.seed_item_bootstrap`)."""
    columns = dict(profession="profession_correct", gender="gender_correct", worst_group="profession_correct")
    out: dict[str, dict[str, Interval]] = {}
    for name in per_seed[0]:
        out[name] = {}
        for metric, key in columns.items():
            values = np.array([r[name][key] for r in per_seed])  # (S, N)
            stat = worst_group_accuracy if metric == "worst_group" else _accuracy
            out[name][metric] = seed_item_bootstrap(values, stat, groups, n_resamples=n_resamples)
    return out


def row_difference(
    per_seed: Sequence[dict[str, dict]],
    a: str,
    b: str,
    groups: Sequence[str],
    metric: str = "worst_group",
    n_resamples: int = 2000,
) -> dict:
    """Row a minus row b in `metric` (paired: the same resampled seeds and bios for both), with its
    95% interval, the number of seeds where it is positive, and whether the claim "a exceeds b" holds
    (the whole interval above 0; `claim_line` prints it)."""
    key = "gender_correct" if metric == "gender" else "profession_correct"
    stat = worst_group_accuracy if metric == "worst_group" else _accuracy
    values = np.stack([np.array([r[n][key] for r in per_seed]) for n in (a, b)], -1)  # (S, N, 2)
    band = seed_item_bootstrap(
        values, lambda v, g: stat(v[..., 0], g) - stat(v[..., 1], g), groups, n_resamples=n_resamples
    )
    per = [r[a][metric] - r[b][metric] for r in per_seed]
    return dict(
        estimate=band.estimate,
        low=band.low,
        high=band.high,
        per_seed=per,
        n_positive=sum(d > 0 for d in per),
        n_seeds=len(per),
        holds=band.side() == "higher",
    )


def claim_line(claim: str, d: dict) -> str:
    """One pre-registered claim read off `row_difference`, in points: "HOLDS: <claim>: +12.5 points
    [+3.1, +20.0], positive on 5 of 5 seeds." or "DOES NOT HOLD: ..." (a NaN interval never holds)."""
    span = f"{100 * d['estimate']:+.1f} points [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"
    verdict = "HOLDS" if d["holds"] else "DOES NOT HOLD"
    return f"{verdict}: {claim}: {span}, positive on {d['n_positive']} of {d['n_seeds']} seeds."
