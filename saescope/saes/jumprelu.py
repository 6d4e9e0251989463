"""JumpReLU SAE (Rajamanoharan et al. 2024; Gemma Scope recipe) and the Anthropic 2025 tanh variant.

    pre = x @ W_enc + b_enc;   f = pre·H(pre-θ);   x̂ = f @ W_dec + b_dec
    step loss (paper):   L = mean_tokens[ ‖x-x̂‖² + λ·Σ_i H(pre_i-θ_i) ]
    tanh loss (2025):    L = mean_tokens[ ‖x-x̂‖² + λ·Σ_i tanh(c·f_i·‖d_i‖) + λ_P·Σ_{i dead} ReLU(θ_i-pre_i)·‖d_i‖ ]

Units. The step recipe assumes inputs scaled to E‖x‖² = 1, where ε = θ_init = 0.001 (pitfall 1.6.1 of
the methods notes: these constants are tied to the normalisation). The tanh recipe assumes
E‖x‖² = d_in with ε = 2 and θ_init = 0.1, and leaves decoder norms free (they appear in its loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from saescope.saes.base import ForwardOutput, SaeConfig, SparseAutoencoder
from saescope.saes.ste import jumprelu, jumprelu_with_l0, step_count


@dataclass
class JumpReLUConfig(SaeConfig):
    sparsity_loss: Literal["step", "tanh"] = "step"
    """"step": the paper's λ·L0 with STEs; "tanh": Anthropic 2025 (trains faster on small budgets)."""
    threshold_param: Literal["log", "direct"] = "direct"
    """Train θ as exp(log θ) (GDM's code) or θ itself, clamped at 0 (see benchmarks/RESULTS.md)."""
    bandwidth: float | None = None
    """STE kernel width ε, in normalised input units. None: 0.001 (step) or 2.0 (tanh)."""
    threshold_init: float | None = None
    """Initial θ for every latent. None: 0.001 (step) or 0.1 (tanh)."""
    tanh_scale: float = 4.0
    """c in tanh(c·f·‖d‖) (tanh loss only)."""
    pre_act_coefficient: float | None = None
    """λ_P of the pre-activation loss Σ_dead ReLU(θ-pre)·‖d‖ that revives dead latents. None: 3e-6 (tanh), 0 (step)."""
    input_ste: bool | None = None
    """Let the jump's pseudo-derivative reach the pre-activation too. None: True (tanh), False (step, as the paper)."""
    encoder_bias_init: Literal["zero", "rate"] = "rate"
    """"zero": b_enc = 0 (the paper). "rate": b_enc set from a data sample so each latent starts firing on
    `init_firing_rate` of tokens, which keeps latents alive while λ warms up (benchmarks/RESULTS.md)."""
    init_firing_rate: float | None = None
    """Firing rate for encoder_bias_init="rate". None: min(0.5, target_l0/d_sae), or 1% without a target."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sparsity_loss not in ("step", "tanh"):
            raise ValueError(f"sparsity_loss must be 'step' or 'tanh', got {self.sparsity_loss!r}")
        if self.threshold_param not in ("log", "direct"):
            raise ValueError(f"threshold_param must be 'log' or 'direct', got {self.threshold_param!r}")
        if self.encoder_bias_init not in ("zero", "rate"):
            raise ValueError(f"encoder_bias_init must be 'zero' or 'rate', got {self.encoder_bias_init!r}")
        if self.init_firing_rate is not None and not 0 < self.init_firing_rate < 1:
            raise ValueError(f"init_firing_rate must be in (0, 1), got {self.init_firing_rate}")
        for name in ("bandwidth", "threshold_init"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")

    @property
    def resolved_bandwidth(self) -> float:
        if self.bandwidth is not None:
            return self.bandwidth
        return 0.001 if self.sparsity_loss == "step" else 2.0

    @property
    def resolved_pre_act_coefficient(self) -> float:
        if self.pre_act_coefficient is not None:
            return self.pre_act_coefficient
        return 0.0 if self.sparsity_loss == "step" else 3e-6

    @property
    def resolved_input_ste(self) -> bool:
        return self.sparsity_loss == "tanh" if self.input_ste is None else self.input_ste

    @property
    def resolved_init_firing_rate(self) -> float:
        if self.init_firing_rate is not None:
            return self.init_firing_rate
        if self.target_l0 is None:
            return 0.01
        return min(0.5, self.target_l0 / self.d_sae)

    @property
    def resolved_threshold_init(self) -> float:
        if self.threshold_init is not None:
            return self.threshold_init
        return 0.001 if self.sparsity_loss == "step" else 0.1


class JumpReLUSae(SparseAutoencoder):
    architecture = "jumprelu"
    config_class = JumpReLUConfig
    adam_betas = (0.0, 0.999)
    scaled_tensor_names = ("b_enc", "b_dec", "threshold")

    def add_parameters(self) -> None:
        cfg = self.cfg
        theta = torch.full((cfg.d_sae,), cfg.resolved_threshold_init)
        if cfg.threshold_param == "log":
            self.log_threshold = nn.Parameter(theta.log())
        else:
            self.threshold_raw = nn.Parameter(theta)

    # Class-level defaults that depend on the chosen loss.
    @property
    def default_sparsity_coefficient(self) -> float:  # type: ignore[override]
        return 1e-3 if self.cfg.sparsity_loss == "step" else 5.0

    def sparsity_coefficient_for_l0(self, target_l0: float) -> float:
        # Step loss on E‖x‖² = 1 inputs: λ = 0.02 gives L0 ≈ 3 on our synthetic benchmark, i.e. λ ≈ 0.06/L0.
        # We start at 0.05/L0, a little low, so the controller approaches the target from the dense side:
        # overshooting to a too-sparse code kills latents that do not come back. The tanh loss works in
        # E‖x‖² = d_in units, where the same balance scales by d_in.
        guess = 0.05 / target_l0
        return guess if self.cfg.sparsity_loss == "step" else guess * self.d_in

    @property
    def input_norm(self) -> str:  # type: ignore[override]
        return "unit_mean_square" if self.cfg.sparsity_loss == "step" else "sqrt_d"

    @property
    def unit_norm_decoder(self) -> bool:  # type: ignore[override]
        return self.cfg.sparsity_loss == "step"

    @property
    def sparsity_warmup_default(self) -> float:  # type: ignore[override]
        return 0.05 if self.cfg.sparsity_loss == "step" else 1.0

    @property
    def threshold(self) -> Tensor:
        if self.cfg.threshold_param == "log":
            return self.log_threshold.exp()
        return self.threshold_raw

    def reset_parameters(self, decoder_row_norm: float = 1.0) -> None:
        # The tanh recipe starts decoder rows small (norm 0.1) since their norm is part of the loss.
        super().reset_parameters(0.1 if self.cfg.sparsity_loss == "tanh" else decoder_row_norm)
        with torch.no_grad():
            theta = torch.full((self.d_sae,), self.cfg.resolved_threshold_init)
            self.load_export_tensors({**self.export_tensors(), "threshold": theta})

    @torch.no_grad()
    def init_from_data(self, sample: Tensor) -> None:
        """With encoder_bias_init="rate": b_enc_i = θ_i − q_i, where q_i is the (1 − rate) quantile of x·W_enc_i.

        With b_enc = 0 and θ tiny, about half the latents fire on every token at the start; the λ warm-up
        then silences many for good. Starting each latent at a modest, equal firing rate avoids that.
        """
        if self.cfg.encoder_bias_init != "rate":
            return
        sample = sample[:4096].to(self.W_enc.dtype)
        n = sample.shape[0]
        k = min(n, max(1, math.ceil((1.0 - self.cfg.resolved_init_firing_rate) * n)))
        chunk = max(1, (1 << 24) // n)  # bounded memory at any width
        for start in range(0, self.d_sae, chunk):
            columns = slice(start, start + chunk)
            quantile = (sample @ self.W_enc[:, columns]).kthvalue(k, dim=0).values
            self.b_enc[columns] = self.threshold[columns].detach() - quantile

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_activations(x)
        return torch.where(pre > self.threshold, torch.relu(pre), 0.0)

    def losses(self, x: Tensor, sparsity_coefficient: Tensor | float, dead_mask: Tensor | None) -> ForwardOutput:
        cfg = self.cfg
        eps = cfg.resolved_bandwidth
        pre = self.pre_activations(x)
        threshold = self.threshold
        if cfg.sparsity_loss == "step" and not cfg.resolved_input_ste:
            feature_acts, l0_per_token = jumprelu_with_l0(pre, threshold, eps)
        else:
            feature_acts = jumprelu(pre, threshold, eps, cfg.resolved_input_ste)
            l0_per_token = step_count(pre, threshold, eps) if cfg.sparsity_loss == "step" else None
        reconstruction = self.decode(feature_acts)
        mse = (reconstruction - x).pow(2).sum(dim=-1).mean()
        terms = {"mse": mse}
        decoder_norms = self.W_dec.norm(dim=1)
        if l0_per_token is not None:
            terms["sparsity"] = sparsity_coefficient * l0_per_token.mean()
        else:
            scaled = torch.tanh(cfg.tanh_scale * feature_acts * decoder_norms)
            terms["sparsity"] = sparsity_coefficient * scaled.sum(dim=-1).mean()
        pre_act_coefficient = cfg.resolved_pre_act_coefficient
        if dead_mask is not None and pre_act_coefficient > 0:
            below = torch.relu(threshold - pre) * (decoder_norms * dead_mask)
            terms["pre_act"] = pre_act_coefficient * below.sum(dim=-1).mean()
        return ForwardOutput(feature_acts, reconstruction, sum(terms.values()), terms)

    @torch.no_grad()
    def after_step(self) -> None:
        super().after_step()
        if self.cfg.threshold_param == "direct":
            self.threshold_raw.clamp_(min=0.0)

    # Checkpoints always store `threshold` (the Gemma Scope / SAELens name), never its log.
    def export_tensors(self) -> dict[str, Tensor]:
        tensors = super().export_tensors()
        tensors.pop("log_threshold", None)
        tensors.pop("threshold_raw", None)
        tensors["threshold"] = self.threshold.detach()
        return tensors

    @torch.no_grad()
    def load_export_tensors(self, tensors: dict[str, Tensor]) -> None:
        tensors = dict(tensors)
        threshold = tensors.pop("threshold")
        if self.cfg.threshold_param == "log":
            self.log_threshold.copy_(threshold.clamp_min(1e-12).log())
        else:
            self.threshold_raw.copy_(threshold)
        for name, value in tensors.items():
            getattr(self, name).copy_(value)
