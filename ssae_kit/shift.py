"""SHIFT (Marks et al. 2025, §4; PAPER §4): find the SAE features a classifier uses by attribution,
decide which are spurious (gender), choose how many to ablate on balanced set A, and read one row of
the table (profession, gender and worst-group accuracy on balanced set B).

As in Marks et al., the classifier may read a later layer than the SAE edits: attribution flows back
through the blocks in between, and an ablation runs through them before the probe reads
(`probe.probe_inputs`). Ablations map SAE layer -> (SAE, latents), so several layers can be edited at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from .features import Residuals, latent_means, token_mean
from .probe import Ablations, Probe, group_accuracies, length_batches, probe_inputs, run_to_probe, train_probe
from .sae import SAE

__all__ = [
    "ablation_curve",
    "attribution_check",
    "best_count",
    "find_spurious",
]


def shift_attribution(
    sae: SAE,
    probe: Probe,
    r: Residuals,
    labels: torch.Tensor,
    model: PreTrainedModel | None = None,
    probe_layer: int | None = None,
    method: Literal["atp", "ig"] = "atp",
    ig_steps: int = 8,
    batch_size: int = 16,
) -> torch.Tensor:
    """(d_sae,) attribution of the probe's metric -log p(y|x) to each latent of `sae` at r.layer,
    summed over text positions, mean over examples; its negative predicts the effect of ablating
    the latent. "atp" (attribution patching): gradient x activation at the clean point. "ig"
    (integrated gradients, Marks et al. §4 when the linear approximation is poor): the gradient
    averaged over `ig_steps` points on the path that scales every latent from its value to 0, x
    activation; the attributions then sum to the effect of ablating all latents at once. With
    `probe_layer` after r.layer the gradient flows back through the blocks in between."""
    sae.check_reads(layer=r.layer, d_in=r.resid.shape[-1])
    probe_layer = r.layer if probe_layer is None else probe_layer
    if probe_layer != r.layer and model is None:
        raise ValueError(
            f"The probe reads layer {probe_layer}, after the SAE's layer {r.layer}: pass the model."
        )
    if method not in ("atp", "ig") or ig_steps < 1:
        raise ValueError(f"method={method!r}, ig_steps={ig_steps}: use 'atp' or 'ig' with ig_steps >= 1.")
    alphas = [1.0] if method == "atp" else [(k + 0.5) / ig_steps for k in range(ig_steps)]
    total = torch.zeros(sae.cfg.d_sae)
    for rows, width in length_batches(r, batch_size):
        x = r.resid[rows, :width].to(sae.W_dec.dtype)
        keep = r.keep[rows, :width, None]
        f0 = sae.encode(x).detach()
        error = (x - sae.decode(f0)).detach()  # the error term is kept and carries no gradient
        grad_sum = torch.zeros_like(f0)
        for alpha in alphas:  # only text positions move along the path, as in the ablation
            f = torch.where(keep, alpha * f0, f0).requires_grad_()
            x_hat = sae.decode(f) + error
            if probe_layer != r.layer:
                x_hat = run_to_probe(model, r, rows, width, x_hat, probe_layer).float().cpu()
            metric = F.binary_cross_entropy_with_logits(
                probe.logits(token_mean(x_hat, keep[..., 0]).float()), labels[rows].float(), reduction="sum"
            )
            grad_sum += torch.autograd.grad(metric, f)[0]
        total += (grad_sum / len(alphas) * f0 * keep).sum((0, 1)).float()
    return total / len(r.resid)


def attribution_check(
    model: PreTrainedModel | None,
    sae: SAE,
    probe: Probe,
    r: Residuals,
    labels: torch.Tensor,
    latents: Sequence[int],
    probe_layer: int,
    method: Literal["atp", "ig"] = "atp",
    ig_steps: int = 8,
) -> list[dict[str, float]]:
    """The attribution's prediction (-attribution) against the measured change of the mean metric
    -log p(y|x) when each latent is ablated alone: how good the approximation is on this sample."""
    attribution = shift_attribution(sae, probe, r, labels, model, probe_layer, method, ig_steps)

    def metric(ablations: Ablations | None) -> float:
        x = probe_inputs(model, r, probe_layer, ablations)
        return float(F.binary_cross_entropy_with_logits(probe.logits(x), labels.float()))

    clean = metric(None)
    return [
        dict(latent=int(j), predicted=-float(attribution[j]), measured=metric({r.layer: (sae, [j])}) - clean)
        for j in latents
    ]


def spurious_latents(
    candidates: Sequence[int],
    latent_means: torch.Tensor,
    gender: torch.Tensor,
    profession: torch.Tensor,
    margin: float = 0.1,
    force_spurious: Sequence[int] = (),
    force_keep: Sequence[int] = (),
) -> list[int]:
    """The automatic rule: a candidate latent is spurious when, on a gender- and profession-balanced
    set, its mean activation separates gender better than profession by more than `margin`
    (separation = |AUC - 0.5| x 2). `force_spurious` / `force_keep` override it by hand.

    latent_means: (N, d_sae) per-text mean activation of each latent on that balanced set.
    """
    chosen = []
    for j in candidates:
        if j in force_keep:
            continue
        score = latent_means[:, j]
        if j in force_spurious or _separation(score, gender) > _separation(score, profession) + margin:
            chosen.append(int(j))
    return sorted(set(chosen) | {int(j) for j in force_spurious})


def _separation(score: torch.Tensor, label: torch.Tensor) -> float:
    """2 |AUC - 0.5|: 0 when `score` says nothing about `label`, 1 when it separates it perfectly."""
    pos, neg = score[label == 1], score[label == 0]
    if len(pos) == 0 or len(neg) == 0:
        return 0.0
    greater = (pos[:, None] > neg[None, :]).float().mean() + 0.5 * (
        pos[:, None] == neg[None, :]
    ).float().mean()
    return float(2 * abs(greater - 0.5))


@dataclass
class DebiasConfig:
    """Probe and SHIFT settings (the reference: AdamW lr 0.01, one epoch)."""

    probe_lr: float = 0.01
    """AdamW learning rate of every head (profession, gender, oracle)."""
    probe_epochs: int = 1
    """Epochs of every head; raise it for small data sets."""
    top_n: int = 20
    """Candidate latents: the top_n by |attribution|."""
    margin: float = 0.1
    """Spurious when gender separation exceeds profession separation by this much."""
    force_spurious: tuple[int, ...] = ()
    """Latents ablated whatever the rule says."""
    force_keep: tuple[int, ...] = ()
    """Latents never ablated."""
    attribution_bios: int = 64
    """Ambiguous-set bios the attribution averages over (each costs a forward and backward pass)."""
    attribution: Literal["atp", "ig"] = "atp"
    """Attribution patching, or integrated gradients (ig_steps forward and backward passes a bio)."""
    ig_steps: int = 8
    """Points on the integrated-gradients path."""
    seed: int = 0
    """Seeds the heads' data order."""

    def __post_init__(self) -> None:
        if self.attribution not in ("atp", "ig"):
            raise ValueError(f"attribution={self.attribution!r}: use 'atp' or 'ig'.")
        if self.top_n < 1 or self.attribution_bios < 1 or self.probe_epochs < 1:
            raise ValueError(
                f"top_n={self.top_n}, attribution_bios={self.attribution_bios}, probe_epochs={self.probe_epochs}: "
                "each must be >= 1."
            )


