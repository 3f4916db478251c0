"""The sparse autoencoder: ReLU (L1), TopK and JumpReLU in one class, saved in SAELens' format.

PAPER §2: f = act(W_enc (x - b_dec) + b_enc), x_hat = W_dec f + b_dec, decoder rows at unit norm.
The SAE works on the store's *normalised* activations (x * norm_scale, see activations.py) so a
sparsity coefficient means the same across models and layers; `encode`/`decode`/`forward` take
and return raw model activations and apply the scale themselves. On disk the scale is folded into
the weights (W_enc * s, W_dec / s, b_dec / s) so SAELens, which applies no normalisation in
`load_from_disk`, computes the same function on raw activations.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from .io import SAE_CFG_FILE, SAE_WEIGHTS_FILE, atomic_write_dir, atomic_write_json

Architecture = Literal["relu", "topk", "jumprelu"]
_TO_SAELENS = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu"}
_FROM_SAELENS = {v: k for k, v in _TO_SAELENS.items()}


@dataclass
class SAEConfig:
    """Shape, architecture and provenance of an SAE."""

    d_in: int
    """Width of the activations (the model's d_model)."""
    d_sae: int
    """Number of latents."""
    architecture: Architecture = "relu"
    """relu (L1 penalty, the paper's default), topk (k largest latents), jumprelu (thresholds)."""
    k: int = 32
    """Active latents per token for topk."""
    threshold: float = 0.001
    """Initial JumpReLU threshold (normalised units)."""
    bandwidth: float = 0.001
    """Width of the rectangle kernel of JumpReLU's straight-through threshold gradient."""
    dtype: str = "float32"
    """Parameter dtype."""
    model_name: str = ""
    """Model the SAE reads, as given to load_model."""
    layer: int = -1
    """Block whose output (resid_post) the SAE reads."""
    hook_name: str = ""
    """TransformerLens-style hook name, e.g. blocks.6.hook_resid_post."""
    norm_scale: float = 1.0
    """Factor applied to raw activations before encoding (the store's norm_scale)."""

    def __post_init__(self) -> None:
        if self.architecture not in _TO_SAELENS:
            raise ValueError(f"Unknown architecture {self.architecture!r}; use one of {sorted(_TO_SAELENS)}.")
        if self.architecture == "topk" and not 0 < self.k <= self.d_sae:
            raise ValueError(f"k={self.k} must be between 1 and d_sae={self.d_sae}; lower k or raise d_sae.")
        if not (self.norm_scale > 0 and math.isfinite(self.norm_scale)):
            raise ValueError(f"norm_scale={self.norm_scale} must be a positive finite number.")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAEConfig:
        """Build from a dict, keeping known fields only (so configs of other versions load)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class ForwardOutput(NamedTuple):
    sae_out: torch.Tensor
    """(B, d_in) reconstruction, raw units."""
    feature_acts: torch.Tensor
    """(B, d_sae) latents."""
    mse: torch.Tensor
    """(B,) squared error per token, summed over d_in, normalised units."""
    sparsity: torch.Tensor
    """(B,) per-token sparsity penalty: L1 of the latents (relu), L0 (jumprelu), 0 (topk)."""


class SAE(nn.Module):
    """One sparse autoencoder; `cfg.architecture` picks the activation function."""

    def __init__(self, cfg: SAEConfig, seed: int | None = 0):
        super().__init__()
        self.cfg = cfg
        dtype = getattr(torch, cfg.dtype)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        W_dec = torch.randn(cfg.d_sae, cfg.d_in, generator=gen, dtype=torch.float32)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        # Encoder initialised as the decoder's transpose (Anthropic's April 2024 update, SAELens).
        self.W_dec = nn.Parameter(W_dec.to(dtype))  # (d_sae, d_in)
        self.W_enc = nn.Parameter(W_dec.T.clone().to(dtype))  # (d_in, d_sae)
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in, dtype=dtype))
        if cfg.architecture == "jumprelu":
            self.log_threshold = nn.Parameter(torch.full((cfg.d_sae,), math.log(cfg.threshold), dtype=dtype))

    # --- the function -----------------------------------------------------------------------
    def _pre(self, x: torch.Tensor) -> torch.Tensor:
        """(x - b_dec) W_enc + b_enc, (B, d_sae), written so that backward never multiplies back
        through x: b_dec enters as a vector-matrix product, saving a (B, d_sae, d_in) matmul."""
        pre = torch.addmm(self.b_enc - self.b_dec @ self.W_enc, x.reshape(-1, x.shape[-1]), self.W_enc)
        return pre.reshape(*x.shape[:-1], -1)

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        if self.cfg.architecture == "relu":
            return F.relu(pre)
        if self.cfg.architecture == "topk":
            values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter_(-1, indices, F.relu(values))
        return F.relu(pre) * _JumpStep.apply(pre, self.log_threshold.exp(), self.cfg.bandwidth)

    def encode_normalized(self, x: torch.Tensor) -> torch.Tensor:
        """(B, d_in) normalised activations -> (B, d_sae) latents."""
        return self._activate(self._pre(x))

    def decode_normalized(self, f: torch.Tensor) -> torch.Tensor:
        """(B, d_sae) latents -> (B, d_in) normalised reconstruction."""
        return torch.addmm(self.b_dec, f.reshape(-1, f.shape[-1]), self.W_dec).reshape(*f.shape[:-1], -1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Raw model activations (..., d_in) -> latents (..., d_sae)."""
        return self.encode_normalized(x * self.cfg.norm_scale)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Latents (..., d_sae) -> reconstruction in raw model units (..., d_in)."""
        return self.decode_normalized(f) / self.cfg.norm_scale

    def forward(self, x: torch.Tensor) -> ForwardOutput:
        """Reconstruct raw activations (B, d_in); loss parts are per token, in normalised units."""
        x_n = x * self.cfg.norm_scale
        if self.cfg.architecture == "topk":
            return self._forward_topk(x_n)
        pre = self._pre(x_n)
        f = self._activate(pre)
        x_hat_n = self.decode_normalized(f)
        mse = (x_hat_n - x_n).pow(2).sum(-1)
        if self.cfg.architecture == "relu":
            sparsity = f.sum(-1)  # the L1 norm: ReLU latents are >= 0
        elif self.cfg.architecture == "jumprelu":  # L0 with a straight-through threshold gradient
            sparsity = _JumpStep.apply(pre, self.log_threshold.exp(), self.cfg.bandwidth).sum(-1)
        else:
            sparsity = torch.zeros_like(mse)
        return ForwardOutput(x_hat_n / self.cfg.norm_scale, f, mse, sparsity)

    def _forward_topk(self, x_n: torch.Tensor) -> ForwardOutput:
        """TopK forward that exploits sparsity, as sparsify does: only B*k latents are non-zero,
        so the decoder is an embedding_bag over them and the encoder's backward is a sparse product.
        Same function as the dense path; feature_acts is built for reporting and carries no gradient."""
        values, indices = _TopKEncode.apply(x_n, self.W_enc, self.b_enc, self.b_dec, self.cfg.k)
        values = F.relu(values)  # (B, k)
        x_hat_n = F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum") + self.b_dec
        mse = (x_hat_n - x_n).pow(2).sum(-1)
        with torch.no_grad():
            f = torch.zeros(len(x_n), self.cfg.d_sae, dtype=values.dtype, device=values.device)
            f.scatter_(-1, indices, values)
        return ForwardOutput(x_hat_n / self.cfg.norm_scale, f, mse, torch.zeros_like(mse))

    # --- the unit-norm decoder constraint (two named steps, as in sparsify) -----------------
    @torch.no_grad()
    def set_decoder_norm_to_unit_norm(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_gradient_parallel_to_decoder_directions(self) -> None:
        if self.W_dec.grad is not None:
            parallel = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
            self.W_dec.grad -= parallel * self.W_dec

    # --- SAELens on-disk format --------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write `cfg.json` + `sae_weights.safetensors` that SAELens' `SAE.load_from_disk` reads, as one unit."""
        s = self.cfg.norm_scale
        tensors = {
            "W_enc": self.W_enc.detach() * s, "b_enc": self.b_enc.detach(),
            "W_dec": self.W_dec.detach() / s, "b_dec": self.b_dec.detach() / s,
        }
        if self.cfg.architecture == "jumprelu":
            tensors["threshold"] = self.log_threshold.detach().exp()

        def write(tmp: Path) -> None:
            save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp / SAE_WEIGHTS_FILE))
            atomic_write_json(tmp / SAE_CFG_FILE, _saelens_cfg(self.cfg))

        return atomic_write_dir(path, write, marker=SAE_CFG_FILE)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> SAE:
        """Load a folder written by `save` or by SAELens (`cfg.json` + `sae_weights.safetensors`)."""
        path = Path(path)
        if not (path / SAE_CFG_FILE).exists():
            raise FileNotFoundError(f"No SAE at {path}: expected {SAE_CFG_FILE} and {SAE_WEIGHTS_FILE} there.")
        raw = json.loads((path / SAE_CFG_FILE).read_text())
        cfg = _cfg_from_saelens(raw, path)
        sae = cls(cfg, seed=None)
        t = load_file(str(path / SAE_WEIGHTS_FILE))
        s = cfg.norm_scale
        state = {"W_enc": t["W_enc"] / s, "b_enc": t["b_enc"], "W_dec": t["W_dec"] * s, "b_dec": t["b_dec"] * s}
        if cfg.architecture == "jumprelu":
            state["log_threshold"] = t["threshold"].clamp_min(1e-12).log()
        sae.load_state_dict({k: v.to(getattr(torch, cfg.dtype)) for k, v in state.items()})
        return sae.to(device)


