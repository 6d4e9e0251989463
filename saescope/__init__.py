"""saescope: train, measure, interpret and steer sparse autoencoders on model activations.

``import saescope`` stays light: torch, numpy and safetensors only. Anything heavier (transformers,
datasets, plotting, a web server) is imported inside the function that needs it.
"""

from __future__ import annotations

from saescope._version import __version__
from saescope.evaluation.metrics import SaeMetrics, evaluate_sae
from saescope.io.checkpoint import save_sae as save
from saescope.io.interop.loading import load_sae as load
from saescope.jobs import ReadSpec, SaeJob, create_job
from saescope.objectives import OBJECTIVES, Objective, StepContext, register_objective
from saescope.saes import (
    ARCHITECTURES,
    FeatureCode,
    SparseAutoencoder,
    create_sae,
    register_architecture,
)
from saescope.training import TrainConfig, Trainer, train_saes

# Language-model entry points, imported on first use so that `import saescope` stays light.
_LAZY = {
    "load_model": "saescope.lm.models",
    "LoadedModel": "saescope.lm.models",
    "resolve_hookpoints": "saescope.lm.hookpoints",
    "train_on_model": "saescope.training.on_model",
    "evaluate_on_model": "saescope.evaluation.on_model",
    "SaeSpec": "saescope.training.on_model",
    "LmDataConfig": "saescope.data.lm_config",
    "ModelActivationSource": "saescope.lm.stream",
    "TextContexts": "saescope.data.tokens",
    "write_cache": "saescope.lm.harvest",
    "CachedActivations": "saescope.data.cache",
    "splice_evaluate": "saescope.evaluation.splice",
    "SuiteConfig": "saescope.suite",
    "RunPlan": "saescope.plan",
    "train": "saescope.suite",
    "train_suite": "saescope.suite",
    "evaluate_suite": "saescope.suite",
    "describe": "saescope.suite",
    "export_saelens": "saescope.io.interop",
    "calibrate_threshold": "saescope.evaluation.calibrate",
    "measure_description_length": "saescope.evaluation.description_length",
    "DescriptionLength": "saescope.evaluation.description_length",
    "select_saes": "saescope.evaluation.selection",
    "select": "saescope.suite.select",
}


def evaluate(path: str, **options: object) -> list:
    """Measure every SAE of the suite at ``path`` (see ``saescope.suite.evaluate_suite``)."""
    from saescope.suite import evaluate_suite

    return evaluate_suite(path, **options)  # type: ignore[arg-type]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'saescope' has no attribute {name!r}")


__all__ = [
    "ARCHITECTURES",
    "OBJECTIVES",
    "FeatureCode",
    "Objective",
    "ReadSpec",
    "SaeJob",
    "SaeMetrics",
    "SparseAutoencoder",
    "StepContext",
    "TrainConfig",
    "Trainer",
    "__version__",
    "create_job",
    "create_sae",
    "evaluate",
    "evaluate_sae",
    "load",
    "register_architecture",
    "register_objective",
    "save",
    "train_saes",
]

__all__ += list(_LAZY)
