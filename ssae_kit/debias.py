"""SHIFT-style debiasing (Marks et al. 2025; PAPER §4): find the SAE features a classifier uses,
decide which are spurious (gender), ablate them, and measure profession, gender and worst-group
accuracy.

The classifier is a logistic-regression head on the residual stream of one layer, mean-pooled over
text tokens (`features.mean_pool`). Features are standardised with the training set's mean and s.d. before the head (the
raw residual stream has norms in the hundreds, which a one-epoch AdamW head at lr 0.01 does not
survive). Ablation keeps the SAE's error term (PAPER §3): x' = decode(f with chosen latents zeroed)
+ (x - decode(f)), so only the chosen features change, not the reconstruction error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .bios import Bio, BiosSplits, delete_gender_tokens, group_of
from .features import Edit, Residuals, latent_means, mean_pool, residuals, token_mean
from .sae import SAE

__all__ = [
    "DebiasConfig",
    "shift_case_study",
]


def ablation_edit(sae: SAE, latents: Sequence[int]) -> Edit:
    """Residual-stream edit that zero-ablates `latents` of `sae` and keeps its error term."""
    index = torch.as_tensor(list(latents), dtype=torch.long)
    if len(index) == 0:
        raise ValueError("The ablation set is empty: pick at least one latent (or skip the SHIFT row).")

    def edit(resid: torch.Tensor) -> torch.Tensor:
        x = resid.to(sae.W_dec.dtype)
        f = sae.encode(x)
        error = x - sae.decode(f)
        f = f.clone()
        f[..., index.to(f.device)] = 0.0
        return (sae.decode(f) + error).to(resid.dtype)

    return edit


@dataclass
class Probe:
    """Logistic regression on standardised features: p(y=1|x) = sigmoid(w . (x - mean)/std + b)."""

    weight: torch.Tensor  # (D,)
    bias: torch.Tensor  # ()
    mean: torch.Tensor  # (D,)
    std: torch.Tensor  # (D,)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) / self.std) @ self.weight + self.bias

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return float(((self.logits(x) > 0).long() == y).float().mean())


def train_probe(
    x: torch.Tensor, y: torch.Tensor, lr: float = 0.01, epochs: int = 1, batch_size: int = 16, seed: int = 0
) -> Probe:
    """AdamW logistic regression (the reference: lr 0.01, one epoch) on (N, D) features, labels in {0, 1}."""
    if len(torch.unique(y)) < 2:
        raise ValueError("The probe's training labels have a single class: it needs both classes.")
    gen = torch.Generator().manual_seed(seed)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    weight = torch.zeros(x.shape[1], requires_grad=True)
    bias = torch.zeros((), requires_grad=True)
    opt = torch.optim.AdamW([weight, bias], lr=lr)
    z = (x - mean) / std
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=gen).split(batch_size):
            loss = F.binary_cross_entropy_with_logits(z[batch] @ weight + bias, y[batch].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
    return Probe(weight.detach(), bias.detach(), mean, std)


def group_accuracies(
    probe: Probe, x: torch.Tensor, y: torch.Tensor, groups: Sequence[str]
) -> dict[str, float]:
    """Accuracy per group (e.g. "female professor"), plus "overall" and "worst_group"."""
    groups = np.asarray(groups)
    out = {
        g: probe.accuracy(x[torch.from_numpy(groups == g)], y[torch.from_numpy(groups == g)])
        for g in sorted(set(groups))
    }
    return {**out, "overall": probe.accuracy(x, y), "worst_group": min(out.values())}


def shift_attribution(
    sae: SAE, probe: Probe, r: Residuals, labels: torch.Tensor, batch_size: int = 32
) -> torch.Tensor:
    """(d_sae,) attribution of the probe's metric -log p(y|x) to each latent of `sae` at the probe
    layer (`r` holds that layer): gradient x activation (attribution patching), summed over
    positions, mean over examples. Its negative is the first-order effect of ablating the latent."""
    sae.check_reads(layer=r.layer, d_in=r.resid.shape[-1])
    total = torch.zeros(sae.cfg.d_sae)
    for s in range(0, len(r.resid), batch_size):
        x = r.resid[s : s + batch_size].to(sae.W_dec.dtype)
        keep = r.keep[s : s + batch_size]
        f = sae.encode(x).detach().requires_grad_()
        x_hat = sae.decode(f) + (x - sae.decode(f)).detach()  # the error term carries no gradient
        metric = F.binary_cross_entropy_with_logits(
            probe.logits(token_mean(x_hat, keep).float()), labels[s : s + batch_size].float(), reduction="sum"
        )
        (grad,) = torch.autograd.grad(metric, f)
        total += (grad * f.detach() * keep[..., None]).sum((0, 1)).float()
    return total / len(r.resid)


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
    seed: int = 0
    """Seeds the heads' data order."""


@dataclass
class DebiasData:
    """Residuals and labels of the three sets: the ambiguous training set (profession = gender),
    a balanced set A (trains the gender probe and the oracle, judges features) and a balanced set
    B on which every accuracy is reported. Labels: profession 1 = professor, gender 1 = female."""

    train: Residuals
    train_profession: torch.Tensor
    balanced_a: Residuals
    a_profession: torch.Tensor
    a_gender: torch.Tensor
    balanced_b: Residuals
    b_profession: torch.Tensor
    b_gender: torch.Tensor
    b_groups: list[str]


