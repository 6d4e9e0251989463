"""The interface every SAE architecture implements.

Design constraints:
- An SAE is a plain ``nn.Module`` with one weight orientation: ``W_enc [d_in, d_sae]``,
  ``W_dec [d_sae, d_in]``, ``b_enc [d_sae]``, ``b_dec [d_in]`` (and ``threshold [d_sae]`` where it
  applies), the names SAELens and Gemma Scope use, so checkpoints travel.
- The trainer knows nothing about any architecture. Everything architecture-specific (its loss, its
  optimiser defaults, its decoder-norm constraint, how sparsity reacts to a coefficient) is declared
  here as a method or class attribute and overridden in the architecture's own file.
- ``forward`` never synchronises with the host: loss terms stay tensors.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

OPTIMIZER_NAMES = ("adam", "signum", "schedule_free_adam", "schedule_free_signum")


@dataclass
class SaeConfig:
    """Fields shared by every architecture; each architecture subclasses it with its own."""

    d_in: int
    """Width of the activations the SAE reads."""
    d_sae: int
    """Number of latents (dictionary size)."""
    sparsity_coefficient: float | None = None
    """Weight of the sparsity penalty (λ). None takes the architecture's default."""
    target_l0: float | None = None
    """If set, the trainer adapts λ (or uses k) so that the final mean L0 lands on this value."""
    lr: float | None = None
    """Learning rate. None takes the architecture's default, scaled as 1/sqrt(d_sae)."""
    lr_base: float | None = None
    """Learning rate at 2**14 latents, scaled as 1/sqrt(d_sae) like the default (used when lr is None)."""
    adam_beta1: float | None = None
    """Adam's β₁. None takes the architecture's default (0 for JumpReLU and Gated, as their papers)."""
    optimizer: str | None = None
    """"adam", "signum", "schedule_free_adam" or "schedule_free_signum". None takes the architecture's default."""
    hookpoint: str | None = None
    """Where the activations come from (a module path in the model), for the record."""
    model_id: str | None = None
    """The model the activations come from, for the record."""

    def __post_init__(self) -> None:
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.target_l0 is not None and not 0 < self.target_l0 <= self.d_sae:
            raise ValueError(f"target_l0={self.target_l0} must be in (0, d_sae={self.d_sae}]")
        if self.sparsity_coefficient is not None and self.sparsity_coefficient < 0:
            raise ValueError(f"sparsity_coefficient must be >= 0, got {self.sparsity_coefficient}")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.lr_base is not None and self.lr_base <= 0:
            raise ValueError(f"lr_base must be > 0, got {self.lr_base}")
        if self.optimizer is not None and self.optimizer not in OPTIMIZER_NAMES:
            raise ValueError(f"optimizer must be one of {OPTIMIZER_NAMES}, got {self.optimizer!r}")
        if self.adam_beta1 is not None and not 0 <= self.adam_beta1 < 1:
            raise ValueError(f"adam_beta1 must be in [0, 1), got {self.adam_beta1}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SaeConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {unknown}; known fields: {sorted(known)}")
        return cls(**values)


def unit_norm_rows(matrix: Tensor) -> None:
    """Scale each row of ``matrix`` to unit L2 norm, in place."""
    matrix.div_(matrix.norm(dim=1, keepdim=True).clamp_min(1e-8))


class ForwardOutput(NamedTuple):
    """What ``SparseAutoencoder.forward`` returns."""

    feature_acts: Tensor
    """Latent activations f(x), shape [n_tokens, d_sae]."""
    reconstruction: Tensor
    """x̂, shape [n_tokens, d_in]."""
    loss: Tensor
    """Scalar training loss: the sum of ``loss_terms``."""
    loss_terms: dict[str, Tensor]
    """Each scalar term of the loss by name ("mse", "sparsity", "aux", ...)."""


