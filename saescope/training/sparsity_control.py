"""The sparsity coefficient λ of one SAE: a fixed value with a warm-up, or adapted to hit a target L0.

Both modes warm λ up linearly from 0 over the warm-up fraction of the run. In target-L0 mode an
integral controller then adapts λ in log space:

    log λ ← log λ + η · clip(log(L0_batch / target_l0), -1, 1)

so λ grows multiplicatively while the SAE is denser than the target and shrinks while it is sparser.
An optional proportional term adds ``proportional_gain · ē`` to log λ, ē a smoothed recent error, so
λ eases off as soon as L0 nears the target instead of waiting for the integral to unwind.
It starts from the architecture's guess for that target (``SparseAutoencoder.initial_sparsity_coefficient``):
measured on synthetic data, starting low and letting the code stay dense for long lets latents settle
on mixtures of features that later sparsity does not undo. η is set per run length (λ can move by up
to e^30 over a run, at most 0.03 per step), and the controller is idle during the warm-up so it does
not wind up. Everything stays on the device: no host synchronisation per step.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from saescope.training.schedules import sparsity_warmup


class SparsityController:
    def __init__(
        self,
        initial: float,
        target_l0: float | None,
        total_steps: int,
        warmup_fraction: float,
        device: torch.device | str,
        proportional_gain: float = 0.0,
    ) -> None:
        self.target_l0 = target_l0
        self.total_steps = total_steps
        self.warmup_fraction = warmup_fraction
        self.gain = min(0.03, 30.0 / max(total_steps, 1))  # integral gain: the whole correction fits in ~30 steps' worth
        self.proportional_gain = proportional_gain
        self._zero = initial <= 0 and target_l0 is None
        self.log_lambda = torch.tensor(math.log(max(initial, 1e-12)), dtype=torch.float32, device=device)
        self.smoothed_error = torch.zeros((), dtype=torch.float32, device=device)

    @property
    def adaptive(self) -> bool:
        return self.target_l0 is not None

    def coefficient(self, step: int) -> Tensor | float:
        if self._zero:
            return 0.0
        log_lambda = self.log_lambda
        if self.proportional_gain:
            log_lambda = log_lambda + self.proportional_gain * self.smoothed_error
        return log_lambda.exp() * sparsity_warmup(step, self.total_steps, self.warmup_fraction)

    @torch.no_grad()
    def update(self, batch_l0: Tensor, step: int) -> None:
        if not self.adaptive or sparsity_warmup(step, self.total_steps, self.warmup_fraction) < 1.0:
            return
        error = torch.log((batch_l0 + 0.1) / self.target_l0).clamp(-1.0, 1.0)
        self.log_lambda.add_(self.gain * error)
        self.smoothed_error.lerp_(error, 0.1)

    def value(self) -> float:
        return 0.0 if self._zero else float(self.log_lambda.exp())

    def state_tensors(self) -> dict[str, Tensor]:
        return {"log_lambda": self.log_lambda, "smoothed_error": self.smoothed_error}

    @torch.no_grad()
    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.log_lambda.copy_(tensors["log_lambda"])
        if "smoothed_error" in tensors:
            self.smoothed_error.copy_(tensors["smoothed_error"])
