"""Optimisers for SAE training: Adam (the papers' choice) and Signum (sign of momentum).

Signum (Bernstein et al. 2018) moves every weight by ±lr along the sign of its momentum. Each step
therefore has a fixed size per weight regardless of gradient scale, which suits short SAE runs:
latents whose gradients are tiny early on (rarely-firing features) move as fast as the rest.
EleutherAI's sparsify trains with it by default.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

OPTIMIZERS = ("adam", "signum")


class Signum(torch.optim.Optimizer):
    """p ← p − lr·sign(m),  m ← β·m + (1−β)·g."""

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, momentum: float = 0.9) -> None:
        if lr <= 0:
            raise ValueError(f"Signum lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"Signum momentum must be in [0, 1), got {momentum}")
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            lr, beta = group["lr"], group["momentum"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param)
                buffer = state["momentum_buffer"]
                buffer.mul_(beta).add_(param.grad, alpha=1 - beta)
                param.add_(buffer.sign(), alpha=-lr)


def build_optimizer(name: str, params: Iterable[Tensor], lr: float, adam_betas: tuple[float, float]) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=adam_betas, eps=1e-8)
    if name == "signum":
        return Signum(params, lr=lr, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}; choose from {OPTIMIZERS}")
