"""SHIFT-style debiasing (Marks et al. 2025, §4; PAPER §4): find the SAE features a classifier uses,
decide which are spurious (gender), ablate them, and measure profession, gender and worst-group
accuracy, with intervals over bios and seeds.

As in Marks et al., the classifier may read a later layer than the SAE edits: residuals are cached
once at the SAE layer, and an edit runs through the blocks in between (`models.forward_from_layer`)
before the probe reads, so later computation no longer receives the ablated features; attribution
flows back through the same blocks. Ablations map SAE layer -> (SAE, latents), so several layers
can be edited at once. The classifier is a logistic-regression head on the mean-pooled residual
stream (text tokens only), standardised with its training set's mean and s.d. (the raw residual
stream has norms in the hundreds, which a one-epoch AdamW head at lr 0.01 does not survive).
Ablation keeps the SAE's error term (PAPER §3): x' = decode(f with chosen latents zeroed) +
(x - decode(f)), so only the chosen features change, not the reconstruction error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .bios import Bio, BiosSplits, group_of
from .evals import seed_item_bootstrap
from .features import Edit, Residuals, latent_means, mean_pool, residuals, token_mean
from .models import forward_from_layer, splice
from .sae import SAE

__all__ = [
    "DebiasConfig",
    "ablation_curve",
    "attribution_check",
    "best_count",
    "build_debias_data",
    "find_spurious",
    "row_difference",
    "shift_case_study",
    "summarize_seeds",
    "train_probe",
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


Ablations = Mapping[int, tuple[SAE, Sequence[int]]]
"""SAE layer -> (the SAE read there, its latents to zero-ablate): SHIFT's edit, one or several layers."""


def _check_ablations(ablations: Ablations, start: int, probe_layer: int) -> None:
    """Every edit must sit at or after the cached layer and at or before the probe layer."""
    for layer, (sae, _) in ablations.items():
        sae.check_reads(layer=layer)
        if not start <= layer <= probe_layer:
            raise ValueError(
                f"An ablation at layer {layer} cannot act between the cached residuals (layer {start}) and "
                f"the probe (layer {probe_layer}): cache residuals at or before it, and probe at or after it."
            )


def _length_batches(r: Residuals, batch_size: int) -> Iterator[tuple[torch.Tensor, int]]:
    """Row indices of `r` in batches of similar length, shortest first, with each batch's width."""
    full = torch.full((len(r.keep),), r.keep.shape[1])
    lengths = r.attention_mask.sum(1) if r.attention_mask is not None else full
    order = lengths.argsort(stable=True)
    for rows in order.split(batch_size):
        yield rows, int(lengths[rows].max())


def _run_to_probe(
    model: PreTrainedModel, r: Residuals, rows: torch.Tensor, width: int, x: torch.Tensor, probe_layer: int
):
    """Residual after `probe_layer` for rows of `r`, starting from `x` (their edited resid at r.layer)."""
    if r.input_ids is None:
        raise ValueError("These residuals keep no input_ids: build them with features.residuals.")
    device = next(model.parameters()).device
    return forward_from_layer(
        model,
        x.to(device),
        r.layer,
        probe_layer,
        r.input_ids[rows, :width].to(device),
        r.attention_mask[rows, :width].to(device),
    )


def probe_inputs(
    model: PreTrainedModel | None,
    r: Residuals,
    probe_layer: int,
    ablations: Ablations | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """(N, d_model) what the probe reads: the residual after `probe_layer`, mean-pooled over text
    tokens, with `ablations` applied at their layers and propagated through the blocks after them.

    `r` holds the clean residuals at the first SAE layer (or earlier), so nothing before it runs
    again. With the probe at `r.layer` itself no block runs (and `model` may be None)."""
    ablations = dict(ablations or {})
    _check_ablations(ablations, r.layer, probe_layer)
    edits = {layer: ablation_edit(sae, latents) for layer, (sae, latents) in ablations.items()}
    if probe_layer == r.layer:
        return mean_pool(r, edits.get(r.layer))
    if model is None:
        raise ValueError(
            f"The probe reads layer {probe_layer}, after the residuals' layer {r.layer}: pass the model."
        )
    out = torch.zeros(len(r.resid), r.resid.shape[-1])
    with torch.no_grad():
        for rows, width in _length_batches(r, batch_size):
            keep = r.keep[rows, :width]
            on_text = {layer: _on_text(edit, keep) for layer, edit in edits.items()}
            with ExitStack() as stack:
                for layer, edit in on_text.items():
                    if layer != r.layer:
                        stack.enter_context(splice(model, layer, edit))
                x = r.resid[rows, :width]
                x = on_text[r.layer](x) if r.layer in on_text else x
                h = _run_to_probe(model, r, rows, width, x, probe_layer)
            out[rows] = token_mean(h.float().cpu(), keep)
    return out


def _on_text(edit: Edit, keep: torch.Tensor) -> Edit:
    """`edit` on text tokens only: BOS/EOS/PAD keep their clean value (PAPER §3), so an ablation
    never touches the attention sink, and attribution (summed over text tokens) predicts it."""
    return lambda x: torch.where(keep[..., None].to(x.device), edit(x), x)


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
    for rows, width in _length_batches(r, batch_size):
        x = r.resid[rows, :width].to(sae.W_dec.dtype)
        keep = r.keep[rows, :width, None]
        f0 = sae.encode(x).detach()
        error = (x - sae.decode(f0)).detach()  # the error term is kept and carries no gradient
        grad_sum = torch.zeros_like(f0)
        for alpha in alphas:  # only text positions move along the path, as in the ablation
            f = torch.where(keep, alpha * f0, f0).requires_grad_()
            x_hat = sae.decode(f) + error
            if probe_layer != r.layer:
                x_hat = _run_to_probe(model, r, rows, width, x_hat, probe_layer).float().cpu()
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
) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Row -> metric -> (mean over seeds, 95% low, high), the interval bootstrapped over B's bios
    (within group) and seeds at once (`evals.seed_item_bootstrap`)."""
    columns = dict(profession="profession_correct", gender="gender_correct", worst_group="profession_correct")
    out: dict[str, dict[str, tuple[float, float, float]]] = {}
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
    95% interval and the number of seeds where it is positive."""
    key = "gender_correct" if metric == "gender" else "profession_correct"
    stat = worst_group_accuracy if metric == "worst_group" else _accuracy
    values = np.stack([np.array([r[n][key] for r in per_seed]) for n in (a, b)], -1)  # (S, N, 2)
    estimate, low, high = seed_item_bootstrap(
        values, lambda v, g: stat(v[..., 0], g) - stat(v[..., 1], g), groups, n_resamples=n_resamples
    )
    per = [r[a][metric] - r[b][metric] for r in per_seed]
    return dict(
        estimate=estimate,
        low=low,
        high=high,
        per_seed=per,
        n_positive=sum(d > 0 for d in per),
        n_seeds=len(per),
    )
