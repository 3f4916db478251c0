"""The shipped GSAE (data/saes/), its recipe (data/saes/build_gsae.py) and the committed held-out split."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ssae_kit import load_corpus
from ssae_kit.corpora import SPLITS_DIR, heldout_split
from ssae_kit.sae import SHIPPED_DIR, load_pretrained, resolve_sae, shipped_saes

REPO = Path(__file__).resolve().parents[1]
GSAE_ID = "smollm2-135m-l6"


def test_the_shipped_gsae_loads_by_short_id_for_the_embedded_model_and_layer():
    sae = load_pretrained("ssae-kit", GSAE_ID)
    assert (sae.cfg.model_name, sae.cfg.layer, sae.cfg.d_in, sae.cfg.d_sae) == ("smollm2-135m", 6, 576, 4608)
    assert (
        sae.cfg.architecture == "relu" and sae.W_dec.dtype.is_floating_point and sae.W_dec.dtype.itemsize == 4
    )
    assert resolve_sae(f"ssae-kit:{GSAE_ID}").cfg == sae.cfg
    card = json.loads((SHIPPED_DIR / GSAE_ID / "card.json").read_text())
    assert card["layer"] == 6 and card["metrics"]["n_tokens"] >= 20_000 and len(card["frontier"]) == 3
    assert (SHIPPED_DIR / GSAE_ID / "README.md").read_text().startswith(f"# {GSAE_ID}")
    assert (SHIPPED_DIR / GSAE_ID / "sae_weights.safetensors").stat().st_size <= 12 * 2**20


def test_unknown_shipped_ids_and_malformed_specs_name_the_fix(tmp_path):
    assert GSAE_ID in shipped_saes()
    with pytest.raises(ValueError, match=f"ships no SAE 'nope'.*{GSAE_ID}"):
        load_pretrained("ssae-kit", "nope")
    with pytest.raises(ValueError, match="neither a folder nor 'release:sae_id'"):
        resolve_sae(str(tmp_path / "missing_folder"))


def test_the_committed_heldout_split_is_disjoint_from_training_text():
    docs = load_corpus("bbc-news")
    train, heldout = heldout_split(docs)
    committed = json.loads((SPLITS_DIR / "bbc-news.json").read_text())["heldout"]
    assert [d.source for d in heldout] == committed and len(heldout) == 318
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
        "6",
        "--d-sae",
        "64",
        "--tokens",
        "2048",
        "--batch-size",
        "512",
        "--eval-contexts",
        "2",
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
    return tmp / "out" / GSAE_ID


def test_the_recipe_on_a_tiny_budget_rebuilds_the_same_bits_and_writes_a_model_card(tmp_path):
    a, b = _build(tmp_path / "a"), _build(tmp_path / "b")
    digest = lambda p: hashlib.sha256((p / "sae_weights.safetensors").read_bytes()).hexdigest()
    assert digest(a) == digest(b)
    card_a, card_b = (json.loads((p / "card.json").read_text()) for p in (a, b))
    untimed = lambda m: {k: v for k, v in m.items() if k != "train_seconds"}
    assert untimed(card_a["metrics"]) == untimed(card_b["metrics"]) and [
        p["sparsity_coefficient"] for p in card_a["frontier"]
    ] == [1.0, 2.0, 4.0]
    assert card_a["tokens_seen"] == 2048 and "build_gsae.py" in card_a["command"]
    assert "## Frontier" in (a / "README.md").read_text()
    again = _build(tmp_path / "a")  # resuming a finished build changes nothing
    assert digest(again) == digest(a)
