"""Gated SAE (Rajamanoharan et al. 2024, arXiv 2404.16014), with weight sharing between the paths.

    x̃ = x - b_dec;   u = x̃ @ W_enc
    π_gate = u + b_gate;   π_mag = u·exp(r_mag) + b_mag;   f = H(π_gate)·ReLU(π_mag)

Tensor names follow SAELens (b_gate, r_mag, b_mag); there is no b_enc. Trained by the "gated"
objective (``saescope/objectives/gated.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saescope.saes.base import SaeConfig, SparseAutoencoder


@dataclass
class GatedConfig(SaeConfig):
    pass


class GatedSae(SparseAutoencoder):
    architecture = "gated"
    config_class = GatedConfig
    default_objective = "gated"
    saelens_architecture = "gated"
    apply_b_dec_to_input = True
    scaled_tensor_names = ("b_gate", "b_mag", "b_dec")

    def add_parameters(self) -> None:
        del self.b_enc  # the gate and magnitude paths each have their own bias
        self.b_gate = nn.Parameter(torch.zeros(self.d_sae))
        self.b_mag = nn.Parameter(torch.zeros(self.d_sae))
        self.r_mag = nn.Parameter(torch.zeros(self.d_sae))

    def reset_parameters(self, decoder_row_norm: float = 1.0) -> None:
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.W_dec)
            self.W_dec.mul_(decoder_row_norm / self.W_dec.norm(dim=1, keepdim=True))
            self.tie_encoder()
            for tensor in (self.b_dec, self.b_gate, self.b_mag, self.r_mag):
                tensor.zero_()
            if self.cfg.skip:
                self.W_skip.zero_()

    @torch.no_grad()
    def shift_pre_activations(self, shift: Tensor) -> None:
        """u → u + shift: the gate's bias takes it, the magnitude's bias takes it times exp(r_mag)."""
        self.b_gate.add_(shift)
        self.b_mag.add_(shift * self.r_mag.exp())

    def pre_activations(self, x: Tensor) -> Tensor:
        """The gate pre-activation π_gate (what decides which latents fire)."""
        return self.gate_and_magnitude(x)[0]

    def gate_and_magnitude(self, x: Tensor) -> tuple[Tensor, Tensor]:
        u = self.encoder_input(x) @ self.W_enc
        return u + self.b_gate, torch.addcmul(self.b_mag, u, self.r_mag.exp())

    def encode(self, x: Tensor) -> Tensor:
        gate, magnitude = self.gate_and_magnitude(x)
        return torch.relu(magnitude) * (gate > 0)
