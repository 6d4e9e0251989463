"""JumpReLU SAE (Rajamanoharan et al. 2024; Gemma Scope): a ReLU whose per-latent threshold θ zeroes small activations.

    pre = x @ W_enc + b_enc;   f = pre·H(pre-θ);   x̂ = f @ W_dec + b_dec

Two objectives train it: "jumprelu" (the paper's λ·L0 with straight-through estimators) and
"jumprelu_tanh" (Anthropic 2025); see ``saescope/objectives``. The checkpoint is the same either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from saescope.errors import InvalidInput
from saescope.saes.base import SaeConfig, SparseAutoencoder

INITIAL_THRESHOLD = 1e-3
"""θ at construction; an objective's ``prepare`` sets its own (0.001 step, 0.1 tanh)."""


@dataclass
class JumpReLUConfig(SaeConfig):
    threshold_param: Literal["log", "direct"] = "direct"
    """Train θ as exp(log θ) (GDM's code) or θ itself, clamped at 0 (see benchmarks/RESULTS.md)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.threshold_param not in ("log", "direct"):
            raise InvalidInput(f"threshold_param must be 'log' or 'direct', got {self.threshold_param!r}")


class JumpReLUSae(SparseAutoencoder):
    architecture = "jumprelu"
    config_class = JumpReLUConfig
    default_objective = "jumprelu"
    saelens_architecture = "jumprelu"
    scaled_tensor_names = ("b_enc", "b_dec", "threshold")

    def add_parameters(self) -> None:
        theta = torch.full((self.cfg.d_sae,), INITIAL_THRESHOLD)
        if self.cfg.threshold_param == "log":
            self.log_threshold = nn.Parameter(theta.log())
        else:
            self.threshold_raw = nn.Parameter(theta)

    @property
    def threshold(self) -> Tensor:
        if self.cfg.threshold_param == "log":
            return self.log_threshold.exp()
        return self.threshold_raw

    @torch.no_grad()
    def set_threshold(self, value: float | Tensor) -> None:
        theta = torch.as_tensor(value, dtype=self.W_enc.dtype, device=self.W_enc.device).expand(self.d_sae)
        self.load_export_tensors({**self.export_tensors(), "threshold": theta.clone()})

    def reset_parameters(self, decoder_row_norm: float = 1.0) -> None:
        super().reset_parameters(decoder_row_norm)
        self.set_threshold(INITIAL_THRESHOLD)

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_activations(x)
        return torch.where(pre > self.threshold, torch.relu(pre), 0.0)

    # Checkpoints always store `threshold` (the Gemma Scope / SAELens name), never its log.
    def export_tensors(self) -> dict[str, Tensor]:
        tensors = super().export_tensors()
        tensors.pop("log_threshold", None)
        tensors.pop("threshold_raw", None)
        tensors["threshold"] = self.threshold.detach()
        return tensors

    @torch.no_grad()
    def load_export_tensors(self, tensors: dict[str, Tensor]) -> None:
        tensors = dict(tensors)
        threshold = tensors.pop("threshold")
        if self.cfg.threshold_param == "log":
            self.log_threshold.copy_(threshold.clamp_min(1e-12).log())
        else:
            self.threshold_raw.copy_(threshold)
        for name, value in tensors.items():
            getattr(self, name).copy_(value)
