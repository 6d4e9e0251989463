"""Train SAEs on a language model's activations and measure them, end to end.

``train_on_model`` loads the model, streams its activations at every requested hookpoint into one
``Trainer`` (one forward feeds every SAE), then evaluates each SAE on held-out text: L0, FVU, dead
and dense fractions on harvested activations, and ΔLM loss, loss recovered and KL by splicing. Each
SAE is written to ``OUT/<hookpoint>/<arch>-w<width>-<sparsity>/`` with ``cfg.json``,
``sae_weights.safetensors`` and ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saescope.checkpoint import save_sae
from saescope.data.text import check_dataset
from saescope.data.tokens import TextContexts, special_token_ids, trainable_mask
from saescope.errors import InvalidInput
from saescope.jobs import SaeJob, create_job, sets_k
from saescope.lm.capture import capture, masked_collector
from saescope.lm.hookpoints import Hookpoint, resolve_hookpoints
from saescope.lm.models import LoadedModel, load_model
from saescope.lm.splice_eval import splice_evaluate
from saescope.lm.stream import ModelActivationSource
from saescope.metrics import evaluate_sae
from saescope.saes import ARCHITECTURES, SparseAutoencoder
from saescope.training import TrainConfig, Trainer

logger = logging.getLogger("saescope")


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

    def build(self, d_in: int, hookpoint: str, model_id: str, name: str) -> SaeJob:
        width = self.resolved_width(d_in)
        options = dict(self.options)
        if self.target_l0 is not None:
            options.setdefault("target_l0", self.target_l0)  # TopK/BatchTopK take k = round(target_l0)
        return create_job(self.architecture, d_in, width, name=name, reads=hookpoint, model_id=model_id, **options)


@dataclass
class LmDataConfig:
    dataset: str = "pydocs"
    text_field: str = "text"
    split: str = "train"
    context_size: int = 128
    batch_contexts: int = 16
    """Contexts per LM forward."""
    shuffle_buffer_tokens: int = 65_536
    eval_fraction: float = 0.05
    """Share of documents held out (by a hash of their text) for evaluation."""
    eval_tokens: int = 16_384
    """Held-out tokens for the in-model evaluation (0 skips it)."""
    exclude_special: bool = True


def held_out_contexts(loaded: LoadedModel, data: LmDataConfig, n_tokens: int) -> Tensor:
    """Up to ``n_tokens`` tokens of held-out contexts, in corpus order."""
    contexts = TextContexts(
        data.dataset, loaded.tokenizer, data.context_size, part="eval", eval_fraction=data.eval_fraction,
        text_field=data.text_field, split=data.split,
    )
    needed = max(1, -(-n_tokens // data.context_size))
    chosen = []
    for batch in contexts.iter_batches(needed, shuffle=False):
        chosen.append(batch)
        break
    return torch.cat(chosen)[:needed]


def harvest(loaded: LoadedModel, points: list[Hookpoint], contexts: Tensor, excluded_ids: list[int], batch_contexts: int = 16) -> dict[str, Tensor]:
    """Activations of ordinary tokens at each hookpoint, ``{name: [n_tokens, d]}`` on the CPU."""
    found: dict[str, list[Tensor]] = {p.name: [] for p in points}
    device = loaded.device
    for start in range(0, contexts.shape[0], batch_contexts):
        input_ids = contexts[start : start + batch_contexts].to(device)
        mask = trainable_mask(input_ids, excluded_ids).reshape(-1)
        capture(loaded.model, points, masked_collector(found, mask), input_ids)
    return {name: torch.cat(parts).float() for name, parts in found.items()}


def evaluate_on_model(
    loaded: LoadedModel,
    saes: dict[str, SparseAutoencoder],
    data: LmDataConfig,
    progress: bool = True,
    description_length: bool = True,
) -> dict[str, dict[str, Any]]:
    """Held-out metrics for SAEs that take raw activations, each at ``sae.cfg.hookpoint``."""
    if not saes:
        return {}
    points = {p.name: p for p in resolve_hookpoints(loaded.model, sorted({s.cfg.hookpoint for s in saes.values()}))}
    excluded = special_token_ids(loaded.tokenizer)
    contexts = held_out_contexts(loaded, data, data.eval_tokens)
    activations = harvest(loaded, list(points.values()), contexts, excluded, data.batch_contexts)
    device = loaded.device
    results: dict[str, dict[str, Any]] = {}
    for name, sae in saes.items():
        sae.to(device).eval()
        metrics = evaluate_sae(sae, activations[sae.cfg.hookpoint], description_length=description_length, device=device)
        results[name] = {**metrics.to_dict(), "eval_tokens": metrics.n_tokens}
    spliced = splice_evaluate(
        loaded.model, {name: (points[sae.cfg.hookpoint], sae) for name, sae in saes.items()}, contexts, excluded,
        batch_contexts=max(1, data.batch_contexts // 2), progress=progress,
    )
    for name, values in spliced.items():
        results[name].update(values.to_dict())
    return results


def train_on_model(
    model: str | LoadedModel | None,
    hookpoints: str | list[str],
    specs: list[SaeSpec],
    train: TrainConfig,
    data: LmDataConfig | None = None,
    out_dir: str | None = None,
    resume: bool = False,
    device: str | None = None,
    dtype: str | None = None,
    seed: int = 0,
    cache: str | None = None,
) -> dict[str, tuple[SparseAutoencoder, dict[str, Any]]]:
    """Train every spec at every hookpoint from one pass over the model; evaluate; save.

    With ``cache`` (a folder written by ``saescope cache``) the activations come from disk instead;
    the model named in its manifest (or ``model``) is loaded only for the held-out evaluation, on the
    cache's dataset and context size. Returns ``{"<hookpoint>/<folder>": (sae, metrics)}``.
    """
    data = data or LmDataConfig()
    if not specs:
        raise InvalidInput("no SAEs to train: give at least one architecture")
    if cache is not None:
        source, widths, model_id = _cache_source(cache, hookpoints, data)
        needs_model = data.eval_tokens > 0
        model = model if model is not None else model_id
    else:
        needs_model = True
    if model is None:
        raise InvalidInput("give a model (or a cache, whose manifest names its model)")
    check_dataset(data.dataset)
    loaded = None
    if needs_model:
        loaded = model if isinstance(model, LoadedModel) else load_model(model, device=device or train.device, dtype=dtype)
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
        )
        widths = dict(source.d_in)
    torch.manual_seed(seed)
    jobs: dict[str, SaeJob] = {}
    for hookpoint, d_in in widths.items():
        for spec in specs:
            key = f"{hookpoint}/{spec.folder_name(d_in)}"
            if key in jobs:
                raise InvalidInput(f"two SAEs would share the folder {key}; give them different widths or target L0s")
            jobs[key] = spec.build(d_in, hookpoint, model_id, key)
    if out_dir is not None and train.checkpoint_every and not train.checkpoint_dir:
        train.checkpoint_dir = str(Path(out_dir) / "checkpoint")
    trained = Trainer(list(jobs.values()), train).fit(source, resume=resume)
    metrics = evaluate_on_model(loaded, trained, data, progress=train.progress) if loaded is not None and data.eval_tokens > 0 else {name: {} for name in trained}
    for name, sae in trained.items():
        metrics[name]["training"] = sae.training_summary
        if out_dir is not None:
            folder = Path(out_dir) / name
            save_sae(sae, folder, context_size=data.context_size, dataset=data.dataset)
            (folder / "metrics.json").write_text(json.dumps(_metrics_for_file(metrics[name]), indent=2) + "\n")
    return {name: (trained[name], metrics[name]) for name in trained}


def _cache_source(path: str, hookpoints: str | list[str], data: LmDataConfig) -> tuple[Any, dict[str, int], str]:
    """A cache reader over the requested hookpoints (names or globs); aligns ``data`` with the cache."""
    import fnmatch

    from saescope.data.cache import CachedActivations, read_manifest
    from saescope.lm.hookpoints import canonical_name

    manifest = read_manifest(path)
    available = list(manifest["hookpoints"])
    requested = [hookpoints] if isinstance(hookpoints, str) else list(hookpoints or available)
    chosen: list[str] = []
    for raw in requested:
        matches = [h for h in available if fnmatch.fnmatchcase(h, canonical_name(raw))]
        if not matches:
            raise InvalidInput(f"{path}: no hookpoint {raw!r} in this cache; it holds {available}")
        chosen += [m for m in matches if m not in chosen]
    data.dataset = manifest.get("dataset", data.dataset)
    data.context_size = int(manifest.get("context_size", data.context_size))
    source = CachedActivations(path, chosen, as_dict=True)  # batches routed by hookpoint
    return source, dict(source.d_in), manifest.get("model", "unknown")


def _metrics_for_file(values: dict[str, Any]) -> dict[str, Any]:
    order = ["l0", "fvu", "delta_lm_loss", "loss_recovered", "kl", "dead_fraction", "dense_fraction", "clean_loss", "spliced_loss", "zero_ablation_loss"]
    ordered = {k: values[k] for k in order if k in values}
    ordered.update({k: v for k, v in values.items() if k not in ordered})
    return ordered
