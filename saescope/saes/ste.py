"""Straight-through estimators of the JumpReLU paper (Rajamanoharan et al. 2024, eq. 11).

Rectangle kernel K(u) = 1 if -1/2 < u < 1/2 else 0, bandwidth ε. Forward passes are exact; only the
gradients with respect to the threshold θ are pseudo-derivatives:

    JumpReLU_θ(z) = z·H(z-θ):  ∂/∂z = H(z-θ) (true derivative),  ∂/∂θ := -(θ/ε)·K((z-θ)/ε)
    Step_θ(z)     = H(z-θ):    ∂/∂z := 0 (no sparsity gradient reaches the encoder),
                               ∂/∂θ := -(1/ε)·K((z-θ)/ε)

The θ gradients are summed over the batch, so θ keeps shape [d_sae]; the 1/n_tokens of a batch-mean
loss is already in the incoming gradient. θ must be positive: the factor θ (not |θ|) is the jump height.

Performance: these run over the whole [n_tokens, d_sae] pre-activation matrix, so each elementwise
pass costs as much memory traffic as a matmul's output. Masks stay boolean and are applied with
``torch.where`` (a float × bool product would first materialise the mask as floats), and the L0
term is computed as a per-token count, never as a float [n_tokens, d_sae] step matrix.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rectangle_window(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """Boolean K((pre-θ)/ε) != 0, i.e. θ-ε/2 < pre < θ+ε/2."""
    half = bandwidth / 2
    return (pre > threshold - half) & (pre < threshold + half)


def _save_pre_and_threshold(ctx, inputs: tuple) -> None:
    """Shared ``setup_context``: keep pre and θ for the backward, plus the non-tensor options."""
    pre, threshold, bandwidth, *rest = inputs
    ctx.save_for_backward(pre, threshold)
    ctx.bandwidth = bandwidth
    ctx.ste_to_input = bool(rest and rest[0])


class JumpReLUFunction(torch.autograd.Function):
    """f = pre·H(pre-θ), with the θ/ε rectangle STE for the threshold.

    With ``ste_to_input`` the jump's pseudo-derivative also reaches the pre-activation,
    ∂f/∂z := H(z-θ) + (θ/ε)·K((z-θ)/ε), as in Anthropic's 2025 recipe: latents just below their
    threshold then get encoder gradient. The paper's estimator leaves it out (the default).
    """

    @staticmethod
    def forward(pre: Tensor, threshold: Tensor, bandwidth: float, ste_to_input: bool = False) -> Tensor:
        return torch.where(pre > threshold, pre, 0.0)

    setup_context = staticmethod(lambda ctx, inputs, output: _save_pre_and_threshold(ctx, inputs))

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        window_grad = None
        if ctx.needs_input_grad[1] or ctx.ste_to_input:
            window_grad = torch.where(rectangle_window(pre, threshold, eps), grad_output, 0.0)
        grad_pre = None
        if ctx.needs_input_grad[0]:
            grad_pre = torch.where(pre > threshold, grad_output, 0.0)
            if ctx.ste_to_input:
                grad_pre = grad_pre.add_(window_grad * (threshold / eps))
        grad_threshold = -(threshold / eps) * window_grad.sum(dim=0) if ctx.needs_input_grad[1] else None
        return grad_pre, grad_threshold, None, None


class StepCountFunction(torch.autograd.Function):
    """Σ_i H(pre_i-θ_i) per token (the L0), with the 1/ε rectangle STE for θ and no gradient to pre."""

    @staticmethod
    def forward(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        return (pre > threshold).sum(dim=-1, dtype=pre.dtype)

    setup_context = staticmethod(lambda ctx, inputs, output: _save_pre_and_threshold(ctx, inputs))

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        pre, threshold = ctx.saved_tensors
        grad_threshold = None
        if ctx.needs_input_grad[1]:
            window = rectangle_window(pre, threshold, ctx.bandwidth).to(grad_output.dtype)
            # Σ_n grad_n·K(...)[n, i] as one matrix-vector product
            grad_threshold = -(1.0 / ctx.bandwidth) * (grad_output @ window)
        return None, grad_threshold, None


class JumpReLUWithL0Function(torch.autograd.Function):
    """JumpReLU and the per-token step count in one pass: the fast path of the step-loss JumpReLU.

    Same values and gradients as ``jumprelu`` plus ``step_count`` (tested against them), but the
    threshold mask is computed once in the forward and the kernel window once in the backward:
    θ-grad = -(1/ε)·Σ_n K[n]·(θ·∂L/∂f[n] + ∂L/∂L0[n]).
    """

    @staticmethod
    def forward(pre: Tensor, threshold: Tensor, bandwidth: float) -> tuple[Tensor, Tensor]:
        active = pre > threshold
        return torch.where(active, pre, 0.0), active.sum(dim=-1, dtype=pre.dtype)

    setup_context = staticmethod(lambda ctx, inputs, output: _save_pre_and_threshold(ctx, inputs))

    @staticmethod
    def backward(ctx, grad_acts: Tensor, grad_l0: Tensor):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = torch.where(pre > threshold, grad_acts, 0.0) if ctx.needs_input_grad[0] else None
        grad_threshold = None
        if ctx.needs_input_grad[1]:
            per_entry = torch.addcmul(grad_l0.unsqueeze(1), grad_acts, threshold)
            per_entry = torch.where(rectangle_window(pre, threshold, eps), per_entry, 0.0)
            grad_threshold = per_entry.sum(dim=0).mul_(-1.0 / eps)
        return grad_pre, grad_threshold, None


def jumprelu_with_l0(pre: Tensor, threshold: Tensor, bandwidth: float) -> tuple[Tensor, Tensor]:
    """(JumpReLU activations, per-token L0), fused; see ``JumpReLUWithL0Function``."""
    return JumpReLUWithL0Function.apply(pre, threshold, bandwidth)


def jumprelu(pre: Tensor, threshold: Tensor, bandwidth: float, ste_to_input: bool = False) -> Tensor:
    return JumpReLUFunction.apply(pre, threshold, bandwidth, ste_to_input)


def step_count(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """Per-token L0, Σ_i H(pre_i - θ_i), shape [n_tokens], differentiable in θ through the STE."""
    return StepCountFunction.apply(pre, threshold, bandwidth)


class JumpReLUEntriesFunction(torch.autograd.Function):
    """``JumpReLUWithL0Function`` over flat entries: the sparse step's JumpReLU.

    The entries are every (token, latent) with pre > θ − ε/2: the active ones and those in the lower half of
    the kernel window, which carry the threshold's gradient although their activation is 0. ``threshold``
    is θ gathered per entry; the per-token L0 sums the active entries of each row. Same values and
    gradients as the dense function on those entries (the rest contribute nothing there either).
    """

    @staticmethod
    def forward(pre: Tensor, threshold: Tensor, rows: Tensor, n_tokens: int, bandwidth: float, ste_to_input: bool) -> tuple[Tensor, Tensor]:
        active = pre > threshold
        l0 = torch.zeros(n_tokens, dtype=pre.dtype, device=pre.device).index_add_(0, rows, active.to(pre.dtype))
        return torch.where(active, pre, 0.0), l0

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: tuple) -> None:
        pre, threshold, rows, _, bandwidth, ste_to_input = inputs
        ctx.save_for_backward(pre, threshold, rows)
        ctx.bandwidth = bandwidth
        ctx.ste_to_input = ste_to_input

    @staticmethod
    def backward(ctx, grad_acts: Tensor, grad_l0: Tensor):
        pre, threshold, rows = ctx.saved_tensors
        eps = ctx.bandwidth
        window = rectangle_window(pre, threshold, eps)
        grad_pre = grad_threshold = None
        if ctx.needs_input_grad[0]:
            grad_pre = torch.where(pre > threshold, grad_acts, 0.0)
            if ctx.ste_to_input:
                grad_pre = grad_pre + torch.where(window, grad_acts * (threshold / eps), 0.0)
        if ctx.needs_input_grad[1]:
            per_entry = torch.addcmul(grad_l0[rows], grad_acts, threshold)
            grad_threshold = torch.where(window, per_entry, 0.0).mul_(-1.0 / eps)
        return grad_pre, grad_threshold, None, None, None, None


def jumprelu_entries(pre: Tensor, threshold: Tensor, rows: Tensor, n_tokens: int, bandwidth: float, ste_to_input: bool = False) -> tuple[Tensor, Tensor]:
    """(activations per entry, per-token L0) for flat entries; see ``JumpReLUEntriesFunction``."""
    return JumpReLUEntriesFunction.apply(pre, threshold, rows, n_tokens, bandwidth, ste_to_input)
