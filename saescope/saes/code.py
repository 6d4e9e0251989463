"""The output contract of every SAE: a batch's latent code, dense, as selected (indices, values), or as entries.

Architectures that select latents produce few (token, latent) pairs; building the dense
``[n_tokens, d_sae]`` matrix from them costs more memory traffic than the sparse decode saves. So a
``FeatureCode`` keeps whichever form the architecture produced and answers the questions its
consumers ask (L0 per token, which latents fired, per-latent counts, sums and maxima, the active
entries) from that form, without a host synchronisation. ``dense()`` builds the matrix on demand, once.

The three forms:
- dense: the ``[n_tokens, d_sae]`` matrix;
- selected: ``indices``/``values`` of shape ``[n_tokens, k]`` (TopK: the same count on every token);
- entries: flat ``rows``/``indices``/``values`` of shape ``[nnz]`` with ``rows`` ascending (token-major),
  for codes whose count varies by token (JumpReLU, BatchTopK, Feature Choice in the sparse training path).

Values may contain zeros (a ReLU after the selection, or entries kept only for a gradient); they count
as inactive everywhere.
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

    __slots__ = ("_active", "_dense", "_n_tokens", "d_sae", "indices", "rows", "values")

    def __init__(self, d_sae: int, dense: Tensor | None = None, indices: Tensor | None = None, values: Tensor | None = None,
                 rows: Tensor | None = None, n_tokens: int | None = None) -> None:
        if (dense is None) == (indices is None):
            raise ValueError("FeatureCode needs either a dense matrix or (indices, values)")
        if indices is not None and (values is None or indices.shape != values.shape):
            raise ValueError(f"FeatureCode: indices {tuple(indices.shape)} and values {None if values is None else tuple(values.shape)} must have one shape")
        if rows is not None and (rows.shape != indices.shape or rows.dim() != 1 or n_tokens is None):
            raise ValueError("FeatureCode entries need 1-D rows, indices and values of one shape, and n_tokens")
        self.d_sae = d_sae
        self._active: Tensor | None = None
        self._dense = dense
        self.indices = indices
        self.values = values
        self.rows = rows
        self._n_tokens = n_tokens

    @classmethod
    def from_dense(cls, feature_acts: Tensor) -> FeatureCode:
        return cls(feature_acts.shape[-1], dense=feature_acts)

    @classmethod
    def selected(cls, indices: Tensor, values: Tensor, d_sae: int) -> FeatureCode:
        """``values[t, j]`` is the activation of latent ``indices[t, j]`` on token ``t``."""
        return cls(d_sae, indices=indices, values=values)

    @classmethod
    def entries(cls, rows: Tensor, indices: Tensor, values: Tensor, n_tokens: int, d_sae: int) -> FeatureCode:
        """``values[j]`` is the activation of latent ``indices[j]`` on token ``rows[j]``; ``rows`` ascending."""
        return cls(d_sae, indices=indices, values=values, rows=rows, n_tokens=n_tokens)

    @property
    def is_sparse(self) -> bool:
        """True for the selected and the entries forms."""
        return self.indices is not None

    @property
    def is_entries(self) -> bool:
        return self.rows is not None

    @property
    def n_tokens(self) -> int:
        if self._n_tokens is not None:
            return self._n_tokens
        return (self.indices if self.indices is not None else self._dense).shape[0]

    def dense(self) -> Tensor:
        """The [n_tokens, d_sae] matrix (built once for a sparse code)."""
        if self._dense is None:
            out = torch.zeros(self.n_tokens, self.d_sae, dtype=self.values.dtype, device=self.values.device)
            if self.is_entries:
                self._dense = out.index_put_((self.rows, self.indices), self.values, accumulate=True)
            else:
                self._dense = out.scatter_(1, self.indices, self.values)
        return self._dense

    def _like(self, values: Tensor) -> FeatureCode:
        """The same sparse positions with other values."""
        if self.is_entries:
            return FeatureCode.entries(self.rows, self.indices, values, self.n_tokens, self.d_sae)
        return FeatureCode.selected(self.indices, values, self.d_sae)

    def detach(self) -> FeatureCode:
        if self.is_sparse:
            return self._like(self.values.detach())
        return FeatureCode.from_dense(self._dense.detach())

    def token_rows(self) -> Tensor:
        """The token of every sparse entry, shaped like ``indices``."""
        if self.is_entries:
            return self.rows
        return torch.arange(self.indices.shape[0], device=self.indices.device).unsqueeze(1).expand_as(self.indices)

    def active(self) -> Tensor:
        """bool mask of active entries, shaped like ``values`` (sparse) or the matrix (dense); computed once."""
        if self._active is None:
            self._active = (self.values if self.is_sparse else self._dense) > 0
        return self._active

    def l0_per_token(self) -> Tensor:
        """Active latents per token, float32 [n_tokens]."""
        if self.is_entries:
            out = torch.zeros(self.n_tokens, dtype=torch.float32, device=self.values.device)
            return out.index_add_(0, self.rows, self.active().float())
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
            return self.token_rows()[mask], self.indices[mask], self.values[mask]
        rows, cols = (self._dense > 0).nonzero(as_tuple=True)
        return rows, cols, self._dense[rows, cols]

    def with_active_values(self, new_values: Tensor) -> FeatureCode:
        """The same active entries with other values, given in ``active_entries`` order (e.g. quantised)."""
        if self.is_sparse:
            mask = self.values > 0
            values = torch.zeros_like(self.values).masked_scatter_(mask, new_values.to(self.values.dtype))
            return self._like(values)
        rows, cols = (self._dense > 0).nonzero(as_tuple=True)
        dense = torch.zeros_like(self._dense)
        dense[rows, cols] = new_values.to(dense.dtype)
        return FeatureCode.from_dense(dense)

    def feature(self, index: int) -> Tensor:
        """One latent's activation on every token, [n_tokens]."""
        if self.is_entries:
            mine = torch.where(self.indices == index, self.values, 0.0).clamp_min(0)
            return torch.zeros(self.n_tokens, dtype=self.values.dtype, device=self.values.device).index_add_(0, self.rows, mine)
        if self.is_sparse:
            return torch.where(self.indices == index, self.values, 0.0).sum(dim=-1).clamp_min(0)
        return self._dense[:, index]

    def masked(self, keep: Tensor) -> FeatureCode:
        """Zero every token where ``keep`` [n_tokens] (bool) is False, e.g. BOS and padding."""
        if self.is_entries:
            return self._like(self.values * keep.reshape(-1)[self.rows])
        keep = keep.reshape(-1, 1)
        if self.is_sparse:
            return self._like(self.values * keep)
        return FeatureCode.from_dense(self._dense * keep)
