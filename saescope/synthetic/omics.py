"""The generative simulation of Schuster (2024, "Can sparse autoencoders make sense of latent representations?").

Hidden variables, then observables, per sample:

1. program activities x0 ∈ R^P, x0_j ~ Poisson(1 + 0.1·j);
2. a covariate c, one of C uniformly: x1 = x0 + N(μ_c, σ²) elementwise, μ_c = c (0, 1, 2, ...);
3. a cell type t, one of T uniformly: x2 = x1 ⊙ m_t, with a fixed binary mask m_t ~ Bernoulli(0.3)^P per type;
4. observed genes y = x2 · A, with a fixed binary adjacency A ~ Bernoulli(0.1)^{P×G}.

The paper's scale is P = 100, G = 20,000, 10,000 samples, C = 3, T = 40; the default here keeps P, C,
T and the sample count and uses G = 2,000 genes, so a CPU runs it in minutes. A seed fixes the masks,
the adjacency and the samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saescope.errors import InvalidInput


@dataclass
class OmicsConfig:
    n_samples: int = 10_000
    n_programs: int = 100
    n_genes: int = 2_000
    n_covariates: int = 3
    n_cell_types: int = 40
    mask_probability: float = 0.3
    adjacency_probability: float = 0.1
    covariate_std: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_samples", "n_programs", "n_genes", "n_covariates", "n_cell_types"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("mask_probability", "adjacency_probability"):
            if not 0 < getattr(self, name) <= 1:
                raise InvalidInput(f"{name} must be in (0, 1], got {getattr(self, name)}")


@dataclass
class OmicsData:
    """Every variable of the simulation, one row per sample."""

    x0: Tensor
    """Program activities [n, P]."""
    x1: Tensor
    """After the covariate shift [n, P]."""
    x2: Tensor
    """After the cell-type mask [n, P]."""
    y: Tensor
    """Observed genes [n, G]."""
    covariate: Tensor
    """[n] in 0..C-1."""
    cell_type: Tensor
    """[n] in 0..T-1."""
    masks: Tensor
    """[T, P] binary."""
    adjacency: Tensor
    """[P, G] binary."""


def simulate_omics(config: OmicsConfig | None = None) -> OmicsData:
    """Draw the hidden variables and the observed genes (float32), all from ``config.seed``."""
    config = config or OmicsConfig()
    generator = torch.Generator().manual_seed(config.seed)
    n, p = config.n_samples, config.n_programs
    rates = 1 + 0.1 * torch.arange(p, dtype=torch.float64)
    x0 = torch.poisson(rates.expand(n, p).contiguous(), generator=generator)
    covariate = torch.randint(0, config.n_covariates, (n,), generator=generator)
    x1 = x0 + covariate[:, None].double() + config.covariate_std * torch.randn(n, p, generator=generator, dtype=torch.float64)
    masks = (torch.rand(config.n_cell_types, p, generator=generator) < config.mask_probability).double()
    cell_type = torch.randint(0, config.n_cell_types, (n,), generator=generator)
    x2 = x1 * masks[cell_type]
    adjacency = (torch.rand(p, config.n_genes, generator=generator) < config.adjacency_probability).double()
    y = x2 @ adjacency
    return OmicsData(x0=x0.float(), x1=x1.float(), x2=x2.float(), y=y.float(), covariate=covariate, cell_type=cell_type,
                     masks=masks.float(), adjacency=adjacency.float())


class DenseAutoencoder(torch.nn.Module):
    """The model whose latent space the SAEs explain: genes → hidden → latent → hidden → genes, ReLU between."""

    def __init__(self, d_in: int, latent: int, hidden: int) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, latent))
        self.decoder = torch.nn.Sequential(torch.nn.Linear(latent, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, d_in))

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


def train_dense_autoencoder(y: Tensor, latent: int = 100, hidden: int = 256, epochs: int = 30, batch_size: int = 256,
                            lr: float = 1e-3, seed: int = 0) -> tuple[DenseAutoencoder, Tensor, float]:
    """Fit the autoencoder on log1p(y) standardised per gene; returns it, the latents of every sample and its FVU."""
    torch.manual_seed(seed)
    x = torch.log1p(y)
    x = (x - x.mean(dim=0)) / x.std(dim=0).clamp_min(1e-6)
    model = DenseAutoencoder(x.shape[1], latent, hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _epoch in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator)
        for start in range(0, x.shape[0], batch_size):
            batch = x[order[start:start + batch_size]]
            loss = (model(batch) - batch).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        codes = model.encoder(x)
        fvu = float((model.decoder(codes) - x).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum())
    return model, codes, fvu
