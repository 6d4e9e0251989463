"""Decoding from (indices, values) without materialising the [n_tokens, d_sae] activation matrix.

Two implementations share one signature and are chosen once per SAE (never per step from data):
``decode_sparse`` gathers k decoder rows per token with ``F.embedding_bag`` (CPU and CUDA kernels,
sparse backward into W_dec); ``decode_dense`` scatters into a dense matrix and multiplies, the
reference the tests compare against. A sparse decode costs 2·n·k·d FLOPs instead of 2·n·d_sae·d.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def decode_sparse(indices: Tensor, values: Tensor, W_dec: Tensor, b_dec: Tensor) -> Tensor:
    """x̂[t] = Σ_j values[t, j]·W_dec[indices[t, j]] + b_dec, for indices/values of shape [n, k]."""
    gathered = F.embedding_bag(indices, W_dec, per_sample_weights=values, mode="sum")
    return gathered + b_dec


def decode_dense(indices: Tensor, values: Tensor, W_dec: Tensor, b_dec: Tensor) -> Tensor:
    """Reference path: scatter to [n, d_sae], then one dense matmul."""
    dense = torch.zeros(indices.shape[0], W_dec.shape[0], dtype=values.dtype, device=values.device)
    dense = dense.scatter(1, indices, values)
    return torch.addmm(b_dec, dense, W_dec)


def scatter_dense(indices: Tensor, values: Tensor, d_sae: int) -> Tensor:
    """The dense [n, d_sae] activation matrix with ``values`` at ``indices`` (no gradient needed)."""
    out = torch.zeros(indices.shape[0], d_sae, dtype=values.dtype, device=values.device)
    return out.scatter_(1, indices, values)
