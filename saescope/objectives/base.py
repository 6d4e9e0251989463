"""The training objective: everything about *how* an SAE learns, separate from the SAE module.

An objective owns the loss, the optimiser and its defaults (lr, betas), the input normalisation
rule, the decoder-norm constraint, the sparsity-control mode (a λ controller, or a fixed k) and the
recipe's initialisation. The trainer knows none of these: it asks the objective.

The loss receives one ``StepContext`` (step, progress, λ, dead mask, running firing rates, layer
indices of stacked reads), so a recipe that needs a new statistic reads a new field instead of
changing a signature in the trainer and every architecture.

Settings are dataclass fields (one docstring each), validated in ``__post_init__``; recipe
constants the user does not set are class attributes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from torch import Tensor

from saescope.errors import InvalidInput
from saescope.saes import SparseAutoencoder
from saescope.saes.base import unit_norm_rows
from saescope.saes.code import FeatureCode
from saescope.saes.sparse_ops import sparse_pays

OptimizerName = Literal["adam", "signum", "schedule_free_adam", "schedule_free_signum"]
OPTIMIZER_NAMES: tuple[str, ...] = OptimizerName.__args__  # type: ignore[attr-defined]


@dataclass
class StepContext:
    """What the trainer knows at one step, handed to ``Objective.loss``."""

    step: int
    """Steps done before this one."""
    progress: float
    """Fraction of the run done, in [0, 1) (schedules: k annealing, Matryoshka weights)."""
    sparsity_coefficient: Tensor | float
    """λ for this step (from the controller; 0 during warm-up)."""
    dead_mask: Tensor | None = None
    """bool [d_sae]: latents that have not fired for the dead window (None when none are dead)."""
    firing_rate: Tensor | None = None
    """float32 [d_sae]: running (EMA) fraction of tokens on which each latent fires; None unless the objective
    sets ``uses_firing_rate``."""
    layer_index: Tensor | None = None
    """long [n_tokens]: for stacked reads, which hookpoint each row came from."""
    target: Tensor | None = None
    """[n_tokens, d_out]: what the decoder must reproduce when it is not the input: a transcoder's target site,
    scaled by its own input scale, minus the skip connection's output. None: the SAE reconstructs ``x``."""

    def reference(self, x: Tensor) -> Tensor:
        """The tensor the reconstruction is compared with: ``x`` for an SAE, the target for a transcoder."""
        return x if self.target is None else self.target


class LossOutput(NamedTuple):
    """What ``Objective.loss`` returns."""

    code: FeatureCode
    """The batch's latent code (dense or selected), detached from the graph."""
    reconstruction: Tensor
    """x̂, shape [n_tokens, d_out] (d_out = d_in for an SAE); a transcoder's skip output is not included."""
    loss: Tensor
    """Scalar training loss: the sum of ``terms``."""
    terms: dict[str, Tensor]
    """Each scalar term of the loss by name ("mse", "sparsity", "aux", ...)."""


def squared_error(reconstruction: Tensor, x: Tensor) -> Tensor:
    """Mean over tokens of ‖x − x̂‖² (summed over d_in): the reconstruction term of every objective."""
    return (reconstruction - x).pow(2).sum(dim=-1).mean()


def loss_output(code: FeatureCode, reconstruction: Tensor, terms: dict[str, Tensor]) -> LossOutput:
    return LossOutput(code.detach(), reconstruction, sum(terms.values()), terms)  # type: ignore[arg-type]


