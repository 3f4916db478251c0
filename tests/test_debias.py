"""ssae_kit.probe, shift and debias: ablation keeps the error term, the probe, attribution, the spurious rule, the case study."""

from __future__ import annotations

from contextlib import ExitStack

import pytest
import torch

from ssae_kit import cache_activations, train
from ssae_kit.debias import fine_tune_each, fit_gsae
from ssae_kit.features import mean_pool, residuals, token_mean
from ssae_kit.io import RunLayout
from ssae_kit.probe import Probe, ablation_edit, group_accuracies, train_probe
from ssae_kit.sae import SAE, SAEConfig
from ssae_kit.shift import shift_attribution, spurious_latents
from ssae_kit.train_config import finetune_config

TEXTS = [
    "she is a nurse at the ward",
    "he teaches physics",
    "her patients like her",
    "his lab is large",
    "she studied medicine",
    "he wrote a book on algebra",
]


def run_with_edits(model, r, upto, edits):
    """Reference: the full model from the tokens, with each edit spliced in at its layer on text
    tokens only, mean-pooled at layer `upto` (what probe_inputs must equal)."""
    from ssae_kit.hooks import forward_to_layer, splice

    with torch.no_grad(), ExitStack() as stack:
        for layer, edit in edits.items():
            on_text = lambda x, edit=edit: torch.where(r.keep[..., None], edit(x), x)
            stack.enter_context(splice(model, layer, on_text))
        return token_mean(forward_to_layer(model, r.input_ids, upto, r.attention_mask), r.keep)


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
    from ssae_kit.debias import build_debias_data
    from ssae_kit.shift import DebiasConfig, report_row

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
    from ssae_kit.bios import delete_gender_tokens, make_splits, synthetic_bios
    from ssae_kit.debias import build_debias_data, shift_case_study
    from ssae_kit.shift import DebiasConfig, report_row

    model, tok = tiny
    splits = make_splits(synthetic_bios(120, seed=1), n_train_per_group=10, n_test_per_group=6, seed=1)
    data = build_debias_data(model, tok, splits, 1, 48, probe_layer=2)
    deleted = build_debias_data(
        model, tok, splits, 1, 48, transform=lambda b: delete_gender_tokens(b.text, b.name), probe_layer=2
    )
    saes = {"A": identity_sae(32), "B": SAE(SAEConfig(d_in=32, d_sae=64, layer=1), seed=2)}
    keep_all = DebiasConfig(probe_epochs=2, top_n=4, force_keep=tuple(range(64)))
    study = shift_case_study(model, data, saes, keep_all, retrain=["A"], deleted=deleted)
    assert list(study.rows) == [
        "Original",
        "A SHIFT",
        "A SHIFT + retrain",
        "B SHIFT",
        "Token deletion + retrain",
        "Oracle",
    ]
    assert set(study.picks) == {"A", "B"} and all(len(p["candidates"]) == 4 for p in study.picks.values())
    assert all(p["ablated"] == [] for p in study.picks.values()), "force_keep overrides the rule"
    assert study.rows["A SHIFT"] == study.rows["B SHIFT"] == study.rows["Original"], (
        "nothing ablated, yet the rows moved"
    )
    assert study.rows["Oracle"] == report_row(data, keep_all, oracle=True)
    assert len(study.rows["Original"]["profession_correct"]) == len(data.b_groups) == 12


def test_an_edit_reaches_a_later_probe_only_through_the_blocks_after_it(tiny):
    from ssae_kit.models import get_blocks
    from ssae_kit.probe import probe_inputs

    model, tok = tiny
    sae = SAE(SAEConfig(d_in=32, d_sae=64, layer=1), seed=5)
    r = residuals(model, tok, TEXTS, 1, ctx_len=32)
    edited = probe_inputs(model, r, 2, {1: (sae, [0, 1, 2, 3, 4, 5])})
    reference = run_with_edits(model, r, 2, {1: ablation_edit(sae, range(6))})
    assert torch.allclose(edited, reference, atol=1e-5), "not the same as splicing the edit into a full pass"
    assert not torch.allclose(edited, probe_inputs(model, r, 2), atol=1e-4), "the edit did not reach layer 2"

    def refuse(module, args):  # one position is forward_from_layer learning what a block returns
        if args[0].shape[1] > 1:
            raise AssertionError("a block before the edit ran again on the texts")

    handles = [get_blocks(model)[i].register_forward_pre_hook(refuse) for i in (0, 1)]
    try:
        assert torch.allclose(probe_inputs(model, r, 2, {1: (sae, range(6))}), edited, atol=1e-6)
    finally:
        for h in handles:
            h.remove()
    with pytest.raises(ValueError, match="cannot act between"):
        probe_inputs(model, r, 1, {2: (SAE(SAEConfig(d_in=32, d_sae=8, layer=2)), [0])})


