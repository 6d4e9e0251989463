"""What a suite is: one model, one dataset, hookpoints × architectures × widths × target L0s.

A suite config is a YAML (or JSON) file or a dict with the fields of ``SuiteConfig``. Every check
that needs no model runs in ``validate``, so a bad config fails before anything is loaded; the
checks that need the model (hookpoint names, d_in) run in the runner right after loading it.

Widths are absolute (``4608``) or expansion factors of the hookpoint's width (``"8x"``).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from saescope.errors import InvalidInput
from saescope.saes import ARCHITECTURES

_EXPANSION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*x\s*$", re.IGNORECASE)


class SuiteConfigError(InvalidInput):
    """A suite config that cannot run; the message names the field (and file) at fault."""


@dataclass
class SuiteConfig:
    hookpoints: list[str] = field(default_factory=list)
    """Names or globs, e.g. ["layers.*.resid_post", "layers.10.mlp_out"]."""
    model: str | None = "smollm2-135m"
    """smollm2-135m (built in), a model folder, a .gguf file or a hub id."""
    dataset: str = "pydocs"
    """pydocs (built in), a .txt/.jsonl/.parquet file, a saved datasets folder or a hub dataset id."""
    architectures: list[str] = field(default_factory=lambda: ["jumprelu"])
    widths: list[int | str] = field(default_factory=lambda: ["8x"])
    """Absolute latent counts or expansion factors such as "8x"."""
    target_l0s: list[float] = field(default_factory=lambda: [32.0])
    """One SAE per target L0 (k for topk/batchtopk)."""
    tokens: int = 10_000_000
    """Training tokens, shared by every SAE (one pass over the model feeds all)."""
    batch_size: int = 4096
    lr: float | dict[str, float] | None = None
    """One lr for all, or per architecture ({"topk": 4e-3}); None: each architecture's default."""
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Extra SAE or training fields per architecture, e.g. {"topk": {"k_anneal_fraction": 0.5}, "jumprelu": {"objective": "jumprelu_tanh"}}."""
    text_field: str = "text"
    split: str = "train"
    context_size: int = 128
    batch_contexts: int = 16
    shuffle_buffer_tokens: int = 65_536
    eval_tokens: int = 16_384
    """Held-out tokens for L0/FVU/ΔLM loss after training (0 skips the evaluation)."""
    sparsity_proportional_gain: float = 2.0
    """Proportional term of the λ controller for target-L0 SAEs (jumprelu, relu, gated): on short LM runs it
    lands JumpReLU within 10% of its target (29.9 for 32, against 26.6 without; benchmarks/RESULTS.md)."""
    cache: str | None = None
    """Train from an activation cache (``saescope cache``) instead of the live model."""
    seed: int = 0
    device: str | None = None
    dtype: str | None = None
    checkpoint_every: int | None = None
    """Steps between resumable checkpoints. None: about every tenth of the run; 0: never."""
    keep_checkpoint: bool = False
    """Keep OUT/checkpoint after a successful run (it is about 3× the size of the weights)."""

    def __post_init__(self) -> None:
        if isinstance(self.hookpoints, str):
            self.hookpoints = [self.hookpoints]
        for name in ("architectures", "widths", "target_l0s"):
            value = getattr(self, name)
            if isinstance(value, (str, int, float)):
                setattr(self, name, [value])

    # -- loading ------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "suite config") -> SuiteConfig:
        if not isinstance(values, dict):
            raise SuiteConfigError(f"{source}: expected a mapping of fields, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise SuiteConfigError(f"{source}: unknown field(s) {unknown}; known fields: {sorted(known)}")
        try:
            config = cls(**values)
        except TypeError as error:
            raise SuiteConfigError(f"{source}: {error}") from None
        config.validate(source)
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> SuiteConfig:
        file = Path(path)
        if not file.is_file():
            raise SuiteConfigError(f"--config {path}: no such file")
        text = file.read_text()
        try:
            if file.suffix == ".json":
                values = json.loads(text)
            else:
                import yaml

                values = yaml.safe_load(text)
        except Exception as error:  # yaml.YAMLError or json.JSONDecodeError: both mean a malformed file
            raise SuiteConfigError(f"{path}: cannot parse ({error})") from None
        return cls.from_dict(values or {}, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # -- checks that need no model --------------------------------------------------------------------
    def validate(self, source: str = "suite config") -> None:
        def fail(message: str) -> None:
            raise SuiteConfigError(f"{source}: {message}")

        if not self.hookpoints or not all(isinstance(h, str) and h for h in self.hookpoints):
            fail("hookpoints: give at least one name or glob, e.g. [layers.10.resid_post] or ['layers.*.mlp_out']")
        if self.model is None and self.cache is None:
            fail("model: give a model (or a cache, whose manifest names its model)")
        if not self.architectures:
            fail(f"architectures: give at least one of {sorted(ARCHITECTURES)}")
        for arch in self.architectures:
            if arch not in ARCHITECTURES:
                fail(f"architectures: unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}")
        if not self.widths:
            fail("widths: give at least one width (e.g. 4608) or expansion factor (e.g. '8x')")
        for width in self.widths:
            parse_width(width, source)
        if not self.target_l0s:
            fail("target_l0s: give at least one target L0 (e.g. [32, 64])")
        for target in self.target_l0s:
            if isinstance(target, bool) or not isinstance(target, (int, float)) or target <= 0:
                fail(f"target_l0s: {target!r} is not a positive number")
        for name in ("tokens", "batch_size", "context_size", "batch_contexts", "shuffle_buffer_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                fail(f"{name}: must be a positive integer, got {value!r}")
        if self.tokens < self.batch_size:
            fail(f"tokens: {self.tokens} is less than one batch ({self.batch_size})")
        if not isinstance(self.eval_tokens, int) or self.eval_tokens < 0:
            fail(f"eval_tokens: must be an integer >= 0, got {self.eval_tokens!r}")
        if self.checkpoint_every is not None and (not isinstance(self.checkpoint_every, int) or self.checkpoint_every < 0):
            fail(f"checkpoint_every: must be an integer >= 0, got {self.checkpoint_every!r}")
        if isinstance(self.lr, dict):
            for arch, value in self.lr.items():
                if arch not in self.architectures:
                    fail(f"lr: {arch!r} is not one of this suite's architectures {self.architectures}")
                if not isinstance(value, (int, float)) or value <= 0:
                    fail(f"lr.{arch}: must be a positive number, got {value!r}")
        elif self.lr is not None and (not isinstance(self.lr, (int, float)) or self.lr <= 0):
            fail(f"lr: must be a positive number or a mapping per architecture, got {self.lr!r}")
        if not isinstance(self.options, dict):
            fail("options: expected a mapping from architecture to config fields")
        for arch, extra in self.options.items():
            if arch not in self.architectures:
                fail(f"options: {arch!r} is not one of this suite's architectures {self.architectures}")
            if not isinstance(extra, dict):
                fail(f"options.{arch}: expected a mapping of SAE or training fields")
        if isinstance(self.sparsity_proportional_gain, bool) or not isinstance(self.sparsity_proportional_gain, (int, float)) \
                or self.sparsity_proportional_gain < 0:
            fail(f"sparsity_proportional_gain: must be a number >= 0, got {self.sparsity_proportional_gain!r}")
        if self.dtype not in (None, "float32", "bfloat16", "float16"):
            fail(f"dtype: {self.dtype!r}; choose float32, bfloat16 or float16")
        if self.cache is None:
            from saescope.data.text import check_dataset

            try:
                check_dataset(self.dataset)
            except (ValueError, FileNotFoundError) as error:
                fail(f"dataset: {error}")
        elif not Path(self.cache, "manifest.json").is_file():
            fail(f"cache: {self.cache} holds no manifest.json; write one with `saescope cache`")

    # -- derived ---------------------------------------------------------------------------------------
    def lr_for(self, arch: str) -> float | None:
        if isinstance(self.lr, dict):
            return self.lr.get(arch)
        return self.lr

    def resolved_checkpoint_every(self) -> int | None:
        if self.checkpoint_every == 0:
            return None
        if self.checkpoint_every is not None:
            return self.checkpoint_every
        return max(1, (self.tokens // self.batch_size) // 10)


def parse_width(width: int | str, source: str = "suite config") -> tuple[int | None, float | None]:
    """``(absolute, None)`` or ``(None, expansion)``; raises for anything else."""
    if isinstance(width, bool):
        raise SuiteConfigError(f"{source}: widths: {width!r} is not a width")
    if isinstance(width, int):
        if width <= 0:
            raise SuiteConfigError(f"{source}: widths: {width} must be positive")
        return width, None
    if isinstance(width, str):
        if width.strip().isdigit():
            return parse_width(int(width), source)
        match = _EXPANSION.match(width)
        if match and float(match.group(1)) > 0:
            return None, float(match.group(1))
    raise SuiteConfigError(f"{source}: widths: {width!r} is neither a latent count (e.g. 4608) nor an expansion factor (e.g. '8x')")


def resolve_width(width: int | str, d_in: int, source: str = "suite config") -> int:
    absolute, expansion = parse_width(width, source)
    if absolute is not None:
        return absolute
    assert expansion is not None
    resolved = int(round(expansion * d_in))
    if resolved <= 0:
        raise SuiteConfigError(f"{source}: widths: {width!r} × d_in {d_in} gives no latents")
    return resolved
