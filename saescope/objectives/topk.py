"""TopK training (Gao et al. 2024, arXiv 2406.04093): MSE plus the AuxK loss for dead latents.

    L = ‖x-x̂‖² + α·‖e - ê‖² / Var(e),   e = x - x̂ (detached),   ê = TopK_{k_aux}(pre over dead latents) @ W_dec

The AuxK term is divided by the batch variance of e, as dictionary_learning does, so dead latents
get a signal of order one however small the residual is. It is off when no latent is dead. The code
stays (indices, values) throughout: nothing builds the [n_tokens, d_sae] matrix.

Two paths with the same values and gradients (tested): the dense reference backpropagates through the
whole pre-activation matrix; the sparse step (the default on a CPU when k ≤ d_sae/8; see sparse_pays) backpropagates through the
k + aux_k selected entries per token only (``saescope/saes/sparse_encoder.py``), and AuxK selects among
the dead latents' columns instead of masking the whole matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from saescope.errors import InvalidInput
from saescope.objectives.base import (
    LossOutput,
    Objective,
    StepContext,
    loss_output,
    squared_error,
)
from saescope.saes import FeatureCode, SparseAutoencoder
from saescope.saes.sparse_encoder import EncoderPass
from saescope.saes.sparse_ops import decode_dense, decode_sparse, sparse_pays


def k_for_target(target_l0: float, d_sae: int) -> int:
    """The TopK family's k for a target L0 (at least 1, at most d_sae)."""
    return max(1, min(d_sae, int(round(target_l0))))


def aux_k_loss(
    sae: SparseAutoencoder, pre: Tensor, residual: Tensor, eligible: Tensor, aux_k: int, coefficient: float, weights: Tensor | None = None,
) -> Tensor:
    """Reconstruct the residual from the top-aux_k pre-activations of the ``eligible`` latents (bool [d_sae]).

    AuxK passes the dead latents; aux_zipf passes the under-used ones with their shortfall as ``weights``
    (each selected latent's activation is scaled by its weight), so both are settings of this routine.
    """
    aux_k = min(aux_k, sae.d_sae)
    eligible_pre = pre.masked_fill(~eligible, float("-inf"))
    values, indices = eligible_pre.topk(aux_k, dim=-1, sorted=False)
    return _aux_reconstruction_loss(sae, indices, torch.relu(values), residual, eligible, coefficient, weights)  # relu: -inf becomes 0


def sparse_aux_k_loss(
    sae: SparseAutoencoder, encoder: EncoderPass, residual: Tensor, eligible: Tensor, aux_k: int, coefficient: float, weights: Tensor | None = None,
) -> Tensor:
    """``aux_k_loss`` through the sparse path: the top-aux_k of the eligible columns only, gradient through those entries."""
    pre = encoder.pre
    if pre.is_cuda:  # no host read on a GPU: mask the whole matrix
        indices = pre.masked_fill(~eligible, float("-inf")).topk(min(aux_k, sae.d_sae), dim=-1, sorted=False).indices
    else:  # a CPU reads the eligible count for free, and selecting among those columns is far cheaper
        columns = eligible.nonzero().squeeze(1)
        if columns.numel() == 0:
            return pre.new_zeros(())
        chosen = pre.index_select(1, columns).topk(min(aux_k, columns.numel()), dim=-1, sorted=False).indices
        indices = columns[chosen]
    values = torch.relu(encoder.take_selected(indices))
    values = torch.where(eligible[indices], values, 0.0)  # a GPU's -inf columns, as the dense path's ReLU(-inf)
    return _aux_reconstruction_loss(sae, indices, values, residual, eligible, coefficient, weights)


def _aux_reconstruction_loss(
    sae: SparseAutoencoder, indices: Tensor, values: Tensor, residual: Tensor, eligible: Tensor, coefficient: float, weights: Tensor | None,
) -> Tensor:
    """α·‖residual − Σ values·W_dec[indices]‖² / Var(residual), off (0) when nothing is eligible."""
    if weights is not None:
        values = values * weights[indices]
    decode = decode_sparse if sparse_pays(indices.shape[1], sae.d_sae, sae.W_dec.device) else decode_dense
    aux_reconstruction = decode(indices, values, sae.W_dec, torch.zeros_like(sae.b_dec))
    error = (aux_reconstruction - residual).pow(2).sum(dim=-1).mean()
    variance = (residual - residual.mean(dim=0)).pow(2).sum(dim=-1).mean().clamp_min(1e-12)
    return coefficient * error / variance * eligible.any()


