"""ssae_kit.debias: ablation keeps the error term, the probe, attribution, the spurious rule, the case study."""

from __future__ import annotations

import pytest
import torch

from ssae_kit.debias import (
    Probe,
    ablation_edit,
    group_accuracies,
    shift_attribution,
    spurious_latents,
    train_probe,
)
from ssae_kit.features import mean_pool, residuals
from ssae_kit.sae import SAE, SAEConfig

TEXTS = [
    "she is a nurse at the ward",
    "he teaches physics",
    "her patients like her",
    "his lab is large",
    "she studied medicine",
    "he wrote a book on algebra",
]


def test_ablation_removes_only_the_chosen_latents_and_keeps_the_error_term(identity_sae):
    x = torch.tensor([[[2.0, -3.0]]])
    assert ablation_edit(identity_sae(2), [0])(x).tolist() == [[[0.0, -3.0]]]  # latent 0 is relu(x0)
    assert ablation_edit(identity_sae(2), [3])(x).tolist() == [[[2.0, 0.0]]]  # latent 3 is relu(-x1)
    null = SAE(SAEConfig(d_in=2, d_sae=4))
    with torch.no_grad():
        null.W_dec.zero_()
    assert torch.equal(ablation_edit(null, [0, 1])(x), x)  # all in the error term: nothing changes
    with pytest.raises(ValueError, match="ablation set is empty"):
        ablation_edit(null, [])


def test_probe_learns_a_separable_problem_and_needs_two_classes():
    x = torch.randn(200, 5) * 100 + 300  # raw residual-like scale: standardisation matters
    y = (x[:, 2] > 300).long()
    probe = train_probe(x, y, epochs=30)
    assert probe.accuracy(x, y) > 0.95
    with pytest.raises(ValueError, match="single class"):
        train_probe(x, torch.zeros(200, dtype=torch.long))


def test_group_accuracies_report_each_group_and_the_worst():
    probe = Probe(
        torch.tensor([1.0]), torch.tensor(0.0), torch.zeros(1), torch.ones(1)
    )  # predicts 1 iff x > 0
    x = torch.tensor([[1.0], [1.0], [-1.0], [1.0]])
    y = torch.tensor([1, 1, 0, 0])
    acc = group_accuracies(probe, x, y, ["a", "a", "b", "b"])
    assert acc == {"a": 1.0, "b": 0.5, "overall": 0.75, "worst_group": 0.5}


def test_attribution_predicts_the_effect_of_ablating_a_latent(tiny):
    model, tok = tiny
    sae = SAE(SAEConfig(d_in=32, d_sae=64, layer=1), seed=3)
    with torch.no_grad():
        sae.b_enc.fill_(0.1)
        sae.W_dec.mul_(0.05)  # small latent contributions: ablating one stays in the first-order regime
    labels = torch.tensor([1, 0, 1, 0, 1, 0])
    r = residuals(model, tok, TEXTS, 1, ctx_len=32)
    probe = train_probe(mean_pool(r), labels, epochs=3)
    attr = shift_attribution(sae, probe, r, labels)
    assert attr.shape == (64,)

    def metric(edit=None):
        return torch.nn.functional.binary_cross_entropy_with_logits(
            probe.logits(mean_pool(r, edit)), labels.float()
        ).item()

    j, eps = int(attr.abs().argmax()), 1e-2

    def shrink_latent_j(resid):  # f_j -> (1 - eps) f_j, error term kept
        f = sae.encode(resid)
        return resid - eps * f[..., j : j + 1] * sae.W_dec[j] / sae.cfg.norm_scale

    change = metric(shrink_latent_j) - metric()
    assert change == pytest.approx(-eps * attr[j].item(), rel=0.05)  # attribution is the first-order effect
    assert (metric(ablation_edit(sae, [j])) - metric()) * attr[j].item() < 0  # full ablation: same direction
    with pytest.raises(ValueError, match="trained on layer 2, not 1: pass layer=2"):
        shift_attribution(SAE(SAEConfig(d_in=32, d_sae=8, layer=2)), probe, r, labels)


def test_spurious_rule_picks_latents_that_separate_gender_more_than_profession():
    gender = torch.tensor([0, 0, 1, 1] * 5)
    profession = torch.tensor([0, 1, 0, 1] * 5)
    means = torch.stack([gender * 2.0 + 0.1 * profession, profession * 2.0, torch.ones(20)], dim=1)  # (N, 3)
    assert spurious_latents([0, 1, 2], means, gender, profession) == [0]
    assert spurious_latents([0, 1, 2], means, gender, profession, force_keep=[0]) == []
    assert spurious_latents([0, 1, 2], means, gender, profession, force_spurious=[2]) == [0, 2]


def test_debias_data_splits_the_balanced_set_per_group_and_labels_it(tiny):
    from ssae_kit.bios import make_splits, synthetic_bios
    from ssae_kit.debias import DebiasConfig, build_debias_data, report_row

    model, tok = tiny
    splits = make_splits(synthetic_bios(120, seed=1), n_train_per_group=10, n_test_per_group=6, seed=1)
    data = build_debias_data(model, tok, splits, 1, ctx_len=48)
    assert len(data.train.resid) == 20 and set(data.train_profession.tolist()) == {0, 1}
    assert sorted(data.b_groups) == sorted(
        ["female nurse", "female professor", "male nurse", "male professor"] * 3
    )
    assert data.a_gender.sum() == 6 and data.a_profession.sum() == 6  # 3 per group in each half
    row = report_row(data, DebiasConfig(probe_epochs=2))
    assert set(row) >= {"profession", "gender", "worst_group"} and row["worst_group"] <= row["profession"]


def test_shift_case_study_gives_every_row_and_an_sae_with_nothing_spurious_changes_nothing(
    tiny, identity_sae
):
    from ssae_kit.bios import make_splits, synthetic_bios
    from ssae_kit.debias import DebiasConfig, build_debias_data, report_row, shift_case_study

    model, tok = tiny
    splits = make_splits(synthetic_bios(120, seed=1), n_train_per_group=10, n_test_per_group=6, seed=1)
    saes = {"A": identity_sae(32), "B": SAE(SAEConfig(d_in=32, d_sae=64, layer=1), seed=2)}
    keep_all = DebiasConfig(probe_epochs=2, top_n=4, force_keep=tuple(range(64)))
    study = shift_case_study(model, tok, splits, saes, 1, 48, keep_all, retrain=["A"])
    assert list(study.rows) == [
        "Original",
        "A SHIFT",
        "A SHIFT + retrain",
        "B SHIFT",
        "Token deletion + retrain",
        "Oracle",
    ]
    assert set(study.picks) == {"A", "B"} and all(len(p["candidates"]) == 4 for p in study.picks.values())
    assert all(p["spurious"] == [] for p in study.picks.values()), "force_keep overrides the rule"
    assert study.rows["A SHIFT"] == study.rows["B SHIFT"] == study.rows["Original"], (
        "nothing ablated, yet the rows moved"
    )
    assert study.rows["Oracle"] == report_row(
        build_debias_data(model, tok, splits, 1, 48), keep_all, oracle=True
    )
