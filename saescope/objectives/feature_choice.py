"""Feature-Choice training (Ayonrinde 2024, arXiv 2411.02124): each latent keeps its own top m_i tokens of the batch.

    Z = ReLU(pre) ∈ R^{B×F};   keep Z[t, i] iff t is among latent i's m_i largest entries;   Σ_i m_i = k·B

Capacities: "uniform" gives every latent m = k·B/F (the remainder one each to the first latents);
"zipf" gives m_i ∝ 1/(rank_i + b)^s over the latents' running firing-rate rank (0 = most frequent),
normalised to the budget and capped at B (water-filling), as the paper describes. Values are the
ReLU'd pre-activations, unshrunk. The inference threshold θ_i is an EMA of latent i's m_i-th value,
so one token encodes alone (``saescope/saes/feature_choice.py``). With Zipf capacities the split is
recomputed each step from the firing rates (a few host reads per step, no cost on a CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from saescope.errors import InvalidInput
from saescope.objectives.base import LossOutput, StepContext, loss_output, squared_error
from saescope.objectives.topk import TopKObjective
from saescope.saes import FeatureCode, SparseAutoencoder
from saescope.saes.sparse_encoder import EncoderPass
from saescope.saes.sparse_ops import decode_entries


def uniform_capacities(budget: int, n_latents: int, device: torch.device | str = "cpu") -> Tensor:
    """m_i = budget // F, plus one for the first (budget mod F) latents: Σ m_i = budget exactly."""
    capacities = torch.full((n_latents,), budget // n_latents, dtype=torch.long, device=device)
    capacities[: budget % n_latents] += 1
    return capacities


def zipf_capacities(firing_rate: Tensor, budget: int, cap: int, exponent: float = 1.0, offset: float = 1.0) -> Tensor:
    """m_i ∝ 1/(rank_i + offset)^exponent by firing-rate rank, each at most ``cap``, Σ m_i = budget (when budget ≤ F·cap)."""
    n_latents = firing_rate.numel()
    if budget > n_latents * cap:
        raise InvalidInput(f"a budget of {budget} matches cannot fit {n_latents} latents of at most {cap} tokens each; lower k")
    order = torch.argsort(firing_rate, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(n_latents, device=order.device)
    weights = (ranks.double() + offset).pow(-exponent)
    capacities = torch.zeros(n_latents, dtype=torch.long, device=firing_rate.device)
    free = torch.ones(n_latents, dtype=torch.bool, device=firing_rate.device)
    share = torch.zeros(n_latents, dtype=torch.float64, device=firing_rate.device)
    for _ in range(n_latents):  # water-filling: latents whose share exceeds the cap take the cap; the rest share again
        remaining = budget - int(capacities.sum())
        masked = weights * free
        share = masked / masked.sum() * remaining
        over = free & (share >= cap)
        if not bool(over.any()):
            break
        capacities[over] = cap
        free &= ~over
    whole = share.floor().long() * free
    capacities += whole
    shortfall = budget - int(capacities.sum())
    if shortfall > 0:  # the largest fractional parts take one more each
        fraction = (share - share.floor()).masked_fill(~free | (capacities >= cap), -1.0)
        capacities[fraction.topk(shortfall).indices] += 1
    return capacities


@dataclass
class FeatureChoiceObjective(TopKObjective):
    capacity: Literal["uniform", "zipf"] = "uniform"
    """How the k·B budget is split over latents: equally, or by a Zipf law over their firing-rate rank."""
    zipf_exponent: float = 1.0
    """s in m_i ∝ 1/(rank_i + b)^s."""
    zipf_offset: float = 1.0
    """b in m_i ∝ 1/(rank_i + b)^s."""
    threshold_momentum: float = 0.99
    """EMA momentum of each latent's inference threshold."""

    name = "feature_choice"
    architectures = ("feature_choice",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.capacity not in ("uniform", "zipf"):
            raise InvalidInput(f"FeatureChoiceObjective.capacity must be 'uniform' or 'zipf', got {self.capacity!r}")
        if not 0 <= self.threshold_momentum < 1:
            raise InvalidInput(f"FeatureChoiceObjective.threshold_momentum must be in [0, 1), got {self.threshold_momentum}")
        if not self.zipf_exponent >= 0 or not self.zipf_offset > 0:
            raise InvalidInput("FeatureChoiceObjective: zipf_exponent must be >= 0 and zipf_offset > 0")

    @property
    def uses_firing_rate(self) -> bool:  # type: ignore[override]
        return self.capacity == "zipf" or super().uses_firing_rate

    def capacities(self, sae: SparseAutoencoder, n_tokens: int, ctx: StepContext) -> Tensor:
        budget = self.training_k(sae, ctx.progress) * n_tokens
        if self.capacity == "uniform" or ctx.firing_rate is None:
            return uniform_capacities(budget, sae.d_sae, sae.W_enc.device)
        return zipf_capacities(ctx.firing_rate, budget, n_tokens, self.zipf_exponent, self.zipf_offset)

    def loss(self, sae: SparseAutoencoder, x: Tensor, ctx: StepContext) -> LossOutput:
        if self.use_sparse_step(self.kept_per_token(sae, self.training_k(sae, ctx.progress), ctx, x.device), sae.d_sae, x.device):
            return self._sparse_loss(sae, x, ctx)
        pre = sae.pre_activations(x)
        acts = torch.relu(pre)
        capacities = self.capacities(sae, x.shape[0], ctx)
        feature_acts, last_kept = feature_choice(acts, capacities)
        reconstruction = sae.decode(feature_acts)
        terms = {"mse": squared_error(reconstruction, ctx.reference(x)), **self.aux_terms(sae, pre, ctx.reference(x), reconstruction, ctx)}
        if sae.training:
            self._track_threshold(sae, last_kept.detach(), capacities > 0)
        return loss_output(FeatureCode.from_dense(feature_acts), reconstruction, terms)

    def _sparse_loss(self, sae: SparseAutoencoder, x: Tensor, ctx: StepContext) -> LossOutput:
        encoder = EncoderPass(sae, x)
        capacities = self.capacities(sae, x.shape[0], ctx)
        rows, cols, last_kept = feature_choice_entries(torch.relu(encoder.pre), capacities)
        values = torch.relu(encoder.take(rows, cols))
        code = FeatureCode.entries(rows, cols, values, encoder.n_tokens, sae.d_sae)
        reconstruction = decode_entries(rows, cols, values, encoder.n_tokens, sae.W_dec, sae.b_dec)
        terms = {"mse": squared_error(reconstruction, ctx.reference(x)), **self.aux_terms(sae, encoder, ctx.reference(x), reconstruction, ctx)}
        if sae.training:
            self._track_threshold(sae, last_kept, capacities > 0)
        return loss_output(code, reconstruction, terms)

    @torch.no_grad()
    def _track_threshold(self, sae: SparseAutoencoder, last_kept: Tensor, chose: Tensor) -> None:
        # A latent that chose nothing, or whose last choice is 0, says nothing about its threshold.
        seen = chose & (last_kept > 0)
        current = sae.threshold
        momentum = self.threshold_momentum
        updated = torch.where(current > 0, momentum * current + (1 - momentum) * last_kept, last_kept)
        current.copy_(torch.where(seen, updated, current))


def feature_choice(acts: Tensor, capacities: Tensor) -> tuple[Tensor, Tensor]:
    """Keep each column's ``capacities[i]`` largest entries of ``acts`` [B, F]; also return each column's last kept value.

    Gradient reaches exactly the kept entries. The selection is one column-wise top-M (M the largest
    capacity) and a rank mask, so its cost is that of a top-M over the batch per latent.
    """
    most = int(capacities.max())
    if most == 0:
        return torch.zeros_like(acts), torch.zeros(acts.shape[1], dtype=acts.dtype, device=acts.device)
    values, rows = acts.topk(most, dim=0)  # [M, F], sorted descending
    keep = torch.arange(most, device=acts.device).unsqueeze(1) < capacities.unsqueeze(0)
    kept = torch.zeros_like(acts).scatter(0, rows, values * keep)
    last = values.detach().gather(0, (capacities - 1).clamp_min(0).unsqueeze(0)).squeeze(0)
    return kept, torch.where(capacities > 0, last, 0.0)


def feature_choice_entries(acts: Tensor, capacities: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``feature_choice`` as (rows, cols, each column's last kept value) of the kept positive entries, rows ascending."""
    acts = acts.detach()
    most = int(capacities.max())
    if most == 0:
        empty = torch.zeros(0, dtype=torch.long, device=acts.device)
        return empty, empty, torch.zeros(acts.shape[1], dtype=acts.dtype, device=acts.device)
    values, rows = acts.topk(most, dim=0)  # [M, F], sorted descending
    keep = (torch.arange(most, device=acts.device).unsqueeze(1) < capacities.unsqueeze(0)) & (values > 0)
    cols = torch.arange(acts.shape[1], device=acts.device).expand_as(rows)
    flat = (rows * acts.shape[1] + cols)[keep].sort().values  # token-major order
    last = values.gather(0, (capacities - 1).clamp_min(0).unsqueeze(0)).squeeze(0)
    return flat // acts.shape[1], flat % acts.shape[1], torch.where(capacities > 0, last, 0.0)
