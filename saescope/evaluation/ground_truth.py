"""How well an SAE recovers known features (synthetic data), with SynthSAEBench's definitions.

Given the true unit directions G [n_true, d] and, on held-out data, which true features were active:

- MMCS: mean over true directions of the best |cosine| with any decoder row; recovered: the fraction
  whose best cosine exceeds 0.9 (these two were saescope's first ground-truth measures).
- MCC (mean correlation coefficient, as SAELens's SynthSAEBench computes it): a one-to-one matching of
  decoder rows to true directions that maximises the summed |cosine| (Hungarian algorithm), then the
  mean |cosine| of the matched pairs.
- Uniqueness: each latent's best-matching true feature; distinct matches divided by the number of latents.
- Precision, recall, F1: each latent as a detector of its best-matching true feature on held-out
  tokens (fires vs is active); per-latent scores averaged over all latents (a dead latent scores 0).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from saescope.saes import SparseAutoencoder

RECOVERY_COSINE = 0.9
"""A true direction counts as recovered when some decoder row has |cosine| above this."""


@dataclass
class GroundTruthMetrics:
    mmcs: float
    recovered: float
    mcc: float
    uniqueness: float
    precision: float
    recall: float
    f1: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def abs_cosines(decoder: Tensor, directions: Tensor) -> Tensor:
    """|cos| between every decoder row and every true direction, float64 [d_sae, n_true]."""
    rows = torch.nn.functional.normalize(decoder.detach().double(), dim=1)
    truth = torch.nn.functional.normalize(directions.detach().double().to(rows.device), dim=1)
    return (rows @ truth.T).abs()


def mean_correlation_coefficient(decoder: Tensor, directions: Tensor) -> float:
    """Mean |cosine| over the one-to-one matching of rows to directions that maximises its sum."""
    from scipy.optimize import linear_sum_assignment

    cosines = abs_cosines(decoder, directions)
    rows, columns = linear_sum_assignment(cosines.cpu().numpy(), maximize=True)
    return float(cosines[torch.as_tensor(rows), torch.as_tensor(columns)].mean())


@torch.no_grad()
def ground_truth_metrics(sae: SparseAutoencoder, directions: Tensor, x: Tensor, true_active: Tensor, batch_size: int = 8192) -> GroundTruthMetrics:
    """All measures above for ``sae`` on held-out activations ``x`` whose true active features are ``true_active`` [n, n_true]."""
    cosines = abs_cosines(sae.W_dec, directions)
    best_per_truth = cosines.max(dim=0).values
    best_feature = cosines.argmax(dim=1)  # [d_sae]
    counts = torch.zeros(3, sae.d_sae, dtype=torch.float64)  # true positives, latent fires, feature active
    for start in range(0, x.shape[0], batch_size):
        fires = sae.encode(x[start : start + batch_size].to(sae.W_enc.device)).cpu() > 0
        active = true_active[start : start + batch_size][:, best_feature.cpu()].bool()
        counts += torch.stack([(fires & active).sum(0), fires.sum(0), active.sum(0)]).double()
    true_pos, fired, present = counts
    precision = torch.where(fired > 0, true_pos / fired.clamp_min(1), 0.0)
    recall = torch.where(present > 0, true_pos / present.clamp_min(1), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12), 0.0)
    return GroundTruthMetrics(
        mmcs=float(best_per_truth.mean()),
        recovered=float((best_per_truth > RECOVERY_COSINE).double().mean()),
        mcc=mean_correlation_coefficient(sae.W_dec, directions),
        uniqueness=float(best_feature.unique().numel() / sae.d_sae),
        precision=float(precision.mean()),
        recall=float(recall.mean()),
        f1=float(f1.mean()),
    )
