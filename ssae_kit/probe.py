"""The classifier SHIFT debiases, and the edits it reads through: a logistic-regression head on the
mean-pooled residual stream (text tokens only), standardised with its training set's mean and s.d.
(the raw residual stream has norms in the hundreds, which a one-epoch AdamW head at lr 0.01 does not
survive), and `probe_inputs`, which applies SAE ablations at their layers and runs the blocks up to
the probe's layer (`hooks.forward_from_layer`), so later computation no longer receives the ablated
features. Ablation keeps the SAE's error term (PAPER §3): x' = decode(f with chosen latents zeroed) +
(x - decode(f)), so only the chosen features change, not the reconstruction error.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from .features import Edit, Residuals, mean_pool, token_mean
from .hooks import forward_from_layer, splice
from .sae import SAE

__all__ = [
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


def length_batches(r: Residuals, batch_size: int) -> Iterator[tuple[torch.Tensor, int]]:
    """Row indices of `r` in batches of similar length, shortest first, with each batch's width."""
    full = torch.full((len(r.keep),), r.keep.shape[1])
    lengths = r.attention_mask.sum(1) if r.attention_mask is not None else full
    order = lengths.argsort(stable=True)
    for rows in order.split(batch_size):
        yield rows, int(lengths[rows].max())


def run_to_probe(
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
        for rows, width in length_batches(r, batch_size):
            keep = r.keep[rows, :width]
            on_text = {layer: _on_text(edit, keep) for layer, edit in edits.items()}
            with ExitStack() as stack:
                for layer, edit in on_text.items():
                    if layer != r.layer:
                        stack.enter_context(splice(model, layer, edit))
                x = r.resid[rows, :width]
                x = on_text[r.layer](x) if r.layer in on_text else x
                h = run_to_probe(model, r, rows, width, x, probe_layer)
            out[rows] = token_mean(h.float().cpu(), keep)
    return out


def _on_text(edit: Edit, keep: torch.Tensor) -> Edit:
    """`edit` on text tokens only: BOS/EOS/PAD keep their clean value (PAPER §3), so an ablation
    never touches the attention sink, and attribution (summed over text tokens) predicts it."""
    return lambda x: torch.where(keep[..., None].to(x.device), edit(x), x)
