"""SAE architectures, registered by name.

An architecture is one file with a ``SaeConfig`` subclass (its inference fields) and a
``SparseAutoencoder`` subclass (parameters, ``encode``, ``decode``), registered with
``register_architecture``. How it is trained is an objective (``saescope.objectives``).
"""

from __future__ import annotations

from typing import Any

from saescope.errors import InvalidInput
from saescope.saes.base import SaeConfig, SparseAutoencoder, unit_norm_rows
from saescope.saes.batchtopk import BatchTopKConfig, BatchTopKSae, MutualChoiceSae
from saescope.saes.code import FeatureCode
from saescope.saes.feature_choice import FeatureChoiceConfig, FeatureChoiceSae
from saescope.saes.gated import GatedConfig, GatedSae
from saescope.saes.jumprelu import JumpReLUConfig, JumpReLUSae
from saescope.saes.matryoshka import MatryoshkaConfig, MatryoshkaSae
from saescope.saes.relu import ReLUConfig, ReLUSae
from saescope.saes.topk import TopKConfig, TopKSae

ARCHITECTURES: dict[str, type[SparseAutoencoder]] = {}


def register_architecture(sae_class: type[SparseAutoencoder]) -> type[SparseAutoencoder]:
    """Make ``sae_class`` available by its ``architecture`` name (usable as a class decorator)."""
    name = sae_class.architecture
    if not name:
        raise InvalidInput(f"{sae_class.__name__} has no `architecture` name")
    ARCHITECTURES[name] = sae_class
    return sae_class


for _cls in (JumpReLUSae, ReLUSae, GatedSae, TopKSae, BatchTopKSae, MutualChoiceSae, FeatureChoiceSae, MatryoshkaSae):
    register_architecture(_cls)


def get_architecture(name: str) -> type[SparseAutoencoder]:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise InvalidInput(f"unknown SAE architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}") from None


def create_sae(architecture: str, d_in: int, d_sae: int, **options: Any) -> SparseAutoencoder:
    """Build a freshly initialised SAE module (inference fields only; training settings go to ``create_job``).

    Example:
        >>> sae = create_sae("jumprelu", d_in=64, d_sae=512)
        >>> sae.W_enc.shape, sae.W_dec.shape
        (torch.Size([64, 512]), torch.Size([512, 64]))
    """
    sae_class = get_architecture(architecture)
    known = sae_class.config_class.field_names()
    misplaced = sorted(set(options) - known)
    if misplaced:
        raise InvalidInput(
            f"create_sae({architecture!r}): {misplaced} are not {architecture} SAE fields (those are {sorted(known)}); "
            "training settings such as target_l0, lr or the sparsity coefficient go to saescope.create_job"
        )
    return sae_class(sae_class.config_class.from_dict({"d_in": d_in, "d_sae": d_sae, **options}))


__all__ = [
    "ARCHITECTURES",
    "BatchTopKConfig",
    "BatchTopKSae",
    "FeatureChoiceConfig",
    "FeatureChoiceSae",
    "FeatureCode",
    "GatedConfig",
    "GatedSae",
    "JumpReLUConfig",
    "JumpReLUSae",
    "MatryoshkaConfig",
    "MatryoshkaSae",
    "MutualChoiceSae",
    "ReLUConfig",
    "ReLUSae",
    "SaeConfig",
    "SparseAutoencoder",
    "TopKConfig",
    "TopKSae",
    "create_sae",
    "get_architecture",
    "register_architecture",
    "unit_norm_rows",
]
