"""The Gated SAE loss (Rajamanoharan et al. 2024, arXiv 2404.16014).

    L = ‖x-x̂‖² + λ·‖ReLU(π_gate)‖₁ + ‖x - x̂_frozen(ReLU(π_gate))‖²

x̂_frozen decodes with a stop-gradient copy of W_dec and b_dec: the auxiliary term trains only the
gate path, which is how gradient crosses the Heaviside step. Decoder rows are kept at unit norm
because the L1 penalty is not scale-invariant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saescope.objectives.base import (
    LossOutput,
    Objective,
    StepContext,
    loss_output,
    squared_error,
)
from saescope.saes import FeatureCode, GatedSae, SparseAutoencoder


@dataclass
class GatedObjective(Objective):
    name = "gated"
    architectures = ("gated",)
    default_sparsity_coefficient = 0.05
    adam_betas = (0.0, 0.999)

    def sparsity_coefficient_for_l0(self, sae: SparseAutoencoder, target_l0: float) -> float:
        return 2.5 / target_l0  # measured: λ ≈ 0.6 gives L0 ≈ 4 on unit-mean-square inputs

    def init_from_data(self, sae: SparseAutoencoder, sample: Tensor) -> None:
        if sae.cfg.target is None:  # a transcoder's output bias starts at its target's mean (the trainer sets it)
            with torch.no_grad():
                sae.b_dec.copy_(sample.mean(dim=0))

    def loss(self, sae: SparseAutoencoder, x: Tensor, ctx: StepContext) -> LossOutput:
        assert isinstance(sae, GatedSae)
        gate, magnitude = sae.gate_and_magnitude(x)
        feature_acts = torch.relu(magnitude) * (gate > 0)
        reconstruction = sae.decode(feature_acts)
        gate_acts = torch.relu(gate)
        frozen_reconstruction = torch.addmm(sae.b_dec.detach(), gate_acts, sae.W_dec.detach())
        terms = {
            "mse": squared_error(reconstruction, ctx.reference(x)),
            "sparsity": ctx.sparsity_coefficient * gate_acts.sum(dim=-1).mean(),
            "aux": squared_error(frozen_reconstruction, ctx.reference(x)),
        }
        return loss_output(FeatureCode.from_dense(feature_acts), reconstruction, terms)
