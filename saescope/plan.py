"""The run plan: one typed tree for every way of training SAEs on a model's activations.

    RunPlan
      model       which model, on which device, in which dtype
      data        where the text (or an activation cache) comes from and how it is cut
      training    tokens, batch size, seed, λ control, checkpoints
      evaluation  held-out tokens for the in-model measurement
      sweep       hookpoints × architectures × widths × target L0s, with per-architecture options

The same object is read from YAML or JSON (nested by section, or flat: every field name is unique
across sections, so ``tokens: 1000000`` and ``training: {tokens: 1000000}`` mean the same), built in
Python, written next to the results (``suite.yaml``), and turned into command-line flags
(``saescope train --help`` shows each field's docstring). Every default lives here, once. Every
check that needs no model runs when the plan is built, and a failure names the field and the file.
"""

from __future__ import annotations

import json
import re
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Literal

from saescope.data.lm_config import LmDataConfig
from saescope.errors import InvalidInput, MissingFile
from saescope.saes import ARCHITECTURES

_EXPANSION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*x\s*$", re.IGNORECASE)


LM_PROPORTIONAL_GAIN = 2.0
"""The λ controller's proportional term on a model when the plan gives none (see TrainingPlan.sparsity_proportional_gain)."""
LM_LR_BASE = {"jumprelu": 2e-3}
"""Base lr (at 2**14 latents) on a language model when the plan gives none. JumpReLU's paper default (2e-4)
leaves it at FVU 0.320 on a 219-step run at SmolLM2 layer 10; 4e-3 at 4608 latents (this base) gives 0.164
(benchmarks/RESULTS.md). Arrays and the synthetic benchmark keep the objectives' defaults."""


class PlanError(InvalidInput):
    """A plan that cannot run; the message names the field (and file) at fault."""


@dataclass
class ModelPlan:
    model: str | None = "smollm2-135m"
    """smollm2-135m (built in), a model folder, a .gguf file or a hub id. With a cache, None takes the cache's model."""
    device: str | None = None
    """cuda or cpu. None: cuda when available."""
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """Model dtype. None: float32."""

    def __post_init__(self) -> None:
        check_field_types(self)


@dataclass
class DataPlan(LmDataConfig):
    cache: str | None = None
    """Train from an activation cache (``saescope cache``) instead of the live model."""
    array: str | None = field(default=None, metadata={"flag": "--data"})
    """Train on vectors instead of a model: .npy, .npz, .csv, .parquet, .h5ad or a folder of .npy shards [n_vectors, d_in]."""
    data_key: str | None = None
    """Which array of --data: an .npz array name, or for .h5ad X, layers/<name> or obsm/<name> (e.g. obsm/X_pca)."""
    metadata_columns: list[str] = field(default_factory=list)
    """Numeric columns of a .csv/.parquet --data kept as metadata rather than trained on (e.g. a cluster id)."""
    center: bool = True
    """With --data: train on vectors minus their per-dimension mean (folded into the saved SAE, which takes raw vectors)."""
    standardize: bool = False
    """With --data: also divide each dimension by its standard deviation (folded in as well)."""
    log1p: bool = False
    """With --data: train on log(1 + x) of non-negative counts, before centring. Not foldable into weights: the
    saved SAE records it and applies it to the raw counts itself, and reconstructs log(1 + x)."""

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.array is not None and self.cache is not None:
            raise PlanError("array: give an array or a cache, not both")
        for name in ("context_size", "batch_contexts", "shuffle_buffer_tokens"):
            if getattr(self, name) <= 0:
                raise PlanError(f"{name}: must be a positive integer, got {getattr(self, name)!r}")
        if self.context_size < 2:
            raise PlanError(f"context_size: must be at least 2, got {self.context_size}")
        if not 0 < self.eval_fraction < 1:
            raise PlanError(f"eval_fraction: must be in (0, 1), got {self.eval_fraction}")