def zipf_shortfall(firing_rate: Tensor, head_fraction: float = 0.5) -> Tensor:
    """Per latent, how far its firing rate falls below a Zipf law fitted to the rate-versus-rank curve, in [0, 1].

    saescope's reading of aux_zipf_loss (Ayonrinde 2024 gives no formula): sort the running firing rates
    p in decreasing order (rank r = 1, 2, ...); fit log p = a − s·log r by least squares over the
    firing latents in the top ``head_fraction`` of ranks (the law fits the head; the tail is what falls
    short); the shortfall of a latent of rank r is max(0, 1 − p / (e^a·r^(−s))). Latents that never
    fired have shortfall 1. No host synchronisation.
    """
    n = firing_rate.numel()
    rates, order = firing_rate.float().sort(descending=True)
    log_rank = torch.arange(1, n + 1, device=rates.device, dtype=torch.float32).log()
    head = (torch.arange(n, device=rates.device) < max(2, int(head_fraction * n))) & (rates > 0)
    weight = head.float()
    count = weight.sum().clamp_min(1)
    log_rate = rates.clamp_min(1e-12).log()
    mean_x, mean_y = (log_rank * weight).sum() / count, (log_rate * weight).sum() / count
    slope = (((log_rank - mean_x) * (log_rate - mean_y)) * weight).sum() / (((log_rank - mean_x) ** 2) * weight).sum().clamp_min(1e-12)
    expected = (mean_y + slope * (log_rank - mean_x)).exp()
    shortfall_sorted = (1 - rates / expected).clamp(0, 1)
    return torch.empty_like(shortfall_sorted).scatter_(0, order, shortfall_sorted)


