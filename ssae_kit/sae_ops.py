"""The SAE's custom autograd functions: a TopK encode and a sparse ReLU encode whose backward
touches only the firing (token, latent) pairs (nnz * d_in instead of B * d_sae * d_in), and
JumpReLU's step with a straight-through threshold gradient."""

from __future__ import annotations

import torch


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