def report_row(
    data: DebiasData,
    cfg: DebiasConfig,
    probe: Probe | None = None,
    edit: Edit | None = None,
    oracle: bool = False,
) -> dict[str, float]:
    """Profession, gender and worst-group accuracy on balanced set B, with `edit` applied.

    `probe=None` trains a new profession head on the (edited) ambiguous set, i.e. "+ retrain";
    `oracle=True` trains it on balanced set A instead. The gender accuracy is that of a separate
    head trained on (edited) set A to predict gender: 0.5 means gender is no longer readable.
    """
    x_train, x_a, x_b = (
        mean_pool(data.train, edit),
        mean_pool(data.balanced_a, edit),
        mean_pool(data.balanced_b, edit),
    )
    kw = dict(lr=cfg.probe_lr, epochs=cfg.probe_epochs, seed=cfg.seed)
    if oracle:
        probe = train_probe(x_a, data.a_profession, **kw)
    elif probe is None:
        probe = train_probe(x_train, data.train_profession, **kw)
    acc = group_accuracies(probe, x_b, data.b_profession, data.b_groups)
    gender = train_probe(x_a, data.a_gender, **kw).accuracy(x_b, data.b_gender)
    return dict(
        profession=acc["overall"],
        gender=gender,
        worst_group=acc["worst_group"],
        **{f"acc {g}": v for g, v in acc.items() if g not in ("overall", "worst_group")},
    )


def find_spurious(sae: SAE, probe: Probe, data: DebiasData, cfg: DebiasConfig) -> dict:
    """SHIFT's feature pick: attribution on the ambiguous set, the top_n candidates, then the
    automatic gender-vs-profession rule on balanced set A (with the manual overrides)."""
    attribution = shift_attribution(sae, probe, data.train, data.train_profession)
    candidates = attribution.abs().topk(min(cfg.top_n, sae.cfg.d_sae)).indices.tolist()
    means = latent_means(sae, data.balanced_a)
    spurious = spurious_latents(
        candidates, means, data.a_gender, data.a_profession, cfg.margin, cfg.force_spurious, cfg.force_keep
    )
    return dict(
        attribution=attribution,
        candidates=candidates,
        spurious=spurious,
        gender_separation={j: _separation(means[:, j], data.a_gender) for j in candidates},
        profession_separation={j: _separation(means[:, j], data.a_profession) for j in candidates},
    )


def build_debias_data(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    splits: BiosSplits,
    layer: int,
    ctx_len: int = 128,
    transform: Callable[[Bio], str] | None = None,
) -> DebiasData:
    """Residuals and labels of the three sets; the balanced test set is split per group into halves
    A and B. `transform` rewrites each bio's text first (e.g. the token-deletion baseline)."""
    text = transform or (lambda b: b.text)
    a, b = [], []
    for group in sorted({group_of(x) for x in splits.balanced_test}):
        members = [x for x in splits.balanced_test if group_of(x) == group]
        a += members[0::2]
        b += members[1::2]
    prof = lambda bios: torch.tensor([int(x.profession == "professor") for x in bios])
    gender = lambda bios: torch.tensor([int(x.gender == "female") for x in bios])
    res = lambda bios: residuals(model, tokenizer, [text(x) for x in bios], layer, ctx_len)
    return DebiasData(
        res(splits.ambiguous_train),
        prof(splits.ambiguous_train),
        res(a),
        prof(a),
        gender(a),
        res(b),
        prof(b),
        gender(b),
        [group_of(x) for x in b],
    )


@dataclass
class ShiftStudy:
    """One seed of the SHIFT case study (PAPER §4): the table's rows and what SHIFT picked."""

    rows: dict[str, dict[str, float]]
    """Row name ("Original", "<SAE> SHIFT", ...) -> `report_row` accuracies on balanced set B."""
    picks: dict[str, dict]
    """SAE name -> `find_spurious` output: attribution, candidates, spurious latents, separations."""


def shift_case_study(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    splits: BiosSplits,
    saes: dict[str, SAE],
    layer: int,
    ctx_len: int,
    cfg: DebiasConfig,
    retrain: Sequence[str] = (),
) -> ShiftStudy:
    """Every row of the SHIFT table for one seed: the original probe, SHIFT with each SAE (plus
    "+ retrain", a new head on the edited ambiguous set, for the SAEs named in `retrain`), the
    token-deletion baseline and the oracle. An SAE whose rule picks no latent ablates nothing."""
    data = build_debias_data(model, tokenizer, splits, layer, ctx_len)
    original = train_probe(
        mean_pool(data.train), data.train_profession, lr=cfg.probe_lr, epochs=cfg.probe_epochs, seed=cfg.seed
    )
    rows, picks = {"Original": report_row(data, cfg, original)}, {}
    for name, sae in saes.items():
        picks[name] = find_spurious(sae, original, data, cfg)
        spurious = picks[name]["spurious"]
        edit = ablation_edit(sae, spurious) if spurious else None
        rows[f"{name} SHIFT"] = report_row(data, cfg, original, edit)
        if name in retrain:
            rows[f"{name} SHIFT + retrain"] = report_row(data, cfg, None, edit)
    deleted = build_debias_data(
        model, tokenizer, splits, layer, ctx_len, transform=lambda b: delete_gender_tokens(b.text, b.name)
    )
    rows["Token deletion + retrain"] = report_row(deleted, cfg, None)
    rows["Oracle"] = report_row(data, cfg, oracle=True)
    return ShiftStudy(rows, picks)
