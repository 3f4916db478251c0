"""The shipped GSAE (data/saes/), its recipe (data/saes/build_gsae.py) and the committed held-out split."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssae_kit import SAE, cache_activations, evaluate, load_corpus, train
from ssae_kit.corpora import SPLITS_DIR, heldout_split
from ssae_kit.gsae import (
    SHIPPED_DIR,
    Convergence,
    check_convergence,
    gsae_config,
    load_pretrained,
    mse_drop,
    resolve_sae,
    shipped_saes,
)
from ssae_kit.io import SAE_WEIGHTS_FILE
from ssae_kit.sweep import (
    SweepConfig,
    load_sweep,
    prepare,
    run_share,
    sweep_reading,
    sweep_table,
    write_sweep,
)

REPO = Path(__file__).resolve().parents[1]
GSAE_ID = "smollm2-135m-l6-tech21"  # the natural-share GSAE, shipped for comparison
DEFAULT_ID = "smollm2-135m-l6-tech1"  # the notebooks' default: tech at 1% of its training tokens


@pytest.mark.parametrize("sae_id", [DEFAULT_ID, GSAE_ID])
def test_the_shipped_gsaes_load_by_short_id_for_the_embedded_model_and_layer(sae_id):
    sae = load_pretrained("ssae-kit", sae_id)
    assert (sae.cfg.model_name, sae.cfg.layer, sae.cfg.d_in, sae.cfg.d_sae) == ("smollm2-135m", 6, 576, 4608)
    assert (
        sae.cfg.architecture == "relu" and sae.W_dec.dtype.is_floating_point and sae.W_dec.dtype.itemsize == 4
    )
    assert resolve_sae(f"ssae-kit:{sae_id}").cfg == sae.cfg
    card = json.loads((SHIPPED_DIR / sae_id / "card.json").read_text())
    assert card["layer"] == 6 and card["metrics"]["n_tokens"] >= 20_000 and card["id"] == sae_id
    assert (SHIPPED_DIR / sae_id / "README.md").read_text().startswith(f"# {sae_id}")
    assert (SHIPPED_DIR / sae_id / SAE_WEIGHTS_FILE).stat().st_size <= 12 * 2**20


def test_the_default_gsae_has_tech_rare_and_its_card_says_how_rare_and_whether_it_converged():
    card = json.loads((SHIPPED_DIR / DEFAULT_ID / "card.json").read_text())
    share = card["subdomain_share"]
    assert share["label"] == "tech" and share["target"] == 0.01 and share["reached"] <= 0.0101
    assert share["tokens_per_label"]["tech"] / sum(share["tokens_per_label"].values()) == pytest.approx(
        share["reached"]
    )
    conv = card["convergence"]
    assert conv["converged"] == (conv["mse_drop"] < 0.03 and conv["finetune_flat"]) == card["converged"]
    assert card["tokens_seen"] > 4_000_000 and card["norm_scale_from"] == "centered"
    m = card["metrics"]
    assert card["meets_targets"] == (
        m["l0"] <= 64
        and m["explained_variance"] >= 0.9
        and m["ce_delta"] <= 0.35
        and m["dead_fraction"] <= 0.03
    )
    readme = (SHIPPED_DIR / DEFAULT_ID / "README.md").read_text()
    assert (
        f"{100 * share['reached']:.2f}%" in readme and "## Convergence" in readme and "## Rebuild" in readme
    )


def test_unknown_shipped_ids_and_malformed_specs_name_the_fix(tmp_path):
    assert GSAE_ID in shipped_saes()
    with pytest.raises(ValueError, match=f"'smollm2-135m-l6' was renamed '{GSAE_ID}'"):
        load_pretrained("ssae-kit", "smollm2-135m-l6")
    with pytest.raises(ValueError, match=f"ships no SAE 'nope'.*{GSAE_ID}"):
        load_pretrained("ssae-kit", "nope")
    with pytest.raises(ValueError, match="neither a folder nor 'release:sae_id'"):
        resolve_sae(str(tmp_path / "missing_folder"))


def test_the_committed_heldout_split_is_disjoint_from_training_text():
    docs = load_corpus("bbc-news")
    train, heldout = heldout_split(docs)
    committed = json.loads((SPLITS_DIR / "bbc-news.json").read_text())["heldout"]
    assert [d.doc_id for d in heldout] == committed and len(heldout) == 318
    assert not {d.text for d in train} & {d.text for d in heldout}  # duplicates of held-out text left out too
    assert len({d.label for d in heldout[:20]}) >= 4  # topic-mixed order: a prefix spans the topics
    with pytest.raises(ValueError, match="not in the corpus.*full 'bbc-news' corpus"):
        heldout_split(docs[:100])


def _build(tmp: Path) -> Path:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        str(REPO / "data" / "saes" / "build_gsae.py"),
        "--max-docs",
        "10",
        "--d-sae",
        "64",
        "--tokens",
        "2048",
        "--batch-size",
        "512",
        "--eval-contexts",
        "8",
        "--sparsity-coefficients",
        "1",
        "2",
        "4",
        "--work",
        str(tmp / "work"),
        "--out",
        str(tmp / "out"),
    ]
    subprocess.run(cmd, check=True, env=env, capture_output=True, cwd=REPO)
    return tmp / "out" / "smollm2-135m-l6-tech1"


def test_the_recipe_on_a_tiny_budget_rebuilds_the_same_bits_and_writes_a_model_card(tmp_path):
    a, b = _build(tmp_path / "a"), _build(tmp_path / "b")
    digest = lambda p: hashlib.sha256((p / SAE_WEIGHTS_FILE).read_bytes()).hexdigest()
    assert digest(a) == digest(b)
    card_a, card_b = (json.loads((p / "card.json").read_text()) for p in (a, b))
    untimed = lambda m: {k: v for k, v in m.items() if k != "train_seconds"}
    assert untimed(card_a["metrics"]) == untimed(card_b["metrics"]) and [
        p["sparsity_coefficient"] for p in card_a["frontier"]
    ] == [1.0, 2.0, 4.0]
    assert card_a["tokens_seen"] == 2048 and "build_gsae.py" in card_a["command"]
    share = card_a["subdomain_share"]
    assert share["label"] == "tech" and share["target"] == 0.01 and share["reached"] <= share["natural"]
    assert set(card_a["convergence"]) >= {"mse_drop", "finetune_ce", "converged"}
    readme = (a / "README.md").read_text()
    assert "## Frontier" in readme and "## Convergence" in readme and "tech rare" in readme
    again = _build(tmp_path / "a")  # resuming a finished build changes nothing
    assert digest(again) == digest(a)


def _log(mse_at):
    """A training log every 1,000 tokens up to 100k, with MSE given as a function of tokens seen."""
    return [{"tokens": t, "mse": mse_at(t)} for t in range(1000, 100_001, 1000)]


def test_mse_drop_compares_the_final_window_with_the_window_ending_at_three_quarters():
    flat_then_drop = _log(lambda t: 10.0 if t <= 75_000 else 9.0)
    assert mse_drop(flat_then_drop) == pytest.approx(0.1)  # windows (70k, 75k] and (95k, 100k]
    assert mse_drop(_log(lambda t: 5.0)) == 0.0
    assert math.isnan(mse_drop([{"tokens": 100_000, "mse": 1.0}]))  # one logged step: cannot tell
    with pytest.raises(ValueError, match="empty"):
        mse_drop([])


def test_convergence_passes_only_when_both_tests_pass():
    flat = dict(estimate=0.01, low=-0.02, high=0.025, n_docs=50)
    assert Convergence(0.02, flat, 100_000).converged
    assert not Convergence(0.05, flat, 100_000).converged  # MSE still falling
    assert not Convergence(0.02, dict(flat, estimate=-0.03), 100_000).converged  # fine-tuning still helps
    assert not Convergence(0.02, dict(flat, low=-0.04), 100_000).converged  # interval too wide to tell
    assert not Convergence(math.nan, flat, 100_000).converged
    assert Convergence(0.02, flat, 100_000).as_dict()["converged"] is True


def test_check_convergence_on_a_toy_fine_tunes_on_its_own_data_and_measures_the_ce_change(
    tiny, docs, tmp_path
):
    model, tok = tiny
    store = cache_activations(model, tok, docs, 1, tmp_path / "acts", ctx_len=16)
    cfg = gsae_config(4 * 64, 1.0, d_sae=16, batch_size=64)
    trained = train(store, cfg, out_dir=tmp_path / "gsae")
    kw = dict(ctx_len=16, max_contexts=None)  # all 12 documents: enough for an interval
    base = evaluate(trained.sae, model, tok, docs, 1, **kw)
    conv = check_convergence(
        trained.sae,
        trained.log,
        store,
        model,
        tok,
        base,
        docs,
        tmp_path / "ft",
        1.0,
        finetune_tokens=1024,
        eval_kwargs=kw,
    )
    tuned = SAE.load(tmp_path / "ft")
    direct = evaluate(tuned, model, tok, docs, 1, baseline=base.metrics, **kw)
    assert conv.finetune_ce["estimate"] == pytest.approx(
        direct.metrics["ce_sae"] - base.metrics["ce_sae"], abs=1e-8
    )
    assert conv.finetune_ce["low"] <= conv.finetune_ce["estimate"] <= conv.finetune_ce["high"]
    assert conv.finetune_tokens == 1024 and math.isnan(conv.mse_drop) == (len(trained.log) < 4)


def test_a_sweep_share_on_a_tiny_model_compares_each_strategy_with_its_gsae_and_dense_with_none(
    tiny, tmp_path
):
    model, tok = tiny
    cfg = SweepConfig(
        shares=(0.05,), gsae_tokens=512, d_sae=16, layer=1, budget_tokens=4000, ssae_tokens=512,
        eval_contexts=800, n_eval_docs=10, batch_size=64, max_docs=60, ctx_len=32,
    )  # fmt: skip
    data = prepare(cfg, tmp_path, model, tok)
    count = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])
    result = run_share(data, cfg, 0.05, tmp_path, count)
    assert result["label_share"]["target"] == 0.05 and result["label_share"]["reached"] < 0.05 + 0.05
    assert set(result["ssae_vs_gsae"]) == {"dense", "none", "random"}
    for strategy, texts in result["ssae_vs_gsae"].items():
        for text, d in texts.items():
            assert d["low"] <= d["estimate"] <= d["high"]
            want = result["ssae"][strategy][text]["ce_sae"] - result["gsae"][text]["ce_sae"]
            assert d["estimate"] == pytest.approx(want)
    d = result["dense_vs_none"]["in_domain"]
    assert d["estimate"] == pytest.approx(
        result["ssae"]["dense"]["in_domain"]["ce_sae"] - result["ssae"]["none"]["in_domain"]["ce_sae"]
    )
    assert run_share(data, cfg, 0.05, tmp_path, count) == json.loads(json.dumps(result))  # resumed, not rerun
    longer = SweepConfig(**{**cfg.__dict__, "gsae_tokens": 1024})
    with pytest.raises(ValueError, match=r"was made with other sweep settings .*'gsae_tokens': 512"):
        run_share(data, longer, 0.05, tmp_path, count)  # a finished share is never reused for other settings
    write_sweep(tmp_path / "out", cfg, [result], {"threads": 2})
    assert load_sweep(tmp_path / "out" / "rarity_sweep.json") == [json.loads(json.dumps(result))]
    csv_rows = (tmp_path / "out" / "rarity_sweep.csv").read_text().splitlines()
    assert len(csv_rows) == 2 and "dense_vs_none_in_low" in csv_rows[0]
    assert "| 5% (0.050 → " in sweep_table([result])
    with pytest.raises(FileNotFoundError, match="make sweep"):
        load_sweep(tmp_path / "missing.json")


def _sweep_row(reached, dense_none_in, dense_gsae_in, none_gsae_in, dense_none_ood, converged=False):
    """A sweep_rows row with 0.02-wide intervals around each estimate."""
    row = dict(reached=reached, converged=converged, mse_drop=0.02 if converged else 0.06)
    row["own_finetune_estimate"] = 0.004 if converged else -0.4
    for key, value in dict(
        dense_vs_none_in=dense_none_in, dense_vs_gsae_in=dense_gsae_in, none_vs_gsae_in=none_gsae_in,
        dense_vs_none_ood=dense_none_ood,
    ).items():  # fmt: skip
        row |= {key: value, f"{key}_low": value - 0.02, f"{key}_high": value + 0.02}
    return row


def test_the_sweep_reading_says_the_claims_hold_only_when_the_numbers_show_them():
    rare_pays = [
        _sweep_row(0.0, -0.20, -0.30, -0.10, 0.05, True),
        _sweep_row(0.2, -0.05, -0.30, -0.25, 0.05, True),
    ]
    claim1, claim2, source, converged = sweep_reading(rare_pays)
    assert claim1.endswith("It holds at 2 of 2 shares: the claim holds.")  # no discussion when it holds
    assert claim2.endswith("larger at the rare share, with intervals apart: the claim holds.")
    assert "buys 33% to 83% of `dense`'s in-domain gain" in source and "not most of it" in source
    assert "+0.050 to +0.050 nats: specializing costs general text at every share." in source
    assert converged == "2 of 2 sweep GSAEs pass the convergence test."
    training = [_sweep_row(0.0, 0.01, -0.59, -0.60, 0.27), _sweep_row(0.2, -0.01, -0.52, -0.49, 0.01)]
    claim1, claim2, source, converged = sweep_reading(training)
    assert "It holds at 0 of 2 shares: the claim does not hold. For discussion:" in claim1
    assert "not larger at the rare share: the claim does not hold. For discussion:" in claim2
    assert "most of it is more training, not the subdomain's data" in source
    assert source.endswith("not a cost at every share.") and "more training, not specialization" in converged
    assert "; their training MSE fell 6.0% to 6.0% over the last quarter" in converged
    assert "moved held-out CE by -0.400 to -0.400 nats" in converged
    mixed = [_sweep_row(0.0, -0.20, -0.30, -0.10, 0.05, True), _sweep_row(0.2, -0.05, -0.30, +0.01, 0.05)]
    _, _, source, converged = sweep_reading(mixed)
    assert "buys nothing (+0.010 nats at 20.0% tech) to 33% of `dense`'s in-domain gain" in source
    assert converged.startswith(
        "1 of 2 sweep GSAEs pass the convergence test; for the 1 that fail, training MSE"
    )
