"""``saescope interpret SUITE``: feature pages' data for every SAE of a suite, from one pass over the text.

One LM forward per batch of contexts serves every SAE (all hookpoints captured together, the forward
stopping after the deepest), each SAE encodes its hookpoint's activations once, and a
``FeatureCollector`` per SAE updates all of its features at once. Afterwards the decoder directions
give logit effects and similar features (within the SAE, and in the SAEs of the adjacent layers at
the same site with the same architecture and width). Results go to ``<sae>/interpret/`` (see
``saescope.interpret.store``).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from saescope.errors import InvalidInput
from saescope.interpret.collect import FeatureCollector
from saescope.interpret.directions import (
    logit_effects,
    residual_directions,
    similar_features,
)
from saescope.interpret.store import write_interpretation
from saescope.plan import RunPlan
from saescope.saes.stacked import read_multipliers

logger = logging.getLogger("saescope")


def interpret_suite(
    path: str | Path,
    tokens: int = 100_000,
    top_k: int = 20,
    window: int = 12,
    n_samples: int = 24,
    batch_contexts: int = 16,
    device: str | None = None,
    progress: bool = True,
    seed: int = 0,
    loaded: Any = None,
) -> dict[str, Any]:
    """Interpret every SAE of the suite at ``path`` over about ``tokens`` tokens; returns a summary."""
    from saescope.data.tokens import TextContexts, special_token_ids, trainable_mask
    from saescope.io.checkpoint import load
    from saescope.io.suite_index import read_index
    from saescope.lm.capture import capture
    from saescope.lm.hookpoints import resolve_hookpoints
    from saescope.lm.models import load_model

    folder = Path(path)
    index = read_index(folder)
    if index.get("status") != "complete":
        raise InvalidInput(f"{folder}: the suite is not complete; finish training before interpreting it")
    if tokens <= 0:
        raise InvalidInput(f"tokens must be positive, got {tokens}")
    plan = RunPlan.stored(index, folder)
    if loaded is None:
        loaded = load_model(plan.model.model or index["model"], device=device or plan.model.device, dtype=plan.model.dtype)
    device_ = loaded.device
    entries = index["saes"]
    saes = {e["path"]: load(str(folder / e["path"])).to(device_).eval() for e in entries}
    # a transcoder's entry names the site it writes (mlp_out); it reads its own input site (mlp_in)
    reads = {e["path"]: read_multipliers(saes[e["path"]], saes[e["path"]].cfg.hookpoint if saes[e["path"]].cfg.target else e["hookpoint"])
             for e in entries}
    targets = {e["path"]: saes[e["path"]].cfg.target for e in entries if saes[e["path"]].cfg.target}  # transcoders: the site they write
    points = {p.name: p for p in resolve_hookpoints(loaded.model, sorted({h for pairs in reads.values() for h, _m in pairs} | set(targets.values())))}
    collectors = {p: FeatureCollector(sae.d_sae, top_k, n_samples, window, device=device_, seed=seed, n_layers=len(reads[p]))
                  for p, sae in saes.items()}
    # hookpoint -> [(sae path, layer index, input multiplier)]: a multi-layer SAE reads each of its layers in its common units
    by_hookpoint: dict[str, list[tuple[str, int, float]]] = {}
    for path, pairs in reads.items():
        for layer, (hookpoint, multiplier) in enumerate(pairs):
            by_hookpoint.setdefault(hookpoint, []).append((path, layer, multiplier))

    coactivations = _expert_coactivations(loaded.model, entries, saes, reads, points, device_)
    chosen: dict[int, torch.Tensor] = {}
    context_size = plan.data.context_size
    text = TextContexts(index.get("dataset") or plan.data.dataset, loaded.tokenizer, context_size,
                        part="train", text_field=plan.data.text_field, split=plan.data.split)
    excluded = special_token_ids(loaded.tokenizer)
    n_batches = max(1, -(-tokens // (batch_contexts * context_size)))
    started = time.perf_counter()
    bar = _progress(n_batches, progress)
    tokens_seen = 0
    with torch.no_grad():
        for batch_number, input_ids in enumerate(text.iter_batches(batch_contexts, seed=seed, shuffle=True)):
            if batch_number >= n_batches:
                break
            input_ids = input_ids.to(device_)
            mask = trainable_mask(input_ids, excluded)
            tokens_seen += input_ids.numel()

            def consume(point, activation, input_ids=input_ids, mask=mask):
                flat = activation.reshape(-1, activation.shape[-1]).float()
                for sae_path, layer, multiplier in by_hookpoint[point.name]:
                    code = saes[sae_path].encode_code(flat * multiplier if multiplier != 1.0 else flat)
                    collectors[sae_path].update(code, input_ids, mask, layer=layer)
                    if sae_path in coactivations:
                        coactivations[sae_path].features(code.dense()[mask.reshape(-1)] > 0)

            chosen.clear()
            with _routers_recorded(loaded.model, coactivations, chosen):
                # the routers one layer past the deepest hookpoint must run too: no early stop in an MoE model
                capture(loaded.model, list(points.values()), consume, input_ids, stop_early=not coactivations)
            for coactivation in coactivations.values():
                coactivation.experts(chosen, mask.reshape(-1))
            bar.update(1)
    bar.close()
    harvest_seconds = time.perf_counter() - started

    written = {}
    vocab_cache: dict[int, str] = {}
    for entry in entries:
        sae_path = entry["path"]
        sae = saes[sae_path]
        stats = collectors[sae_path].finish()
        hookpoints = [h for h, _m in reads[sae_path]]
        # where the decoder writes: a transcoder's target; a multi-layer SAE's middle layer
        site_point = points[targets[sae_path]] if sae_path in targets else points[hookpoints[len(hookpoints) // 2]]
        logits = logit_effects(loaded.model, residual_directions(loaded.model, site_point, sae.W_dec.detach()))
        similar = similar_features(sae.W_dec.detach())
        adjacent = {}
        for neighbour in _adjacent(entry, entries):
            ids, cosines = similar_features(sae.W_dec.detach(), saes[neighbour["path"]].W_dec.detach(), top=3)
            adjacent[neighbour["path"]] = (ids, cosines)
        written[sae_path] = write_interpretation(folder / sae_path, stats, logits, similar, adjacent, loaded.tokenizer, vocab_cache,
                                                 hookpoints=[h for h, _m in reads[sae_path]] if len(reads[sae_path]) > 1 else None,
                                                 prefixes=getattr(sae.cfg, "prefixes", None),
                                                 experts=coactivations[sae_path].tables() if sae_path in coactivations else None)
    seconds = time.perf_counter() - started
    return {"saes": written, "tokens": tokens_seen, "seconds": round(seconds, 1),
            "pass_seconds": round(harvest_seconds, 1)}


def _expert_coactivations(model: Any, entries: list[dict[str, Any]], saes: dict[str, Any], reads: dict[str, Any],
                          points: dict[str, Any], device: Any) -> dict[str, Any]:
    """In an MoE model, one expert co-activation table per single-layer SAE (``saescope.experts.features``)."""
    from saescope.experts.features import ExpertCoactivation, window_layers
    from saescope.experts.sites import find_moe_layers

    try:
        layers = find_moe_layers(model)
    except InvalidInput:
        return {}
    tables = {}
    for entry in entries:
        if len(reads[entry["path"]]) != 1:
            continue  # a multi-layer SAE's code is per layer; its feature-to-expert view is not built
        nearby = window_layers(layers, [points[reads[entry["path"]][0][0]].layer])
        if nearby:
            tables[entry["path"]] = ExpertCoactivation(saes[entry["path"]].d_sae, nearby, device)
    return tables


@contextmanager
def _routers_recorded(model: Any, coactivations: dict[str, Any], chosen: dict[int, torch.Tensor]):
    """Record each needed router's chosen experts (``top_k_index``) into ``chosen[layer]`` during one forward."""
    layers = {layer.layer: layer for table in coactivations.values() for layer in table.layers}
    modules = dict(model.named_modules()) if layers else {}
    handles = []
    for index, layer in layers.items():
        def record(_module, _args, output, index=index):
            chosen[index] = output[2].detach()
        handles.append(modules[layer.router].register_forward_hook(record))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _adjacent(entry: dict[str, Any], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The SAEs with the same site, architecture, width and target one layer up and down (nearest present)."""
    if entry.get("hookpoints"):
        return []  # a multi-layer SAE has no adjacent-layer peers
    peers = [e for e in entries if e["path"] != entry["path"] and not e.get("hookpoints") and e["site"] == entry["site"] and e["architecture"] == entry["architecture"]
             and e["width"] == entry["width"] and e["target_l0"] == entry["target_l0"]]
    below = [e for e in peers if e["layer"] < entry["layer"]]
    above = [e for e in peers if e["layer"] > entry["layer"]]
    chosen = []
    if below:
        chosen.append(max(below, key=lambda e: e["layer"]))
    if above:
        chosen.append(min(above, key=lambda e: e["layer"]))
    return chosen


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="interpret", unit="batch", disable=not enabled)
