"""Measure SAEs inside their model on held-out text: L0, FVU, dead/dense and DL on harvested activations,
then ΔLM loss, loss recovered and KL by splicing each SAE's reconstruction into the forward pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saescope.data.lm_config import LmDataConfig
from saescope.data.tokens import TextContexts, special_token_ids
from saescope.errors import InvalidInput
from saescope.evaluation.description_length import (
    mean_record,
    measure_description_length,
)
from saescope.evaluation.metrics import evaluate_sae, training_dead
from saescope.evaluation.multilayer import LAYER_SPREAD_FILE, LayerSpread, layer_spread
from saescope.evaluation.splice import splice_evaluate
from saescope.io.atomic import atomic_write_json
from saescope.lm.harvest import harvest
from saescope.lm.hookpoints import resolve_hookpoints
from saescope.lm.models import LoadedModel
from saescope.saes import SparseAutoencoder
from saescope.saes.stacked import is_stacked, per_hookpoint, stacked_hookpoints

METRICS_ORDER = ("l0", "fvu", "delta_lm_loss", "loss_recovered", "kl", "dead_fraction", "dead_window_tokens", "unfired_fraction", "dense_fraction", "clean_loss", "spliced_loss",
                 "zero_ablation_loss")


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


def evaluate_on_model(
    loaded: LoadedModel,
    saes: dict[str, SparseAutoencoder],
    data: LmDataConfig,
    eval_tokens: int,
    progress: bool = True,
    description_length: bool = True,
) -> dict[str, dict[str, Any]]:
    """Held-out metrics over about ``eval_tokens`` tokens for SAEs that take raw activations.

    A single-hookpoint SAE is measured at ``sae.cfg.hookpoint``. A stacked (multi-layer) SAE is
    measured at each of its hookpoints in turn (its reconstruction spliced at that layer only):
    its metrics are the means over layers, ``layers`` holds each layer's, and ``layer_spread`` the
    analysis of how its latents spread over layers (``saescope.evaluation.multilayer``).
    """
    if not saes:
        return {}
    single = single_hookpoint_views(saes)
    points, contexts, excluded, activations = _held_out_activations(loaded, single, data, eval_tokens)
    device = loaded.device
    results: dict[str, dict[str, Any]] = {}
    for name, sae in single.items():
        sae.to(device).eval()
        metrics = evaluate_sae(sae, sae_activations(sae, activations), description_length=description_length, device=device)
        results[name] = {**metrics.to_dict(), "eval_tokens": metrics.n_tokens}
    spliced = splice_evaluate(loaded.model, {name: splice_sites(sae, points) for name, sae in single.items()}, contexts, excluded,
                              batch_contexts=max(1, data.batch_contexts // 2), progress=progress)
    for name, values in spliced.items():
        results[name].update(values.to_dict())
    for name, sae in saes.items():
        if is_stacked(sae):
            layers = {h: results.pop(layer_key(name, h)) for h in stacked_hookpoints(sae)}
            spread = layer_spread(sae, activations, device)
            results[name] = {
                "description_length": None,  # kept when every layer has one (mean_over_layers)
                **mean_over_layers(layers),
                "mdl": mean_record([m.get("mdl") for m in layers.values()]),
                # a latent of a multi-layer SAE is unfired only if it fires at no layer
                "unfired_fraction": sum(v is None for v in spread.mean_layer) / sae.d_sae,
                **training_dead(sae),
                "layers": layers,
                "layer_spread": spread.to_dict(),
            }
    return results


def sae_activations(sae: SparseAutoencoder, activations: dict[str, Tensor]) -> Tensor | dict[str, Tensor]:
    """What ``evaluate_sae`` measures ``sae`` on: its hookpoint's rows, or a transcoder's input and target rows."""
    if sae.cfg.target is None:
        return activations[sae.cfg.hookpoint]
    return {sae.cfg.hookpoint: activations[sae.cfg.hookpoint], sae.cfg.target: activations[sae.cfg.target]}


def splice_sites(sae: SparseAutoencoder, points: dict[str, Any]) -> tuple[Any, SparseAutoencoder] | tuple[Any, SparseAutoencoder, Any]:
    """``(site replaced, sae)`` for ``splice_evaluate``; a transcoder replaces its target from its input: ``(target, sae, input)``."""
    if sae.cfg.target is None:
        return points[sae.cfg.hookpoint], sae
    return points[sae.cfg.target], sae, points[sae.cfg.hookpoint]


def sites_read(saes: dict[str, SparseAutoencoder]) -> list[str]:
    """Every site the SAEs read or write, sorted."""
    return sorted({s.cfg.hookpoint for s in saes.values()} | {s.cfg.target for s in saes.values() if s.cfg.target})


def single_hookpoint_views(saes: dict[str, SparseAutoencoder]) -> dict[str, SparseAutoencoder]:
    """Every SAE as single-hookpoint SAEs: a stacked SAE becomes one view per layer, named ``layer_key(name, hookpoint)``."""
    single: dict[str, SparseAutoencoder] = {}
    for name, sae in saes.items():
        single.update({layer_key(name, h): view for h, view in per_hookpoint(sae).items()} if is_stacked(sae) else {name: sae})
    missing = sorted(name for name, sae in single.items() if not sae.cfg.hookpoint)
    if missing:
        raise InvalidInput(f"SAE(s) {missing} record no hookpoint; set sae.cfg.hookpoint to the site they read")
    return single


def _held_out_activations(loaded: LoadedModel, single: dict[str, SparseAutoencoder], data: LmDataConfig,
                          eval_tokens: int) -> tuple[dict[str, Any], Tensor, Any, dict[str, Tensor]]:
    """(hookpoints by name, held-out contexts, excluded token ids, activations by hookpoint) for the SAEs' sites."""
    points = {p.name: p for p in resolve_hookpoints(loaded.model, sites_read(single))}
    excluded = special_token_ids(loaded.tokenizer)
    contexts = held_out_contexts(loaded, data, eval_tokens)
    return points, contexts, excluded, harvest(loaded, list(points.values()), contexts, excluded, data.batch_contexts)