@dataclass
class TrainingPlan:
    tokens: int = 10_000_000
    """Training tokens, shared by every SAE (one pass over the model feeds all)."""
    batch_size: int = 4096
    """Tokens per optimiser step."""
    seed: int = 0
    """Seeds SAE initialisation and the data order."""
    sparsity_proportional_gain: float | None = None
    """Proportional term of the λ controller for target-L0 SAEs (jumprelu, relu, gated). None: 2.0 on a model,
    where it lands JumpReLU within 10% of its target on short runs (29.9 for 32, against 26.6 without), and 0 on
    arrays, where it costs synthetic recovery (88.7% against 93.4%; benchmarks/RESULTS.md)."""
    checkpoint_every: int | None = None
    """Steps between resumable checkpoints. None: about every tenth of the run; 0: never."""
    keep_checkpoint: bool = False
    """Keep OUT/checkpoint after a successful run (it is about 3× the size of the weights)."""
    placement: Literal["auto", "sharded", "replicated"] = "auto"
    """Under torchrun: sharded (each SAE on one process, whole batches), replicated (every SAE on every process,
    batches split, gradients averaged) or auto (sharded when there are at least as many SAEs as processes)."""
    end_to_end_tokens: int = 0
    """After training, fine-tune each per-hookpoint SAE on this many tokens with KL to the model's own next-token
    distribution plus MSE, the SAE spliced in (Karvonen 2025; ``saescope/training/end_to_end.py``). 0: off."""
    tf32: bool = True
    """On CUDA, train with TF32 float32 matmuls (several times faster on Ampere/Hopper, ~3e-4 relative error)."""
    step_autocast: Literal["bfloat16"] | None = None
    """Run each SAE forward under this autocast dtype (parameters stay float32). None: float32 (TF32 on CUDA)."""

    def __post_init__(self) -> None:
        check_field_types(self)
        for name in ("tokens", "batch_size"):
            if getattr(self, name) <= 0:
                raise PlanError(f"{name}: must be a positive integer, got {getattr(self, name)!r}")
        if self.tokens < self.batch_size:
            raise PlanError(f"tokens: {self.tokens} is less than one batch ({self.batch_size})")
        if self.checkpoint_every is not None and self.checkpoint_every < 0:
            raise PlanError(f"checkpoint_every: must be >= 0, got {self.checkpoint_every}")
        if self.end_to_end_tokens < 0:
            raise PlanError(f"end_to_end_tokens: must be >= 0, got {self.end_to_end_tokens!r}")
        if self.sparsity_proportional_gain is not None and self.sparsity_proportional_gain < 0:
            raise PlanError(f"sparsity_proportional_gain: must be >= 0, got {self.sparsity_proportional_gain}")

    def resolved_checkpoint_every(self) -> int | None:
        if self.checkpoint_every == 0:
            return None
        if self.checkpoint_every is not None:
            return self.checkpoint_every
        return max(1, (self.tokens // self.batch_size) // 10)


@dataclass
class EvaluationPlan:
    eval_tokens: int = 16_384
    """Held-out tokens for L0/FVU/ΔLM loss after training (0 skips the evaluation)."""

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.eval_tokens < 0:
            raise PlanError(f"eval_tokens: must be >= 0, got {self.eval_tokens}")


@dataclass
class SweepPlan:
    hookpoints: list[str] = field(default_factory=list, metadata={"flag": "--hookpoints"})
    """Names or globs, e.g. layers.10.resid_post 'layers.*.mlp_out' blocks.5.hook_resid_post."""
    architectures: list[str] = field(default_factory=lambda: ["jumprelu"], metadata={"flag": "--arch"})
    """Architectures, all trained in one pass."""
    kinds: list[str] = field(default_factory=lambda: ["sae"], metadata={"flag": "--kinds"})
    """What each job reads and writes: sae (reconstructs its hookpoint); transcoder (at an mlp_out hookpoint, reads
    that layer's mlp_in and predicts mlp_out: the MLP replaced by sparse features); skip_transcoder (a transcoder
    with a linear skip connection). Several train side by side on the same tokens."""
    widths: list[int | str] = field(default_factory=lambda: ["8x"], metadata={"flag": "--width"})
    """Latents per SAE: counts such as 4608 or expansion factors of d_in such as 8x; several for a sweep."""
    target_l0s: list[float] = field(default_factory=lambda: [32.0], metadata={"flag": "--target-l0"})
    """Target L0s, one SAE each (k for topk/batchtopk)."""
    lr: float | dict[str, float] | None = None
    """One lr for all, or per architecture ({"topk": 4e-3}). None: each architecture's default (JumpReLU on
    a model: base 2e-3 at 2**14 latents, measured in benchmarks/RESULTS.md)."""
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Extra SAE or training fields per architecture, e.g. {"topk": {"k_anneal_fraction": 0.5}, "jumprelu": {"objective": "jumprelu_tanh"}}."""
    multilayer: bool = False
    """Train one SAE over all the hookpoints (a multi-layer SAE: each token's vector at each hookpoint is an example,
    each hookpoint with its own input scale) per architecture × width × target L0, instead of one SAE per hookpoint.
    Each step then holds batch_size × hookpoints rows: lower batch_size accordingly."""
    multilayer_baselines: list[str] = field(default_factory=list)
    """With multilayer: hookpoints (names or globs among the hookpoints) that also get their own SAE of the same
    architecture, width and target, trained on the same tokens, for a side-by-side comparison."""

    def __post_init__(self) -> None:
        for name in ("hookpoints", "multilayer_baselines"):
            if isinstance(getattr(self, name), str):
                setattr(self, name, [getattr(self, name)])
        for name in ("architectures", "kinds", "widths", "target_l0s"):
            value = getattr(self, name)
            if isinstance(value, (str, int, float)):
                setattr(self, name, [value])
        check_field_types(self)
        if not self.architectures:
            raise PlanError("architectures: give at least one")
        for arch in self.architectures:
            if arch not in ARCHITECTURES:
                raise PlanError(f"architectures: unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}")
        kinds = ("sae", "transcoder", "skip_transcoder")
        unknown = [kind for kind in self.kinds if kind not in kinds]
        if unknown or not self.kinds or len(set(self.kinds)) < len(self.kinds):
            raise PlanError(f"kinds: {self.kinds!r}: give each of {list(kinds)} at most once, at least one")
        if not self.widths:
            raise PlanError("widths: give at least one width (e.g. 4608) or expansion factor (e.g. '8x')")
        for width in self.widths:
            parse_width(width)
        if not self.target_l0s:
            raise PlanError("target_l0s: give at least one target L0 (e.g. [32, 64])")
        for target in self.target_l0s:
            if not target > 0:
                raise PlanError(f"target_l0s: {target!r} is not a positive number")
        if isinstance(self.lr, dict):
            for arch, value in self.lr.items():
                if arch not in self.architectures:
                    raise PlanError(f"lr: {arch!r} is not one of this plan's architectures {self.architectures}")
                if not value > 0:
                    raise PlanError(f"lr.{arch}: must be a positive number, got {value!r}")
        elif self.lr is not None and not self.lr > 0:
            raise PlanError(f"lr: must be a positive number or a mapping per architecture, got {self.lr!r}")
        for arch in self.options:
            if arch not in self.architectures:
                raise PlanError(f"options: {arch!r} is not one of this plan's architectures {self.architectures}")
        if self.multilayer_baselines and not self.multilayer:
            raise PlanError("multilayer_baselines: only used with multilayer: true (per-layer SAEs to compare the multi-layer SAE with)")

    def lr_for(self, arch: str) -> float | None:
        if isinstance(self.lr, dict):
            return self.lr.get(arch)
        return self.lr

    def options_for(self, arch: str) -> dict[str, Any]:
        """The SAE and training options of ``arch``'s jobs: its ``options``, then the lr the plan decides."""
        options = dict(self.options.get(arch, {}))
        if self.lr_for(arch) is not None:
            options["lr"] = self.lr_for(arch)
        elif arch in LM_LR_BASE and "optimizer" not in options and "lr" not in options:
            options.setdefault("lr_base", LM_LR_BASE[arch])
        return options


SECTIONS: dict[str, type] = {
    "model": ModelPlan, "data": DataPlan, "training": TrainingPlan, "evaluation": EvaluationPlan, "sweep": SweepPlan,
}


def leaf_fields() -> dict[str, tuple[str, Any]]:
    """{field name: (section, dataclass field)} over every section; names are unique across sections."""
    found: dict[str, tuple[str, Any]] = {}
    for section, cls in SECTIONS.items():
        for item in fields(cls):
            if item.name in found:
                raise AssertionError(f"plan field {item.name!r} appears in {found[item.name][0]} and {section}")
            found[item.name] = (section, item)
    return found


@dataclass
class RunPlan:
    model: ModelPlan = field(default_factory=ModelPlan)
    data: DataPlan = field(default_factory=DataPlan)
    training: TrainingPlan = field(default_factory=TrainingPlan)
    evaluation: EvaluationPlan = field(default_factory=EvaluationPlan)
    sweep: SweepPlan = field(default_factory=SweepPlan)
    source: str = field(default="plan", repr=False, compare=False, metadata={"internal": True})
    """Where the plan came from (a file name, "command line"), named in every error."""

    def __post_init__(self) -> None:
        if self.data.array is not None:
            if self.sweep.hookpoints:
                raise PlanError(f"{self.source}: hookpoints: an array has none; give hookpoints with a model or a cache")
            if self.training.end_to_end_tokens:
                raise PlanError(f"{self.source}: end_to_end_tokens: the end-to-end fine-tune splices SAEs into a language model; "
                                "an array has none (train on a model or a cache, or leave it at 0)")
            return
        if not self.sweep.hookpoints and self.data.cache is None:
            raise PlanError(f"{self.source}: hookpoints: give at least one (--hookpoints layers.10.resid_post, or hookpoints "
                            "in the plan file); a cache defaults to all of its hookpoints")
        if self.model.model is None and self.data.cache is None:
            raise PlanError(f"{self.source}: model: give a model, or a cache whose manifest names one")

    # -- reading and writing ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "plan") -> RunPlan:
        """A plan from nested sections, flat field names, or a mixture."""
        if not isinstance(values, dict):
            raise PlanError(f"{source}: expected a mapping of fields, got {type(values).__name__}")
        leaves = leaf_fields()
        nested: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
        unknown = []
        for key, value in values.items():
            if key in SECTIONS and not (key in leaves and not isinstance(value, dict)):  # `model: name` is the field
                if not isinstance(value, dict):
                    raise PlanError(f"{source}: {key}: expected a mapping of fields, got {type(value).__name__}")
                for inner, inner_value in value.items():
                    if inner not in leaves or leaves[inner][0] != key:
                        unknown.append(f"{key}.{inner}")
                    else:
                        nested[key][inner] = inner_value
            elif key in leaves:
                nested[leaves[key][0]][key] = value
            else:
                unknown.append(key)
        if unknown:
            known = ", ".join(f"{section}: {[f.name for f in fields(c)]}" for section, c in SECTIONS.items())
            raise PlanError(f"{source}: unknown field(s) {sorted(unknown)}; known fields by section: {known}")
        sections = {}
        for name, section in SECTIONS.items():
            try:
                sections[name] = section(**nested[name])
            except PlanError as error:
                raise PlanError(f"{source}: {error}") from None
        return cls(**sections, source=source)

    @classmethod
    def from_file(cls, path: str | Path) -> RunPlan:
        file = Path(path)
        if not file.is_file():
            raise MissingFile(f"--config {path}: no such file")
        text = file.read_text()
        try:
            if file.suffix == ".json":
                values = json.loads(text)
            else:
                import yaml

                values = yaml.safe_load(text)
        except Exception as error:  # yaml.YAMLError or json.JSONDecodeError: both mean a malformed file
            raise PlanError(f"{path}: cannot parse ({error})") from None
        return cls.from_dict(values or {}, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        """Nested by section (what suite.yaml holds); ``from_dict`` reads it back to an equal plan."""
        return {name: asdict(getattr(self, name)) for name in SECTIONS}

    # -- checks of the world outside the plan ------------------------------------------------------------
    def check_sources(self) -> None:
        """The dataset or cache must exist (run before training; a stored plan is read without it)."""
        if self.data.array is not None:
            from saescope.data.vectors import VECTOR_SUFFIXES

            array = Path(self.data.array)
            if not array.exists():
                raise MissingFile(f"{self.source}: --data {self.data.array}: no such file or folder")
            if array.is_file() and array.suffix.lower() not in VECTOR_SUFFIXES:
                raise PlanError(f"{self.source}: --data {self.data.array}: unknown format {array.suffix!r}; saescope reads "
                                f"{', '.join(VECTOR_SUFFIXES)} and folders of .npy shards")
        elif self.data.cache is None:
            from saescope.data.text import check_dataset

            try:
                check_dataset(self.data.dataset)
            except (ValueError, FileNotFoundError) as error:
                raise PlanError(f"{self.source}: dataset: {error}") from None
        elif not Path(self.data.cache, "manifest.json").is_file():
            raise PlanError(f"{self.source}: cache: {self.data.cache} holds no manifest.json; write one with `saescope cache`")

    def with_absolute_paths(self) -> tuple[RunPlan, dict[str, str]]:
        """This plan with local model, dataset, cache and array paths made absolute, and what was typed for each changed one."""
        from saescope.io.paths import absolute_if_local

        given: dict[str, str] = {}
        sections = {"model": self.model, "data": self.data}
        updates: dict[str, dict[str, Any]] = {"model": {}, "data": {}}
        for section, name in (("model", "model"), ("data", "dataset"), ("data", "cache"), ("data", "array")):
            typed = getattr(sections[section], name)
            resolved = absolute_if_local(typed)
            if resolved != typed:
                updates[section][name] = resolved
                given[name] = typed
        if not given:
            return self, {}
        return replace(self, model=replace(self.model, **updates["model"]), data=replace(self.data, **updates["data"])), given

    @classmethod
    def stored(cls, index: dict[str, Any], folder: str | Path) -> RunPlan:
        """The plan a suite was trained with, from its ``suite.json`` (nested, or flat as saescope 0.1 wrote it)."""
        return cls.from_dict(index.get("config") or {}, source=f"{Path(folder) / 'suite.json'} (config)")

    def lm_data(self) -> LmDataConfig:
        """The data section as the ``LmDataConfig`` that training and evaluation read."""
        return LmDataConfig(**{f.name: getattr(self.data, f.name) for f in fields(LmDataConfig)})


# -- field types --------------------------------------------------------------------------------------
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_field_types(section: Any) -> None:
    """Refuse a value that does not fit its field's annotation (YAML and flags give strings, numbers, lists)."""
    hints = _hints(type(section))
    for item in fields(section):
        value = getattr(section, item.name)
        if not _fits(value, hints[item.name]):
            raise PlanError(f"{item.name}: {value!r} is not {_describe(hints[item.name])}")


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        return any(_fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if origin is Literal:
        return value in args
    if origin is list:
        return isinstance(value, list) and all(_fits(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(_fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items())
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if args and type(None) in args:
        return " or ".join(_describe(a) for a in args if a is not type(None)) + " or null"
    if origin is list:
        return f"a list of {_describe(args[0])}"
    if origin is dict:
        return "a mapping"
    if origin is not None and args:
        return " or ".join(_describe(a) for a in args)
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(hint, str(hint))


# -- widths -------------------------------------------------------------------------------------------
def parse_width(width: int | str, source: str = "") -> tuple[int | None, float | None]:
    """``(absolute, None)`` or ``(None, expansion)``; raises for anything else (naming ``source`` when given)."""
    where = f"{source}: " if source else ""
    if isinstance(width, bool):
        raise PlanError(f"{where}widths: {width!r} is not a width")
    if isinstance(width, int):
        if width <= 0:
            raise PlanError(f"{where}widths: {width} must be positive")
        return width, None
    if isinstance(width, str):
        if width.strip().isdigit():
            return parse_width(int(width), source)
        match = _EXPANSION.match(width)
        if match and float(match.group(1)) > 0:
            return None, float(match.group(1))
    raise PlanError(f"{where}widths: {width!r} is neither a latent count (e.g. 4608) nor an expansion factor (e.g. '8x')")


def resolve_width(width: int | str, d_in: int, source: str = "") -> int:
    absolute, expansion = parse_width(width, source)
    if absolute is not None:
        return absolute
    assert expansion is not None
    resolved = int(round(expansion * d_in))
    if resolved <= 0:
        raise PlanError(f"{source + ': ' if source else ''}widths: {width!r} × d_in {d_in} gives no latents")
    return resolved


def field_docstrings(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal under it), read from the class source."""
    import ast
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, following in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(following, ast.Expr) \
                    and isinstance(following.value, ast.Constant) and isinstance(following.value.value, str):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def default_of(item: Any) -> Any:
    if item.default is not MISSING:
        return item.default
    if item.default_factory is not MISSING:  # type: ignore[misc]
        return item.default_factory()  # type: ignore[misc]
    return None
