"""BatchTopK training (Bussmann, Leask, Nanda 2024): keep the k·n largest entries of ReLU(pre) over the batch.

The inference threshold θ is an EMA of the smallest kept activation, updated after each step without
a host synchronisation; the module applies it (``saescope/saes/batchtopk.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saescope.errors import InvalidInput
from saescope.objectives.base import LossOutput, StepContext, loss_output, squared_error
from saescope.objectives.topk import TopKObjective
from saescope.saes import FeatureCode, SparseAutoencoder
from saescope.saes.sparse_encoder import EncoderPass
from saescope.saes.sparse_ops import decode_entries


@dataclass
class BatchTopKObjective(TopKObjective):
    threshold_momentum: float = 0.99
    """EMA momentum of the inference threshold (SAELens uses 0.99, dictionary_learning 0.999)."""

    name = "batchtopk"
    architectures = ("batchtopk", "mutual_choice")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.threshold_momentum < 1:
            raise InvalidInput(f"BatchTopKObjective.threshold_momentum must be in [0, 1), got {self.threshold_momentum}")

    def select(self, sae: SparseAutoencoder, x: Tensor, ctx: StepContext) -> tuple[Tensor, Tensor]:
        """(pre-activations, the batch's selected activations); tracks the inference threshold while training."""
        pre = sae.pre_activations(x)
        acts = torch.relu(pre)
        n_keep = min(int(self.training_k(sae, ctx.progress) * x.shape[0]), acts.numel())
        feature_acts, smallest_kept = batch_top_k(acts, n_keep, sae.threshold[0])
        if sae.training:
            self._track_threshold(sae, smallest_kept.detach())
        return pre, feature_acts

    def select_sparse(self, sae: SparseAutoencoder, x: Tensor, ctx: StepContext) -> tuple[EncoderPass, FeatureCode]:
        """``select`` for the sparse step: the kept entries as a code of entries, gradient through them only."""
        encoder = EncoderPass(sae, x)
        acts = torch.relu(encoder.pre)
        n_keep = min(int(self.training_k(sae, ctx.progress) * x.shape[0]), acts.numel())
        rows, cols, smallest_kept = batch_top_k_entries(acts, n_keep, sae.threshold[0])
        if sae.training:
            self._track_threshold(sae, smallest_kept)
        values = torch.relu(encoder.take(rows, cols))
        return encoder, FeatureCode.entries(rows, cols, values, encoder.n_tokens, sae.d_sae)

    def loss(self, sae: SparseAutoencoder, x: Tensor, ctx: StepContext) -> LossOutput:
        if self.use_sparse_step(self.kept_per_token(sae, self.training_k(sae, ctx.progress), ctx, x.device), sae.d_sae, x.device):
            encoder, code = self.select_sparse(sae, x, ctx)
            reconstruction = decode_entries(code.rows, code.indices, code.values, code.n_tokens, sae.W_dec, sae.b_dec)
            terms = {"mse": squared_error(reconstruction, ctx.reference(x)), **self.aux_terms(sae, encoder, ctx.reference(x), reconstruction, ctx)}
            return loss_output(code, reconstruction, terms)
        pre, feature_acts = self.select(sae, x, ctx)
        reconstruction = sae.decode(feature_acts)
        terms = {"mse": squared_error(reconstruction, ctx.reference(x)), **self.aux_terms(sae, pre, ctx.reference(x), reconstruction, ctx)}
        return loss_output(FeatureCode.from_dense(feature_acts), reconstruction, terms)

    @torch.no_grad()
    def _track_threshold(self, sae: SparseAutoencoder, smallest_kept: Tensor) -> None:
        # A batch whose cut-off is 0 (fewer positive entries than k·n) says nothing about θ.
        current = sae.threshold[0]
        batch_min = torch.where(smallest_kept > 0, smallest_kept, current)
        momentum = self.threshold_momentum
        # The first batch sets θ directly; later batches move it by an EMA. No host sync either way.
        updated = torch.where(current > 0, momentum * current + (1 - momentum) * batch_min, batch_min)
        sae.threshold.fill_(0).add_(updated)


def batch_top_k(acts: Tensor, n_keep: int, tracked_threshold: Tensor) -> tuple[Tensor, Tensor]:
    """Keep the n_keep largest entries of the whole matrix; also return the smallest kept value.

    Two exact paths chosen by device. GPUs: a flat ``topk``. CPUs: the n_keep-th largest value
    (``kthvalue``), searched only among entries above 0.8 × the tracked threshold when at least
    n_keep of them exist (then the cut-off is certainly among them), else among all entries;
    then a mask. Selection over 19M entries dominated the CPU step; the pre-filter makes it a
    compare and a gather. (The CPU path reads the tracked threshold and a count on the host, which
    costs nothing on a CPU; the CUDA path reads nothing.) The mask also keeps values tied with the
    cut-off, which matters only at 0, where the kept values contribute nothing.
    """
    flat = acts.flatten()
    if acts.is_cuda:
        values, indices = flat.topk(n_keep, sorted=False)
        kept = torch.zeros_like(flat).scatter(0, indices, values).view_as(acts)
        return kept, values.min()
    cutoff = _cpu_cutoff(flat.detach(), n_keep, tracked_threshold)
    return torch.where(acts >= cutoff, acts, 0.0), cutoff


def _cpu_cutoff(values: Tensor, n_keep: int, tracked_threshold: Tensor) -> Tensor:
    """The n_keep-th largest of ``values``, searched among those above 0.8 × the tracked threshold when enough are."""
    pool = values
    guess = 0.8 * float(tracked_threshold)
    if guess > 0:
        above = values[values > guess]
        if above.numel() >= n_keep:
            pool = above
    return pool.kthvalue(pool.numel() - n_keep + 1).values


def batch_top_k_entries(acts: Tensor, n_keep: int, tracked_threshold: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``batch_top_k`` as (rows, cols, smallest kept value) of the kept positive entries, rows ascending (no gradient).

    The same entries as the dense selection (ties with the cut-off included); entries at 0 are left
    out, since they contribute nothing and receive no gradient through the ReLU.
    """
    acts = acts.detach()
    if acts.is_cuda:
        values, indices = acts.flatten().topk(n_keep, sorted=False)
        indices = indices[values > 0].sort().values
        return indices // acts.shape[1], indices % acts.shape[1], values.min()
    cutoff = _cpu_cutoff(acts.flatten(), n_keep, tracked_threshold)
    rows, cols = ((acts >= cutoff) & (acts > 0)).nonzero(as_tuple=True)
    return rows, cols, cutoff


@dataclass
class MutualChoiceObjective(BatchTopKObjective):
    """Mutual Choice training: BatchTopK's selection under the name of Ayonrinde 2024 (see MutualChoiceSae)."""

    name = "mutual_choice"
    architectures = ("mutual_choice", "batchtopk")

