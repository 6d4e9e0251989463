"""A suite's replacement models: each transcoder set (one kind × architecture × width × L0, at two or more
layers) measured with all its MLPs replaced at once (``saescope.evaluation.replacement``).

Results live in ``suite.json`` under ``replacement`` ({set name: metrics}), written at the end of
training and by ``saescope eval`` when a set has none (or on ``--recompute``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saescope.io.suite_index import read_index, write_index
from saescope.saes import SparseAutoencoder

REPLACEMENT_KEY = "replacement"


def transcoder_sets(entries: list[dict[str, Any]]) -> dict[str, dict[int, str]]:
    """``{set name: {layer: path}}`` for the suite's transcoders with two or more layers (one layer is its per-layer figure)."""
    sets: dict[str, dict[int, str]] = {}
    for entry in entries:
        if entry.get("kind", "sae") != "sae":
            sets.setdefault(entry["path"].rsplit("/", 1)[-1], {})[int(entry["layer"])] = entry["path"]
    return {name: layers for name, layers in sets.items() if len(layers) >= 2}


def measure_replacements(folder: str | Path, loaded: Any, data: Any, eval_tokens: int, saes: dict[str, SparseAutoencoder] | None = None,
                         recompute: bool = False, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Measure every transcoder set of the suite at ``folder`` that has no figure yet (all with ``recompute``); update suite.json.

    ``saes`` ({path: transcoder}) spares loading them again when the caller holds them (the end of training).
    """
    from saescope.data.tokens import special_token_ids
    from saescope.evaluation.on_model import held_out_contexts
    from saescope.evaluation.replacement import replacement_evaluate
    from saescope.io.checkpoint import load

    folder = Path(folder)
    index = read_index(folder)
    done = dict(index.get(REPLACEMENT_KEY) or {})
    todo = {name: layers for name, layers in transcoder_sets(index["saes"]).items() if recompute or name not in done}
    if not todo:
        return done
    contexts = held_out_contexts(loaded, data, eval_tokens)
    excluded = special_token_ids(loaded.tokenizer)
    for name, layers in todo.items():
        transcoders = {layer: (saes or {}).get(path) or load(folder / path) for layer, path in layers.items()}
        done[name] = replacement_evaluate(loaded.model, transcoders, contexts, excluded, batch_contexts=max(1, data.batch_contexts // 2),
                                          progress=progress).to_dict()
    index[REPLACEMENT_KEY] = done
    write_index(folder, index)
    return done


def format_replacements(results: dict[str, dict[str, Any]]) -> str:
    """A terminal table: one row per transcoder set, the model with all its MLPs replaced."""
    if not results:
        return ""
    width = max(len("transcoder set"), *(len(name) for name in results))
    header = f"{'transcoder set':<{width}} {'layers':>8} {'ΔLM':>8} {'recov':>8} {'KL':>8}"
    lines = ["replacement model (every MLP of the set replaced at once):", header, "-" * len(header)]
    for name, m in sorted(results.items()):
        lines.append(f"{name:<{width}} {len(m['layers']):>8} {m['delta_lm_loss']:>8.4f} {m['loss_recovered']:>8.1%} {m['kl']:>8.4f}")
    return "\n".join(lines)
