"""ssae_kit.evals: each metric on a hand-computed case, and spliced CE at its two extremes."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from sae_cases import fixed_sae, run

from ssae_kit.claims import compare
from ssae_kit.evals import evaluate, evaluate_store, health_warnings
from ssae_kit.models import massive_norm_mask
from ssae_kit.sae import SAE, SAEConfig


def test_mse_and_explained_variance_use_sums_over_dims_and_variance_about_the_mean():
    # Predicting the mean [2, 0] for x = [1, 0], [3, 0]: error 1 per token, so MSE = 1 and EV = 0.
    # (EV about zero would be 1 - 2/10 = 0.8; dividing by d_in would give MSE 0.5.)
    mean_sae = fixed_sae([[1.0], [0.0]], [[0.0, 0.0]], b_dec=[2.0, 0.0], b_enc=[-100.0])
    m = run(mean_sae, [[1.0, 0.0], [3.0, 0.0]], [0, 1]).metrics
    assert m["mse"] == pytest.approx(1.0) and m["explained_variance"] == pytest.approx(0.0, abs=1e-9)
    identity = fixed_sae([[1.0, -1.0], [0.0, 0.0]], [[1.0, 0.0], [-1.0, 0.0]])
    assert run(identity, [[1.0, 0.0], [3.0, 0.0]], [0, 1]).metrics["explained_variance"] == pytest.approx(1.0)


def test_l0_density_dead_dense_entropy_and_max_activation():
    # latent 0 reads dim 0, latent 1 reads dim 1, latent 2 never fires.
    sae = fixed_sae([[1.0, 0.0, -1.0], [0.0, 1.0, -1.0]], torch.eye(3, 2).tolist())
    r = run(sae, [[1.0, 1.0], [2.0, 0.0], [0.0, 0.0], [3.0, 0.0]], [5, 6, 7, 8])
    assert r.token_l0.tolist() == [2, 1, 0, 1] and r.metrics["l0"] == 1.0
    assert r.feature_counts.tolist() == [3, 1, 0]
    assert r.metrics["dead_fraction"] == pytest.approx(1 / 3)
    assert r.metrics["dense_fraction"] == pytest.approx(1 / 3)  # only latent 0 fires on > 50% of tokens
    assert r.token_entropy.tolist() == pytest.approx([math.log(2), 0.0, 0.0, 0.0])
    assert r.token_max_act.tolist() == [1.0, 2.0, 0.0, 3.0]


def test_spliced_ce_equals_clean_for_a_perfect_sae_and_zero_ablation_for_a_null_one(tiny, docs, identity_sae):
    model, tok = tiny
    perfect = evaluate(identity_sae(32), model, tok, docs, 1, ctx_len=16)
    m = perfect.metrics
    assert m["ce_sae"] == pytest.approx(m["ce_clean"], abs=1e-5) and m["ce_loss_recovered"] == pytest.approx(
        1.0, abs=1e-3
    )
    assert m["ce_zero"] > m["ce_clean"] and m["explained_variance"] == pytest.approx(1.0, abs=1e-5)
    null = fixed_sae(torch.zeros(32, 4).tolist(), torch.zeros(4, 32).tolist())
    with pytest.warns(UserWarning, match="no better than zero-ablation"):
        m = evaluate(null, model, tok, docs, 1, ctx_len=16).metrics
    assert m["ce_sae"] == pytest.approx(m["ce_zero"], abs=1e-5) and m["ce_loss_recovered"] == pytest.approx(
        0.0, abs=1e-3
    )
    assert m["perplexity_sae"] == pytest.approx(math.exp(m["ce_sae"]))


def test_a_baseline_from_the_same_text_gives_the_same_metrics_with_one_pass(tiny, docs, identity_sae):
    model, tok = tiny
    sae = SAE(SAEConfig(d_in=32, d_sae=64), seed=5)
    first = evaluate(identity_sae(32), model, tok, docs, 1, ctx_len=16).metrics
    full = evaluate(sae, model, tok, docs, 1, ctx_len=16).metrics
    reused = evaluate(sae, model, tok, docs, 1, ctx_len=16, baseline=first).metrics
    for key in (
        "ce_clean",
        "ce_zero",
        "ce_mean",
        "ce_sae",
        "ce_loss_recovered",
        "ce_loss_recovered_mean",
        "mse",
    ):
        assert reused[key] == pytest.approx(full[key], rel=1e-5, abs=1e-6, nan_ok=True), key
    with pytest.raises(ValueError, match="other documents, windows or precision"):
        evaluate(sae, model, tok, docs[:-1], 1, ctx_len=16, baseline=first)


@pytest.mark.parametrize("layer", [1, 2])  # 2: the last block, followed only by the norm and the head
def test_shared_prefix_evaluation_equals_a_plain_spliced_evaluation_exactly(tiny, docs, layer, monkeypatch):
    """fp32: per document, the spliced and clean CE (and the mean zero-ablated CE) from one shared prefix
    equal full forwards with the layer spliced in, bit for bit: on a cold cache, a warm one, and with no
    memory for it. The prefix runs once per batch for all four passes, then not at all for the next SAE,
    and again once the model's weights change or the memory allowed drops to nothing."""
    from ssae_kit import hooks
    from ssae_kit.corpora import content_mask, tokenize_contexts
    from ssae_kit.evals import ce_sums
    from ssae_kit.hooks import replace_content, splice

    model, tok = tiny
    sae = SAE(SAEConfig(d_in=32, d_sae=64, layer=layer), seed=3)
    ctx = tokenize_contexts(docs, tok, 16)
    keep = content_mask(ctx, tok)
    plain = {k: torch.zeros(len(docs), dtype=torch.float64) for k in ("sae", "clean", "zero")}

    def reconstruct(r: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        out = r.clone()
        out[k] = sae(r[k]).sae_out
        return out

    with torch.no_grad():
        for s in range(0, len(ctx), 4):
            sl, k = slice(s, s + 4), keep[s : s + 4]
            for name, fn in (
                ("sae", lambda r, k=k: reconstruct(r, k)),
                ("clean", lambda r: r),
                ("zero", lambda r, k=k: replace_content(r, k, torch.zeros_like(r))),
            ):
                with splice(model, layer, fn):
                    ce = ce_sums(model, ctx.input_ids[sl], ctx.attention_mask[sl], k[:, 1:])
                plain[name].index_add_(0, ctx.doc_ids[sl], ce)
    calls = []
    counted = lambda *a, f=hooks.forward_to_layer: calls.append(1) or f(*a)
    monkeypatch.setattr(hooks, "forward_to_layer", counted)

    def run(budget: int) -> tuple:
        monkeypatch.setattr(hooks, "PREFIX_CACHE_BYTES", budget)
        calls.clear()
        result = evaluate(
            sae, model, tok, docs, layer, ctx_len=16, batch_size=4, max_norm_multiple=None, precision="fp32"
        )
        return result, len(calls)

    runs = [run(0), run(2**30), run(2**30)]  # none kept (and the cache emptied), then cold, then warm
    with torch.no_grad():
        next(model.parameters()).mul_(1.0)  # an in-place change (of nothing): the weights' version moves on
    runs += [run(2**30), run(0)]  # after it, a budget lowered to 0 drops what is kept
    results = [r for r, _ in runs]
    n_batches = -(-len(ctx) // 4)
    assert [n for _, n in runs] == [2 * n_batches, n_batches, 0, n_batches, 2 * n_batches]
    n_targets = float(keep[:, 1:].sum())
    for r in results:
        assert r.doc_stats["ce_sae"].tolist() == plain["sae"].tolist()
        assert r.doc_stats["ce_clean"].tolist() == plain["clean"].tolist()
        assert r.metrics["ce_zero"] == float(plain["zero"].sum()) / n_targets


def test_store_and_model_paths_agree_on_reconstruction_metrics(tiny, docs, tmp_path):
    from ssae_kit import cache_activations

    model, tok = tiny
    store = cache_activations(model, tok, docs, 1, tmp_path, ctx_len=16, max_norm_multiple=None)
    sae = SAE(SAEConfig(d_in=32, d_sae=64, norm_scale=store.norm_scale), seed=2)
    a = evaluate_store(sae, store).metrics
    b = evaluate(
        sae, model, tok, docs, 1, ctx_len=16, max_norm_multiple=None, precision="fp32"
    ).metrics  # the store is fp32
    for key in ("n_tokens", "mse", "explained_variance", "l0", "dead_fraction"):
        assert a[key] == pytest.approx(b[key], rel=1e-4), key


def test_evaluating_on_the_wrong_layer_or_width_is_refused(tiny, docs, tmp_path):
    model, tok = tiny
    with pytest.raises(ValueError, match="trained on layer 2, not 1: pass layer=2"):
        evaluate(SAE(SAEConfig(d_in=32, d_sae=8, layer=2)), model, tok, docs, 1)
    from ssae_kit import cache_activations

    store = cache_activations(model, tok, docs, 1, tmp_path, ctx_len=16)
    with pytest.raises(ValueError, match="d_in=16 but these activations have d_model=32"):
        evaluate_store(SAE(SAEConfig(d_in=16, d_sae=8)), store)
    assert np.isfinite(evaluate_store(SAE(SAEConfig(d_in=32, d_sae=8)), store).metrics["mse"])


def test_evaluate_and_caching_drop_the_same_massive_norm_tokens(tiny, docs, tmp_path, identity_sae):
    from ssae_kit import cache_activations

    model, tok = tiny
    store = cache_activations(model, tok, docs, 1, tmp_path, ctx_len=16, max_norm_multiple=1.1, batch_size=8)
    sae = identity_sae(32)
    m = evaluate(sae, model, tok, docs, 1, ctx_len=16, max_norm_multiple=1.1, precision="fp32").metrics
    everything = evaluate(
        sae, model, tok, docs, 1, ctx_len=16, max_norm_multiple=None, precision="fp32"
    ).metrics
    assert m["n_outliers"] > 0 and everything["n_outliers"] == 0
    assert m["n_tokens"] + m["n_outliers"] == everything["n_tokens"]
    assert m["n_outliers"] == store.manifest["n_outliers_dropped"] and m["n_tokens"] == store.n_tokens


def test_massive_flags_only_content_tokens_far_above_the_median():
    resid = torch.ones(1, 4, 2)
    resid[0, 2] *= 100
    keep = torch.tensor([[False, True, True, True]])
    resid[0, 0] *= 1000  # a special token: never flagged
    assert massive_norm_mask(resid, keep, 10.0).tolist() == [[False, False, True, False]]
    assert not massive_norm_mask(resid, keep, None).any()


def test_mean_ablation_is_the_layers_mean_at_the_tokens_the_sae_replaces(tiny, docs, identity_sae):
    """An SAE that outputs the layer's mean scores the mean-ablation CE; a perfect one recovers all of it."""
    from ssae_kit.corpora import content_mask, tokenize_contexts
    from ssae_kit.hooks import forward_to_layer

    model, tok = tiny
    ctx = tokenize_contexts(docs, tok, 16)
    keep = content_mask(ctx, tok)
    with torch.no_grad():
        mean = forward_to_layer(model, ctx.input_ids, 1, ctx.attention_mask)[keep].double().mean(0).float()
    at_mean = fixed_sae(torch.zeros(32, 4).tolist(), torch.zeros(4, 32).tolist())
    with torch.no_grad():
        at_mean.b_dec.copy_(mean)
    m = evaluate(at_mean, model, tok, docs, 1, ctx_len=16, max_norm_multiple=None).metrics
    assert m["ce_sae"] == pytest.approx(m["ce_mean"], abs=1e-4) and m["ce_mean"] != pytest.approx(
        m["ce_zero"]
    )
    gap = m["ce_mean"] - m["ce_clean"]  # a random tiny model can do better at its mean than clean
    recovered = m["ce_loss_recovered_mean"]
    assert math.isnan(recovered) if gap <= 0 else recovered == pytest.approx(0.0, abs=1e-3)
    perfect = evaluate(identity_sae(32), model, tok, docs, 1, ctx_len=16, max_norm_multiple=None).metrics
    assert perfect["ce_mean"] == pytest.approx(m["ce_mean"])


def test_health_warns_when_spliced_ce_is_no_better_than_the_layers_mean():
    """The 640-wide case of issue 24: better than zero-ablation, worse than the mean: flagged."""
    words = " ".join(health_warnings(dict(ce_sae=9.54, ce_zero=23.0, ce_mean=8.6, ce_clean=3.0)))
    assert "no better than replacing the layer by its mean (8.600)" in words
    assert health_warnings(dict(ce_sae=4.0, ce_zero=23.0, ce_mean=8.6, ce_clean=3.0)) == []


def test_no_verdict_between_two_flagged_saes_but_one_against_a_healthy_sae(tiny, docs, identity_sae):
    model, tok = tiny
    many = docs * 2  # enough documents for an interval
    good = evaluate(identity_sae(32), model, tok, many, 1, ctx_len=16)
    null = fixed_sae(torch.zeros(32, 4).tolist(), torch.zeros(4, 32).tolist())
    with pytest.warns(UserWarning):
        bad = evaluate(null, model, tok, many, 1, ctx_len=16, baseline=good.metrics)
    worse = copy.deepcopy(bad)
    worse.doc_stats["ce_sae"] = worse.doc_stats["ce_sae"] + worse.doc_stats["n_targets"] * 0.5
    assert "both SAEs are flagged unhealthy" in compare(bad, worse).verdict("a", "b")
    assert "flagged" not in compare(good, bad).verdict("a", "b")


def test_health_warnings_name_dead_latents_negative_ev_and_ce_worse_than_zero_ablation():
    healthy = dict(dead_fraction=0.1, explained_variance=0.8, ce_sae=4.0, ce_zero=9.0, n_tokens=100)
    assert health_warnings(healthy) == []
    sick = dict(dead_fraction=0.9, explained_variance=-0.2, ce_sae=9.5, ce_zero=9.0, n_tokens=100)
    words = " ".join(health_warnings(sick))
    assert "90% of latents are dead" in words and "explained variance is -0.20" in words
    assert "no better than zero-ablation" in words


def test_evaluating_an_sae_of_another_model_or_past_the_models_positions_is_refused(tiny, docs, identity_sae):
    model, tok = tiny
    with pytest.raises(ValueError, match="ctx_len=513 is more than the 512 positions"):
        evaluate(identity_sae(32), model, tok, docs, 1, ctx_len=513)
    with pytest.raises(ValueError, match="trained on model 'gpt2', not 'tiny-llama'"):
        evaluate(SAE(SAEConfig(d_in=32, d_sae=8, model_name="gpt2")), model, tok, docs, 1)


def test_health_warnings_name_nan_metrics():
    warnings = health_warnings({"mse": float("nan"), "explained_variance": float("nan"), "l0": 3.0})
    assert warnings[0] == "explained_variance, mse are NaN: the SAE or the activations hold NaN/inf."
    assert health_warnings({"mse": 1.0, "explained_variance": 0.9}) == []


def test_evaluate_refuses_bad_windows_and_thresholds_before_any_work(tiny, docs, identity_sae):
    model, tok = tiny
    with pytest.raises(ValueError, match=r"max_contexts=0 must be a positive integer"):
        evaluate(identity_sae(32), model, tok, docs, 1, ctx_len=16, max_contexts=0)
    for bad in (0, -1):  # -1 once evaluated nothing and blamed the documents
        with pytest.raises(ValueError, match=rf"batch_size={bad} must be a positive integer \(windows per"):
            evaluate(identity_sae(32), model, tok, docs, 1, ctx_len=16, batch_size=bad)
    with pytest.raises(ValueError, match=r"max_norm_multiple=-1 must be a positive number"):
        evaluate(identity_sae(32), model, tok, docs, 1, ctx_len=16, max_norm_multiple=-1)


def test_evaluate_store_flags_an_sae_with_nan_weights_as_evaluate_does(tiny, docs, tmp_path):
    from ssae_kit import cache_activations

    model, tok = tiny
    store = cache_activations(model, tok, docs, 1, tmp_path, ctx_len=16)
    sae = SAE(SAEConfig(d_in=32, d_sae=8), seed=0)
    with torch.no_grad():
        sae.W_enc.fill_(float("nan"))
    with pytest.warns(UserWarning, match=r"Unhealthy SAE .*explained_variance.* are NaN"):
        metrics = evaluate_store(sae, store).metrics
    assert any("are NaN" in w for w in metrics["health_warnings"])
    healthy = SAE(SAEConfig(d_in=32, d_sae=8, norm_scale=store.norm_scale), seed=0)
    assert not any("NaN" in w for w in evaluate_store(healthy, store).metrics["health_warnings"])


@pytest.mark.skipif(
    not __import__("ssae_kit.models", fromlist=["bf16_native"]).bf16_native("cpu"),
    reason="this CPU has no native bf16 (avx512_bf16/AMX): evaluate's 'auto' stays fp32 here",
)
def test_bf16_evaluation_agrees_with_fp32_on_the_embedded_model_and_the_shipped_saes():
    """The rule for making bf16 the default: on the shipped GSAEs, each absolute CE within 0.01 nats
    of fp32 and the difference between the two SAEs within 0.002 (measured: 0.003 and 0.0000 on
    10.8k tokens; here 16 windows)."""
    from ssae_kit import load_corpus, load_model
    from ssae_kit.corpora import heldout_split
    from ssae_kit.gsae import load_pretrained

    model, tok = load_model("smollm2-135m", device="cpu")
    docs = heldout_split(load_corpus("bbc-news"))[1][:12]
    a, b = (load_pretrained("ssae-kit", i) for i in ("smollm2-135m-l6-tech1", "smollm2-135m-l6-tech21"))
    ce = {}
    for precision in ("fp32", "bf16"):
        kw = dict(ctx_len=128, max_contexts=16, precision=precision)
        base = evaluate(a, model, tok, docs, 6, **kw)
        other = evaluate(b, model, tok, docs, 6, baseline=base.metrics, **kw)
        assert base.metrics["precision"] == precision
        ce[precision] = (base.metrics["ce_clean"], base.metrics["ce_sae"], other.metrics["ce_sae"])
    for f, h in zip(ce["fp32"], ce["bf16"], strict=True):
        assert abs(f - h) < 0.01
    assert abs((ce["bf16"][2] - ce["bf16"][1]) - (ce["fp32"][2] - ce["fp32"][1])) < 0.002
    assert next(model.parameters()).dtype == torch.float32  # autocast left the weights alone
    with pytest.raises(ValueError, match="compare needs both SAEs evaluated on the same docs.*precision"):
        compare(evaluate(a, model, tok, docs[:2], 6, max_contexts=2, precision="fp32"),
                evaluate(b, model, tok, docs[:2], 6, max_contexts=2, precision="bf16"))  # fmt: skip


def test_precision_is_one_of_three_names_and_auto_follows_the_hardware(tiny):
    from ssae_kit.models import bf16_native, resolve_precision

    model, _ = tiny
    assert resolve_precision(model, "auto") == ("bf16" if bf16_native("cpu") else "fp32")
    assert resolve_precision(model, "fp32") == "fp32" and resolve_precision(model, "bf16") == "bf16"
    with pytest.raises(ValueError, match=r"precision='fp16'; use one of \('auto', 'fp32', 'bf16'\)"):
        resolve_precision(model, "fp16")
