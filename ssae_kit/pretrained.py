"""Pretrained SAEs: the ones the kit ships in data/saes/ (`load_pretrained("ssae-kit", id)`, offline,
each with its model card), any other release through SAELens' registry, SAELens SAE objects
(`from_sae_lens`), and `resolve_sae`, which reads a notebook's GSAE parameter (a folder or
"release:id")."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from .io import SAE_CFG_FILE
from .sae import SAE

__all__ = [
    "resolve_sae",
]


def from_sae_lens(sae_lens_sae: Any) -> SAE:
    """Convert a SAELens SAE object through its own save format, which `SAE.load` reads.

    A SAELens training SAE is saved in its inference form (batchtopk becomes jumprelu), as SAELens
    does at the end of training."""
    if not hasattr(sae_lens_sae, "save_model"):
        raise ValueError(f"Expected an ssae_kit SAE or a SAELens SAE, not {type(sae_lens_sae).__name__}.")
    with tempfile.TemporaryDirectory() as tmp:
        getattr(sae_lens_sae, "save_inference_model", sae_lens_sae.save_model)(tmp)
        return SAE.load(tmp)


SHIPPED_RELEASE = "ssae-kit"


SHIPPED_DIR = Path(__file__).resolve().parents[1] / "data" / "saes"
"""SAEs the kit ships (`load_pretrained("ssae-kit", "<folder name>")`), each with its model card."""


RENAMED_SAES = {"smollm2-135m-l6": "smollm2-135m-l6-tech21"}
"""Ids the kit shipped under another name before: old id -> current id."""


def shipped_saes() -> list[str]:
    """Ids of the SAEs in data/saes/ (folders holding a cfg.json)."""
    return sorted(p.parent.name for p in SHIPPED_DIR.glob(f"*/{SAE_CFG_FILE}"))


def load_pretrained(release: str, sae_id: str, device: str | torch.device = "cpu") -> SAE:
    """A pretrained SAE by (release, id), the call shape of SAELens' registry: release "ssae-kit"
    is one the kit ships in data/saes/ (offline); any other release goes through SAELens' registry
    (e.g. Gemma Scope as the GSAE), which needs `sae-lens` and internet or a cached download."""
    if release == SHIPPED_RELEASE:
        if sae_id in RENAMED_SAES:
            raise ValueError(
                f"The shipped SAE {sae_id!r} was renamed {RENAMED_SAES[sae_id]!r} (its id now says its subdomain "
                f"share): load that id, or the default GSAE; shipped: {shipped_saes()}."
            )
        if sae_id not in shipped_saes():
            raise ValueError(
                f"The kit ships no SAE {sae_id!r}; shipped: {shipped_saes() or 'none found in ' + str(SHIPPED_DIR)}."
            )
        return SAE.load(SHIPPED_DIR / sae_id, device=device)
    try:
        from sae_lens import SAE as LensSAE
    except ImportError as err:
        raise ValueError(
            "load_pretrained needs SAELens: run `pip install sae-lens` (or the kit's dev extra)."
        ) from err
    try:
        lens = LensSAE.from_pretrained(release, sae_id, device="cpu")
    except OSError as err:  # huggingface_hub's LocalEntryNotFoundError when offline and not cached
        raise ValueError(
            f"SAE {release!r} / {sae_id!r} is not in the local Hugging Face cache and could not be downloaded "
            "(HF_HUB_OFFLINE=1 or no internet). Go online once to cache it, or pass a local folder to SAE.load."
        ) from err
    lens = lens[0] if isinstance(lens, tuple) else lens  # SAELens < 6 returned (sae, cfg, sparsity)
    return from_sae_lens(lens).to(device)


def resolve_sae(spec: str, device: str | torch.device = "cpu") -> SAE:
    """An SAE from a notebook parameter: a folder with cfg.json, or "release:sae_id" (the kit's
    shipped release "ssae-kit" or SAELens'); a clear error otherwise, before any work."""
    if Path(spec).expanduser().is_dir():
        return SAE.load(Path(spec).expanduser(), device=device)
    release, sep, sae_id = spec.partition(":")
    if not sep or not sae_id:
        raise ValueError(
            f"SAE {spec!r} is neither a folder nor 'release:sae_id': give a folder with {SAE_CFG_FILE}, "
            f"'{SHIPPED_RELEASE}:<id>' (shipped: {shipped_saes()}), or a SAELens release and id."
        )
    return load_pretrained(release, sae_id, device=device)
