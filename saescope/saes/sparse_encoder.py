"""The encoder's backward through selected entries only: the sparse half of a sparse training step.

In a step that keeps few (token, latent) entries (TopK, BatchTopK, Feature Choice, JumpReLU), the
encoder forward ``pre = x_in @ W_enc + b_enc`` must be dense: the selection looks at every entry. Its
backward need not be: the loss depends on ``pre`` only through the kept entries, so

    ∂L/∂W_enc[:, i] = Σ_{kept (t, i)} g_ti · x_in[t]      (2·nnz·d_in FLOPs instead of 2·n·d_sae·d_in)
    ∂L/∂b_enc[i]    = Σ_{kept (t, i)} g_ti
    ∂L/∂b_dec       = −W_enc · ∂L/∂b_enc                    (architectures that encode x − b_dec)

``selected_preactivations`` computes ``pre`` without a graph, lets the caller choose entries from it, and
returns their values attached to the parameters by this sparse backward. The dense reference path is
the same objective with ``sparse_step=False``; the two are tested equal in values and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from saescope.saes.base import SparseAutoencoder
from saescope.saes.sparse_ops import entry_offsets


class _SelectedPreactivations(torch.autograd.Function):
    """values = pre[rows, cols], with the sparse backward into (x_in, W_enc, b_enc, b_dec). ``rows`` must be ascending.

    ``b_dec`` is the pre-encoder bias when the architecture subtracts it (x_in = x − b_dec, with x_in given
    detached): its gradient is −Σ_t ∂L/∂x_in[t] = −W_enc·(∂L/∂b_enc), one matrix-vector product, so the
    per-token input gradient is never built for it.
    """

    @staticmethod
    def forward(x_in: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor | None, pre: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        return pre[rows, cols]

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: Tensor) -> None:
        x_in, W_enc, _, _, _, rows, cols = inputs
        ctx.save_for_backward(x_in, W_enc, rows, cols)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x_in, W_enc, rows, cols = ctx.saved_tensors
        n_tokens, d_in = x_in.shape
        d_sae = W_enc.shape[1]
        grad_x = grad_W = grad_b = grad_b_dec = None
        if ctx.needs_input_grad[1]:
            # (S^T x_in)^T with S the [n, d_sae] matrix holding grad at the kept entries.
            by_latent = torch.sparse_coo_tensor(torch.stack([cols, rows]), grad, (d_sae, n_tokens), check_invariants=False)
            grad_W = torch.sparse.mm(by_latent, x_in).t()
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
            per_latent = torch.zeros(d_sae, dtype=grad.dtype, device=grad.device).index_add_(0, cols, grad)
            grad_b = per_latent if ctx.needs_input_grad[2] else None
            grad_b_dec = -(W_enc @ per_latent) if ctx.needs_input_grad[3] else None
        if ctx.needs_input_grad[0]:
            offsets = entry_offsets(rows, n_tokens)
            grad_x = F.embedding_bag(cols, W_enc.t().contiguous(), offsets, per_sample_weights=grad, mode="sum")
        return grad_x, grad_W, grad_b, grad_b_dec, None, None, None


def selected_preactivations(x_in: Tensor, W_enc: Tensor, b_enc: Tensor, pre: Tensor, rows: Tensor, cols: Tensor,
                            b_dec: Tensor | None = None) -> Tensor:
    """``pre[rows, cols]`` as a function of (x_in, W_enc, b_enc[, b_dec]), for ``pre = x_in @ W_enc + b_enc`` computed without a graph.

    Pass ``b_dec`` when x_in = x − b_dec was computed from it (detached): it then receives its gradient.
    """
    return _SelectedPreactivations.apply(x_in, W_enc, b_enc, b_dec, pre, rows, cols)


class _AttachedPreactivations(torch.autograd.Function):
    """The whole ``pre`` attached to (x_in, W_enc, b_enc[, b_dec]) with the dense backward, without recomputing the forward."""

    @staticmethod
    def forward(x_in: Tensor, W_enc: Tensor, b_enc: Tensor, b_dec: Tensor | None, pre: Tensor) -> Tensor:
        return pre.view_as(pre)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: Tensor) -> None:
        ctx.save_for_backward(inputs[0], inputs[1])

    @staticmethod
    def backward(ctx, grad: Tensor):
        x_in, W_enc = ctx.saved_tensors
        grad_x = grad @ W_enc.t() if ctx.needs_input_grad[0] else None
        grad_W = x_in.t() @ grad if ctx.needs_input_grad[1] else None
        per_latent = grad.sum(dim=0) if ctx.needs_input_grad[2] or ctx.needs_input_grad[3] else None
        grad_b = per_latent if ctx.needs_input_grad[2] else None
        grad_b_dec = -(W_enc @ per_latent) if ctx.needs_input_grad[3] else None
        return grad_x, grad_W, grad_b, grad_b_dec, None


def token_rows(n_tokens: int, k: int, device: torch.device) -> Tensor:
    """Row of every entry of a [n_tokens, k] selection, flattened: 0,…,0, 1,…,1, …"""
    return torch.arange(n_tokens, device=device).repeat_interleave(k)


class EncoderPass:
    """One dense encoder forward without a graph, from which a sparse step takes the entries it keeps.

    ``pre`` is the full [n_tokens, d_sae] pre-activation matrix (detached: select from it freely);
    ``take(rows, cols)`` returns those entries attached to W_enc, b_enc (and b_dec through the input)
    by the sparse backward.
    """

    def __init__(self, sae: SparseAutoencoder, x: Tensor) -> None:
        self.sae = sae
        with torch.no_grad():
            self.x_in = sae.encoder_input(x)  # detached: b_dec, where subtracted, gets its gradient from the backward
            # under bf16 autocast the matmul runs in bf16; selection, backward and decode stay float32
            self.pre = torch.addmm(sae.b_enc, self.x_in, sae.W_enc).to(sae.W_enc.dtype)
        self.b_dec = sae.b_dec if sae.apply_b_dec_to_input else None

    @property
    def n_tokens(self) -> int:
        return self.pre.shape[0]

    def take(self, rows: Tensor, cols: Tensor) -> Tensor:
        return selected_preactivations(self.x_in, self.sae.W_enc, self.sae.b_enc, self.pre, rows, cols, self.b_dec)

    def attached(self) -> Tensor:
        """All of ``pre`` with the dense backward: the fallback when the code is too dense for the sparse one."""
        return _AttachedPreactivations.apply(self.x_in, self.sae.W_enc, self.sae.b_enc, self.b_dec, self.pre)

    def take_selected(self, indices: Tensor) -> Tensor:
        """The entries of a [n_tokens, k] selection, shaped like it."""
        rows = token_rows(indices.shape[0], indices.shape[1], indices.device)
        return self.take(rows, indices.flatten()).view(indices.shape)