def test_edits_at_two_layers_compose_like_two_splices(tiny):
    from ssae_kit.probe import probe_inputs

    model, tok = tiny
    sae1, sae2 = (SAE(SAEConfig(d_in=32, d_sae=64, layer=layer), seed=layer) for layer in (1, 2))
    r = residuals(model, tok, TEXTS, 1, ctx_len=32)
    both = probe_inputs(model, r, 2, {1: (sae1, [0, 1, 2]), 2: (sae2, [3, 4])})
    reference = run_with_edits(
        model, r, 2, {1: ablation_edit(sae1, [0, 1, 2]), 2: ablation_edit(sae2, [3, 4])}
    )
    assert torch.allclose(both, reference, atol=1e-5)


def test_ablating_the_latent_along_the_probe_weight_removes_the_probe_signal(tiny):
    from ssae_kit.probe import probe_inputs

    model, tok = tiny
    r = residuals(model, tok, TEXTS, 1, ctx_len=32)
    w = torch.nn.functional.normalize(torch.randn(32), dim=0)
    probe = Probe(1000 * w, torch.tensor(0.3), torch.zeros(32), torch.ones(32))  # residuals are ~0.01
    sae = SAE(SAEConfig(d_in=32, d_sae=2, layer=1, apply_b_dec_to_input=False))
    with torch.no_grad():  # latents relu(w.x) and relu(-w.x), decoded along +w and -w
        sae.W_enc.copy_(torch.stack([w, -w], 1) / sae.cfg.norm_scale)
        sae.W_dec.copy_(torch.stack([w, -w]) * sae.cfg.norm_scale)
        sae.b_enc.zero_(), sae.b_dec.zero_()
    before = probe.logits(probe_inputs(model, r, 1))
    after = probe.logits(probe_inputs(model, r, 1, {1: (sae, [0, 1])}))
    assert before.std() > 0.1
    assert torch.allclose(after, torch.full_like(after, 0.3), atol=1e-3), "the probe still reads something"


def test_attribution_of_an_upstream_latent_is_the_first_order_effect_of_ablating_it(tiny):
    from ssae_kit.shift import attribution_check

    model, tok = tiny
    sae = SAE(SAEConfig(d_in=32, d_sae=64, layer=1), seed=3)
    with torch.no_grad():
        sae.b_enc.fill_(0.1)
        sae.W_dec.mul_(0.05)
    labels = torch.tensor([1, 0, 1, 0, 1, 0])
    r = residuals(model, tok, TEXTS, 1, ctx_len=32)
    probe = train_probe(mean_pool(residuals(model, tok, TEXTS, 2, ctx_len=32)), labels, epochs=3)
    attr = shift_attribution(sae, probe, r, labels, model, probe_layer=2)
    j, eps = int(attr.abs().argmax()), 1e-2

    def metric(edit=None):
        x = run_with_edits(model, r, 2, {1: edit} if edit else {})
        return torch.nn.functional.binary_cross_entropy_with_logits(probe.logits(x), labels.float()).item()

    def shrink_latent_j(resid):  # f_j -> (1 - eps) f_j at layer 1, error term kept
        f = sae.encode(resid)
        return resid - eps * f[..., j : j + 1] * sae.W_dec[j] / sae.cfg.norm_scale

    assert metric(shrink_latent_j) - metric() == pytest.approx(-eps * attr[j].item(), rel=0.05)
    assert not torch.allclose(attr, shift_attribution(sae, probe, r, labels)), "the later blocks were ignored"
    (check,) = attribution_check(model, sae, probe, r, labels, [j], probe_layer=2)
    assert check["latent"] == j and check["predicted"] * check["measured"] > 0  # full ablation: same sign
    with pytest.raises(ValueError, match="pass the model"):
        shift_attribution(sae, probe, r, labels, probe_layer=2)


