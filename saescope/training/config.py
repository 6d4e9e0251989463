"""Run-level training settings. Per-SAE settings (λ, target L0, lr, k) live in each SAE's config."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from saescope.errors import InvalidInput
from saescope.plan import TrainingPlan


@dataclass
class TrainConfig:
    total_tokens: int = TrainingPlan.tokens
    """Training tokens per SAE (all SAEs see the same batches)."""
    batch_size: int = TrainingPlan.batch_size
    """Tokens per optimiser step."""
    lr_warmup_fraction: float = 0.01
    """Fraction of the run over which the lr rises (cosine) from 0.1×lr to lr."""
    lr_decay_fraction: float = 0.2
    """Final fraction of the run over which the lr decays linearly to 0."""
    sparsity_warmup_fraction: float | None = None
    """Fraction of the run over which λ rises linearly from 0. None: the architecture's default."""
    sparsity_proportional_gain: float = 0.0
    """Target-L0 mode: weight of the proportional term of the λ controller (0: integral only). A trade-off,
    measured (benchmarks/RESULTS.md): on SmolLM2 layer 10 (219 steps) JumpReLU at target 32 ends at L0 29.9
    with 2.0 against 26.6 without, but synthetic recovery drops from 93.4% to 88.7%. LM suites use 2.0
    (``SuiteConfig.sparsity_proportional_gain``); the default here stays the paper's integral-only control."""
    grad_clip: float | None = 1.0
    """Global gradient-norm clip per SAE (None disables)."""
    dead_window_tokens: int | None = None
    """A latent is dead after this many tokens without firing. None: min(10M, total_tokens / 5)."""
    normalization_tokens: int = 65_536
    """Tokens used to estimate the input scale before training."""
    log_every: int = 50
    """Steps between progress updates (the only host synchronisations in the loop)."""
    checkpoint_every: int | None = None
    """Steps between resumable checkpoints (needs checkpoint_dir)."""
    checkpoint_dir: str | None = None
    """Folder for trainer_state.json and the trainer_state.<step>.safetensors it names."""
    seed: int = 0
    """Seeds data shuffling (SAEs are initialised when created: seed torch before create_sae)."""
    shuffle: bool = True
    """Shuffle array sources (a seeded permutation per epoch)."""
    device: str | None = None
    """"cuda", "cpu", ... None: cuda when available, else cpu."""
    logger: Literal["auto", "none", "tensorboard", "wandb"] = "auto"
    """Metrics sink besides the progress bar. "auto": TensorBoard when installed and log_dir is set."""
    log_dir: str | None = None
    """Where TensorBoard event files go."""
    progress: bool = True
    """Show a progress bar."""
    placement: Literal["auto", "sharded", "replicated"] = "auto"
    """Under torchrun: "sharded" trains each SAE job on one process (balanced blocks of the jobs, grouped by hookpoint) on the whole
    global batch; "replicated" trains every job on every process, each on its share of the batch, with
    gradients averaged (for a few SAEs too large for one device). "auto": sharded when there are at least as
    many jobs as processes, else replicated. See saescope/parallel.py."""
    tf32: bool = True
    """On CUDA, float32 matmuls use TF32 tensor cores during training (several times faster on Ampere and
    Hopper; relative error near 3e-4). False: exact float32. The setting is restored after ``fit``."""
    step_autocast: Literal["bfloat16"] | None = None
    """Run the SAE forward under this autocast dtype (parameters and optimiser state stay float32).
    None: float32 (TF32 on CUDA). Measured in benchmarks/RESULTS.md ("GPU")."""
    retain_cpu_memory: bool = True
    """On CPU, keep freed memory for reuse instead of returning it to the OS (~1.4x faster steps;
    the process keeps its peak memory). See saescope/training/cpu_allocator.py."""

    def __post_init__(self) -> None:
        positive = {"total_tokens": self.total_tokens, "batch_size": self.batch_size, "log_every": self.log_every,
                    "normalization_tokens": self.normalization_tokens}
        for name, value in positive.items():
            if not isinstance(value, int) or value <= 0:
                raise InvalidInput(f"TrainConfig.{name} must be a positive integer, got {value!r}")
        for name in ("lr_warmup_fraction", "lr_decay_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise InvalidInput(f"TrainConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.lr_warmup_fraction + self.lr_decay_fraction > 1:
            raise InvalidInput("TrainConfig: lr_warmup_fraction + lr_decay_fraction must not exceed 1")
        if self.sparsity_warmup_fraction is not None and not 0 <= self.sparsity_warmup_fraction <= 1:
            raise InvalidInput(f"TrainConfig.sparsity_warmup_fraction must be in [0, 1], got {self.sparsity_warmup_fraction}")
        if self.checkpoint_every is not None and (self.checkpoint_every <= 0 or not self.checkpoint_dir):
            raise InvalidInput("TrainConfig.checkpoint_every needs a positive value and a checkpoint_dir")
        if self.logger not in ("auto", "none", "tensorboard", "wandb"):
            raise InvalidInput(f"TrainConfig.logger must be auto, none, tensorboard or wandb; got {self.logger!r}")
        if self.placement not in ("auto", "sharded", "replicated"):
            raise InvalidInput(f"TrainConfig.placement must be auto, sharded or replicated; got {self.placement!r}")
        if self.step_autocast not in (None, "bfloat16"):
            raise InvalidInput(f"TrainConfig.step_autocast must be None or 'bfloat16', got {self.step_autocast!r} "
                               "(float16 would need a gradient scaler)")
        if self.total_tokens < self.batch_size:
            raise InvalidInput(f"TrainConfig.total_tokens={self.total_tokens} is less than one batch ({self.batch_size})")

    @property
    def total_steps(self) -> int:
        return self.total_tokens // self.batch_size

    def resolved_dead_window(self) -> int:
        if self.dead_window_tokens is not None:
            return self.dead_window_tokens
        return max(self.batch_size, min(10_000_000, self.total_tokens // 5))

    def resolved_device(self) -> str:
        """The device to train on: ``device`` checked (a clear error for 'tpu' or an absent CUDA), else cuda when available."""
        from saescope.lm.models import resolve_device

        return str(resolve_device(self.device))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
