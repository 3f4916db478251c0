"""The sparse autoencoder: ReLU (L1), TopK and JumpReLU in one class, saved in SAELens' format.

PAPER §2: f = act(W_enc (x - b_dec) + b_enc), x_hat = W_dec f + b_dec, decoder rows at unit norm;
SAEs with SAELens' `apply_b_dec_to_input=False` (Gemma Scope) encode x itself, not x - b_dec.
The SAE works on the store's *normalised* activations (x * norm_scale, see store.py) so a
sparsity coefficient means the same across models and layers; `encode`/`decode`/`forward` take
and return raw model activations and apply the scale themselves. On disk the scale is folded into
the weights (W_enc * s, W_dec / s, b_dec / s) so SAELens, which applies no normalisation in
`load_from_disk`, computes the same function on raw activations. `SAE.load` gives SAELens' function
for every cfg.json field that changes it, or refuses naming the field. Parameters are float32: the
kit computes and fine-tunes in float32, and upcasts bfloat16/float16 weights on load.

The custom autograd functions at the end make training cheap: a TopK encode and a sparse ReLU encode
whose backward touches only the firing (token, latent) pairs (nnz * d_in instead of
B * d_sae * d_in), and JumpReLU's step with a straight-through threshold gradient.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from .io import SAE_CFG_FILE, SAE_WEIGHTS_FILE, atomic_write_dir, atomic_write_json, read_json
from .models import layer_of_hook, same_model
from .saelens_format import (
    STORED_DTYPES,
    TO_SAELENS,
    StoredDtype,
    kit_cfg_from_saelens,
    read_weights,
    saelens_cfg,
    stored_dtype,
)

__all__ = [
    "SAE",
]

Architecture = Literal["relu", "topk", "jumprelu"]
SPARSE_RELU_MAX_DENSITY = 0.2
"""A ReLU forward that trains the weights goes sparse when at most this share of the batch's
(token, latent) pairs fire. On 2 CPU cores (benchmarks/bench_train.py --density, the shipped GSAE's
width) the sparse step is ~2x the dense one up to 17% firing, 1.3x at 31%, 0.76x at 45%."""


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
    apply_b_dec_to_input: bool = True
    """Subtract b_dec from the input before encoding (SAELens' flag; Gemma Scope turns it off)."""
    dtype: Literal["float32"] = "float32"
    """Parameter dtype: the kit computes and fine-tunes in float32 (`SAE.load` upcasts bf16/fp16 weights)."""
    model_name: str = ""
    """Model the SAE reads, as given to load_model."""
    layer: int = -1
    """Block whose output (resid_post) the SAE reads; -1: unknown, accepted at any layer."""
    hook_name: str = ""
    """TransformerLens-style hook name, e.g. blocks.6.hook_resid_post; must agree with `layer`."""
    norm_scale: float = 1.0
    """Factor applied to raw activations before encoding (the store's norm_scale)."""
    context_size: int = 0
    """Tokens per context of the training activations (SAELens' metadata.context_size); 0: unknown."""
    prepend_bos: bool = True
    """Whether each training context began with BOS (SAELens' metadata.prepend_bos)."""
    exclude_special_tokens: bool = True
    """Whether BOS/EOS/PAD positions were left out of training (SAELens' metadata.exclude_special_tokens)."""
    dataset_path: str = ""
    """What the training activations came from (SAELens' metadata.dataset_path); '': unknown."""

    def __post_init__(self) -> None:
        if self.architecture not in TO_SAELENS:
            raise ValueError(f"Unknown architecture {self.architecture!r}; use one of {sorted(TO_SAELENS)}.")
        if self.architecture == "topk" and not 0 < self.k <= self.d_sae:
            raise ValueError(f"k={self.k} must be between 1 and d_sae={self.d_sae}; lower k or raise d_sae.")
        if self.context_size < 0:
            raise ValueError(f"context_size={self.context_size} must be >= 0 (0: unknown).")
        if not (self.norm_scale > 0 and math.isfinite(self.norm_scale)):
            raise ValueError(f"norm_scale={self.norm_scale} must be a positive finite number.")
        if self.dtype != "float32":
            raise ValueError(
                f"dtype={self.dtype!r}: the kit computes and fine-tunes in float32, so keep "
                "dtype='float32'; SAE.load upcasts bfloat16/float16 weights."
            )
        if self.hook_name and layer_of_hook(self.hook_name) != self.layer:
            raise ValueError(
                f"layer={self.layer} but hook_name={self.hook_name!r} reads layer "
                f"{layer_of_hook(self.hook_name)}: set layer to match, or hook_name=''."
            )

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
    sq_error: torch.Tensor
    """(B,) squared error per token, summed over d_in (not a mean), normalised units."""
    sparsity: torch.Tensor
    """(B,) per-token sparsity penalty: L1 of the latents (relu), L0 (jumprelu), 0 (topk)."""


class SAE(nn.Module):
    """One sparse autoencoder; `cfg.architecture` picks the activation function."""

    def __init__(self, cfg: SAEConfig, seed: int | None = 0):
        super().__init__()
        self.cfg = cfg
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        W_dec = torch.randn(cfg.d_sae, cfg.d_in, generator=gen)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        # Encoder initialised as the decoder's transpose (Anthropic's April 2024 update, SAELens).
        self.W_dec = nn.Parameter(W_dec)  # (d_sae, d_in)
        self.W_enc = nn.Parameter(W_dec.T.clone())  # (d_in, d_sae)
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        if cfg.architecture == "jumprelu":
            self.log_threshold = nn.Parameter(torch.full((cfg.d_sae,), math.log(cfg.threshold)))

    # --- the function -----------------------------------------------------------------------
    def _input_bias(self) -> torch.Tensor:
        """(d_in,) what encoding subtracts from x: b_dec, or 0 with apply_b_dec_to_input off (as SAELens)."""
        return self.b_dec * self.cfg.apply_b_dec_to_input

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """(x - b_dec) W_enc + b_enc for normalised x (B, d_in) -> (B, d_sae), before the activation
        function (SAELens's hidden pre). Backward never multiplies back through x: b_dec enters as a
        vector-matrix product, saving a (B, d_sae, d_in) matmul."""
        pre = torch.addmm(
            self.b_enc - self._input_bias() @ self.W_enc, x.reshape(-1, x.shape[-1]), self.W_enc
        )
        return pre.reshape(*x.shape[:-1], -1)

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        if self.cfg.architecture == "relu":
            return F.relu(pre)
        if self.cfg.architecture == "topk":
            values, indices = pre.topk(self.cfg.k, dim=-1, sorted=False)
            return torch.zeros_like(pre).scatter_(-1, indices, F.relu(values))
        return F.relu(pre) * JumpStep.apply(pre, self.log_threshold.exp(), self.cfg.bandwidth)

    def encode_normalized(self, x: torch.Tensor) -> torch.Tensor:
        """(B, d_in) normalised activations -> (B, d_sae) latents."""
        return self._activate(self.pre_activations(x))

    def decode_normalized(self, f: torch.Tensor) -> torch.Tensor:
        """(B, d_sae) latents -> (B, d_in) normalised reconstruction."""
        return torch.addmm(self.b_dec, f.reshape(-1, f.shape[-1]), self.W_dec).reshape(*f.shape[:-1], -1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Raw model activations (..., d_in), any float dtype -> latents (..., d_sae) in the SAE's dtype."""
        return self.encode_normalized(x.to(self.W_enc.dtype) * self.cfg.norm_scale)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Latents (..., d_sae) -> reconstruction in raw model units (..., d_in)."""
        return self.decode_normalized(f.to(self.W_dec.dtype)) / self.cfg.norm_scale

    def forward(self, x: torch.Tensor) -> ForwardOutput:
        """Reconstruct raw activations (..., d_in), cast to the SAE's dtype as SAELens does; loss parts
        are per token (shape ...), in normalised units."""
        x_n = x.to(self.W_enc.dtype) * self.cfg.norm_scale
        if self.cfg.architecture == "topk":
            lead = x_n.shape[:-1]
            out = self._forward_topk(x_n.reshape(-1, x_n.shape[-1]))
            return ForwardOutput(*(t.reshape(*lead, *t.shape[1:]) for t in out))
        pre = self.pre_activations(x_n)
        if self.cfg.architecture == "relu" and self._sparse_relu_pays(x_n, pre):
            return self._forward_relu_sparse(x_n, pre.detach())
        f = self._activate(pre)
        x_hat_n = self.decode_normalized(f)
        sq_error = (x_hat_n - x_n).pow(2).sum(-1)
        if self.cfg.architecture == "relu":
            sparsity = f.sum(-1)  # the L1 norm: ReLU latents are >= 0
        elif self.cfg.architecture == "jumprelu":  # L0 with a straight-through threshold gradient
            sparsity = JumpStep.apply(pre, self.log_threshold.exp(), self.cfg.bandwidth).sum(-1)
        else:
            sparsity = torch.zeros_like(sq_error)
        return ForwardOutput(x_hat_n / self.cfg.norm_scale, f, sq_error, sparsity)

    def _sparse_relu_pays(self, x_n: torch.Tensor, pre: torch.Tensor) -> bool:
        """Whether a ReLU forward takes the sparse path: a batch of tokens whose weights get gradient
        (not the input's: attribution differentiates the latents) and whose active share is low."""
        if pre.dim() != 2 or x_n.requires_grad or not (torch.is_grad_enabled() and self.W_enc.requires_grad):
            return False
        return (pre > 0).sum().item() <= SPARSE_RELU_MAX_DENSITY * pre.numel()

    def _forward_relu_sparse(self, x_n: torch.Tensor, pre: torch.Tensor) -> ForwardOutput:
        """ReLU forward over the firing (token, latent) pairs only, as `_forward_topk` over its k: the
        decoder is an embedding_bag and the encoder's backward a sparse product. Same function and
        gradients as the dense path; feature_acts is built for reporting and carries no gradient."""
        rows, cols = (pre > 0).nonzero(as_tuple=True)  # row-major, so each token's latents are contiguous
        values = SparseEncode.apply(x_n, self.W_enc, self.b_enc, self._input_bias(), pre, rows, cols)
        offsets = torch.searchsorted(rows, torch.arange(len(x_n), device=rows.device))
        x_hat_n = (
            F.embedding_bag(cols, self.W_dec, offsets, per_sample_weights=values, mode="sum") + self.b_dec
        )
        sq_error = (x_hat_n - x_n).pow(2).sum(-1)
        sparsity = torch.zeros(len(x_n), dtype=values.dtype, device=values.device).index_add(0, rows, values)
        return ForwardOutput(x_hat_n / self.cfg.norm_scale, F.relu(pre), sq_error, sparsity)

    def _forward_topk(self, x_n: torch.Tensor) -> ForwardOutput:
        """TopK forward that exploits sparsity, as sparsify does: only B*k latents are non-zero,
        so the decoder is an embedding_bag over them and the encoder's backward is a sparse product.
        Same function as the dense path; feature_acts is built for reporting and carries no gradient."""
        values, indices = TopKEncode.apply(x_n, self.W_enc, self.b_enc, self._input_bias(), self.cfg.k)
        values = F.relu(values)  # (B, k)
        x_hat_n = F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum") + self.b_dec
        sq_error = (x_hat_n - x_n).pow(2).sum(-1)
        with torch.no_grad():
            f = torch.zeros(len(x_n), self.cfg.d_sae, dtype=values.dtype, device=values.device)
            f.scatter_(-1, indices, values)
        return ForwardOutput(x_hat_n / self.cfg.norm_scale, f, sq_error, torch.zeros_like(sq_error))

    # --- what the SAE reads -----------------------------------------------------------------
    def check_reads(
        self, *, model_name: str | None = None, layer: int | None = None, d_in: int | None = None
    ) -> None:
        """Raise unless this SAE reads activations of this model, layer and width: the one check made
        wherever an SAE meets activations. Unknown fields pass (an SAE's layer -1 or empty model_name,
        an empty or omitted argument)."""
        if d_in is not None and self.cfg.d_in != d_in:
            raise ValueError(
                f"The SAE reads d_in={self.cfg.d_in} but these activations have d_model={d_in}: "
                "use an SAE of this model."
            )
        if layer is not None and self.cfg.layer not in (-1, layer):
            raise ValueError(
                f"The SAE was trained on layer {self.cfg.layer}, not {layer}: pass layer={self.cfg.layer}."
            )
        if self.cfg.model_name and model_name and not same_model(self.cfg.model_name, model_name):
            raise ValueError(
                f"The SAE was trained on model {self.cfg.model_name!r}, not {model_name!r}: "
                "use an SAE of this model, or load the SAE's model."
            )

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
    def save(self, path: str | Path, dtype: StoredDtype = "float32") -> Path:
        """Write `cfg.json` + `sae_weights.safetensors` that SAELens' `SAE.load_from_disk` reads, as one unit.

        `dtype` is the stored precision (float16 halves the file; `load` reads it back into float32);
        cfg.json states it, so SAELens loads the weights in the dtype they were written in."""
        if dtype not in STORED_DTYPES:
            raise ValueError(f"dtype={dtype!r}: store SAE weights as one of {STORED_DTYPES}.")
        s = self.cfg.norm_scale
        tensors = {
            "W_enc": self.W_enc.detach() * s,
            "b_enc": self.b_enc.detach(),
            "W_dec": self.W_dec.detach() / s,
            "b_dec": self.b_dec.detach() / s,
        }
        if self.cfg.architecture == "jumprelu":
            tensors["threshold"] = self.log_threshold.detach().exp()

        def write(tmp: Path) -> None:
            weights = {k: v.to(getattr(torch, dtype)).contiguous().cpu() for k, v in tensors.items()}
            save_file(weights, str(tmp / SAE_WEIGHTS_FILE))
            atomic_write_json(tmp / SAE_CFG_FILE, saelens_cfg(self.cfg, dtype))

        return atomic_write_dir(path, write, marker=SAE_CFG_FILE)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> SAE:
        """Load a folder written by `save` or by SAELens 6 (`cfg.json` + `sae_weights.safetensors`).

        Computes what SAELens' `load_from_disk` computes, or refuses naming the cfg.json field it
        cannot honour. Weights are rounded to cfg.json's dtype, as SAELens does, then held in float32.
        A topk SAE with rescale_acts_by_decoder_norm gets its decoder norms folded into the encoder,
        as SAELens' `fold_W_dec_norm` does: the same latents and reconstruction, a unit-norm decoder.
        """
        path = Path(path)
        if not (path / SAE_CFG_FILE).exists():
            raise FileNotFoundError(
                f"No SAE at {path}: expected {SAE_CFG_FILE} and {SAE_WEIGHTS_FILE} there."
            )
        raw = read_json(
            path / SAE_CFG_FILE, "restore the SAE folder from where it came, or save the SAE again."
        )
        cfg = SAEConfig.from_dict(kit_cfg_from_saelens(raw, path))
        sae = cls(cfg, seed=None)
        stored = stored_dtype(raw, path)
        t = {
            k: v.to(stored).float()
            for k, v in read_weights(path / SAE_WEIGHTS_FILE, cfg.architecture).items()
        }
        if cfg.architecture == "topk" and raw.get("rescale_acts_by_decoder_norm", False):
            n = t["W_dec"].norm(dim=1).clamp_min(1e-8)  # (d_sae,)
            t.update(W_enc=t["W_enc"] * n, b_enc=t["b_enc"] * n, W_dec=t["W_dec"] / n[:, None])
        s = cfg.norm_scale
        state = {
            "W_enc": t["W_enc"] / s,
            "b_enc": t["b_enc"],
            "W_dec": t["W_dec"] * s,
            "b_dec": t["b_dec"] * s,
        }
        if cfg.architecture == "jumprelu":
            state["log_threshold"] = t["threshold"].clamp_min(1e-12).log()
        sae.load_state_dict(state)
        return sae.to(device)


# --- custom autograd functions: sparse backwards for TopK and ReLU, JumpReLU's step ---------------
class TopKEncode(torch.autograd.Function):
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
        rows = torch.arange(B, device=x.device).repeat_interleave(k)
        grads = sparse_encoder_grads(x, W_enc, b_dec, rows, indices.flatten(), grad_values.flatten())
        return (None, *grads, None)


class SparseEncode(torch.autograd.Function):
    """The pre-activations at given (row, col) pairs, (nnz,), with the sparse backward of `TopKEncode`:
    the ReLU path passes the firing pairs of a pre-activation it computed without gradient."""

    @staticmethod
    def forward(ctx, x, W_enc, b_enc, b_in, pre, rows, cols):
        ctx.save_for_backward(x, W_enc, b_in, rows, cols)
        return pre[rows, cols]

    @staticmethod
    def backward(ctx, grad_values):
        x, W_enc, b_in, rows, cols = ctx.saved_tensors
        return (None, *sparse_encoder_grads(x, W_enc, b_in, rows, cols, grad_values), None, None, None)


def sparse_encoder_grads(x, W_enc, b_in, rows, cols, grad) -> tuple[torch.Tensor, ...]:
    """Gradients of W_enc, b_enc and b_in for pre = (x - b_in) W_enc + b_enc given dL/dpre at the
    (rows, cols) pairs only: dL/dW_enc = x^T G with G sparse costs nnz*d_in, not B*d_sae*d_in."""
    d_sae = W_enc.shape[1]
    G_T = torch.sparse_coo_tensor(
        torch.stack([cols, rows]), grad, (d_sae, len(x)), check_invariants=False
    )  # (d_sae, B)
    grad_b_enc = torch.zeros(d_sae, dtype=grad.dtype, device=x.device).index_add_(0, cols, grad)
    # dpre/dW_enc is (x - b_in): G^T x minus the b_in part, an outer product
    grad_W_enc = (torch.sparse.mm(G_T, x) - grad_b_enc[:, None] * b_in[None, :]).T.contiguous()
    return grad_W_enc, grad_b_enc, -(W_enc @ grad_b_enc)


class JumpStep(torch.autograd.Function):
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


def from_sae_lens(sae_lens_sae: Any) -> SAE:
    """Convert a SAELens SAE object through its own save format, which `SAE.load` reads.

    A SAELens training SAE is saved in its inference form (batchtopk becomes jumprelu), as SAELens
    does at the end of training."""
    if not hasattr(sae_lens_sae, "save_model"):
        raise ValueError(f"Expected an ssae_kit SAE or a SAELens SAE, not {type(sae_lens_sae).__name__}.")
    with tempfile.TemporaryDirectory() as tmp:
        getattr(sae_lens_sae, "save_inference_model", sae_lens_sae.save_model)(tmp)
        return SAE.load(tmp)
