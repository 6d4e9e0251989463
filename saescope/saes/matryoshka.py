"""Matryoshka SAE (Bussmann et al. 2025, arXiv 2503.17547): nested prefixes of one dictionary.

The latents are ordered; prefixes m_1 < m_2 < … < m_G = d_sae each reconstruct the input on their own
in training (the "matryoshka" objective), so early latents learn general, frequent features. The
selection is BatchTopK's, so inference uses its global threshold and the checkpoint is a JumpReLU
everywhere else. ``prefix_level(i)`` says which nested dictionary latent i first belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from saescope.errors import InvalidInput
from saescope.saes.batchtopk import BatchTopKConfig, BatchTopKSae


@dataclass
class MatryoshkaConfig(BatchTopKConfig):
    prefixes: list[int] | None = field(default=None)
    """Increasing prefix sizes ending at d_sae. None: [d_sae/16, d_sae/4, d_sae] (rounded, at least 1)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prefixes is None:
            self.prefixes = sorted({max(1, self.d_sae // 16), max(1, self.d_sae // 4), self.d_sae})
        prefixes = list(self.prefixes)
        if not prefixes or prefixes[-1] != self.d_sae or any(b <= a for a, b in zip(prefixes, prefixes[1:])) or prefixes[0] < 1:
            raise InvalidInput(f"prefixes={prefixes}: give strictly increasing sizes from 1 up to d_sae={self.d_sae}, e.g. "
                               f"[{max(1, self.d_sae // 16)}, {max(1, self.d_sae // 4)}, {self.d_sae}]")
        self.prefixes = prefixes


class MatryoshkaSae(BatchTopKSae):
    architecture = "matryoshka"
    config_class = MatryoshkaConfig
    default_objective = "matryoshka"

    def prefix_level(self, latent: int) -> int:
        """0 for latents of the innermost prefix, 1 for the next, ..."""
        for level, size in enumerate(self.cfg.prefixes):
            if latent < size:
                return level
        raise InvalidInput(f"latent {latent} is outside the SAE's {self.d_sae} latents")
