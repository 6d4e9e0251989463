"""Set a thresholded SAE's inference thresholds so that it reaches a target L0 on given activations.

Batch-selection SAEs (BatchTopK, Mutual Choice, Matryoshka, Feature Choice) choose latents per batch
in training and per token with a tracked threshold at inference; the tracked value can lag, so the
inference L0 lands off the training budget (after 75 steps on SmolLM2, 14-42 for targets 32/64).
JumpReLU's learned thresholds also land off target. Comparing architectures "at equal L0" needs the
L0 put where it is meant to be, on data the evaluation does not see.

``calibrate_threshold`` multiplies every latent's threshold by one factor c, found on the given
activations: for a global threshold this is the value at which exactly ``target_l0 × n_tokens``
pre-activations pass (the BatchTopK selection itself), and for per-latent thresholds a bisection on
c keeps their ratios. Activations only fire where pre > c·θ and pre > 0, so L0 falls as c grows. A
latent whose threshold is 0 is not moved by any c; if such latents alone exceed the target, the
target cannot be reached and the result says so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from saescope.data import as_source
from saescope.errors import InvalidInput
from saescope.saes import SparseAutoencoder


@dataclass
class Calibration:
    """What a calibration did: the factor on the thresholds and the L0 before and after, on the calibration data."""

    scale: float
    """The factor on the thresholds (inf when a global threshold of 0 was set from nothing)."""
    l0_before: float
    l0_after: float
    target_l0: float
    n_tokens: int

    def to_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "l0_before": self.l0_before, "l0_after": self.l0_after, "target_l0": self.target_l0,
                "n_tokens": self.n_tokens}


@torch.no_grad()
def _positive_pre_activations(sae: SparseAutoencoder, data: object, max_tokens: int, batch_size: int) -> Tensor:
    source = as_source(data)
    parts, seen = [], 0
    for x in source.iter_batches(batch_size):
        x = x[: max_tokens - seen].to(sae.W_enc.device)
        parts.append(sae.pre_activations(x.float()).clamp_min(0))
        seen += x.shape[0]
        if seen >= max_tokens:
            break
    if not parts:
        raise InvalidInput("calibrate_threshold: no activations given")
    return torch.cat(parts)


def _l0(pre: Tensor, threshold: Tensor) -> float:
    return float(((pre > threshold) & (pre > 0)).sum(dim=1).double().mean())


@torch.no_grad()
def calibrate_threshold(sae: SparseAutoencoder, data: object, target_l0: float, *, max_tokens: int = 16_384,
                        batch_size: int = 4096) -> Calibration:
    """Scale ``sae.threshold`` in place so that the mean L0 on ``data`` is ``target_l0`` (see the module docstring).

    Example:
        >>> result = calibrate_threshold(sae, held_out_activations, target_l0=32)   # doctest: +SKIP
        >>> result.l0_before, result.l0_after                                         # doctest: +SKIP
    """
    threshold = getattr(sae, "threshold", None)
    if not isinstance(threshold, Tensor):
        raise InvalidInput(f"{sae.architecture} SAEs have no inference threshold to calibrate; thresholded ones are jumprelu, batchtopk, "
                           "mutual_choice, feature_choice and matryoshka")
    if not 0 < target_l0 < sae.d_sae:
        raise InvalidInput(f"target_l0 must be in (0, {sae.d_sae}), got {target_l0}")
    pre = _positive_pre_activations(sae, data, max_tokens, batch_size)
    n_tokens = pre.shape[0]
    before = _l0(pre, threshold)
    base = threshold.detach().clone()
    if bool((base == base[0]).all()):
        # one global threshold: pass exactly the target_l0 × n_tokens largest positive pre-activations
        wanted = max(1, min(int(round(target_l0 * n_tokens)), pre.numel() - 1))
        value = pre.flatten().kthvalue(pre.numel() - wanted).values  # the (wanted+1)-th largest: exactly `wanted` lie above it
        scale = float(value / base[0]) if float(base[0]) > 0 else float("inf")
        threshold.fill_(float(value))
    else:
        low, high = 0.0, 1.0
        while _l0(pre, base * high) > target_l0 and high < 1e6:
            low, high = high, high * 2
        for _ in range(50):
            middle = (low + high) / 2
            if _l0(pre, base * middle) > target_l0:
                low = middle
            else:
                high = middle
        scale = high if abs(_l0(pre, base * high) - target_l0) <= abs(_l0(pre, base * low) - target_l0) else low
        threshold.copy_(base * scale)
    return Calibration(scale=scale, l0_before=before, l0_after=_l0(pre, threshold), target_l0=float(target_l0), n_tokens=n_tokens)
