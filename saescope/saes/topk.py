"""TopK SAE (Gao et al. 2024, arXiv 2406.04093) with the AuxK loss for dead latents.

    pre = (x - b_dec) @ W_enc + b_enc;   f = ReLU(TopK_k(pre));   x̂ = f @ W_dec + b_dec
    L = ‖x-x̂‖² + α·‖e - ê‖² / Var(e),   e = x - x̂ (detached),   ê = TopK_{k_aux}(pre over dead latents) @ W_dec

The AuxK term is divided by the batch variance of e, as dictionary_learning does, so dead latents
get a signal of order one however small the residual is. It is off when no latent is dead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saescope.saes.base import ForwardOutput, SaeConfig, SparseAutoencoder
from saescope.saes.sparse_ops import decode_dense, decode_sparse, scatter_dense


@dataclass
class TopKConfig(SaeConfig):
    k: int | None = None
    """Active latents per token. None: target_l0 if set, else 32."""
    aux_k: int | None = None
    """Dead latents used by AuxK. None: d_in // 2 (capped at d_sae)."""
    aux_coefficient: float = 1 / 32
    """α, the weight of the AuxK loss."""
    sparse_decode: bool | None = None
    """Decode through embedding_bag (True) or a dense matmul (False). None: sparse when k <= d_sae / 8."""
    k_anneal_fraction: float = 0.0
    """Fraction of the run over which the training k falls linearly from k_anneal_start to k (0: off)."""
    k_anneal_start: int | None = None
    """The training k at the start of annealing. None: 4k, capped at d_sae."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.k is None:
            self.k = int(round(self.target_l0)) if self.target_l0 is not None else min(32, self.d_sae)
        if not 0 < self.k <= self.d_sae:
            raise ValueError(f"k={self.k} must be in [1, d_sae={self.d_sae}]")
        if self.aux_k is None:
            self.aux_k = max(1, min(self.d_in // 2, self.d_sae))
        if self.sparse_decode is None:
            self.sparse_decode = self.k * 8 <= self.d_sae
        if not 0 <= self.k_anneal_fraction <= 1:
            raise ValueError(f"k_anneal_fraction={self.k_anneal_fraction} must be in [0, 1]")
        if self.k_anneal_start is None:
            self.k_anneal_start = min(4 * self.k, self.d_sae)
        if not self.k <= self.k_anneal_start <= self.d_sae:
            raise ValueError(f"k_anneal_start={self.k_anneal_start} must be in [k={self.k}, d_sae={self.d_sae}]")


class TopKSae(SparseAutoencoder):
    architecture = "topk"
    config_class = TopKConfig
    apply_b_dec_to_input = True
    controls_l0_by_coefficient = False
    # 2e-3 at 2^14 latents (3.8e-3 at 4608): on SmolLM2-135M layer 10 with 900K tokens, held-out FVU
    # 0.132 against 0.241 at the usual 2e-4 (benchmarks/RESULTS.md, "Optimiser and learning rate").
    base_lr = 2e-3

    def init_from_data(self, sample: Tensor) -> None:
        with torch.no_grad():
            self.b_dec.copy_(sample.mean(dim=0))

    def set_training_progress(self, fraction: float) -> None:
        """k annealing: early on more latents fire per token, so more of them receive gradient."""
        cfg = self.cfg
        if cfg.k_anneal_fraction <= 0 or fraction >= cfg.k_anneal_fraction:
            self._training_k = cfg.k
        else:
            remaining = 1.0 - fraction / cfg.k_anneal_fraction
            self._training_k = int(round(cfg.k + (cfg.k_anneal_start - cfg.k) * remaining))

    @property
    def training_k(self) -> int:
        """k used by the training loss: the annealed value while training, else ``cfg.k``."""
        return getattr(self, "_training_k", self.cfg.k) if self.training else self.cfg.k

    def encode(self, x: Tensor) -> Tensor:
        values, indices = self.pre_activations(x).topk(self.cfg.k, dim=-1, sorted=False)
        return scatter_dense(indices, torch.relu(values), self.d_sae)

    def _decode_selected(self, indices: Tensor, values: Tensor) -> Tensor:
        decode = decode_sparse if self.cfg.sparse_decode else decode_dense
        return decode(indices, values, self.W_dec, self.b_dec)

    def losses(self, x: Tensor, sparsity_coefficient: Tensor | float, dead_mask: Tensor | None) -> ForwardOutput:
        pre = self.pre_activations(x)
        values, indices = pre.topk(self.training_k, dim=-1, sorted=False)
        values = torch.relu(values)
        reconstruction = self._decode_selected(indices, values)
        terms = {"mse": (reconstruction - x).pow(2).sum(dim=-1).mean()}
        if dead_mask is not None:
            terms["aux"] = self.aux_loss(pre, x - reconstruction.detach(), dead_mask)
        feature_acts = scatter_dense(indices, values.detach(), self.d_sae)
        return ForwardOutput(feature_acts, reconstruction, sum(terms.values()), terms)

    def aux_loss(self, pre: Tensor, residual: Tensor, dead_mask: Tensor) -> Tensor:
        """AuxK: reconstruct the residual from the top-k_aux pre-activations of dead latents."""
        aux_k = min(self.cfg.aux_k, self.d_sae)
        dead_pre = pre.masked_fill(~dead_mask, float("-inf"))
        values, indices = dead_pre.topk(aux_k, dim=-1, sorted=False)
        values = torch.relu(values)  # -inf (not dead) becomes 0
        decode = decode_sparse if aux_k * 8 <= self.d_sae else decode_dense
        aux_reconstruction = decode(indices, values, self.W_dec, torch.zeros_like(self.b_dec))
        error = (aux_reconstruction - residual).pow(2).sum(dim=-1).mean()
        variance = (residual - residual.mean(dim=0)).pow(2).sum(dim=-1).mean().clamp_min(1e-12)
        return self.cfg.aux_coefficient * error / variance * dead_mask.any()
