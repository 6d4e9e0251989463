"""Optimisers for SAE training: Adam (the papers' choice), Signum (sign of momentum) and schedule-free Adam.

Signum (Bernstein et al. 2018) moves every weight by ±lr along the sign of its momentum. Each step
therefore has a fixed size per weight regardless of gradient scale, which suits short SAE runs:
latents whose gradients are tiny early on (rarely-firing features) move as fast as the rest.
EleutherAI's sparsify trains with it by default.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from saescope.errors import InvalidInput
from saescope.objectives.base import OPTIMIZER_NAMES


class Signum(torch.optim.Optimizer):
    """p ← p − lr·sign(m),  m ← β·m + (1−β)·g."""

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, momentum: float = 0.9) -> None:
        if lr <= 0:
            raise InvalidInput(f"Signum lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise InvalidInput(f"Signum momentum must be in [0, 1), got {momentum}")
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


class ScheduleFreeAdam(torch.optim.Optimizer):
    """Schedule-free Adam or SignSGD (Defazio et al. 2024, arXiv 2405.15682): no lr decay, an averaged iterate instead.

    Three sequences per weight: z takes plain steps (Adam-normalised, or the gradient's sign with
    ``sign=True``, each weight moving by ±lr), x is a running average of z weighted by lr², and
    gradients are taken at y = (1−β₁)·z + β₁·x, which the parameter holds during training.
    ``use_average()`` puts x into the parameter for evaluation and export. The caller keeps the lr
    constant after warm-up; warm-up is welcome (it enters the weights). EleutherAI's sparsify trains
    with the sign variant by default.
    """

    def __init__(self, params: Iterable[Tensor], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 sign: bool = False) -> None:
        if lr <= 0:
            raise InvalidInput(f"ScheduleFreeAdam lr must be > 0, got {lr}")
        if not 0 < betas[0] < 1 or not 0 <= betas[1] < 1:
            raise InvalidInput(f"ScheduleFreeAdam betas must be in (0, 1) and [0, 1), got {betas}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        self.sign = sign

    def _state(self, param: Tensor) -> dict[str, Tensor]:
        state = self.state[param]
        if "z" not in state:
            state["z"] = param.detach().clone()
            state["x"] = param.detach().clone()
            if not self.sign:
                state["exp_avg_sq"] = torch.zeros_like(param)
            state["step"] = torch.zeros((), dtype=torch.float64)
            state["weight_sum"] = torch.zeros((), dtype=torch.float64)
        return state

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self._state(param)
                state["step"] += 1
                state["weight_sum"] += lr * lr
                average_weight = (lr * lr / state["weight_sum"]).item()
                z, x = state["z"], state["x"]
                if self.sign:
                    z.add_(param.grad.sign(), alpha=-lr)
                else:
                    v = state["exp_avg_sq"]
                    v.mul_(beta2).addcmul_(param.grad, param.grad, value=1 - beta2)
                    bias_correction = 1 - beta2 ** state["step"].item()
                    z.addcdiv_(param.grad, (v / bias_correction).sqrt_().add_(eps), value=-lr)
                x.lerp_(z, average_weight)
                param.copy_(z).lerp_(x, beta1)

    @torch.no_grad()
    def constrain(self, param: Tensor, project) -> None:
        """Apply an in-place constraint (e.g. unit-norm decoder rows) to z and x of ``param``, then recompute y."""
        state = self.state.get(param)
        if not state or "z" not in state:
            project(param)
            return
        project(state["z"])
        project(state["x"])
        beta1 = self.param_groups[0]["betas"][0]
        param.copy_(state["z"]).lerp_(state["x"], beta1)

    @torch.no_grad()
    def use_average(self) -> None:
        """Put the averaged iterate x into every parameter (call once, after training)."""
        for group in self.param_groups:
            for param in group["params"]:
                state = self.state.get(param)
                if state and "x" in state:
                    param.copy_(state["x"])


def build_optimizer(name: str, params: Iterable[Tensor], lr: float, adam_betas: tuple[float, float]) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=adam_betas, eps=1e-8)
    if name == "signum":
        return Signum(params, lr=lr, momentum=0.9)
    if name == "schedule_free_adam":
        return ScheduleFreeAdam(params, lr=lr, betas=(0.9, adam_betas[1]))
    if name == "schedule_free_signum":
        return ScheduleFreeAdam(params, lr=lr, betas=(0.9, adam_betas[1]), sign=True)
    raise InvalidInput(f"unknown optimizer {name!r}; choose from {OPTIMIZER_NAMES}")
