"""``saescope lineage SUITE``: link the features of per-layer SAEs at adjacent layers, through the whole suite.

SAEs are chained when they share site, architecture, width and target L0 (multi-layer SAEs are left
out: their features are already shared across layers). Every hookpoint is harvested once on the same
held-out tokens, so co-activation compares the two layers' features on identical tokens. Writes
``SUITE/lineage.json`` (every pair's summary and the longest chains) and ``<sae>/lineage.json`` (each
feature's parents one layer down and children one layer up, what the browser shows).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

from saescope.errors import InvalidInput
from saescope.io.atomic import atomic_write_json
from saescope.io.suite_index import read_index
from saescope.plan import RunPlan

LINEAGE_FILE = "lineage.json"


def lineage_suite(
    path: str | Path,
    tokens: int = 8192,
    cosine_threshold: float | None = None,
    jaccard_threshold: float | None = None,
    device: str | None = None,
    progress: bool = True,
    loaded: Any = None,
) -> dict[str, Any]:
    """Link features across the adjacent layers of the suite at ``path``; returns what ``SUITE/lineage.json`` holds.

    ``tokens=0`` skips the model: decoder cosines only, no co-activation.
    """
    from tqdm.auto import tqdm

    from saescope.evaluation.lineage import (
        COSINE_THRESHOLD,
        JACCARD_THRESHOLD,
        chains,
        pair_lineage,
    )
    from saescope.io.checkpoint import load

    folder = Path(path)
    index = read_index(folder)
    if index.get("status") != "complete":
        raise InvalidInput(f"{folder}: the suite is not complete; finish training before linking its features")
    if tokens < 0:
        raise InvalidInput(f"--tokens must be >= 0, got {tokens}")
    cosine_threshold = COSINE_THRESHOLD if cosine_threshold is None else cosine_threshold
    jaccard_threshold = JACCARD_THRESHOLD if jaccard_threshold is None else jaccard_threshold
    chains_by_group = groups(index["saes"])
    if not chains_by_group:
        raise InvalidInput(f"{folder}: no two SAEs of the same site, architecture, width and target L0 at different layers; "
                           "lineage needs a suite with several layers (e.g. --hookpoints 'layers.*.resid_post')")
    saes = {e["path"]: load(str(folder / e["path"])) for group in chains_by_group for e in group}

    fires: dict[str, Any] = {}
    if tokens > 0:
        fires = _firing(folder, index, saes, tokens, device, loaded)
    report: dict[str, Any] = {"tokens": tokens, "cosine_threshold": cosine_threshold, "jaccard_threshold": jaccard_threshold, "groups": []}
    per_sae: dict[str, dict[str, dict[str, list]]] = defaultdict(lambda: {"parents": {}, "children": {}})
    n_pairs = sum(len(g) - 1 for g in chains_by_group)
    bar = tqdm(total=n_pairs, desc="lineage", unit="pair", disable=not progress)
    for group in chains_by_group:
        pairs = []
        for lower, upper in zip(group, group[1:]):
            a, b = lower["path"], upper["path"]
            pair = pair_lineage(a, b, saes[a].W_dec, saes[b].W_dec, fires.get(a), fires.get(b),
                                cosine_threshold=cosine_threshold, jaccard_threshold=jaccard_threshold)
            pairs.append(pair)
            for child, parent, cos, jac in pair.links:
                link = {"cosine": cos, "jaccard": None if jac < 0 else jac}
                per_sae[b]["parents"].setdefault(str(int(child)), []).append({"sae": a, "feature": int(parent), **link})
                per_sae[a]["children"].setdefault(str(int(parent)), []).append({"sae": b, "feature": int(child), **link})
            bar.update(1)
        first = group[0]
        report["groups"].append({
            "site": first["site"], "architecture": first["architecture"], "width": first["width"], "target_l0": first["target_l0"],
            "layers": [e["layer"] for e in group],
            "pairs": [p.summary() for p in pairs],
            "chains": chains(pairs, cosine_threshold, jaccard_threshold),
        })
    bar.close()
    for sae_path, links in per_sae.items():
        atomic_write_json(folder / sae_path / LINEAGE_FILE, links)
    atomic_write_json(folder / LINEAGE_FILE, report, indent=2)
    return report


def groups(entries: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Per-layer SAEs sharing site, architecture, width and target L0, ordered by layer (groups of two or more)."""
    by_key: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        if entry.get("hookpoints") or entry["layer"] < 0:
            continue  # multi-layer SAEs and hookpoints without a layer number
        by_key[(entry["site"], entry["architecture"], entry["width"], entry["target_l0"])].append(entry)
    return [sorted(group, key=lambda e: e["layer"]) for _key, group in sorted(by_key.items(), key=lambda kv: str(kv[0])) if len(group) > 1]


def _firing(folder: Path, index: dict[str, Any], saes: dict[str, Any], tokens: int, device: str | None, loaded: Any) -> dict[str, Any]:
    """Each SAE's firing mask [n_tokens, d_sae] (bool) on the same held-out tokens."""
    import torch

    from saescope.data.tokens import special_token_ids
    from saescope.evaluation.on_model import held_out_contexts
    from saescope.lm.harvest import harvest
    from saescope.lm.hookpoints import resolve_hookpoints
    from saescope.lm.models import load_model

    plan = RunPlan.stored(index, folder)
    if loaded is None:
        loaded = load_model(plan.model.model or index.get("model"), device=device or plan.model.device, dtype=plan.model.dtype)
    data = replace(plan.lm_data(), dataset=index.get("dataset") or plan.data.dataset)
    hookpoints = sorted({sae.cfg.hookpoint for sae in saes.values()})
    points = resolve_hookpoints(loaded.model, hookpoints)
    contexts = held_out_contexts(loaded, data, tokens)
    activations = harvest(loaded, points, contexts, special_token_ids(loaded.tokenizer), data.batch_contexts)
    fires = {}
    with torch.no_grad():
        for name, sae in saes.items():
            sae.to(loaded.device).eval()
            x = activations[sae.cfg.hookpoint]
            fires[name] = torch.cat([sae.encode(x[s : s + 2048].to(loaded.device)) > 0 for s in range(0, x.shape[0], 2048)]).cpu()
    return fires
