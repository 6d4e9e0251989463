"""Learning-rate and sparsity-coefficient schedules, as functions of the fraction of the run done.

Expressing warm-ups as fractions (not step counts) keeps short runs sane: the Gemma Scope recipe's
1,000-step lr warm-up and 10,000-step λ warm-up would swallow a whole 5M-token run.
"""

from __future__ import annotations

import math


def lr_multiplier(step: int, total_steps: int, warmup_fraction: float, decay_fraction: float) -> float:
    """Cosine warm-up from 0.1 to 1, constant, then linear decay to 0 over the last ``decay_fraction``."""
    warmup_steps = warmup_fraction * total_steps
    decay_steps = decay_fraction * total_steps
    if step < warmup_steps:
        return 0.1 + 0.9 * 0.5 * (1 - math.cos(math.pi * step / warmup_steps))
    decay_start = total_steps - decay_steps
    if decay_steps > 0 and step >= decay_start:
        return max(0.0, (total_steps - step) / decay_steps)
    return 1.0


def sparsity_warmup(step: int, total_steps: int, warmup_fraction: float) -> float:
    """Linear warm-up of λ from 0 to 1 over the first ``warmup_fraction`` of the run."""
    warmup_steps = warmup_fraction * total_steps
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)
