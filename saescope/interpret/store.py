"""The on-disk interpretation of one SAE: ``<sae>/interpret/``, small JSON files a page can load fast.

    summary.json       every feature's density, max and mean activation, the tokens it peaks on and
                       its top promoted token: what the SAE page sorts and searches (one file)
    vocab.json         {token id: text} for every token the other files mention
    features_NNNNN.json  records of ``SHARD_SIZE`` consecutive features: top examples (token ids and
                       the feature's activation on a window around the peak), quantile samples,
                       histogram, logit effects, similar features here and in adjacent layers, and
                       (in an MoE model) the experts selected most above their base rate when it fires
    experts.json       (MoE models) per routed expert near the SAE's layer: its base rate and the
                       features that go with it most (``saescope.experts.features``)

Activations are rounded to 4 significant digits. Token text is stored raw; escaping is the
viewer's job (it always inserts text as text, never as HTML).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from torch import Tensor

from saescope.interpret.collect import NO_TOKEN, FeatureStats, quantile_examples
from saescope.io.atomic import atomic_write_text

SHARD_SIZE = 128
FORMAT_VERSION = 1


def shard_name(feature: int) -> str:
    return f"features_{feature // SHARD_SIZE * SHARD_SIZE:05d}.json"


def write_interpretation(
    sae_folder: Path,
    stats: FeatureStats,
    logits: tuple[Tensor, Tensor, Tensor, Tensor],
    similar: tuple[Tensor, Tensor],
    adjacent: dict[str, tuple[Tensor, Tensor]],
    tokenizer: Any,
    vocab_cache: dict[int, str] | None = None,
    hookpoints: list[str] | None = None,
    prefixes: list[int] | None = None,
    experts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the interpretation files; ``hookpoints`` names a multi-layer SAE's layers (examples then carry their layer),
    ``prefixes`` a Matryoshka SAE's nested dictionary sizes (pages then show each feature's level)."""
    out = Path(sae_folder) / "interpret"
    out.mkdir(parents=True, exist_ok=True)
    n_features = stats.top_values.shape[0]
    used: set[int] = set()
    top_ids, top_vals, bottom_ids, bottom_vals = (t.tolist() for t in logits)
    similar_ids, similar_cos = (t.tolist() for t in similar)
    adjacent_lists = {path: (ids.tolist(), cos.tolist()) for path, (ids, cos) in adjacent.items()}
    density = stats.density.tolist()
    max_values = stats.max_values.tolist()
    means = (stats.activation_sums / stats.fire_counts.clamp_min(1)).tolist()
    top_values = stats.top_values.tolist()
    top_windows = stats.top_windows.tolist()
    top_tokens = stats.top_tokens.tolist()
    sample_values = stats.sample_values.tolist()
    sample_windows = stats.sample_windows.tolist()
    sample_tokens = stats.sample_tokens.tolist()
    histogram = stats.histogram.tolist()
    centre = stats.top_windows.shape[-1] // 2
    top_layers = stats.top_layers.tolist() if stats.top_layers is not None else None
    sample_layers = stats.sample_layers.tolist() if stats.sample_layers is not None else None
    layer_fires = stats.layer_fires.tolist() if stats.layer_fires is not None else None
    peak_tokens: list[list[int]] = []

    records: list[dict[str, Any]] = []
    for feature in range(n_features):
        examples = [
            {"tokens": top_tokens[feature][r], "acts": _round(top_windows[feature][r]), "max": _r(top_values[feature][r]),
             **({"layer": top_layers[feature][r]} if top_layers is not None else {})}
            for r in range(len(top_values[feature])) if top_values[feature][r] > 0
        ]
        peaks = list(dict.fromkeys(e["tokens"][centre] for e in examples))[:8]
        peak_tokens.append(peaks)
        samples = [
            {"quantile": band, "tokens": sample_tokens[feature][i], "acts": _round(sample_windows[feature][i]), "max": _r(sample_values[feature][i]),
             **({"layer": sample_layers[feature][i]} if sample_layers is not None else {})}
            for band, i in quantile_examples(stats, feature)
        ]
        record = {
            "id": feature,
            "density": density[feature],
            "max": _r(max_values[feature]),
            "mean": _r(means[feature]),
            "top": examples,
            "samples": samples,
            "histogram": histogram[feature],
            "logits": {"top": [[i, _r(v)] for i, v in zip(top_ids[feature], top_vals[feature])],
                       "bottom": [[i, _r(v)] for i, v in zip(bottom_ids[feature], bottom_vals[feature])]},
            "similar": [[i, _r(c)] for i, c in zip(similar_ids[feature], similar_cos[feature])],
            "adjacent": [{"sae": path, "features": [[i, _r(c)] for i, c in zip(ids[feature], cos[feature])]}
                         for path, (ids, cos) in adjacent_lists.items()],
        }
        if layer_fires is not None:
            record["layer_fires"] = layer_fires[feature]
        if experts is not None:
            record["experts"] = experts["per_feature"][feature]
        for example in examples + samples:
            used.update(t for t in example["tokens"] if t != NO_TOKEN)
        used.update(top_ids[feature] + bottom_ids[feature])
        records.append(record)
        if len(records) == SHARD_SIZE or feature == n_features - 1:
            _write_json(out / shard_name(records[0]["id"]), records)
            records = []

    summary = {
        "version": FORMAT_VERSION,
        "n_features": n_features,
        "n_tokens": stats.n_tokens,
        "shard_size": SHARD_SIZE,
        "window": stats.top_windows.shape[-1] // 2,
        "log10_bin_edges": [round(e, 4) for e in stats.bin_edges.tolist()],
        "density": [_r(d) for d in density],
        "max": [_r(v) for v in max_values],
        "mean": [_r(v) for v in means],
        "peak_tokens": peak_tokens,
        "top_logit": [ids[0] for ids in top_ids],
    }
    if prefixes:
        summary["prefixes"] = [int(p) for p in prefixes]
    if hookpoints:
        summary["hookpoints"] = list(hookpoints)
        summary["mean_layer"] = [_mean_layer(fires) for fires in layer_fires] if layer_fires is not None else None
    _write_json(out / "summary.json", summary)
    if experts is not None:
        _write_json(out / "experts.json", {key: value for key, value in experts.items() if key != "per_feature"})
    cache = vocab_cache if vocab_cache is not None else {}
    vocab = {}
    for token in sorted(used):
        if token not in cache:
            cache[token] = tokenizer.decode([token])
        vocab[str(token)] = cache[token]
    _write_json(out / "vocab.json", vocab)
    alive = sum(1 for d in density if d > 0)
    return {"folder": str(out), "features": n_features, "alive": alive, "tokens": stats.n_tokens}


def _mean_layer(fires: list[int]) -> float | None:
    total = sum(fires)
    return round(sum(i * n for i, n in enumerate(fires)) / total, 2) if total else None


def _r(value: float) -> float:
    if value == 0 or not math.isfinite(value):
        return 0.0
    return float(f"{value:.4g}")


def _round(values: list[float]) -> list[float]:
    return [_r(v) for v in values]


def _write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, separators=(",", ":"), ensure_ascii=False))
