"""TopK SAE (Gao et al. 2024, arXiv 2406.04093): each token keeps its k largest pre-activations.

    pre = (x - b_dec) @ W_enc + b_enc;   f = ReLU(TopK_k(pre));   x̂ = f @ W_dec + b_dec

``encode_code`` returns the selection as (indices, values); the dense matrix is built only when asked.
Trained by the "topk" objective (MSE plus AuxK, ``saescope/objectives/topk.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saescope.errors import InvalidInput
from saescope.saes.base import SaeConfig, SparseAutoencoder
from saescope.saes.code import FeatureCode
from saescope.saes.sparse_ops import decode_dense, decode_sparse


def checked_k(k: int | None, d_sae: int) -> int:
    """k as given (None: 32, capped at d_sae), refused unless an integer in [1, d_sae]."""
    k = min(32, d_sae) if k is None else k
    if not isinstance(k, int) or isinstance(k, bool) or not 0 < k <= d_sae:
        raise InvalidInput(f"k={k!r} must be an integer in [1, d_sae={d_sae}]")
    return k


@dataclass
class TopKConfig(SaeConfig):
    k: int | None = None
    """Active latents per token. None: 32 (capped at d_sae), or round(target_l0) when a job sets a target."""
    sparse_decode: bool | None = None
    """Decode through embedding_bag (True) or a dense matmul (False). None: sparse when k <= d_sae / 8."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.k = checked_k(self.k, self.d_sae)
        if self.sparse_decode is None:
            self.sparse_decode = self.k * 8 <= self.d_sae


class TopKSae(SparseAutoencoder):
    architecture = "topk"
    config_class = TopKConfig
    default_objective = "topk"
    saelens_architecture = "topk"
    apply_b_dec_to_input = True

    def select(self, pre: Tensor, k: int) -> FeatureCode:
        """The k largest entries of each row of ``pre``, through a ReLU."""
        values, indices = pre.topk(k, dim=-1, sorted=False)
        return FeatureCode.selected(indices, torch.relu(values), self.d_sae)

    def encode_code(self, x: Tensor) -> FeatureCode:
        return self.select(self.pre_activations(x), self.cfg.k)

    def encode(self, x: Tensor) -> Tensor:
        return self.encode_code(x).dense()

    def decode_code(self, code: FeatureCode) -> Tensor:
        if not code.is_sparse or code.is_entries:
            return super().decode_code(code)
        decode = decode_sparse if self.cfg.sparse_decode else decode_dense
        return decode(code.indices, code.values, self.W_dec, self.b_dec)
