"""Measure SAEs inside their model on held-out text: L0, FVU, dead/dense and DL on harvested activations,
then ΔLM loss, loss recovered and KL by splicing each SAE's reconstruction into the forward pass."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from saescope.data.lm_config import LmDataConfig
from saescope.data.tokens import TextContexts, special_token_ids
from saescope.evaluation.metrics import evaluate_sae
from saescope.evaluation.splice import splice_evaluate
from saescope.lm.harvest import harvest
from saescope.lm.hookpoints import resolve_hookpoints
from saescope.lm.models import LoadedModel
from saescope.saes import SparseAutoencoder

METRICS_ORDER = ("l0", "fvu", "delta_lm_loss", "loss_recovered", "kl", "dead_fraction", "dense_fraction", "clean_loss", "spliced_loss",
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
    """Held-out metrics over about ``eval_tokens`` tokens for SAEs that take raw activations, each at ``sae.cfg.hookpoint``."""
    if not saes:
        return {}
    points = {p.name: p for p in resolve_hookpoints(loaded.model, sorted({s.cfg.hookpoint for s in saes.values()}))}
    excluded = special_token_ids(loaded.tokenizer)
    contexts = held_out_contexts(loaded, data, eval_tokens)
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


def ordered_metrics(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the headline metrics first, as written to metrics.json."""
    ordered = {k: values[k] for k in METRICS_ORDER if k in values}
    ordered.update({k: v for k, v in values.items() if k not in ordered})
    return ordered
