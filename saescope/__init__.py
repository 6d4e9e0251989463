"""saescope: train, measure, interpret and steer sparse autoencoders on model activations.

``import saescope`` stays light: torch, numpy and safetensors only. Anything heavier (transformers,
datasets, plotting, a web server) is imported inside the function that needs it.
"""

from __future__ import annotations

__version__ = "0.1.0"

from saescope.checkpoint import load
from saescope.metrics import SaeMetrics, evaluate_sae
from saescope.saes import ARCHITECTURES, SparseAutoencoder, create_sae, register_architecture
from saescope.training import TrainConfig, Trainer, train_saes

__all__ = [
    "ARCHITECTURES",
    "SaeMetrics",
    "SparseAutoencoder",
    "TrainConfig",
    "Trainer",
    "__version__",
    "create_sae",
    "evaluate_sae",
    "load",
    "register_architecture",
    "train_saes",
]
