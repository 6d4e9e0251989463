"""The two JumpReLU recipes: the paper's step loss ("jumprelu") and Anthropic's 2025 tanh loss ("jumprelu_tanh").

    step (Rajamanoharan et al. 2024):  L = mean_tokens[ ‖x-x̂‖² + λ·Σ_i H(pre_i-θ_i) ]
    tanh (Anthropic 2025):             L = mean_tokens[ ‖x-x̂‖² + λ·Σ_i tanh(c·f_i·‖d_i‖) + λ_P·Σ_{i dead} ReLU(θ_i-pre_i)·‖d_i‖ ]

Units. The step recipe assumes inputs scaled to E‖x‖² = 1, where ε = θ_init = 0.001 (pitfall 1.6.1 of
the methods notes: these constants are tied to the normalisation). The tanh recipe assumes
E‖x‖² = d_in with ε = 2 and θ_init = 0.1, starts decoder rows at norm 0.1 and leaves their norms free
(they appear in its loss).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from saescope.errors import InvalidInput
from saescope.objectives.base import (
    LossOutput,
    Objective,
    StepContext,
    loss_output,
    squared_error,
)
from saescope.saes import FeatureCode, JumpReLUSae, SparseAutoencoder
from saescope.saes.sparse_encoder import EncoderPass
from saescope.saes.sparse_ops import decode_entries, sparse_pays
from saescope.saes.ste import jumprelu, jumprelu_entries, jumprelu_with_l0, step_count


@dataclass
class _JumpReLURecipe(Objective):
    bandwidth: float | None = None
    """STE kernel width ε, in normalised input units. None: the recipe's (0.001 step, 2.0 tanh)."""
    threshold_init: float | None = None
    """Initial θ for every latent. None: the recipe's (0.001 step, 0.1 tanh)."""
    pre_act_coefficient: float | None = None
    """λ_P of the pre-activation loss Σ_dead ReLU(θ-pre)·‖d‖ that revives dead latents. None: 0 (step), 3e-6 (tanh)."""
    input_ste: bool | None = None
    """Let the jump's pseudo-derivative reach the pre-activation too. None: False (step, as the paper), True (tanh)."""
    encoder_bias_init: Literal["zero", "rate"] = "rate"
    """"zero": b_enc = 0 (the paper). "rate": b_enc set from a data sample so each latent starts firing on
    `init_firing_rate` of tokens, which keeps latents alive while λ warms up (benchmarks/RESULTS.md)."""
    init_firing_rate: float | None = None
    """Firing rate for encoder_bias_init="rate". None: min(0.5, target_l0/d_sae), or 1% without a target."""

    architectures = ("jumprelu",)
    adam_betas = (0.0, 0.999)
    recipe_bandwidth: ClassVar[float] = 0.001
    recipe_threshold_init: ClassVar[float] = 0.001
    recipe_pre_act_coefficient: ClassVar[float] = 0.0
    recipe_input_ste: ClassVar[bool] = False
    decoder_init_norm: ClassVar[float] = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        label = type(self).__name__
        if self.encoder_bias_init not in ("zero", "rate"):
            raise InvalidInput(f"{label}.encoder_bias_init must be 'zero' or 'rate', got {self.encoder_bias_init!r}")
        if self.init_firing_rate is not None and not 0 < self.init_firing_rate < 1:
            raise InvalidInput(f"{label}.init_firing_rate must be in (0, 1), got {self.init_firing_rate}")
        for name in ("bandwidth", "threshold_init"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise InvalidInput(f"{label}.{name} must be > 0, got {value}")
        if self.pre_act_coefficient is not None and self.pre_act_coefficient < 0:
            raise InvalidInput(f"{label}.pre_act_coefficient must be >= 0, got {self.pre_act_coefficient}")

    def _pick(self, value, default):  # noqa: ANN001, ANN202 - a field or the recipe's constant
        return default if value is None else value

    def prepare(self, sae: SparseAutoencoder) -> None:
        assert isinstance(sae, JumpReLUSae)
        if self.decoder_init_norm != 1.0:
            sae.set_decoder_row_norm(self.decoder_init_norm)
        sae.set_threshold(self._pick(self.threshold_init, self.recipe_threshold_init))

    @torch.no_grad()
    def init_from_data(self, sae: SparseAutoencoder, sample: Tensor) -> None:
        """With encoder_bias_init="rate": b_enc_i = θ_i − q_i, where q_i is the (1 − rate) quantile of x·W_enc_i.

        With b_enc = 0 and θ tiny, about half the latents fire on every token at the start; the λ warm-up
        then silences many for good. Starting each latent at a modest, equal firing rate avoids that.
        """
        if self.encoder_bias_init != "rate":
            return
        rate = self.init_firing_rate
        if rate is None:
            rate = 0.01 if self.target_l0 is None else min(0.5, self.target_l0 / sae.d_sae)
        sample = sample[:4096].to(sae.W_enc.dtype)
        n = sample.shape[0]
        k = min(n, max(1, math.ceil((1.0 - rate) * n)))
        chunk = max(1, (1 << 24) // n)  # bounded memory at any width
        for start in range(0, sae.d_sae, chunk):
            columns = slice(start, start + chunk)
            quantile = (sample @ sae.W_enc[:, columns]).kthvalue(k, dim=0).values
            sae.b_enc[columns] = sae.threshold[columns].detach() - quantile

    def _activations(self, sae: JumpReLUSae, pre: Tensor, with_l0: bool) -> tuple[Tensor, Tensor | None]:
        eps = self._pick(self.bandwidth, self.recipe_bandwidth)
        input_ste = self._pick(self.input_ste, self.recipe_input_ste)
        if with_l0 and not input_ste:
            return jumprelu_with_l0(pre, sae.threshold, eps)
        feature_acts = jumprelu(pre, sae.threshold, eps, input_ste)
        return feature_acts, step_count(pre, sae.threshold, eps) if with_l0 else None

    def _pre_act_term(self, sae: JumpReLUSae, pre: Tensor, decoder_norms: Tensor, ctx: StepContext) -> dict[str, Tensor]:
        coefficient = self._pick(self.pre_act_coefficient, self.recipe_pre_act_coefficient)
        if ctx.dead_mask is None or coefficient <= 0:
            return {}
        below = torch.relu(sae.threshold - pre) * (decoder_norms * ctx.dead_mask)
        return {"pre_act": coefficient * below.sum(dim=-1).mean()}

    @torch.no_grad()
    def after_step(self, sae: SparseAutoencoder) -> None:
        super().after_step(sae)
        if sae.cfg.threshold_param == "direct":
            sae.threshold_raw.clamp_(min=0.0)


@dataclass
class JumpReLUObjective(_JumpReLURecipe):
    """The paper's recipe: λ·L0 through straight-through estimators, inputs at E‖x‖² = 1, unit-norm decoder rows.

    ``sparsity_loss="quadratic"`` replaces λ·L0 by Gemma Scope 2's penalty toward a target,
    c·(2/T)·(L0_t − T)² per token (T = target_l0), with a fixed c instead of the λ controller.
    """

    sparsity_loss: Literal["step", "quadratic"] | None = None
    """"step": λ·L0, with λ adapted toward target_l0 when one is set (the paper). "quadratic": c·(2/T)·(L0 − T)²
    per token (Gemma Scope 2). None: quadratic with a target_l0 (on SmolLM2-135M it lands within 3% of the
    target where the controller undershot by 19%; benchmarks/RESULTS.md), step without one."""

    name = "jumprelu"
    default_sparsity_coefficient = 1e-3
    # 2e-3 at 2^14 latents (3.8e-3 at 4608), TopK's rate: on SmolLM2-135M layer 10 at 900K tokens, FVU 0.146
    # against 0.216 at the usual 2e-4 (benchmarks/RESULTS.md, "JumpReLU: what was tried").
    base_lr = 2e-3
    quadratic_coefficient_per_dim: ClassVar[float] = 4.0
    """c·d_in for the quadratic penalty. SAELens's default c = 1 at E‖x‖² = d_in would be c = 1/d_in at our
    E‖x‖² = 1; with that, a synthetic target of 6 landed at 7.0 (+17%), with 4/d_in within 10%."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sparsity_loss not in (None, "step", "quadratic"):
            raise InvalidInput(f"JumpReLUObjective.sparsity_loss must be 'step' or 'quadratic', got {self.sparsity_loss!r}")
        if self.sparsity_loss == "quadratic" and self.target_l0 is None:
            raise InvalidInput("JumpReLUObjective: sparsity_loss='quadratic' pulls each token's L0 toward target_l0; set target_l0")

    @property
    def quadratic(self) -> bool:
        """The penalty in use: the quadratic one when asked, or by default when a target L0 is set."""
        return self.sparsity_loss == "quadratic" or (self.sparsity_loss is None and self.target_l0 is not None)

    def controlled_target_l0(self) -> float | None:
        return None if self.quadratic else super().controlled_target_l0()

    def initial_sparsity_coefficient(self, sae: SparseAutoencoder) -> float:
        if self.quadratic and self.sparsity_coefficient is None:
            return self.quadratic_coefficient_per_dim / sae.d_in
        return super().initial_sparsity_coefficient(sae)

    def _sparsity_term(self, l0_per_token: Tensor, coefficient: Tensor | float) -> Tensor:
        if self.quadratic:
            target = float(self.target_l0)
            return coefficient * ((2.0 / target) * (l0_per_token - target).pow(2)).mean()
        return coefficient * l0_per_token.mean()

    def sparsity_coefficient_for_l0(self, sae: SparseAutoencoder, target_l0: float) -> float:
        # λ = 0.02 gives L0 ≈ 3 on our synthetic benchmark, i.e. λ ≈ 0.06/L0. We start at 0.05/L0, a
        # little low, so the controller approaches the target from the dense side: overshooting to a
        # too-sparse code kills latents that do not come back.
        return 0.05 / target_l0

    def loss(self, sae: SparseAutoencoder, x: Tensor, ctx: StepContext) -> LossOutput:
        pre = None
        if self._sparse_may_pay(sae, x) and not self._needs_dense_pre(ctx):
            encoder = EncoderPass(sae, x)
            eps = self._pick(self.bandwidth, self.recipe_bandwidth)
            # The active entries and the lower half of the window. Their count is known on the host once they are
            # listed (free on a CPU); a code denser than the device's crossover (sparse_pays) takes the dense path, on the same forward.
            rows, cols = (encoder.pre > (sae.threshold.detach() - eps / 2)).nonzero(as_tuple=True)
            if self.use_sparse_step(rows.numel() / encoder.n_tokens, sae.d_sae, x.device):
                return self._sparse_loss(sae, x, encoder, rows, cols, eps, ctx)
            pre = encoder.attached()
        if pre is None:
            pre = sae.pre_activations(x)
        feature_acts, l0_per_token = self._activations(sae, pre, with_l0=True)
        reconstruction = sae.decode(feature_acts)
        terms = {"mse": squared_error(reconstruction, ctx.reference(x)), "sparsity": self._sparsity_term(l0_per_token, ctx.sparsity_coefficient)}
        terms.update(self._pre_act_term(sae, pre, sae.W_dec.norm(dim=1), ctx))
        return loss_output(FeatureCode.from_dense(feature_acts), reconstruction, terms)

    def _sparse_may_pay(self, sae: SparseAutoencoder, x: Tensor) -> bool:
        """Whether to list the active entries at all: asked for, or a target L0 within the device's crossover (no target: look)."""
        if self.sparse_step is not None:
            return self.sparse_step
        return self.target_l0 is None or sparse_pays(self.target_l0, sae.d_sae, x.device)

    def _needs_dense_pre(self, ctx: StepContext) -> bool:
        """The pre-activation loss reaches every token of a dead latent: that term has no sparse path yet."""
        return ctx.dead_mask is not None and self._pick(self.pre_act_coefficient, self.recipe_pre_act_coefficient) > 0

    def _sparse_loss(self, sae: JumpReLUSae, x: Tensor, encoder: EncoderPass, rows: Tensor, cols: Tensor, eps: float, ctx: StepContext) -> LossOutput:
        """The same loss through the listed entries: gradient to W_enc from the active ones, to θ from the window."""
        n = encoder.n_tokens
        acts, l0_per_token = jumprelu_entries(encoder.take(rows, cols), sae.threshold[cols], rows, n, eps,
                                              self._pick(self.input_ste, self.recipe_input_ste))
        reconstruction = decode_entries(rows, cols, acts, n, sae.W_dec, sae.b_dec)
        terms = {"mse": squared_error(reconstruction, ctx.reference(x)), "sparsity": self._sparsity_term(l0_per_token, ctx.sparsity_coefficient)}
        return loss_output(FeatureCode.entries(rows, cols, acts, n, sae.d_sae), reconstruction, terms)


@dataclass
class JumpReLUTanhObjective(_JumpReLURecipe):
    """Anthropic 2025: a tanh of decoder-weighted activations instead of L0, inputs at E‖x‖² = d_in, free decoder norms."""

    tanh_scale: float = 4.0
    """c in tanh(c·f·‖d‖)."""

    name = "jumprelu_tanh"
    default_sparsity_coefficient = 5.0
    input_norm = "sqrt_d"
    unit_norm_decoder = False
    sparsity_warmup_default = 1.0
    recipe_bandwidth = 2.0
    recipe_threshold_init = 0.1
    recipe_pre_act_coefficient = 3e-6
    recipe_input_ste = True
    decoder_init_norm = 0.1

    def sparsity_coefficient_for_l0(self, sae: SparseAutoencoder, target_l0: float) -> float:
        # The step recipe's 0.05/L0, rescaled to E‖x‖² = d_in units.
        return 0.05 / target_l0 * sae.d_in

    def loss(self, sae: SparseAutoencoder, x: Tensor, ctx: StepContext) -> LossOutput:
        pre = sae.pre_activations(x)
        feature_acts, _ = self._activations(sae, pre, with_l0=False)
        reconstruction = sae.decode(feature_acts)
        decoder_norms = sae.W_dec.norm(dim=1)
        scaled = torch.tanh(self.tanh_scale * feature_acts * decoder_norms)
        terms = {"mse": squared_error(reconstruction, ctx.reference(x)), "sparsity": ctx.sparsity_coefficient * scaled.sum(dim=-1).mean()}
        terms.update(self._pre_act_term(sae, pre, decoder_norms, ctx))
        return loss_output(FeatureCode.from_dense(feature_acts), reconstruction, terms)