@dataclass
class DebiasData:
    """Residuals (at the SAE layer) and labels of the three sets: the ambiguous training set
    (profession = gender), a balanced set A (trains the gender probe and the oracle, judges features,
    chooses settings) and a balanced set B on which every accuracy is reported. Labels: profession
    1 = professor, gender 1 = female. `clean` caches the probe's inputs without an edit."""

    train: Residuals
    train_profession: torch.Tensor
    balanced_a: Residuals
    a_profession: torch.Tensor
    a_gender: torch.Tensor
    balanced_b: Residuals
    b_profession: torch.Tensor
    b_gender: torch.Tensor
    b_groups: list[str]
    a_groups: list[str]
    probe_layer: int
    clean: dict[str, torch.Tensor]
    """"train", "a", "b" -> (N, d_model) mean-pooled residual after probe_layer, no edit."""

    def inputs(
        self, model: PreTrainedModel | None, ablations: Ablations | None = None
    ) -> dict[str, torch.Tensor]:
        """The probe's inputs of the three sets with `ablations` applied (the cached clean ones without)."""
        if not ablations:
            return self.clean
        sets = {"train": self.train, "a": self.balanced_a, "b": self.balanced_b}
        return {k: probe_inputs(model, r, self.probe_layer, ablations) for k, r in sets.items()}