def from_sae_lens(sae_lens_sae: Any) -> SAE:
    """Convert a SAELens SAE object through its own save format, which `SAE.load` reads."""
    if not hasattr(sae_lens_sae, "save_model"):
        raise ValueError(f"Expected an ssae_kit SAE or a SAELens SAE, not {type(sae_lens_sae).__name__}.")
    with tempfile.TemporaryDirectory() as tmp:
        sae_lens_sae.save_model(tmp)
        return SAE.load(tmp)


def load_pretrained(release: str, sae_id: str, device: str | torch.device = "cpu") -> SAE:
    """A pretrained SAE from SAELens' registry (e.g. Gemma Scope as the GSAE); needs `sae-lens` and internet."""
    try:
        from sae_lens import SAE as LensSAE
    except ImportError as err:
        raise ValueError("load_pretrained needs SAELens: run `pip install sae-lens` (or the kit's dev extra).") from err
    try:
        lens = LensSAE.from_pretrained(release, sae_id, device="cpu")
    except OSError as err:  # huggingface_hub's LocalEntryNotFoundError when offline and not cached
        raise ValueError(
            f"SAE {release!r} / {sae_id!r} is not in the local Hugging Face cache and could not be downloaded "
            "(HF_HUB_OFFLINE=1 or no internet). Go online once to cache it, or pass a local folder to SAE.load."
        ) from err
    lens = lens[0] if isinstance(lens, tuple) else lens  # SAELens < 6 returned (sae, cfg, sparsity)
    return from_sae_lens(lens).to(device)


