"""The inference rule shared by the SAEs that select latents over a whole batch while training.

BatchTopK, Mutual-Choice, Matryoshka and Feature-Choice pick entries of the batch's pre-activation
matrix in training, which inference cannot do one token at a time. They all encode with a tracked
threshold instead: f = ReLU(pre)·H(ReLU(pre) − θ), θ one value for all latents (BatchTopK family) or
one per latent (Feature-Choice), stored per latent so the checkpoint reads as a JumpReLU threshold.
That rule is exactly a JumpReLU's, which ``to_jumprelu`` exports.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saescope.saes.base import SaeConfig, SparseAutoencoder
from saescope.saes.jumprelu import JumpReLUConfig, JumpReLUSae
from saescope.saes.topk import checked_k


@dataclass
class ThresholdedConfig(SaeConfig):
    k: int | None = None
    """Mean active latents per token in training: the batch keeps k·B token-latent matches. None: 32 (capped at d_sae)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.k = checked_k(self.k, self.d_sae)


class ThresholdedSae(SparseAutoencoder):
    """Base of the batch-selection architectures: a ReLU gated by a tracked threshold buffer."""

    config_class = ThresholdedConfig
    apply_b_dec_to_input = True
    scaled_tensor_names = ("b_enc", "b_dec", "threshold")
    saelens_architecture = "jumprelu"

    def add_parameters(self) -> None:
        self.register_buffer("threshold", torch.zeros(self.d_sae))

    def encode(self, x: Tensor) -> Tensor:
        acts = torch.relu(self.pre_activations(x))
        return acts * (acts > self.threshold)

    def to_jumprelu(self) -> JumpReLUSae:
        """An equivalent JumpReLU SAE (inference rule), with the pre-encoder bias folded into b_enc."""
        cfg = JumpReLUConfig(d_in=self.d_in, d_sae=self.d_sae, hookpoint=self.cfg.hookpoint, model_id=self.cfg.model_id,
                             target=self.cfg.target, d_out=self.cfg.d_out, skip=self.cfg.skip)
        sae = JumpReLUSae(cfg).to(self.W_enc.device)
        with torch.no_grad():
            b_enc = self.b_enc - self.b_dec @ self.W_enc if self.apply_b_dec_to_input else self.b_enc
            tensors = {"W_enc": self.W_enc, "W_dec": self.W_dec, "b_dec": self.b_dec, "b_enc": b_enc, "threshold": self.threshold}
            if self.cfg.skip:
                tensors["W_skip"] = self.W_skip
            sae.load_export_tensors(tensors)
        sae.normalization = dict(self.normalization)
        sae.training_summary = dict(self.training_summary)
        return sae
