"""Training objectives, registered by name: how an SAE learns (loss, optimiser defaults, normalisation, λ or k).

Adding one means writing one file with an ``Objective`` subclass (a dataclass of its settings) and
calling ``register_objective``; ``saescope.create_job(..., objective="name")`` then trains with it.
"""

from __future__ import annotations

from saescope.errors import InvalidInput
from saescope.objectives.base import (
    OPTIMIZER_NAMES,
    LossOutput,
    Objective,
    StepContext,
    loss_output,
    squared_error,
)
from saescope.objectives.batchtopk import BatchTopKObjective, MutualChoiceObjective
from saescope.objectives.feature_choice import FeatureChoiceObjective
from saescope.objectives.gated import GatedObjective
from saescope.objectives.jumprelu import JumpReLUObjective, JumpReLUTanhObjective
from saescope.objectives.matryoshka import MatryoshkaObjective
from saescope.objectives.relu import ReLUObjective
from saescope.objectives.topk import TopKObjective

OBJECTIVES: dict[str, type[Objective]] = {}


def register_objective(objective_class: type[Objective]) -> type[Objective]:
    """Make ``objective_class`` available by its ``name`` (usable as a class decorator)."""
    if not objective_class.name:
        raise InvalidInput(f"{objective_class.__name__} has no `name`")
    if not objective_class.architectures:
        raise InvalidInput(f"{objective_class.__name__} lists no `architectures` it can train")
    OBJECTIVES[objective_class.name] = objective_class
    return objective_class


for _cls in (JumpReLUObjective, JumpReLUTanhObjective, ReLUObjective, GatedObjective, TopKObjective, BatchTopKObjective,
             MutualChoiceObjective, FeatureChoiceObjective, MatryoshkaObjective):
    register_objective(_cls)


def get_objective(name: str) -> type[Objective]:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise InvalidInput(f"unknown objective {name!r}; known: {', '.join(sorted(OBJECTIVES))}") from None


def recipe_field_names() -> set[str]:
    """Every setting any registered objective has (what a checkpoint records as training provenance)."""
    return set().union(*(cls.field_names() for cls in OBJECTIVES.values()))


__all__ = [
    "OBJECTIVES",
    "OPTIMIZER_NAMES",
    "LossOutput",
    "Objective",
    "StepContext",
    "get_objective",
    "loss_output",
    "recipe_field_names",
    "register_objective",
    "squared_error",
]
