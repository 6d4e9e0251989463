"""Synthetic activations in superposition, with known ground-truth feature directions.

x = Σ_g c_g·g over a sparse set of active features g (unit vectors in R^d, more of them than d),
magnitudes c_g ~ U(magnitude_low, 1). Three variants of which features fire together:

- ``uniform``: each feature fires independently with the same probability.
- ``zipf``: independent, with probabilities ∝ 1/rank^zipf_exponent (a few common, many rare).
- ``hierarchical``: features come in families of one parent and ``children_per_parent`` children;
  a child can only fire with its parent, and exactly one child fires with probability
  ``child_probability`` when the parent does (the structure behind feature absorption).
- ``synthsae``: shaped like SynthSAEBench (Chanin et al. 2026) at a small scale: the hierarchical
  families, with Zipf-distributed parent frequencies (∝ 1/rank^zipf_exponent), mutually exclusive
  children, positive correlation between parents of one of ``correlation_groups`` groups (a per-token
  group switch multiplies their probabilities by 1 ± ``correlation``, which leaves the marginals
  unchanged), and Gaussian noise of std ``synthsae_noise_std`` (on top of ``noise_std``).

Every variant is scaled so that the expected number of active features per token is ``mean_l0``.
Batches are generated on the fly from a seed, so a stream of any length costs no memory and is
reproducible.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from saescope.errors import InvalidInput

VARIANTS = ("uniform", "zipf", "hierarchical", "synthsae")


@dataclass
class SyntheticConfig:
    d_in: int = 64
    """Activation width."""
    n_features: int = 256
    """Ground-truth directions (n_features > d_in puts them in superposition)."""
    mean_l0: float = 4.0
    """Expected active features per token."""
    variant: Literal["uniform", "zipf", "hierarchical", "synthsae"] = "uniform"
    zipf_exponent: float = 1.0
    children_per_parent: int = 3
    child_probability: float = 0.75
    magnitude_low: float = 0.0
    """Active magnitudes are uniform on [magnitude_low, 1]."""
    noise_std: float = 0.0
    """Isotropic Gaussian noise added to every activation."""
    correlation: float = 0.5
    """synthsae: how strongly a group switch raises (or lowers) its parents' probabilities, in [0, 1)."""
    correlation_groups: int = 8
    """synthsae: parents are split round-robin into this many correlated groups."""
    synthsae_noise_std: float = 0.02
    """synthsae: noise std of the variant itself."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise InvalidInput(f"variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.d_in <= 0 or self.n_features <= 0:
            raise InvalidInput("d_in and n_features must be positive")
        if not 0 < self.mean_l0 < self.n_features:
            raise InvalidInput(f"mean_l0 must be in (0, n_features={self.n_features}), got {self.mean_l0}")
        if not 0 <= self.correlation < 1:
            raise InvalidInput(f"correlation must be in [0, 1), got {self.correlation}")
        if self.variant in ("hierarchical", "synthsae") and self.n_features % (self.children_per_parent + 1):
            raise InvalidInput(f"hierarchical: n_features={self.n_features} must be a multiple of children_per_parent + 1")


class SyntheticActivations:
    """Ground-truth directions plus a sampler of activations built from them."""

    def __init__(self, config: SyntheticConfig | None = None) -> None:
        self.config = config = config or SyntheticConfig()
        generator = torch.Generator().manual_seed(config.seed)
        self.directions = torch.nn.functional.normalize(torch.randn(config.n_features, config.d_in, generator=generator), dim=1)
        if config.variant in ("hierarchical", "synthsae"):
            family = config.children_per_parent + 1
            n_parents = config.n_features // family
            # per family: parent fires with p, then one child with child_probability
            ranks = torch.arange(1, n_parents + 1, dtype=torch.float32)
            weights = ranks ** -config.zipf_exponent if config.variant == "synthsae" else torch.ones(n_parents)
            p = weights * (config.mean_l0 / (weights.sum() * (1 + config.child_probability)))
            boost = 1 + config.correlation if config.variant == "synthsae" else 1.0
            if float(p.max()) * boost > 1:
                raise InvalidInput(f"mean_l0={config.mean_l0} is too high for {n_parents} families")
            self.parent_probability = p
            self.probabilities = None
        else:
            if config.variant == "zipf":
                weights = 1.0 / torch.arange(1, config.n_features + 1, dtype=torch.float64) ** config.zipf_exponent
            else:
                weights = torch.ones(config.n_features, dtype=torch.float64)
            probabilities = weights * (config.mean_l0 / weights.sum())
            if probabilities.max() > 1:
                raise InvalidInput(f"mean_l0={config.mean_l0} makes the most frequent feature fire with probability > 1")
            self.probabilities = probabilities.float()

    def coefficients(self, n_tokens: int, generator: torch.Generator) -> Tensor:
        """Sparse feature magnitudes, shape [n_tokens, n_features]."""
        config = self.config
        if self.probabilities is not None:
            active = torch.rand(n_tokens, config.n_features, generator=generator) < self.probabilities
        else:
            family = config.children_per_parent + 1
            n_parents = config.n_features // family
            probability = self.parent_probability.expand(n_tokens, n_parents)
            if config.variant == "synthsae":
                switch = torch.rand(n_tokens, config.correlation_groups, generator=generator) < 0.5
                group = switch[:, torch.arange(n_parents) % config.correlation_groups]
                probability = probability * (1 + config.correlation * (2 * group.float() - 1))
            parent = torch.rand(n_tokens, n_parents, generator=generator) < probability
            has_child = parent & (torch.rand(n_tokens, n_parents, generator=generator) < config.child_probability)
            child = torch.randint(config.children_per_parent, (n_tokens, n_parents), generator=generator)
            children = torch.nn.functional.one_hot(child, config.children_per_parent).bool() & has_child.unsqueeze(-1)
            active = torch.cat([parent.unsqueeze(-1), children], dim=-1).reshape(n_tokens, config.n_features)
        low = config.magnitude_low
        magnitudes = low + (1 - low) * torch.rand(n_tokens, config.n_features, generator=generator)
        return magnitudes * active

    def sample(self, n_tokens: int, seed: int) -> Tensor:
        return self.sample_with_features(n_tokens, seed)[0]

    def sample_with_features(self, n_tokens: int, seed: int) -> tuple[Tensor, Tensor]:
        """(activations [n, d_in], the true feature magnitudes that made them [n, n_features])."""
        generator = torch.Generator().manual_seed(seed)
        coefficients = self.coefficients(n_tokens, generator)
        x = coefficients @ self.directions
        noise = self.config.noise_std + (self.config.synthsae_noise_std if self.config.variant == "synthsae" else 0.0)
        if noise > 0:
            x = x + noise * torch.randn(x.shape, generator=generator)
        return x, coefficients

    def stream(self, batch_size: int, seed: int) -> Iterator[Tensor]:
        """An endless, reproducible stream of batches (pass ``lambda: data.stream(...)`` to the trainer)."""
        index = 0
        while True:
            yield self.sample(batch_size, seed=seed * 1_000_003 + index)
            index += 1
