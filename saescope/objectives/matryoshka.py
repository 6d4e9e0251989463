"""Matryoshka training (Bussmann et al. 2025): every nested prefix of the dictionary reconstructs alone.

    L = Σ_g w_g ‖x − (b_dec + Σ_{i < m_g} f_i d_i)‖²  (+ AuxK),   f from a global BatchTopK

The prefix reconstructions are built cumulatively (each adds its group's latents to the previous
one), so all of them together cost one full decode. Weights default to 1/G, as dictionary_learning's
implementation (a mean over groups).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saescope.errors import InvalidInput
from saescope.objectives.base import LossOutput, StepContext, loss_output, squared_error
from saescope.objectives.batchtopk import BatchTopKObjective
from saescope.saes import FeatureCode, SparseAutoencoder
from saescope.saes.sparse_ops import decode_entries


@dataclass
class MatryoshkaObjective(BatchTopKObjective):
    prefix_weights: list[float] | None = None
    """Weight of each prefix's reconstruction error, innermost first. None: 1/G each."""

    name = "matryoshka"
    architectures = ("matryoshka",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prefix_weights is not None and (not self.prefix_weights or any(w < 0 for w in self.prefix_weights)):
            raise InvalidInput(f"MatryoshkaObjective.prefix_weights={self.prefix_weights}: give one weight >= 0 per prefix")

    def check(self, sae: SparseAutoencoder) -> None:
        super().check(sae)
        if self.prefix_weights is not None and len(self.prefix_weights) != len(sae.cfg.prefixes):
            raise InvalidInput(f"MatryoshkaObjective.prefix_weights has {len(self.prefix_weights)} weights for {len(sae.cfg.prefixes)} prefixes")

    def loss(self, sae: SparseAutoencoder, x: Tensor, ctx: StepContext) -> LossOutput:
        prefixes = sae.cfg.prefixes
        weights = self.prefix_weights or [1.0 / len(prefixes)] * len(prefixes)
        if self.use_sparse_step(self.kept_per_token(sae, self.training_k(sae, ctx.progress), ctx, x.device), sae.d_sae, x.device):
            return self._sparse_loss(sae, x, ctx, prefixes, weights)
        pre, feature_acts = self.select(sae, x, ctx)
        reconstruction = sae.b_dec.expand(x.shape[0], -1)
        start, terms = 0, {}
        for size, weight in zip(prefixes, weights):
            reconstruction = torch.addmm(reconstruction, feature_acts[:, start:size], sae.W_dec[start:size])
            terms[f"mse_prefix_{size}"] = weight * squared_error(reconstruction, ctx.reference(x))
            start = size
        terms.update(self.aux_terms(sae, pre, ctx.reference(x), reconstruction, ctx))
        return loss_output(FeatureCode.from_dense(feature_acts), reconstruction, terms)

    def _sparse_loss(self, sae: SparseAutoencoder, x: Tensor, ctx: StepContext, prefixes: list[int], weights: list[float]) -> LossOutput:
        """Each group decodes its own entries (rows stay ascending within a group) onto the previous prefix's reconstruction."""
        encoder, code = self.select_sparse(sae, x, ctx)
        reconstruction = sae.b_dec.expand(x.shape[0], -1)
        start, terms = 0, {}
        for size, weight in zip(prefixes, weights):
            group = (code.indices >= start) & (code.indices < size)
            reconstruction = reconstruction + decode_entries(
                code.rows[group], code.indices[group], code.values[group], code.n_tokens, sae.W_dec, torch.zeros_like(sae.b_dec))
            terms[f"mse_prefix_{size}"] = weight * squared_error(reconstruction, ctx.reference(x))
            start = size
        terms.update(self.aux_terms(sae, encoder, ctx.reference(x), reconstruction, ctx))
        return loss_output(code, reconstruction, terms)