class SparseAutoencoder(nn.Module):
    """Base class: shared parameters, decode, the decoder-norm constraint, folding and saving.

    Subclasses set ``architecture`` and ``config_class`` and implement ``encode`` and ``losses``.
    """

    architecture: ClassVar[str] = ""
    config_class: ClassVar[type[SaeConfig]] = SaeConfig
    default_sparsity_coefficient: ClassVar[float] = 0.0
    default_optimizer: ClassVar[str] = "adam"
    signum_lr: ClassVar[float] = 1e-3
    """Signum's learning rate at 2**14 latents (each weight moves by ±lr per step)."""
    base_lr: ClassVar[float] = 2e-4
    """Learning rate at 2**14 latents; the default lr scales as base_lr * sqrt(2**14 / d_sae)."""
    adam_betas: ClassVar[tuple[float, float]] = (0.9, 0.999)
    input_norm: ClassVar[str] = "unit_mean_square"
    """How the trainer scales inputs: "unit_mean_square" (E‖x‖² = 1) or "sqrt_d" (E‖x‖² = d_in)."""
    unit_norm_decoder: ClassVar[bool] = True
    """Keep decoder rows at unit norm (parallel gradient removed before, rows renormalised after, each step)."""
    sparsity_warmup_default: ClassVar[float] = 0.05
    """Default fraction of the run over which λ warms up linearly from 0."""
    apply_b_dec_to_input: ClassVar[bool] = False
    """Subtract b_dec from the input before encoding (pre-encoder bias)."""
    controls_l0_by_coefficient: ClassVar[bool] = True
    """True when L0 is steered by λ (jumprelu, relu, gated); False when fixed by k (topk family)."""
    scaled_tensor_names: ClassVar[tuple[str, ...]] = ("b_enc", "b_dec")
    """Tensors measured in input units: divided by c when folding an input scale c into the weights."""

    def __init__(self, cfg: SaeConfig) -> None:
        super().__init__()
        if not isinstance(cfg, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(cfg).__name__}")
        self.cfg = cfg
        d_in, d_sae = cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.add_parameters()
        self.normalization: dict[str, Any] = {}
        """How training inputs were scaled and whether that scale is folded into the weights."""
        self.training_summary: dict[str, Any] = {}
        self.reset_parameters()

    # -- initialisation -------------------------------------------------------------------------
    def add_parameters(self) -> None:
        """Hook for architectures with extra tensors (a threshold, gate biases); runs before init."""

    def reset_parameters(self, decoder_row_norm: float = 1.0) -> None:
        """Kaiming-uniform decoder rows rescaled to ``decoder_row_norm``; W_enc = W_dec^T; biases 0."""
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.W_dec, a=math.sqrt(5))
            self.W_dec.mul_(decoder_row_norm / self.W_dec.norm(dim=1, keepdim=True))
            self.W_enc.copy_(self.W_dec.T)
            self.b_enc.zero_()
            self.b_dec.zero_()

    def init_from_data(self, sample: Tensor) -> None:
        """Called by the trainer once with a normalised sample of activations [n, d_in]. Default: nothing."""

    # -- inference --------------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    def encoder_input(self, x: Tensor) -> Tensor:
        return x - self.b_dec if self.apply_b_dec_to_input else x

    def pre_activations(self, x: Tensor) -> Tensor:
        """x @ W_enc + b_enc, fused into one addmm."""
        return torch.addmm(self.b_enc, self.encoder_input(x), self.W_enc)

    def encode(self, x: Tensor) -> Tensor:
        """Latent activations f(x), shape [n_tokens, d_sae]."""
        raise NotImplementedError

    def decode(self, feature_acts: Tensor) -> Tensor:
        """x̂ = f @ W_dec + b_dec."""
        return torch.addmm(self.b_dec, feature_acts, self.W_dec)

    def forward(
        self,
        x: Tensor,
        sparsity_coefficient: Tensor | float | None = None,
        dead_mask: Tensor | None = None,
    ) -> ForwardOutput:
        """Encode, decode and compute the training loss.

        Args:
            x: activations [n_tokens, d_in], already normalised the way the SAE was trained.
            sparsity_coefficient: λ; defaults to the config's (or the architecture's) value.
            dead_mask: bool [d_sae], latents the trainer considers dead (used by auxiliary losses).
        """
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"expected activations of shape [n_tokens, {self.d_in}], got {tuple(x.shape)}")
        if sparsity_coefficient is None:
            sparsity_coefficient = self.sparsity_coefficient
        return self.losses(x, sparsity_coefficient, dead_mask)

    def losses(self, x: Tensor, sparsity_coefficient: Tensor | float, dead_mask: Tensor | None) -> ForwardOutput:
        raise NotImplementedError

    @property
    def sparsity_coefficient(self) -> float:
        value = self.cfg.sparsity_coefficient
        return self.default_sparsity_coefficient if value is None else value

    def initial_sparsity_coefficient(self) -> float:
        """λ to start from: the configured value, else a guess for the target L0, else the default."""
        if self.cfg.sparsity_coefficient is not None or self.cfg.target_l0 is None:
            return self.sparsity_coefficient
        return self.sparsity_coefficient_for_l0(self.cfg.target_l0)

    def sparsity_coefficient_for_l0(self, target_l0: float) -> float:
        """A starting guess of the λ that gives ``target_l0``; the controller corrects it."""
        return self.sparsity_coefficient

    def resolved_adam_betas(self) -> tuple[float, float]:
        beta1 = self.adam_betas[0] if self.cfg.adam_beta1 is None else self.cfg.adam_beta1
        return (beta1, self.adam_betas[1])

    @property
    def resolved_optimizer(self) -> str:
        return self.cfg.optimizer or self.default_optimizer

    def default_lr(self) -> float:
        if self.cfg.lr is not None:
            return self.cfg.lr
        base = self.signum_lr if "signum" in self.resolved_optimizer else self.base_lr
        if self.cfg.lr_base is not None:
            base = self.cfg.lr_base
        return base * math.sqrt(2**14 / self.d_sae)

    # -- training hooks the trainer calls -----------------------------------------------------------
    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project out the gradient component along each (unit) decoder row, so Adam moves along the sphere."""
        if not self.unit_norm_decoder or self.W_dec.grad is None:
            return
        parallel = (self.W_dec.grad * self.W_dec).sum(dim=1, keepdim=True)
        self.W_dec.grad.sub_(parallel * self.W_dec)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        if self.unit_norm_decoder:
            unit_norm_rows(self.W_dec)

    def set_training_progress(self, fraction: float) -> None:
        """Called before each training step with the fraction of the run done (schedules such as k annealing)."""

    def after_step(self) -> None:
        """Called after each optimiser step (state updates such as a tracked threshold)."""
        self.normalize_decoder()

    # -- conversions ---------------------------------------------------------------------------------
    def export_tensors(self) -> dict[str, Tensor]:
        """The tensors a checkpoint stores, under their published names (e.g. ``threshold``)."""
        return {name: t.detach() for name, t in self.state_dict().items()}

    @torch.no_grad()
    def load_export_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Inverse of ``export_tensors``; the caller has validated names and shapes."""
        self.load_state_dict(tensors, strict=True)

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make an SAE trained on ``scale * x`` take raw ``x``: divide biases and thresholds by ``scale``.

        Weights stay as they are, so unit-norm decoder rows stay unit norm (dictionary_learning's
        choice; SAELens instead rescales W_enc and W_dec). Feature activations come out divided by
        ``scale``, i.e. in raw input units.
        """
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"input scale must be a positive finite number, got {scale}")
        tensors = self.export_tensors()
        for name in self.scaled_tensor_names:
            tensors[name] = tensors[name] / scale
        self.load_export_tensors(tensors)

    def copy(self) -> SparseAutoencoder:
        return copy.deepcopy(self)

    def save(self, path: str, **extra_cfg: Any) -> None:
        """Write ``cfg.json`` and ``sae_weights.safetensors`` into the folder ``path``."""
        from saescope.checkpoint import save_sae

        save_sae(self, path, **extra_cfg)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_sae={self.d_sae}"
