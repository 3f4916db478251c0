"""SAELens 6's on-disk format, translated: the cfg.json a kit SAE is saved with (`saelens_cfg`), the
kit's config fields read back from one (`kit_cfg_from_saelens`, refusing by name what the kit cannot
compute), the stored dtype, and safetensors weights read with every tensor checked (`read_weights`)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file

from .io import SAE_CFG_FILE
from .models import layer_of_hook

TO_SAELENS = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}
"""The kit's architecture names -> SAELens'."""
FROM_SAELENS = {v: k for k, v in TO_SAELENS.items()}
StoredDtype = Literal["float32", "float16", "bfloat16"]
STORED_DTYPES = ("float32", "float16", "bfloat16")
SAELENS_TOPK_DEFAULT_K = 100
"""The k SAELens' TopKSAEConfig uses when cfg.json names none; the kit reads such a file the same way."""


def read_weights(path: Path, architecture: str) -> dict[str, torch.Tensor]:
    """The tensors of `path`, refused naming the tensor when one the architecture needs is missing,
    one it cannot use is there (SAELens refuses a `threshold` on a standard SAE too), or one holds
    NaN/inf; a file that is not safetensors is refused naming the file."""
    try:
        t = load_file(str(path))
    except Exception as err:  # safetensors raises SafetensorError / OSError on garbage or truncation
        raise ValueError(
            f"{path} is not a readable safetensors file ({type(err).__name__}: {err}): restore the SAE folder "
            "from where it came, or save the SAE again."
        ) from err
    need = {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"threshold"} if architecture == "jumprelu" else set())
    if missing := sorted(need - set(t)):
        raise ValueError(
            f"{path} lacks the tensor(s) {missing} that a {architecture} SAE needs; it holds {sorted(t)}."
        )
    if "threshold" in t and architecture != "jumprelu":
        raise ValueError(
            f"{path} holds a `threshold` tensor, but its cfg.json says architecture {architecture!r}: set "
            "architecture 'jumprelu' in cfg.json if it is one, or remove the tensor."
        )
    for name, tensor in t.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(
                f"Tensor {name!r} of {path} holds NaN/inf: the SAE is broken; retrain or restore it."
            )
    return t


def saelens_cfg(cfg: Any, dtype: StoredDtype) -> dict[str, Any]:
    out: dict[str, Any] = {
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": dtype,
        "device": "cpu",
        "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "architecture": TO_SAELENS[cfg.architecture],
        "metadata": {
            "sae_lens_version": "6.0.0",
            "model_name": cfg.model_name,
            "hook_name": cfg.hook_name,
            "context_size": cfg.context_size or None,
            "prepend_bos": cfg.prepend_bos,
            "exclude_special_tokens": cfg.exclude_special_tokens,
            "dataset_path": cfg.dataset_path or None,
            "ssae_kit": asdict(cfg),  # everything else the kit needs, kept verbatim by SAELens
        },
    }
    if cfg.architecture == "topk":
        out.update(k=cfg.k, rescale_acts_by_decoder_norm=False)
    return out


def kit_cfg_from_saelens(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """The kit's config fields (for `SAEConfig.from_dict`) of a SAELens 6 cfg.json; refuses, naming
    the field, what the kit cannot compute."""
    file = path / SAE_CFG_FILE
    meta = raw.get("metadata") or {}
    version = str(meta.get("sae_lens_version") or raw.get("sae_lens_version") or "none")
    major = version.split(".")[0]
    if not (major.isdigit() and int(major) >= 6):
        raise ValueError(
            f"{file} has sae_lens_version={version!r}, a format older than SAELens 6 that the kit does not read: "
            "load it with SAELens (SAE.load_from_disk) and convert it with ssae_kit.sae.from_sae_lens."
        )
    arch = raw.get("architecture")
    if arch not in FROM_SAELENS:
        hint = (
            " SAELens' save_inference_model saves a batchtopk SAE as jumprelu."
            if "batchtopk" in str(arch)
            else ""
        )
        raise ValueError(
            f"{file} has architecture {arch!r}; the kit reads {sorted(FROM_SAELENS)} (SAELens names). "
            f"Pick an SAE of a supported architecture.{hint}"
        )
    for field, fix in (
        (
            "normalize_activations",
            ("fold the normalisation into the weights first (SAELens: fold_activation_norm_scaling_factor)"),
        ),
        ("reshape_activations", "the kit reads the residual stream, not attention heads"),
    ):
        if raw.get(field, "none") not in ("none", None):
            raise ValueError(f"{file} asks for {field}={raw[field]!r}, which the kit does not apply: {fix}.")
    kit = dict(meta.get("ssae_kit", {}))
    kit.update(
        d_in=raw["d_in"],
        d_sae=raw["d_sae"],
        architecture=FROM_SAELENS[arch],
        dtype="float32",
        apply_b_dec_to_input=raw.get("apply_b_dec_to_input", True),
    )
    # SAELens' own fields win over the kit's copy in metadata.ssae_kit: an SAE edited and re-saved
    # by SAELens keeps a stale copy, and its hook_name is what SAELens tooling reads.
    for key in (
        "model_name",
        "hook_name",
        "context_size",
        "prepend_bos",
        "exclude_special_tokens",
        "dataset_path",
    ):
        if meta.get(key) is not None:
            kit[key] = meta[key]
    kit.setdefault("model_name", "")
    kit.setdefault("hook_name", "")
    if kit["hook_name"]:
        kit["layer"] = layer_of_hook(kit["hook_name"])
    kit.setdefault("layer", -1)
    if arch == "topk":
        kit["k"] = raw.get("k", SAELENS_TOPK_DEFAULT_K)  # cfg.json's k is what SAELens runs, not the copy
    return kit


def stored_dtype(raw: dict[str, Any], path: Path) -> torch.dtype:
    """The dtype SAELens casts the weights to on load (cfg.json `dtype`, its DTYPE_MAP names)."""
    name = str(raw.get("dtype", "float32")).removeprefix("torch.")
    if name not in ("float32", "float64", "float16", "bfloat16"):
        raise ValueError(
            f"{path / SAE_CFG_FILE} has dtype={raw['dtype']!r}; SAELens and the kit read "
            "float32, float64, float16 or bfloat16."
        )
    return getattr(torch, name)
