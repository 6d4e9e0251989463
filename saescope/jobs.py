"""An SAE job: the unit that training, checkpoints, evaluation, interpretation and steering route on.

A job is a name, what it reads (a ``ReadSpec``), the SAE module and its training objective. The
trainer routes batches by the read spec, asks the objective how to train, and records both in the
checkpoint, so the module itself stays a plain ``nn.Module``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from saescope.errors import InvalidInput
from saescope.objectives import Objective, get_objective
from saescope.saes import SparseAutoencoder, create_sae, get_architecture


@dataclass(frozen=True)
class ReadSpec:
    """Where a job's activations come from.

    ``hookpoints=()`` reads the data as given (an array of vectors). One hookpoint reads that entry of
    a dict batch (a language model's activations). Several hookpoints are *stacked*: every hookpoint's
    vectors are extra examples of one SAE (a multi-layer SAE), each row keeping its position in
    ``hookpoints`` as its layer index, and each hookpoint gets its own input scale. ``target`` names
    a second site the job predicts from the one it reads (a transcoder: ``layers.L.mlp_in`` →
    ``layers.L.mlp_out``); the trainer hands it the target's rows beside the input's, scaled apart.
    """

    hookpoints: tuple[str, ...] = ()
    """Hookpoint names the SAE reads; () for plain arrays; several for a stacked (multi-layer) read."""
    target: str | None = None
    """The site the SAE reconstructs when it is not the input (transcoders)."""

    def __post_init__(self) -> None:
        if isinstance(self.hookpoints, str):
            object.__setattr__(self, "hookpoints", (self.hookpoints,))
        else:
            object.__setattr__(self, "hookpoints", tuple(self.hookpoints))
        duplicates = sorted({h for h in self.hookpoints if self.hookpoints.count(h) > 1})
        if duplicates:
            raise InvalidInput(f"ReadSpec{self.hookpoints}: hookpoint(s) {duplicates} listed twice; list each once")
        if self.target is not None:
            if len(self.hookpoints) != 1:
                raise InvalidInput(f"ReadSpec{self.hookpoints} with target={self.target!r}: a transcoder reads exactly one hookpoint "
                                   "(its MLP's input); cross-layer transcoders are not built yet")
            if self.target in self.hookpoints:
                raise InvalidInput(f"ReadSpec: target {self.target!r} is the hookpoint it reads; leave target=None for an SAE")

    @property
    def stacked(self) -> bool:
        """True when several hookpoints feed one SAE (rows carry a layer index)."""
        return len(self.hookpoints) > 1

    @property
    def hookpoint(self) -> str | None:
        """The single hookpoint read (None for plain arrays and stacked reads)."""
        return self.hookpoints[0] if len(self.hookpoints) == 1 else None


@dataclass
class SaeJob:
    """One SAE to train: its name, what it reads, the module and the objective that trains it."""

    name: str
    sae: SparseAutoencoder
    objective: Objective
    reads: ReadSpec = field(default_factory=ReadSpec)

    def __post_init__(self) -> None:
        parts = str(self.name).replace("\\", "/").split("/")
        if not isinstance(self.name, str) or not self.name or self.name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise InvalidInput(f"job name {self.name!r}: a job's name is its folder under the output, so it must be a relative path "
                               "without '..', '.' or empty parts (e.g. 'topk' or 'layers.6.resid_post/topk-w4608-l0_32')")
        if not isinstance(self.sae, SparseAutoencoder):
            raise TypeError(f"job {self.name!r}: expected a saescope SparseAutoencoder, got {type(self.sae).__name__}")
        if self.sae.architecture not in self.objective.architectures:
            raise InvalidInput(
                f"job {self.name!r}: objective {self.objective.name!r} trains {list(self.objective.architectures)}, "
                f"not a {self.sae.architecture} SAE"
            )
        self.objective.check(self.sae)


def default_objective(sae: SparseAutoencoder) -> Objective:
    """The architecture's own objective with its default settings."""
    return get_objective(sae.default_objective)()


def create_job(
    architecture: str,
    d_in: int,
    d_sae: int,
    objective: str | None = None,
    name: str | None = None,
    reads: ReadSpec | str | list[str] | tuple[str, ...] | None = None,
    **options: Any,
) -> SaeJob:
    """Build an SAE and the objective that trains it from one flat set of options.

    Each option goes where it belongs: SAE fields (``k``, ``threshold_param``, ``hookpoint``) to the
    module, training settings (``target_l0``, ``lr``, ``bandwidth``, ``aux_k`` ...) to the objective.
    ``reads`` is a hookpoint, a list of hookpoints (stacked: one SAE over all of them) or a ``ReadSpec``.

    Example:
        >>> job = create_job("topk", d_in=64, d_sae=512, target_l0=8)
        >>> job.sae.cfg.k, job.objective.name, job.objective.target_l0
        (8, 'topk', 8)
    """
    sae_class = get_architecture(architecture)
    objective_class = get_objective(objective or sae_class.default_objective)
    sae_fields, recipe_fields = sae_class.config_class.field_names(), objective_class.field_names()
    unknown = sorted(set(options) - sae_fields - recipe_fields)
    if unknown:
        raise InvalidInput(
            f"{architecture} trained by {objective_class.name!r}: unknown options {unknown}; "
            f"SAE fields: {sorted(sae_fields - {'d_in', 'd_sae'})}; training fields: {sorted(recipe_fields)}"
        )
    recipe = objective_class(**{k: v for k, v in options.items() if k in recipe_fields})
    sae_options = recipe.sae_options({k: v for k, v in options.items() if k in sae_fields}, d_sae)
    if isinstance(reads, (str, list, tuple)):
        reads = ReadSpec(reads)
    reads = reads or ReadSpec((sae_options["hookpoint"],) if sae_options.get("hookpoint") else ())
    if reads.hookpoint is not None:
        sae_options.setdefault("hookpoint", reads.hookpoint)
    elif reads.stacked and sae_options.get("hookpoint"):
        raise InvalidInput(f"{architecture}: hookpoint={sae_options['hookpoint']!r} names one site, but the job reads {len(reads.hookpoints)} "
                           "stacked hookpoints; drop hookpoint= (a stacked SAE records its hookpoints in its normalisation)")
    if reads.target is None and sae_options.get("target") is not None:
        reads = ReadSpec(reads.hookpoints, target=sae_options["target"])  # target= given as an SAE field
    elif sae_options.setdefault("target", reads.target) != reads.target:
        raise InvalidInput(f"{architecture}: target={sae_options['target']!r} differs from the job's reads.target={reads.target!r}; give one")
    sae = create_sae(architecture, d_in, d_sae, **sae_options)
    recipe.prepare(sae)
    return SaeJob(name or architecture, sae, recipe, reads)


def sets_k(architecture: str, objective: str | None = None) -> bool:
    """True when the job's L0 is a fixed k (the TopK family), False when a λ controller steers it."""
    sae_class = get_architecture(architecture)
    return get_objective(objective or sae_class.default_objective).sparsity_mode == "k"


def parameter_count(architecture: str, d_in: int, d_sae: int) -> int:
    """Trainable tensors' size of an SAE, counted on the meta device (no memory, no init cost)."""
    import torch

    with torch.device("meta"):
        sae = create_sae(architecture, d_in, d_sae)
    return sum(t.numel() for t in sae.state_dict().values())
