"""The output contract of every SAE: a batch's latent code, dense or as selected (indices, values).

Architectures that select latents (TopK, and later Feature- or Mutual-Choice) produce ``k`` pairs per
token; building the dense ``[n_tokens, d_sae]`` matrix from them costs more memory traffic than the
sparse decode saves. So a ``FeatureCode`` keeps whichever form the architecture produced and answers
the questions its consumers ask (L0 per token, which latents fired, per-latent counts, sums and
maxima, the active entries) from that form, without a host synchronisation. ``dense()`` builds the
matrix on demand, once.

Selected values may contain zeros (a ReLU after the selection); they count as inactive everywhere.
"""

from __future__ import annotations

import torch
from torch import Tensor


class FeatureCode:
    """Latent activations of one batch.

    Example:
        >>> code = FeatureCode.selected(torch.tensor([[0, 2]]), torch.tensor([[1.5, 0.0]]), d_sae=4)
        >>> code.dense().tolist(), code.l0_per_token().tolist()
        ([[1.5, 0.0, 0.0, 0.0]], [1.0])
    """

    __slots__ = ("_active", "_dense", "d_sae", "indices", "values")

    def __init__(self, d_sae: int, dense: Tensor | None = None, indices: Tensor | None = None, values: Tensor | None = None) -> None:
        if (dense is None) == (indices is None):
            raise ValueError("FeatureCode needs either a dense matrix or (indices, values)")
        if indices is not None and (values is None or indices.shape != values.shape):
            raise ValueError(f"FeatureCode: indices {tuple(indices.shape)} and values {None if values is None else tuple(values.shape)} must have one shape")
        self.d_sae = d_sae
        self._active: Tensor | None = None
        self._dense = dense
        self.indices = indices
        self.values = values

    @classmethod
    def from_dense(cls, feature_acts: Tensor) -> FeatureCode:
        return cls(feature_acts.shape[-1], dense=feature_acts)

    @classmethod
    def selected(cls, indices: Tensor, values: Tensor, d_sae: int) -> FeatureCode:
        """``values[t, j]`` is the activation of latent ``indices[t, j]`` on token ``t``."""
        return cls(d_sae, indices=indices, values=values)

    @property
    def is_sparse(self) -> bool:
        return self.indices is not None

    @property
    def n_tokens(self) -> int:
        return (self.indices if self.indices is not None else self._dense).shape[0]

    def dense(self) -> Tensor:
        """The [n_tokens, d_sae] matrix (built once for a selected code)."""
        if self._dense is None:
            out = torch.zeros(self.indices.shape[0], self.d_sae, dtype=self.values.dtype, device=self.values.device)
            self._dense = out.scatter_(1, self.indices, self.values)
        return self._dense

    def detach(self) -> FeatureCode:
        if self.is_sparse:
            return FeatureCode.selected(self.indices, self.values.detach(), self.d_sae)
        return FeatureCode.from_dense(self._dense.detach())

    def active(self) -> Tensor:
        """bool mask of active entries: [n_tokens, k] for a selected code, [n_tokens, d_sae] for a dense one (computed once)."""
        if self._active is None:
            self._active = (self.values if self.is_sparse else self._dense) > 0
        return self._active

    def l0_per_token(self) -> Tensor:
        """Active latents per token, float32 [n_tokens]."""
        return self.active().sum(dim=-1, dtype=torch.float32)

    def count_per_feature(self) -> Tensor:
        """Tokens on which each latent fired, float64 [d_sae] (exact up to 2**53)."""
        if self.is_sparse:
            weights = self.active().flatten().double()
            return torch.zeros(self.d_sae, dtype=torch.float64, device=weights.device).index_add_(0, self.indices.flatten(), weights)
        # A float32 column sum is about twice as fast as an integer one on CPU; exact below 2**24 tokens per batch.
        return self.active().sum(dim=0, dtype=torch.float32).double()

    def fired(self) -> Tensor:
        """bool [d_sae]: the latents active on at least one token of the batch."""
        if self.is_sparse:
            return self.count_per_feature() > 0
        return self.active().any(dim=0)  # a boolean reduction: several times cheaper than counting

    def sum_per_feature(self) -> Tensor:
        """Sum of each latent's activations over the batch, float64 [d_sae]."""
        if self.is_sparse:
            values = self.values.flatten().double().clamp_min(0)
            return torch.zeros(self.d_sae, dtype=torch.float64, device=values.device).index_add_(0, self.indices.flatten(), values)
        return self._dense.double().clamp_min(0).sum(dim=0)

    def max_per_feature(self) -> Tensor:
        """Largest activation of each latent over the batch (0 where it never fired), [d_sae]."""
        if self.is_sparse:
            out = torch.zeros(self.d_sae, dtype=self.values.dtype, device=self.values.device)
            return out.scatter_reduce_(0, self.indices.flatten(), self.values.flatten(), reduce="amax", include_self=True)
        return self._dense.max(dim=0).values.clamp_min(0)

    def active_entries(self) -> tuple[Tensor, Tensor, Tensor]:
        """(token rows, latent columns, values) of every active entry."""
        if self.is_sparse:
            mask = self.values > 0
            rows = torch.arange(self.indices.shape[0], device=self.indices.device).unsqueeze(1).expand_as(self.indices)
            return rows[mask], self.indices[mask], self.values[mask]
        rows, cols = (self._dense > 0).nonzero(as_tuple=True)
        return rows, cols, self._dense[rows, cols]

    def with_active_values(self, new_values: Tensor) -> FeatureCode:
        """The same active entries with other values, given in ``active_entries`` order (e.g. quantised)."""
        if self.is_sparse:
            mask = self.values > 0
            values = torch.zeros_like(self.values).masked_scatter_(mask, new_values.to(self.values.dtype))
            return FeatureCode.selected(self.indices, values, self.d_sae)
        rows, cols = (self._dense > 0).nonzero(as_tuple=True)
        dense = torch.zeros_like(self._dense)
        dense[rows, cols] = new_values.to(dense.dtype)
        return FeatureCode.from_dense(dense)

    def feature(self, index: int) -> Tensor:
        """One latent's activation on every token, [n_tokens]."""
        if self.is_sparse:
            return torch.where(self.indices == index, self.values, 0.0).sum(dim=-1).clamp_min(0)
        return self._dense[:, index]

    def masked(self, keep: Tensor) -> FeatureCode:
        """Zero every token where ``keep`` [n_tokens] (bool) is False, e.g. BOS and padding."""
        keep = keep.reshape(-1, 1)
        if self.is_sparse:
            return FeatureCode.selected(self.indices, self.values * keep, self.d_sae)
        return FeatureCode.from_dense(self._dense * keep)
