"""ReLU SAE with a decoder-norm-weighted L1 penalty (Anthropic, "How we train SAEs", April 2024).

    L = mean_tokens[ ‖x-x̂‖² + λ·Σ_i f_i·‖d_i‖ ]

Decoder rows are unconstrained (their norm is inside the penalty) and start at norm 0.1; inputs are
scaled to E‖x‖² = d_in, where λ ≈ 5 is the published operating point.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from saescope.errors import InvalidInput
from saescope.objectives.base import (
    LossOutput,
    Objective,
    StepContext,
    loss_output,
    squared_error,
)
from saescope.saes import FeatureCode, SparseAutoencoder


@dataclass
class ReLUObjective(Objective):
    decoder_init_norm: float = 0.1
    """Initial norm of each decoder row."""

    name = "relu"
    architectures = ("relu",)
    default_sparsity_coefficient = 5.0
    # Decoder rows start at norm 0.1 and must grow ~10x; at the shared 2e-4 this takes most of a short
    # run (FVU 0.63 vs 0.24 at 2M synthetic tokens), so ReLU takes a larger base rate.
    base_lr = 1.5e-3
    input_norm = "sqrt_d"
    unit_norm_decoder = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.decoder_init_norm > 0:
            raise InvalidInput(f"ReLUObjective.decoder_init_norm must be > 0, got {self.decoder_init_norm}")

    def sparsity_coefficient_for_l0(self, sae: SparseAutoencoder, target_l0: float) -> float:
        return 20.0 / target_l0  # measured: λ ≈ 5 gives L0 ≈ 4 on E‖x‖² = d_in inputs

    def prepare(self, sae: SparseAutoencoder) -> None:
        sae.set_decoder_row_norm(self.decoder_init_norm)

    def loss(self, sae: SparseAutoencoder, x: Tensor, ctx: StepContext) -> LossOutput:
        feature_acts = sae.encode(x)
        reconstruction = sae.decode(feature_acts)
        # Σ_i f_i ‖d_i‖ as one matrix-vector product instead of an [n_tokens, d_sae] temporary.
        weighted_l1 = (feature_acts @ sae.W_dec.norm(dim=1)).mean()
        terms = {"mse": squared_error(reconstruction, ctx.reference(x)), "sparsity": ctx.sparsity_coefficient * weighted_l1}
        return loss_output(FeatureCode.from_dense(feature_acts), reconstruction, terms)