def test_integrated_gradients_sum_to_the_effect_of_ablating_every_latent(tiny):
    from ssae_kit.probe import probe_inputs

    model, tok = tiny
    sae = SAE(SAEConfig(d_in=32, d_sae=64, layer=1), seed=3)
    with torch.no_grad():
        sae.b_enc.fill_(0.1)
    labels = torch.tensor([1, 0, 1, 0, 1, 0])
    r = residuals(model, tok, TEXTS, 1, ctx_len=32)
    probe = train_probe(probe_inputs(model, r, 2), labels, epochs=3)

    def metric(ablations=None):
        x = probe_inputs(model, r, 2, ablations)
        return torch.nn.functional.binary_cross_entropy_with_logits(probe.logits(x), labels.float()).item()

    effect = metric({1: (sae, range(64))}) - metric()  # every latent ablated, error term kept
    ig = shift_attribution(sae, probe, r, labels, model, 2, method="ig", ig_steps=16)
    assert -ig.sum().item() == pytest.approx(effect, rel=0.02), "integrated gradients lost completeness"
    with pytest.raises(ValueError, match="use 'atp' or 'ig'"):
        shift_attribution(sae, probe, r, labels, model, 2, method="shap")


def test_ablation_curve_reads_set_a_only_and_the_best_count_breaks_ties_by_gender_readout(tiny, identity_sae):
    from ssae_kit.bios import make_splits, synthetic_bios
    from ssae_kit.debias import build_debias_data
    from ssae_kit.shift import DebiasConfig, ablation_curve, best_count

    model, tok = tiny
    splits = make_splits(synthetic_bios(120, seed=1), n_train_per_group=10, n_test_per_group=6, seed=1)
    data = build_debias_data(model, tok, splits, 1, 48, probe_layer=2, n_a_per_group=4)
    assert len(data.a_groups) == 16 and len(data.b_groups) == 8
    probe = train_probe(data.clean["train"], data.train_profession, epochs=2)
    data.balanced_b.resid.fill_(float("nan"))  # a curve that read B would turn to nan
    curve = ablation_curve(model, data, probe, identity_sae(32), [0, 1, 2], [0, 2, 5, 9], DebiasConfig())
    assert [c["n_ablated"] for c in curve] == [0, 2, 3]  # 5 and 9 both ablate all 3: one point
    assert all(0 <= c[k] <= 1 for c in curve for k in ("profession", "gender", "worst_group"))
    point = lambda n, worst, gender: dict(n_ablated=n, worst_group=worst, gender=gender)
    assert best_count([point(0, 0.5, 0.8), point(3, 0.7, 0.8)]) == 3, "worst group first"
    assert best_count([point(0, 0.5, 0.8), point(3, 0.5, 0.7)]) == 3, (
        "a flat worst group: lower gender readout"
    )
    assert best_count([point(0, 0.5, 0.7), point(3, 0.5, 0.7)]) == 0, "then the fewest latents"
    with pytest.raises(ValueError, match="probe_layer >= layer"):
        build_debias_data(model, tok, splits, 2, 48, probe_layer=1)
    with pytest.raises(ValueError, match="0 < n_a_per_group < 6"):
        build_debias_data(model, tok, splits, 1, 48, n_a_per_group=6)


def test_seed_and_bio_bootstrap_intervals_and_the_paired_difference():
    import numpy as np

    from ssae_kit.debias import row_difference, summarize_seeds, worst_group_accuracy

    groups = ["a", "a", "b", "b"] * 3  # 12 bios: above the floor for an interval
    correct = np.tile([[1, 1, 0, 1], [1, 1, 1, 1]], 3)  # seed 0: a 100%, b 50%; seed 1: both 100%
    assert worst_group_accuracy(correct, np.array(groups)) == 0.75
    rows = [
        {"X": dict(profession_correct=c, gender_correct=[1, 0, 1, 0] * 3, worst_group=wg, profession=0)}
        | {
            "Y": dict(
                profession_correct=[0, 1, 0, 1] * 3, gender_correct=[1] * 12, worst_group=0.5, profession=0
            )
        }
        for c, wg in zip(correct.tolist(), (0.5, 1.0))
    ]
    table = summarize_seeds(rows, groups, n_resamples=300)
    mean, low, high = table["X"]["worst_group"]
    assert mean == 0.75 and 0 <= low <= mean <= high <= 1 and low < high
    assert table["Y"]["gender"] == (1.0, 1.0, 1.0)  # no spread: a point interval
    diff = row_difference(rows, "X", "Y", groups, n_resamples=300)
    assert diff["estimate"] == pytest.approx(0.25) and diff["n_positive"] == 1 and diff["n_seeds"] == 2
    assert diff["low"] <= diff["estimate"] <= diff["high"]
    assert diff["holds"] is (diff["low"] > 0)
    assert row_difference(rows, "Y", "X", groups, n_resamples=300)["holds"] is False  # -0.25: never above 0
    few = summarize_seeds(
        [{n: {k: v[:4] for k, v in r.items() if k.endswith("_correct")} for n, r in rows[0].items()}],
        groups[:4],
    )
    assert (
        few["X"]["profession"][0] == 0.75 and np.isnan(few["X"]["profession"][1:]).all()
    )  # 4 bios: no interval
    with pytest.raises(ValueError, match="must be \\(seeds, items, ...\\) with 12 items"):
        summarize_seeds([{"X": dict(profession_correct=[1, 0], gender_correct=[1, 0])}], groups)


