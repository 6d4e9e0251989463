"""BatchTopK SAE (Bussmann, Leask, Nanda 2024, arXiv 2412.06410).

Training keeps the k·n largest entries of ReLU(pre) over the whole [n, d_sae] batch, so the mean L0
is k while single tokens may use more or fewer latents. Inference cannot depend on the batch, so a
global threshold θ is tracked during training (an EMA of the smallest selected activation) and
``encode`` applies f = ReLU(pre)·H(ReLU(pre) - θ): exactly a JumpReLU with θ_i = θ for every latent,
which ``to_jumprelu`` exports.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saescope.saes.base import ForwardOutput
from saescope.saes.jumprelu import JumpReLUConfig, JumpReLUSae
from saescope.saes.topk import TopKConfig, TopKSae


@dataclass
class BatchTopKConfig(TopKConfig):
    threshold_momentum: float = 0.99
    """EMA momentum of the inference threshold (SAELens uses 0.99, dictionary_learning 0.999)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.threshold_momentum < 1:
            raise ValueError(f"threshold_momentum must be in [0, 1), got {self.threshold_momentum}")


class BatchTopKSae(TopKSae):
    architecture = "batchtopk"
    config_class = BatchTopKConfig
    scaled_tensor_names = ("b_enc", "b_dec", "threshold")

    def add_parameters(self) -> None:
        # One global value, stored per latent so the checkpoint reads as a JumpReLU threshold.
        self.register_buffer("threshold", torch.zeros(self.d_sae))

    def encode(self, x: Tensor) -> Tensor:
        acts = torch.relu(self.pre_activations(x))
        return acts * (acts > self.threshold)

    def losses(self, x: Tensor, sparsity_coefficient: Tensor | float, dead_mask: Tensor | None) -> ForwardOutput:
        pre = self.pre_activations(x)
        acts = torch.relu(pre)
        feature_acts, smallest_kept = self._batch_top_k(acts, min(int(self.training_k * x.shape[0]), acts.numel()))
        reconstruction = self.decode(feature_acts)
        terms = {"mse": (reconstruction - x).pow(2).sum(dim=-1).mean()}
        if dead_mask is not None:
            terms["aux"] = self.aux_loss(pre, x - reconstruction.detach(), dead_mask)
        if self.training:
            self._track_threshold(smallest_kept.detach())
        return ForwardOutput(feature_acts, reconstruction, sum(terms.values()), terms)

    def _batch_top_k(self, acts: Tensor, n_keep: int) -> tuple[Tensor, Tensor]:
        """Keep the n_keep largest entries of the whole matrix; also return the smallest kept value.

        Two exact paths chosen by device. GPUs: a flat ``topk``. CPUs: the n_keep-th largest value
        (``kthvalue``), searched only among entries above 0.8 × the tracked threshold when at least
        n_keep of them exist (then the cut-off is certainly among them), else among all entries;
        then a mask. Selection over 19M entries dominated the CPU step; the pre-filter makes it a
        compare and a gather. (The size check reads a count on the host, which costs nothing on a
        CPU.) The mask also keeps values tied with the cut-off, which matters only at 0, where the
        kept values contribute nothing.
        """
        flat = acts.flatten()
        if acts.is_cuda:
            values, indices = flat.topk(n_keep, sorted=False)
            kept = torch.zeros_like(flat).scatter(0, indices, values).view_as(acts)
            return kept, values.min()
        pool = values = flat.detach()
        guess = 0.8 * float(self.threshold[0])
        if guess > 0:
            above = values[values > guess]
            if above.numel() >= n_keep:
                pool = above
        cutoff = pool.kthvalue(pool.numel() - n_keep + 1).values
        return torch.where(acts >= cutoff, acts, 0.0), cutoff

    @torch.no_grad()
    def _track_threshold(self, smallest_kept: Tensor) -> None:
        # A batch whose cut-off is 0 (fewer positive entries than k·n) says nothing about θ.
        batch_min = torch.where(smallest_kept > 0, smallest_kept, self.threshold[0])
        momentum = self.cfg.threshold_momentum
        current = self.threshold[0]
        # The first batch sets θ directly; later batches move it by an EMA. No host sync either way.
        updated = torch.where(current > 0, momentum * current + (1 - momentum) * batch_min, batch_min)
        self.threshold.fill_(0).add_(updated)

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
