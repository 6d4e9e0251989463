"""Feature-Choice SAE (Ayonrinde 2024, arXiv 2411.02124): in training each latent picks its own tokens.

Training (the "feature_choice" objective) keeps, for every latent i, its m_i largest pre-activations
over the batch, Σ m_i = k·B (expert-choice routing). Inference has no batch, so the module applies a
per-latent threshold θ_i tracked during training (the value of latent i's m_i-th choice):
f_i = ReLU(pre_i)·H(pre_i − θ_i), exactly a JumpReLU, which ``to_jumprelu`` exports.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saescope.saes.base import SaeConfig, SparseAutoencoder
from saescope.saes.jumprelu import JumpReLUConfig, JumpReLUSae
from saescope.saes.topk import checked_k


@dataclass
class FeatureChoiceConfig(SaeConfig):
    k: int | None = None
    """Mean active latents per token in training: the batch's budget is k·B token-latent matches. None: 32 (capped at d_sae)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.k = checked_k(self.k, self.d_sae)


class FeatureChoiceSae(SparseAutoencoder):
    architecture = "feature_choice"
    config_class = FeatureChoiceConfig
    default_objective = "feature_choice"
    saelens_architecture = "jumprelu"
    apply_b_dec_to_input = True
    scaled_tensor_names = ("b_enc", "b_dec", "threshold")

    def add_parameters(self) -> None:
        self.register_buffer("threshold", torch.zeros(self.d_sae))

    def encode(self, x: Tensor) -> Tensor:
        acts = torch.relu(self.pre_activations(x))
        return acts * (acts > self.threshold)

    def to_jumprelu(self) -> JumpReLUSae:
        """An equivalent JumpReLU SAE (inference rule), with the pre-encoder bias folded into b_enc."""
        cfg = JumpReLUConfig(d_in=self.d_in, d_sae=self.d_sae, hookpoint=self.cfg.hookpoint, model_id=self.cfg.model_id)
        sae = JumpReLUSae(cfg).to(self.W_enc.device)
        with torch.no_grad():
            b_enc = self.b_enc - self.b_dec @ self.W_enc
            sae.load_export_tensors(
                {"W_enc": self.W_enc, "W_dec": self.W_dec, "b_dec": self.b_dec, "b_enc": b_enc, "threshold": self.threshold}
            )
        sae.normalization = dict(self.normalization)
        sae.training_summary = dict(self.training_summary)
        return sae