@torch.no_grad()
def description_length_on_model(
    loaded: LoadedModel, saes: dict[str, SparseAutoencoder], data: LmDataConfig, eval_tokens: int,
) -> dict[str, dict[str, Any]]:
    """Only the description-length fields (``description_length``, ``description_length_bins``, ``mdl``)
    on the same held-out tokens ``evaluate_on_model`` uses: one harvest, no splicing, so it costs a
    fraction of a full evaluation. For suites measured before the tables were kept."""
    single = single_hookpoint_views(saes)
    _points, _contexts, _excluded, activations = _held_out_activations(loaded, single, data, eval_tokens)
    measured = {key: measure_description_length(view.to(loaded.device).eval(), sae_activations(view, activations), device=loaded.device).to_dict()
                for key, view in single.items()}
    results: dict[str, dict[str, Any]] = {}
    for name, sae in saes.items():
        records = [measured[layer_key(name, h)] for h in stacked_hookpoints(sae)] if is_stacked(sae) else [measured[name]]
        record = records[0] if len(records) == 1 else mean_record(records)
        results[name] = {"description_length": record["bits"] if record else None,
                         "description_length_bins": record["bins"] if record else None, "mdl": record}
    return results


def layer_key(name: str, hookpoint: str) -> str:
    """The name one layer of a stacked SAE is measured under."""
    return f"{name}@{hookpoint}"


def mean_over_layers(layers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each numeric metric's mean over a stacked SAE's layers (token counts are the per-layer count)."""
    first = next(iter(layers.values()))
    means: dict[str, Any] = {}
    for key, value in first.items():
        values = [m.get(key) for m in layers.values()]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            means[key] = value if key in ("n_tokens", "eval_tokens", "d_sae") else sum(values) / len(values)
    return means


def save_metrics(folder: str | Path, values: dict[str, Any]) -> None:
    """Write ``metrics.json`` (headline metrics first); a multi-layer SAE's per-latent layer arrays go to ``layer_spread.json``."""
    folder = Path(folder)
    if _has_full_spread(values):
        atomic_write_json(folder / LAYER_SPREAD_FILE, values["layer_spread"])
    atomic_write_json(folder / "metrics.json", ordered_metrics(_summarised(values)), indent=2)


def index_metrics(values: dict[str, Any]) -> dict[str, Any]:
    """The scalars a suite index keeps of an SAE's metrics (no histograms, per-layer tables or per-latent arrays)."""
    return _summarised({k: v for k, v in values.items() if k not in ("density_histogram", "training", "layers", "feature_density")})


def _has_full_spread(values: dict[str, Any]) -> bool:
    spread = values.get("layer_spread")
    return isinstance(spread, dict) and "mass" in spread


def _summarised(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with a full ``LayerSpread`` replaced by its summary."""
    return {**values, "layer_spread": LayerSpread(**values["layer_spread"]).summary()} if _has_full_spread(values) else values


def ordered_metrics(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the headline metrics first, as written to metrics.json."""
    ordered = {k: values[k] for k in METRICS_ORDER if k in values}
    ordered.update({k: v for k, v in values.items() if k not in ordered})
    return ordered
