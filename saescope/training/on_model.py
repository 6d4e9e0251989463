"""Train SAEs on a language model's activations, end to end.

``train_on_model`` streams the model's activations at every requested hookpoint into one ``Trainer``
(one forward feeds every SAE), or reads them from an activation cache, then evaluates each SAE on
held-out text and writes it to ``OUT/<hookpoint>/<arch>-w<width>-<sparsity>/`` with ``cfg.json``,
``sae_weights.safetensors`` and ``metrics.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from saescope.data.lm_config import LmDataConfig
from saescope.data.text import check_dataset
from saescope.data.tokens import TextContexts
from saescope.errors import InvalidInput
from saescope.evaluation.on_model import evaluate_on_model, save_metrics
from saescope.io.checkpoint import save_sae
from saescope.io.suite_index import layer_and_site
from saescope.jobs import ReadSpec, SaeJob, sets_k
from saescope.lm.cache_source import cache_source
from saescope.lm.hookpoints import select_hookpoints
from saescope.lm.models import LoadedModel, load_model
from saescope.lm.stream import ModelActivationSource
from saescope.plan import EvaluationPlan
from saescope.plan_jobs import MULTILAYER_FOLDER, RUN_HOOKPOINTS, PlannedJob, stacked_width
from saescope.saes import ARCHITECTURES, SparseAutoencoder
from saescope.training.config import TrainConfig
from saescope.training.end_to_end import EndToEndConfig, finetune_suite
from saescope.training.trainer import Trainer


@dataclass
class SaeSpec:
    """One SAE to train at every requested hookpoint."""

    architecture: str = "jumprelu"
    width: int | None = None
    """Latents; None: expansion × d_in."""
    expansion: float = 8
    target_l0: float | None = None
    """Target L0 (k for topk/batchtopk)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Extra SAE or training fields (e.g. objective="jumprelu_tanh", aux_k=64, threshold_param="log")."""
    stacked: bool = False
    """One SAE over every hookpoint (a multi-layer SAE, saved under ``multilayer/``) instead of one per hookpoint."""
    hookpoints: list[str] | None = None
    """Per-hookpoint specs: only these of the run's hookpoints (names or globs). None: all of them."""

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise InvalidInput(f"unknown architecture {self.architecture!r}; choose from {sorted(ARCHITECTURES)}")
        if self.width is not None and self.width <= 0:
            raise InvalidInput(f"width must be a positive integer, got {self.width}")
        if sets_k(self.architecture, self.options.get("objective")) and self.target_l0 is None and "k" not in self.options:
            raise InvalidInput(f"{self.architecture} needs a target L0 (its k)")

    def resolved_width(self, d_in: int) -> int:
        return self.width or max(1, int(round(self.expansion * d_in)))

    def folder_name(self, d_in: int) -> str:
        width = self.resolved_width(d_in)
        sparsity = f"l0_{self.target_l0:g}" if self.target_l0 is not None else "fixed"
        return f"{self.architecture}-w{width}-{sparsity}"

    def planned(self, widths: dict[str, int]) -> list[PlannedJob]:
        """This spec at the run's hookpoints ({hookpoint: d_in}), as the jobs a plan compiles to (``saescope.plan_jobs``)."""
        if self.stacked:
            d_in = stacked_width(widths)
            name = f"{MULTILAYER_FOLDER}/{self.folder_name(d_in)}"
            return [self._planned(name, MULTILAYER_FOLDER, -1, ReadSpec(tuple(widths)), d_in)]
        chosen = widths if self.hookpoints is None else {h: widths[h] for h in select_hookpoints(self.hookpoints, list(widths), RUN_HOOKPOINTS)}
        return [self._planned(f"{h}/{self.folder_name(d_in)}", h, layer_and_site(h)[0], ReadSpec((h,)), d_in) for h, d_in in chosen.items()]

    def _planned(self, name: str, hookpoint: str, layer: int, reads: ReadSpec, d_in: int) -> PlannedJob:
        return PlannedJob(name, hookpoint, layer, "sae", self.architecture, d_in, self.resolved_width(d_in), self.target_l0, reads,
                          options=dict(self.options))

    def jobs(self, widths: dict[str, int], model_id: str) -> dict[str, SaeJob]:
        """This spec's jobs at the run's hookpoints ({hookpoint: d_in}), keyed by their folder under OUT."""
        return {planned.name: planned.build(model_id) for planned in self.planned(widths)}