@dataclass
class Objective:
    """Base recipe: the settings every objective has. Subclasses add their own fields."""

    sparsity_coefficient: float | None = None
    """Weight of the sparsity penalty (λ). None: the objective's default, or a guess for target_l0."""
    target_l0: float | None = None
    """Adapt λ (or set k) so the final mean L0 lands on this value."""
    lr: float | None = None
    """Learning rate. None: the objective's base rate scaled as sqrt(2**14 / d_sae)."""
    lr_base: float | None = None
    """Learning rate at 2**14 latents, scaled as sqrt(2**14 / d_sae) (used when lr is None)."""
    adam_beta1: float | None = None
    """Adam's β₁. None: the objective's default (0 for JumpReLU and Gated, as their papers)."""
    optimizer: OptimizerName | None = None
    """"adam", "signum", "schedule_free_adam" or "schedule_free_signum". None: "adam"."""
    sparse_step: bool | None = None
    """Train through the sparse path (dense encoder forward; backward and decode through the kept entries
    only, ``saescope/saes/sparse_encoder.py``) or the dense reference. None: sparse where the objective has
    one and the code is sparse enough (at most 1/8 of the entries on a CPU, 1/1024 on a GPU, counting AuxK's). Both give the same values and gradients."""

    name: ClassVar[str] = ""
    architectures: ClassVar[tuple[str, ...]] = ()
    """SAE architectures this objective can train."""
    base_lr: ClassVar[float] = 2e-4
    """Adam's learning rate at 2**14 latents."""
    signum_lr: ClassVar[float] = 1e-3
    """Signum's learning rate at 2**14 latents (each weight moves by ±lr per step)."""
    adam_betas: ClassVar[tuple[float, float]] = (0.9, 0.999)
    input_norm: ClassVar[Literal["unit_mean_square", "sqrt_d"]] = "unit_mean_square"
    """How the trainer scales inputs: E‖x‖² = 1, or E‖x‖² = d_in."""
    unit_norm_decoder: ClassVar[bool] = True
    """Keep decoder rows at unit norm (parallel gradient removed before, rows renormalised after, each step)."""
    sparsity_warmup_default: ClassVar[float] = 0.05
    """Default fraction of the run over which λ warms up linearly from 0."""
    sparsity_mode: ClassVar[Literal["coefficient", "k"]] = "coefficient"
    """How L0 is controlled: λ ("coefficient", adapted to target_l0) or a fixed k ("k")."""
    default_sparsity_coefficient: ClassVar[float] = 0.0
    uses_firing_rate: ClassVar[bool] = False
    """Set True when ``loss`` reads ``ctx.firing_rate``: the trainer then counts firings per latent each step
    (about 55 ms per step for a dense [4096, 4608] code on 2 CPU cores); otherwise it is None."""

    def __post_init__(self) -> None:
        label = type(self).__name__
        for name in ("lr", "lr_base", "target_l0", "sparsity_coefficient", "adam_beta1"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise InvalidInput(f"{label}.{name} must be a number, got {value!r}")
        for name in ("lr", "lr_base"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise InvalidInput(f"{label}.{name} must be > 0, got {value}")
        if self.target_l0 is not None and not self.target_l0 > 0:
            raise InvalidInput(f"{label}.target_l0 must be > 0, got {self.target_l0}")
        if self.sparsity_coefficient is not None and self.sparsity_coefficient < 0:
            raise InvalidInput(f"{label}.sparsity_coefficient must be >= 0, got {self.sparsity_coefficient}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZER_NAMES:
            raise InvalidInput(f"{label}.optimizer must be one of {OPTIMIZER_NAMES}, got {self.optimizer!r}")
        if self.adam_beta1 is not None and not 0 <= self.adam_beta1 < 1:
            raise InvalidInput(f"{label}.adam_beta1 must be in [0, 1), got {self.adam_beta1}")

    # -- settings ---------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **asdict(self)}

    def sae_options(self, options: dict[str, Any], d_sae: int) -> dict[str, Any]:
        """SAE config fields this recipe decides (TopK: k from target_l0), merged under the user's."""
        return options

    def check(self, sae: SparseAutoencoder) -> None:
        """Refuse settings that cannot work with this SAE (called once when the job is built)."""
        if self.target_l0 is not None and self.target_l0 > sae.d_sae:
            raise InvalidInput(f"target_l0={self.target_l0:g} exceeds the SAE's {sae.d_sae} latents")

    def use_sparse_step(self, kept_per_token: float, d_sae: int, device: torch.device | str = "cpu") -> bool:
        """The sparse path when asked, or by default where it pays on ``device`` (``saescope.saes.sparse_ops.sparse_pays``)."""
        if self.sparse_step is not None:
            return self.sparse_step
        return sparse_pays(kept_per_token, d_sae, device)

    def optimizer_name(self) -> str:
        return self.optimizer or "adam"

    def betas(self) -> tuple[float, float]:
        beta1 = self.adam_betas[0] if self.adam_beta1 is None else self.adam_beta1
        return (beta1, self.adam_betas[1])

    def learning_rate(self, sae: SparseAutoencoder) -> float:
        if self.lr is not None:
            return self.lr
        base = self.signum_lr if "signum" in self.optimizer_name() else self.base_lr
        if self.lr_base is not None:
            base = self.lr_base
        return base * math.sqrt(2**14 / sae.d_sae)

    def controlled_target_l0(self) -> float | None:
        """The L0 the λ controller steers to (None in k mode or without a target)."""
        return self.target_l0 if self.sparsity_mode == "coefficient" else None

    def initial_sparsity_coefficient(self, sae: SparseAutoencoder) -> float:
        """λ to start from: the configured value, else a guess for the target L0, else the default."""
        if self.sparsity_coefficient is not None:
            return self.sparsity_coefficient
        if self.target_l0 is not None and self.sparsity_mode == "coefficient":
            return self.sparsity_coefficient_for_l0(sae, self.target_l0)
        return self.default_sparsity_coefficient

    def sparsity_coefficient_for_l0(self, sae: SparseAutoencoder, target_l0: float) -> float:
        """A starting guess of the λ that gives ``target_l0``; the controller corrects it."""
        return self.default_sparsity_coefficient

    # -- the recipe's initialisation ----------------------------------------------------------------
    def prepare(self, sae: SparseAutoencoder) -> None:
        """Recipe-specific initialisation of a fresh SAE (decoder norm, threshold), before training."""

    def init_from_data(self, sae: SparseAutoencoder, sample: Tensor) -> None:
        """Called once with a normalised activation sample [n, d_in] before the first step."""

    # -- the step -----------------------------------------------------------------------------------
    def loss(self, sae: SparseAutoencoder, x: Tensor, ctx: StepContext) -> LossOutput:
        raise NotImplementedError

    @torch.no_grad()
    def before_optimizer_step(self, sae: SparseAutoencoder) -> None:
        """Project out the gradient along each (unit) decoder row, so the step moves along the sphere."""
        if not self.unit_norm_decoder or sae.W_dec.grad is None:
            return
        parallel = (sae.W_dec.grad * sae.W_dec).sum(dim=1, keepdim=True)
        sae.W_dec.grad.sub_(parallel * sae.W_dec)

    @torch.no_grad()
    def after_step(self, sae: SparseAutoencoder) -> None:
        """After each optimiser step: constraints and state updates (e.g. a tracked threshold)."""
        if self.unit_norm_decoder:
            unit_norm_rows(sae.W_dec)