def report_row(
    data: DebiasData,
    cfg: DebiasConfig,
    probe: Probe | None = None,
    ablations: Ablations | None = None,
    oracle: bool = False,
    model: PreTrainedModel | None = None,
) -> dict:
    """Profession, gender and worst-group accuracy on balanced set B, with `ablations` applied.

    `probe=None` trains a new profession head on the (edited) ambiguous set, i.e. "+ retrain";
    `oracle=True` trains it on balanced set A instead. The gender accuracy is that of a separate
    head trained on (edited) set A to predict gender: 0.5 means gender is no longer readable.
    "profession_correct" / "gender_correct" hold B's per-bio outcomes, for the bootstrap.
    """
    x = data.inputs(model, ablations)
    kw = dict(lr=cfg.probe_lr, epochs=cfg.probe_epochs, seed=cfg.seed)
    if oracle:
        probe = train_probe(x["a"], data.a_profession, **kw)
    elif probe is None:
        probe = train_probe(x["train"], data.train_profession, **kw)
    acc = group_accuracies(probe, x["b"], data.b_profession, data.b_groups)
    gender_probe = train_probe(x["a"], data.a_gender, **kw)
    return dict(
        profession=acc["overall"],
        gender=gender_probe.accuracy(x["b"], data.b_gender),
        worst_group=acc["worst_group"],
        **{f"acc {g}": v for g, v in acc.items() if g not in ("overall", "worst_group")},
        profession_correct=((probe.logits(x["b"]) > 0).long() == data.b_profession).int().tolist(),
        gender_correct=((gender_probe.logits(x["b"]) > 0).long() == data.b_gender).int().tolist(),
    )


def find_spurious(
    sae: SAE, probe: Probe, data: DebiasData, cfg: DebiasConfig, model: PreTrainedModel | None = None
) -> dict:
    """SHIFT's feature pick: attribution through the blocks up to the probe on (the first
    cfg.attribution_bios of) the ambiguous set, the top_n candidates, then the automatic
    gender-vs-profession rule on balanced set A (with the manual overrides). "spurious" is ordered
    by |attribution|, largest first."""
    n = min(cfg.attribution_bios, len(data.train.resid))
    sample = data.train.take(slice(0, n))
    attribution = shift_attribution(
        sae, probe, sample, data.train_profession[:n], model, data.probe_layer, cfg.attribution, cfg.ig_steps
    )
    candidates = attribution.abs().topk(min(cfg.top_n, sae.cfg.d_sae)).indices.tolist()
    means = latent_means(sae, data.balanced_a)
    spurious = spurious_latents(
        candidates, means, data.a_gender, data.a_profession, cfg.margin, cfg.force_spurious, cfg.force_keep
    )
    return dict(
        attribution=attribution,
        candidates=candidates,
        spurious=sorted(spurious, key=lambda j: -abs(float(attribution[j]))),
        gender_separation={j: _separation(means[:, j], data.a_gender) for j in candidates},
        profession_separation={j: _separation(means[:, j], data.a_profession) for j in candidates},
    )


def ablation_curve(
    model: PreTrainedModel | None,
    data: DebiasData,
    probe: Probe,
    sae: SAE,
    ranked: Sequence[int],
    counts: Sequence[int],
    cfg: DebiasConfig,
) -> list[dict[str, float]]:
    """On balanced set A only: ablate the first k of `ranked` for each k in `counts`, and read the
    original probe's profession and worst-group accuracy and the gender readout (a gender head
    trained on one half of A, tested on the other, both ways). B is not touched. A count above
    len(ranked) ablates all of them, once: the curve has one point per distinct number ablated."""
    half = torch.arange(len(data.a_gender)) % 2 == 0
    kw = dict(lr=cfg.probe_lr, epochs=cfg.probe_epochs, seed=cfg.seed)
    out = []
    for k in sorted({min(k, len(ranked)) for k in counts}):
        ablations = {data.train.layer: (sae, list(ranked[:k]))}
        x = probe_inputs(model, data.balanced_a, data.probe_layer, ablations) if k else data.clean["a"]
        acc = group_accuracies(probe, x, data.a_profession, data.a_groups)
        gender = np.mean(
            [
                train_probe(x[fit], data.a_gender[fit], **kw).accuracy(x[~fit], data.a_gender[~fit])
                for fit in (half, ~half)
            ]
        )
        out.append(
            dict(
                n_ablated=k,
                profession=acc["overall"],
                worst_group=acc["worst_group"],
                gender=float(gender),
            )
        )
    return out


def best_count(curve: list[dict[str, float]]) -> int:
    """The number of latents to ablate, read off an `ablation_curve` on A: the highest worst-group
    accuracy; among ties the lowest gender readout (SHIFT's aim is to remove the spurious signal, so a
    flat worst group must not default to ablating nothing), then the fewest latents."""
    return max(curve, key=lambda c: (c["worst_group"], -c["gender"], -c["n_ablated"]))["n_ablated"]