class _TopKEncode(torch.autograd.Function):
    """Top-k of the encoder pre-activations, (values, indices), with a sparse backward.

    Only the B*k selected pre-activations get gradient, so dL/dW_enc = x^T G with G sparse
    (B*k non-zeros) costs B*k*d_in instead of the dense B*d_sae*d_in.
    """

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_dec, k: int):
        pre = torch.addmm(b_enc - b_dec @ W_enc, x, W_enc)  # (B, d_sae)
        values, indices = pre.topk(k, dim=-1, sorted=False)
        ctx.save_for_backward(x, W_enc, b_dec, indices)
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad_values, _grad_indices):
        x, W_enc, b_dec, indices = ctx.saved_tensors
        B, k = indices.shape
        d_sae = W_enc.shape[1]
        rows = torch.arange(B, device=x.device).repeat_interleave(k)
        G_T = torch.sparse_coo_tensor(torch.stack([indices.flatten(), rows]), grad_values.flatten(), (d_sae, B),
                                      check_invariants=False)  # (d_sae, B), B*k non-zeros
        grad_b_enc = torch.zeros(d_sae, dtype=grad_values.dtype, device=x.device)
        grad_b_enc.index_add_(0, indices.flatten(), grad_values.flatten())
        # dpre/dW_enc is (x - b_dec): G^T x minus the b_dec part, an outer product
        grad_W_enc = (torch.sparse.mm(G_T, x) - grad_b_enc[:, None] * b_dec[None, :]).T.contiguous()
        return None, grad_W_enc, grad_b_enc, -(W_enc @ grad_b_enc), None


class _JumpStep(torch.autograd.Function):
    """Heaviside step H(pre - threshold) with a straight-through gradient for the threshold only.

    Rajamanoharan et al. 2024 (JumpReLU SAEs): d/dθ H(z - θ) ≈ -K((z - θ)/ε)/ε, K a rectangle.
    """

    @staticmethod
    def forward(ctx, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        kernel = ((pre - threshold).abs() < eps / 2).to(pre.dtype) / eps
        return None, -(grad * kernel).sum(0), None


def _saelens_cfg(cfg: SAEConfig) -> dict[str, Any]:
    out: dict[str, Any] = {
        "d_in": cfg.d_in, "d_sae": cfg.d_sae, "dtype": cfg.dtype, "device": "cpu",
        "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
        "architecture": _TO_SAELENS[cfg.architecture],
        "metadata": {
            "sae_lens_version": "6.0.0", "model_name": cfg.model_name, "hook_name": cfg.hook_name,
            "ssae_kit": asdict(cfg),  # everything else the kit needs, kept verbatim by SAELens
        },
    }
    if cfg.architecture == "topk":
        out.update(k=cfg.k, rescale_acts_by_decoder_norm=False)
    return out


def _cfg_from_saelens(raw: dict[str, Any], path: Path) -> SAEConfig:
    arch = raw.get("architecture", "standard")
    if arch not in _FROM_SAELENS:
        raise ValueError(
            f"{path / SAE_CFG_FILE} has architecture {arch!r}; the kit reads {sorted(_FROM_SAELENS)} "
            "(SAELens names). Convert it with SAELens or pick an SAE of a supported architecture."
        )
    if raw.get("normalize_activations", "none") not in ("none", None):
        raise ValueError(
            f"{path / SAE_CFG_FILE} asks for normalize_activations={raw['normalize_activations']!r}; "
            "fold the normalisation into the weights first (SAELens: fold_activation_norm_scaling_factor)."
        )
    meta = raw.get("metadata", {}) or {}
    kit = dict(meta.get("ssae_kit", {}))
    kit.update(d_in=raw["d_in"], d_sae=raw["d_sae"], architecture=_FROM_SAELENS[arch],
               dtype=raw.get("dtype", "float32"))
    kit.setdefault("model_name", meta.get("model_name") or "")
    kit.setdefault("hook_name", meta.get("hook_name") or "")
    if arch == "topk":
        kit["k"] = raw.get("k", kit.get("k", 32))
    return SAEConfig.from_dict(kit)
