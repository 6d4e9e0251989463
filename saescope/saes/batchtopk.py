"""BatchTopK SAE (Bussmann, Leask, Nanda 2024, arXiv 2412.06410) and Mutual-Choice (Ayonrinde 2024).

Training (the "batchtopk" objective) keeps the k·n largest entries of ReLU(pre) over the whole
[n, d_sae] batch, so the mean L0 is k while single tokens may use more or fewer latents. Inference
uses one global threshold θ tracked during training (``saescope/saes/thresholded.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from saescope.saes.thresholded import ThresholdedConfig, ThresholdedSae


@dataclass
class BatchTopKConfig(ThresholdedConfig):
    pass


class BatchTopKSae(ThresholdedSae):
    architecture = "batchtopk"
    config_class = BatchTopKConfig
    default_objective = "batchtopk"


class MutualChoiceSae(BatchTopKSae):
    """Mutual Choice (Ayonrinde 2024): the top k·B entries of the batch's whole pre-activation matrix.

    That is exactly BatchTopK's selection (the paper's reviewers noted the overlap), so both names share
    one implementation; the name records which paper a user followed.
    """

    architecture = "mutual_choice"
    default_objective = "mutual_choice"
