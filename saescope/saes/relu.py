"""ReLU SAE (Anthropic, "How we train SAEs", April 2024): f = ReLU(x @ W_enc + b_enc).

Trained by the "relu" objective, a decoder-norm-weighted L1 penalty (``saescope/objectives/relu.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saescope.saes.base import SaeConfig, SparseAutoencoder


@dataclass
class ReLUConfig(SaeConfig):
    pass


class ReLUSae(SparseAutoencoder):
    architecture = "relu"
    config_class = ReLUConfig
    default_objective = "relu"
    saelens_architecture = "standard"

    def encode(self, x: Tensor) -> Tensor:
        return torch.relu(self.pre_activations(x))
