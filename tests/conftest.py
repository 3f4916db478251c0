"""Shared fixtures. Sets offline mode and repo-local caches before anything imports the HF hub."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for var, value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "SSAE_KIT_CACHE": str(REPO / ".cache" / "ssae_kit"),
    "HF_HOME": str(REPO / ".cache" / "huggingface"),
    "MPLCONFIGDIR": str(REPO / ".cache" / "matplotlib"),
}.items():
    os.environ.setdefault(var, value)

import pytest
import torch

from ssae_kit import SAE
from ssae_kit.corpora import Document
from ssae_kit.models import tiny_model
from ssae_kit.sae import SAEConfig


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny():
    """A 3-block random Llama with a byte tokenizer: (model, tokenizer)."""
    return tiny_model("llama", n_layers=3, d_model=32)


@pytest.fixture(scope="session")
def docs() -> list[Document]:
    """A dozen short documents of varied length, two labels."""
    words = [
        "the",
        "cat",
        "sat",
        "on",
        "a",
        "mat",
        "while",
        "dogs",
        "barked",
        "loudly",
        "at",
        "passing",
        "cars",
    ]
    return [
        Document(" ".join(words[i % 5 :] * (1 + i % 4)), "a" if i % 2 else "b", f"doc{i}") for i in range(12)
    ]


@pytest.fixture
def identity_sae():
    """Builds SAEs whose latents are relu(x) and relu(-x), so decode(encode(x)) == x exactly."""

    def make(d: int, layer: int = 1) -> SAE:
        sae = SAE(SAEConfig(d_in=d, d_sae=2 * d, layer=layer))
        eye = torch.eye(d)
        with torch.no_grad():
            sae.W_enc.copy_(torch.cat([eye, -eye], 1))
            sae.W_dec.copy_(torch.cat([eye, -eye], 0))
        return sae

    return make
