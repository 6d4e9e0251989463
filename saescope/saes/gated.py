"""Gated SAE (Rajamanoharan et al. 2024, arXiv 2404.16014), with weight sharing between the paths.

    x̃ = x - b_dec;   u = x̃ @ W_enc
    π_gate = u + b_gate;   π_mag = u·exp(r_mag) + b_mag;   f = H(π_gate)·ReLU(π_mag)
    L = ‖x-x̂‖² + λ·‖ReLU(π_gate)‖₁ + ‖x - x̂_frozen(ReLU(π_gate))‖²

x̂_frozen decodes with a stop-gradient copy of W_dec and b_dec: the auxiliary term trains only the
gate path, which is how gradient crosses the Heaviside step. Decoder rows are kept at unit norm
because the L1 penalty is not scale-invariant. Tensor names follow SAELens (b_gate, r_mag, b_mag).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saescope.saes.base import ForwardOutput, SaeConfig, SparseAutoencoder


@dataclass
class GatedConfig(SaeConfig):
    pass


class GatedSae(SparseAutoencoder):
    architecture = "gated"
    config_class = GatedConfig
    default_sparsity_coefficient = 0.05
    adam_betas = (0.0, 0.999)
    apply_b_dec_to_input = True
    scaled_tensor_names = ("b_gate", "b_mag", "b_dec")

    def sparsity_coefficient_for_l0(self, target_l0: float) -> float:
        return 2.5 / target_l0  # measured: λ ≈ 0.6 gives L0 ≈ 4 on unit-mean-square inputs

    def add_parameters(self) -> None:
        del self.b_enc  # the gate and magnitude paths each have their own bias
        self.b_gate = nn.Parameter(torch.zeros(self.d_sae))
        self.b_mag = nn.Parameter(torch.zeros(self.d_sae))
        self.r_mag = nn.Parameter(torch.zeros(self.d_sae))

    def reset_parameters(self, decoder_row_norm: float = 1.0) -> None:
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.W_dec)
            self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True))
            self.W_enc.copy_(self.W_dec.T)
            for tensor in (self.b_dec, self.b_gate, self.b_mag, self.r_mag):
                tensor.zero_()

    def init_from_data(self, sample: Tensor) -> None:
        with torch.no_grad():
            self.b_dec.copy_(sample.mean(dim=0))

    def _gate_and_magnitude(self, x: Tensor) -> tuple[Tensor, Tensor]:
        u = self.encoder_input(x) @ self.W_enc
        return u + self.b_gate, torch.addcmul(self.b_mag, u, self.r_mag.exp())

    def encode(self, x: Tensor) -> Tensor:
        gate, magnitude = self._gate_and_magnitude(x)
        return torch.relu(magnitude) * (gate > 0)

    def losses(self, x: Tensor, sparsity_coefficient: Tensor | float, dead_mask: Tensor | None) -> ForwardOutput:
        gate, magnitude = self._gate_and_magnitude(x)
        feature_acts = torch.relu(magnitude) * (gate > 0)
        reconstruction = self.decode(feature_acts)
        gate_acts = torch.relu(gate)
        frozen_reconstruction = torch.addmm(self.b_dec.detach(), gate_acts, self.W_dec.detach())
        terms = {
            "mse": (reconstruction - x).pow(2).sum(dim=-1).mean(),
            "sparsity": sparsity_coefficient * gate_acts.sum(dim=-1).mean(),
            "aux": (frozen_reconstruction - x).pow(2).sum(dim=-1).mean(),
        }
        return ForwardOutput(feature_acts, reconstruction, sum(terms.values()), terms)