@dataclass
class TopKObjective(Objective):
    aux_k: int | None = None
    """Dead latents used by AuxK. None: d_in // 2 (capped at d_sae)."""
    aux_coefficient: float = 1 / 32
    """α, the weight of the AuxK loss."""
    k_anneal_fraction: float = 0.0
    """Fraction of the run over which the training k falls linearly from k_anneal_start to k (0: off)."""
    k_anneal_start: int | None = None
    """The training k at the start of annealing. None: 4k, capped at d_sae."""
    aux_target: Literal["dead", "zipf"] = "dead"
    """Which latents the auxiliary loss revives: "dead" (AuxK) or those below a Zipf law fitted to the
    firing-rate curve, weighted by their shortfall (saescope's reading of aux_zipf_loss; see zipf_shortfall)."""

    name = "topk"
    architectures = ("topk",)
    sparsity_mode = "k"
    # 2e-3 at 2^14 latents (3.8e-3 at 4608): on SmolLM2-135M layer 10 with 900K tokens, held-out FVU
    # 0.132 against 0.241 at the usual 2e-4 (benchmarks/RESULTS.md, "Optimiser and learning rate").
    base_lr = 2e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.aux_target not in ("dead", "zipf"):
            raise InvalidInput(f"{type(self).__name__}.aux_target must be 'dead' or 'zipf', got {self.aux_target!r}")
        if not 0 <= self.k_anneal_fraction <= 1:
            raise InvalidInput(f"{type(self).__name__}.k_anneal_fraction={self.k_anneal_fraction} must be in [0, 1]")
        if self.aux_k is not None and self.aux_k < 1:
            raise InvalidInput(f"{type(self).__name__}.aux_k must be >= 1, got {self.aux_k}")

    def sae_options(self, options: dict[str, Any], d_sae: int) -> dict[str, Any]:
        if self.target_l0 is not None and "k" not in options:
            return {**options, "k": k_for_target(self.target_l0, d_sae)}
        return options

    def check(self, sae: SparseAutoencoder) -> None:
        super().check(sae)
        k = sae.cfg.k
        if self.k_anneal_start is not None and not k <= self.k_anneal_start <= sae.d_sae:
            raise InvalidInput(f"{type(self).__name__}.k_anneal_start={self.k_anneal_start} must be in [k={k}, d_sae={sae.d_sae}]")

    def training_k(self, sae: SparseAutoencoder, progress: float) -> int:
        """k annealing: early on more latents fire per token, so more of them receive gradient."""
        k = sae.cfg.k
        if self.k_anneal_fraction <= 0 or progress >= self.k_anneal_fraction:
            return k
        start = self.k_anneal_start if self.k_anneal_start is not None else min(4 * k, sae.d_sae)
        remaining = 1.0 - progress / self.k_anneal_fraction
        return int(round(k + (start - k) * remaining))

    def init_from_data(self, sae: SparseAutoencoder, sample: Tensor) -> None:
        if sae.cfg.target is None:  # a transcoder's output bias starts at its target's mean (the trainer sets it)
            with torch.no_grad():
                sae.b_dec.copy_(sample.mean(dim=0))

    @property
    def uses_firing_rate(self) -> bool:  # type: ignore[override]
        return self.aux_target == "zipf"

    def resolved_aux_k(self, sae: SparseAutoencoder) -> int:
        return min(sae.d_sae, self.aux_k if self.aux_k is not None else max(1, sae.d_in // 2))

    def aux_active(self, ctx: StepContext) -> bool:
        """Whether this step adds the auxiliary loss (dead latents, or the Zipf target after the first step)."""
        if self.aux_coefficient == 0:
            return False
        if self.aux_target == "zipf":
            return ctx.firing_rate is not None and ctx.step > 0
        return ctx.dead_mask is not None

    def kept_per_token(self, sae: SparseAutoencoder, k: float, ctx: StepContext, device: torch.device) -> float:
        """Entries per token that decide sparse against dense: the code's k, plus AuxK's selection when it runs on a GPU.

        A GPU selects AuxK's latents over the whole masked matrix (no host read), so its aux_k entries per
        token weigh like the code's; a CPU selects among the dead latents' columns only, which stays cheap.
        """
        on_gpu = torch.device(device).type == "cuda"
        return k + (self.resolved_aux_k(sae) if on_gpu and self.aux_active(ctx) else 0)

    def aux_terms(self, sae: SparseAutoencoder, pre: Tensor | EncoderPass, x: Tensor, reconstruction: Tensor, ctx: StepContext) -> dict[str, Tensor]:
        """The auxiliary loss from the pre-activations (dense path) or the encoder pass (sparse path)."""
        if not self.aux_active(ctx):
            return {}
        aux_k = self.resolved_aux_k(sae)
        residual = x - reconstruction.detach()
        weights = None
        if self.aux_target == "zipf":
            weights = zipf_shortfall(ctx.firing_rate)
            eligible = weights > 0
        else:
            eligible = ctx.dead_mask
        aux = sparse_aux_k_loss if isinstance(pre, EncoderPass) else aux_k_loss
        return {"aux": aux(sae, pre, residual, eligible, aux_k, self.aux_coefficient, weights=weights)}

    def loss(self, sae: SparseAutoencoder, x: Tensor, ctx: StepContext) -> LossOutput:
        k = self.training_k(sae, ctx.progress)
        if self.use_sparse_step(self.kept_per_token(sae, k, ctx, x.device), sae.d_sae, x.device):
            encoder = EncoderPass(sae, x)
            indices = encoder.pre.topk(k, dim=-1, sorted=False).indices
            code = FeatureCode.selected(indices, torch.relu(encoder.take_selected(indices)), sae.d_sae)
            pre: Tensor | EncoderPass = encoder
        else:
            pre = sae.pre_activations(x)
            code = sae.select(pre, k)
        reconstruction = sae.decode_code(code)
        terms = {"mse": squared_error(reconstruction, ctx.reference(x)), **self.aux_terms(sae, pre, ctx.reference(x), reconstruction, ctx)}
        return loss_output(code, reconstruction, terms)
