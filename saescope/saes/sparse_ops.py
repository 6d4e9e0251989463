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

SPARSE_FRACTION = {"cpu": 1 / 8, "cuda": 1 / 1024}
"""Most entries kept per token, as a fraction of d_sae, at which gathering and scattering rows beats the
dense matmul, by device type. On a CPU a gathered row costs about as much as its share of a matmul; on a
GPU the matmul runs on tensor cores while gathers and scatters are bound by memory bandwidth: on an H200
the dense TopK step was 1.18-1.21x faster than the sparse one at k/d_sae = 1/144 and 1/256 (benchmarks/
RESULTS.md, "GPU"), so there the sparse path is kept for very wide SAEs only. Other devices use the CPU's."""


def sparse_pays(kept_per_token: float, d_sae: int, device: torch.device | str) -> bool:
    """Whether the sparse path (gathered decode, backward through the kept entries) beats the dense one on ``device``."""
    kind = torch.device(device).type
    return kept_per_token <= d_sae * SPARSE_FRACTION.get(kind, SPARSE_FRACTION["cpu"])


def decode_sparse(indices: Tensor, values: Tensor, W_dec: Tensor, b_dec: Tensor) -> Tensor:
    """x̂[t] = Σ_j values[t, j]·W_dec[indices[t, j]] + b_dec, for indices/values of shape [n, k]."""
    gathered = F.embedding_bag(indices, W_dec, per_sample_weights=values.to(W_dec.dtype), mode="sum")
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


def entry_offsets(rows: Tensor, n_tokens: int) -> Tensor:
    """Where each token's entries start in ``rows`` (ascending), for ``F.embedding_bag``'s ``offsets``."""
    counts = torch.bincount(rows, minlength=n_tokens)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)[:-1]])


def decode_entries(rows: Tensor, indices: Tensor, values: Tensor, n_tokens: int, W_dec: Tensor, b_dec: Tensor) -> Tensor:
    """x̂[t] = Σ_{j: rows[j]=t} values[j]·W_dec[indices[j]] + b_dec, for flat entries with ``rows`` ascending.

    A token with no entries decodes to b_dec. The gradient reaches ``values`` (W_dec[i]·∂L/∂x̂[t] per entry,
    also for entries whose value is 0) and the decoder rows that were used.
    """
    offsets = entry_offsets(rows, n_tokens)
    gathered = F.embedding_bag(indices, W_dec, offsets, per_sample_weights=values.to(W_dec.dtype), mode="sum")
    return gathered + b_dec
