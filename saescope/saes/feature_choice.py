"""Feature-Choice SAE (Ayonrinde 2024, arXiv 2411.02124): in training each latent picks its own tokens.

Training (the "feature_choice" objective) keeps, for every latent i, its m_i largest pre-activations
over the batch, Σ m_i = k·B (expert-choice routing). Inference has no batch, so the module applies a
per-latent threshold θ_i tracked during training (the value of latent i's m_i-th choice):
f_i = ReLU(pre_i)·H(pre_i − θ_i), exactly a JumpReLU (``saescope/saes/thresholded.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from saescope.saes.thresholded import ThresholdedConfig, ThresholdedSae


@dataclass
class FeatureChoiceConfig(ThresholdedConfig):
    pass


class FeatureChoiceSae(ThresholdedSae):
    architecture = "feature_choice"
    config_class = FeatureChoiceConfig
    default_objective = "feature_choice"
