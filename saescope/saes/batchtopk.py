"""BatchTopK SAE (Bussmann, Leask, Nanda 2024, arXiv 2412.06410): TopK over the whole batch in training.

Training (the "batchtopk" objective) keeps the k·n largest entries of ReLU(pre) over the [n, d_sae]
batch, so the mean L0 is k while single tokens use more or fewer latents. Inference cannot depend on
the batch, so the module applies a global threshold θ tracked during training:
f = ReLU(pre)·H(ReLU(pre) - θ), exactly a JumpReLU with θ_i = θ for every latent, which
``to_jumprelu`` exports.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saescope.saes.base import SaeConfig, SparseAutoencoder
from saescope.saes.jumprelu import JumpReLUConfig, JumpReLUSae
from saescope.saes.topk import checked_k


@dataclass
class BatchTopKConfig(SaeConfig):
    k: int | None = None
    """Mean active latents per token in training (the batch keeps k·n entries). None: 32 (capped at d_sae)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.k = checked_k(self.k, self.d_sae)


class BatchTopKSae(SparseAutoencoder):
    architecture = "batchtopk"
    config_class = BatchTopKConfig
    default_objective = "batchtopk"
    saelens_architecture = "jumprelu"
    apply_b_dec_to_input = True
    scaled_tensor_names = ("b_enc", "b_dec", "threshold")

    def add_parameters(self) -> None:
        # One global value, stored per latent so the checkpoint reads as a JumpReLU threshold.
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


class MutualChoiceSae(BatchTopKSae):
    """Mutual Choice (Ayonrinde 2024): the top k·B entries of the batch's whole pre-activation matrix.

    That is exactly BatchTopK's selection (the paper's reviewers noted the overlap), so both names share
    one implementation; the name records which paper a user followed.
    """

    architecture = "mutual_choice"
    default_objective = "mutual_choice"