def test_debias_config_refuses_settings_that_pick_or_train_nothing():
    from ssae_kit.shift import DebiasConfig

    for bad in (dict(top_n=0), dict(attribution_bios=0), dict(probe_epochs=0)):
        with pytest.raises(ValueError, match="each must be >= 1"):
            DebiasConfig(**bad)


@pytest.fixture(scope="module")
def general(tiny, docs, tmp_path_factory):
    model, tok = tiny
    return cache_activations(model, tok, docs * 2, 1, tmp_path_factory.mktemp("general"), ctx_len=16)


def test_fit_gsae_trains_epochs_passes_at_the_width_asked_and_resumes_from_its_folder(general, tmp_path):
    gsae = fit_gsae(general, 32, tmp_path / "gsae", sparsity_coefficient=0.5, epochs=2, device="cpu")
    assert (gsae.cfg.d_sae, gsae.cfg.d_in) == (32, general.d_model)
    again = fit_gsae(general, 32, tmp_path / "gsae", sparsity_coefficient=0.5, epochs=2, device="cpu")
    assert torch.equal(gsae.W_dec, again.W_dec), "a finished run in out_dir is returned, not retrained"


def test_fine_tune_each_pairs_every_gsae_with_its_ssae_saved_where_notebook_06_reads_it(general, tmp_path):
    gsaes = {"GSAE": fit_gsae(general, 32, tmp_path / "g", sparsity_coefficient=0.5, epochs=1, device="cpu")}
    gsaes["1/2 GSAE"] = fit_gsae(
        general, 16, tmp_path / "g2", sparsity_coefficient=0.5, epochs=1, device="cpu"
    )
    layout = RunLayout(tmp_path / "run")
    saes = fine_tune_each(gsaes, general, 0.5, 1024, seed=3, layout=layout, device="cpu")
    assert list(saes) == ["GSAE", "1/2 GSAE", "SSAE", "1/2 SSAE"]
    assert saes["GSAE"] is gsaes["GSAE"] and not torch.equal(saes["SSAE"].W_dec, gsaes["GSAE"].W_dec)
    torch.testing.assert_close(SAE.load(layout.bios_ssae(3)).W_dec, saes["SSAE"].W_dec)  # saved there
    cfg = finetune_config(gsaes["1/2 GSAE"], general, 0.5, 1024, seed=3, device="cpu")
    direct = train(general, cfg, init=gsaes["1/2 GSAE"], out_dir=tmp_path / "direct").sae
    assert torch.equal(direct.W_dec, saes["1/2 SSAE"].W_dec), "the same fine-tune as train(finetune_config)"


def test_a_claim_holds_only_when_the_whole_interval_is_above_zero_and_its_line_says_so():
    from ssae_kit.debias import claim_line

    above = dict(estimate=0.125, low=0.031, high=0.2, n_positive=5, n_seeds=5, holds=True)
    assert claim_line("SSAE beats GSAE", above) == (
        "HOLDS: SSAE beats GSAE: +12.5 points [+3.1, +20.0], positive on 5 of 5 seeds."
    )
    across = {**above, "low": -0.01, "holds": False}
    assert claim_line("SSAE beats GSAE", across).startswith(
        "DOES NOT HOLD: SSAE beats GSAE: +12.5 points [-1.0,"
    )