def train_on_model(
    model: str | LoadedModel | None,
    hookpoints: str | list[str],
    specs: list[SaeSpec] | list[PlannedJob],
    train: TrainConfig,
    data: LmDataConfig | None = None,
    out_dir: str | None = None,
    resume: bool = False,
    dtype: str | None = None,
    cache: str | None = None,
    eval_tokens: int = EvaluationPlan.eval_tokens,
    end_to_end: EndToEndConfig | None = None,
) -> dict[str, tuple[SparseAutoencoder, dict[str, Any]]]:
    """Train every spec at every hookpoint (or every planned job) from one pass over the model; evaluate; save.

    ``hookpoints`` are every site the run harvests: with planned transcoders, their inputs (``mlp_in``) too.

    With ``cache`` (a folder written by ``saescope cache``) the activations come from disk instead;
    the model named in its manifest (or ``model``) is loaded only for the held-out evaluation, on the
    cache's dataset and context size. Returns ``{"<hookpoint>/<folder>": (sae, metrics)}``.
    """
    data = data or LmDataConfig()
    if not specs:
        raise InvalidInput("no SAEs to train: give at least one architecture")
    if cache is not None:
        source, widths, manifest = cache_source(cache, hookpoints)
        # Evaluate on the text the cache was harvested from (a copy: the caller's config is left alone).
        data = replace(data, dataset=manifest.get("dataset", data.dataset), context_size=int(manifest.get("context_size", data.context_size)))
        model_id = manifest.get("model", "unknown")
        needs_model = eval_tokens > 0 or end_to_end is not None
        model = model if model is not None else model_id
    else:
        needs_model = True
    if model is None:
        raise InvalidInput("give a model (or a cache, whose manifest names its model)")
    check_dataset(data.dataset)
    loaded = None
    if needs_model:
        loaded = model if isinstance(model, LoadedModel) else load_model(model, device=train.device, dtype=dtype)
        model_id = loaded.model_id
    if cache is None:
        assert loaded is not None
        contexts = TextContexts(
            data.dataset, loaded.tokenizer, data.context_size, part="train", eval_fraction=data.eval_fraction,
            text_field=data.text_field, split=data.split,
        )
        source = ModelActivationSource(
            loaded, contexts, hookpoints, batch_contexts=data.batch_contexts,
            shuffle_buffer_tokens=data.shuffle_buffer_tokens, exclude_special=data.exclude_special,
            outlier_norm_ratio=data.outlier_norm_ratio, autocast=data.harvest_autocast,
        )
        widths = dict(source.d_in)
    torch.manual_seed(train.seed)  # SAE initialisation
    jobs: dict[str, SaeJob] = {}
    for spec in specs:
        for key, job in spec.jobs(widths, model_id).items():
            if key in jobs:
                raise InvalidInput(f"two SAEs would share the folder {key}; give them different widths or target L0s")
            jobs[key] = job
    if out_dir is not None and train.checkpoint_every and not train.checkpoint_dir:
        train = replace(train, checkpoint_dir=str(Path(out_dir) / "checkpoint"))
    trained = Trainer(list(jobs.values()), train).fit(source, resume=resume)
    if end_to_end is not None and loaded is not None:
        finetune_suite(trained, loaded, data, end_to_end, progress=train.progress)
    if loaded is not None and eval_tokens > 0:
        metrics = evaluate_on_model(loaded, trained, data, eval_tokens, progress=train.progress)
    else:
        metrics = {name: {} for name in trained}
    for name, sae in trained.items():
        metrics[name]["training"] = sae.training_summary
        if out_dir is not None:
            folder = Path(out_dir) / name
            save_sae(sae, folder, context_size=data.context_size, dataset=data.dataset)
            save_metrics(folder, metrics[name])
    return {name: (trained[name], metrics[name]) for name in trained}
