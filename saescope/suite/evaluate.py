"""``saescope eval SUITE``: every SAE of a suite measured on held-out text, as a table, JSON, CSV and plots.

Metrics written by training (``metrics.json`` in each SAE folder) are reused when they hold every
column and were measured on at least the requested number of tokens; otherwise (or with
``recompute=True``) the model is loaded once and every SAE that needs it is measured again, all
hookpoints from one harvest. Outputs go into the suite folder: ``eval.json``, ``eval.csv`` and
``plots/*.png``.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from saescope.errors import InvalidInput
from saescope.io.atomic import atomic_write_json
from saescope.io.suite_index import layer_and_site, read_index, write_index
from saescope.plan import RunPlan

COLUMNS = [
    ("l0", "L0", "{:.1f}"),
    ("fvu", "FVU", "{:.4f}"),
    ("delta_lm_loss", "ΔLM", "{:.4f}"),
    ("loss_recovered", "recov", "{:.1%}"),
    ("kl", "KL", "{:.4f}"),
    ("dead_fraction", "dead", "{:.1%}"),
    ("unfired_fraction", "unfired", "{:.1%}"),
    ("dense_fraction", "dense", "{:.1%}"),
    ("description_length", "DL bits", "{:.1f}"),
]
REQUIRED = [key for key, _label, _fmt in COLUMNS] + ["mdl"]  # mdl: description length at every quantisation, for selection


def evaluate_suite(
    path: str | Path,
    eval_tokens: int | None = None,
    recompute: bool = False,
    plots: bool = True,
    progress: bool = True,
    device: str | None = None,
    max_fvu: float | None = None,
) -> list[dict[str, Any]]:
    """Measure every SAE of the suite at ``path``; write eval.json, eval.csv and plots; return the rows.

    ``max_fvu`` is the bound at which the description-length plot marks each hookpoint's MDL choice
    (default ``saescope.evaluation.selection.DEFAULT_MAX_FVU``).
    """
    folder = Path(path)
    index = read_index(folder)
    if index.get("status") != "complete":
        raise InvalidInput(f"{folder}: the suite is not complete (status {index.get('status')!r}); finish it with `saescope train --resume`")
    plan = RunPlan.stored(index, folder)
    wanted_tokens = eval_tokens if eval_tokens is not None else plan.evaluation.eval_tokens
    if wanted_tokens <= 0:
        raise InvalidInput(f"eval_tokens must be positive to evaluate a suite, got {wanted_tokens}")

    stored = {entry["path"]: _read_metrics(folder / entry["path"]) for entry in index["saes"]}
    stale = [p for p, m in stored.items() if recompute or not _complete(m, wanted_tokens)]
    # measured before description-length tables were kept: add them without repeating the ΔLM evaluation
    tables_only = [p for p in stale if not recompute and _complete(stored[p], wanted_tokens, [k for k in REQUIRED if k != "mdl"])]
    if tables_only:
        added = _add_description_length(folder, index, {p: int(stored[p].get("eval_tokens") or 0) for p in tables_only}, device)
        stored.update(added)
        tables_only = list(added)  # where the held-out tokens could not be matched, measure everything again
    stale = [p for p in stale if p not in tables_only]
    if stale:
        stored.update(_measure(folder, index, stale, wanted_tokens, progress, device))

    from saescope.evaluation.on_model import index_metrics

    rows, multilayer = [], {}
    for entry in index["saes"]:
        metrics = stored[entry["path"]]
        entry["metrics"] = index_metrics(metrics)
        rows.append(_row(entry, metrics))
        for hookpoint, layer_metrics in (metrics.get("layers") or {}).items():
            rows.append(_row(entry, layer_metrics) | layer_fields(hookpoint, entry["path"]))
        if "layer_spread" in entry["metrics"]:
            multilayer[entry["path"]] = entry["metrics"]["layer_spread"]
    write_index(folder, index)
    report = {"model": index.get("model"), "dataset": index.get("dataset"), "saes": rows}
    if multilayer:
        report["multilayer"] = multilayer
    replacements = _replacements(folder, index, wanted_tokens, recompute, progress, device)
    if replacements:
        report["replacement"] = replacements
    atomic_write_json(folder / "eval.json", report, indent=2)
    _write_csv(folder / "eval.csv", rows)
    if plots:
        from saescope.suite.plots import write_plots

        write_plots(rows, folder / "plots", max_fvu=max_fvu)
        if multilayer:
            from saescope.suite.multilayer_plots import write_multilayer_plots

            write_multilayer_plots(folder, list(multilayer), rows, folder / "plots")
    return rows


def _row(entry: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    return ({key: entry[key] for key in ("path", "hookpoint", "layer", "site", "architecture", "width", "target_l0")}
            | {"kind": entry.get("kind", "sae")}
            | {key: metrics.get(key) for key in REQUIRED}
            | {"eval_tokens": metrics.get("n_tokens"), "dead_window_tokens": metrics.get("dead_window_tokens"),
               "density_histogram": metrics.get("density_histogram")})


def layer_fields(hookpoint: str, path: str) -> dict[str, Any]:
    """What one layer's row of a multi-layer SAE says about itself: its hookpoint, layer and site, and the SAE it is a layer of."""
    layer, site = layer_and_site(hookpoint)
    return {"path": f"{path}@{hookpoint}", "hookpoint": hookpoint, "layer": layer, "site": site, "layer_of": path}


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width terminal table, one row per SAE."""
    name_width = max([len("SAE")] + [len(r["path"]) for r in rows])
    header = f"{'SAE':<{name_width}} " + " ".join(f"{label:>8}" for _key, label, _fmt in COLUMNS)
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = []
        for key, _label, fmt in COLUMNS:
            value = row.get(key)
            cells.append(f"{fmt.format(value) if isinstance(value, (int, float)) else '-':>8}")
        lines.append(f"{row['path']:<{name_width}} " + " ".join(cells))
    return "\n".join(lines + [window_note(rows)])


def _span(values: list[int]) -> str:
    low, high = min(values), max(values)
    return f"{low:,}" if low == high else f"{low:,}-{high:,}"


def window_note(rows: list[dict[str, Any]]) -> str:
    """What "dead" and "unfired" count over, from the rows' own windows."""
    dead = [int(r["dead_window_tokens"]) for r in rows if r.get("dead_window_tokens")]
    unfired = [int(r.get("n_tokens") or r["eval_tokens"]) for r in rows if r.get("n_tokens") or r.get("eval_tokens")]
    parts = []
    if dead:
        parts.append(f"dead: no firing in the training run's last {_span(dead)} tokens")
    if unfired:
        parts.append(f"unfired: no firing in the {_span(unfired)} evaluation tokens (rare latents included)")
    return "; ".join(parts)


# -- helpers -----------------------------------------------------------------------------------------
def _read_metrics(sae_folder: Path) -> dict[str, Any]:
    path = sae_folder / "metrics.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def _complete(metrics: dict[str, Any], wanted_tokens: int, keys: list[str] = REQUIRED) -> bool:
    """Every column of ``keys`` present (description length may be None: no quantisation met its bound), on enough tokens.

    BOS/EOS positions are not scored, so a context of 128 yields about 127 counted tokens: 90% is enough.
    """
    return all(key in metrics for key in keys) and int(metrics.get("n_tokens") or 0) >= 0.9 * wanted_tokens


def _replacements(folder: Path, index: dict[str, Any], eval_tokens: int, recompute: bool, progress: bool,
                  device: str | None) -> dict[str, dict[str, Any]]:
    """The replacement-model figure of every transcoder set, measured where suite.json has none (the model loaded only then)."""
    from saescope.suite.replacement import REPLACEMENT_KEY, measure_replacements, transcoder_sets

    stored = dict(index.get(REPLACEMENT_KEY) or {})
    sets = transcoder_sets(index["saes"])
    if not sets or (not recompute and set(sets) <= set(stored)):
        return {name: stored[name] for name in sets}
    loaded, data = _model_and_text(folder, index, device)
    return measure_replacements(folder, loaded, data, eval_tokens, recompute=recompute, progress=progress)


def _model_and_text(folder: Path, index: dict[str, Any], device: str | None) -> tuple[Any, Any]:
    """The suite's model, loaded, and the text settings its held-out tokens come from."""
    from saescope.lm.models import load_model

    plan = RunPlan.stored(index, folder)
    loaded = load_model(plan.model.model or index.get("model"), device=device or plan.model.device, dtype=plan.model.dtype)
    return loaded, replace(plan.lm_data(), dataset=index.get("dataset") or plan.data.dataset)  # a cache's corpus, recorded at training


def _add_description_length(folder: Path, index: dict[str, Any], counted: dict[str, int], device: str | None) -> dict[str, dict[str, Any]]:
    """Description-length tables for SAEs whose other metrics are current (one harvest, no splicing), on
    the held-out tokens those metrics were measured on: ``counted`` gives each SAE's count of evaluated
    activations (``eval_tokens``; ``n_tokens`` is the splice's count of scored next-token positions),
    and an SAE whose count the new harvest does not reproduce is left out (the caller measures it fully)."""
    from saescope.evaluation.on_model import description_length_on_model, save_metrics
    from saescope.io.checkpoint import load

    loaded, data = _model_and_text(folder, index, device)
    updated = {}
    for n_tokens in sorted(set(counted.values())):
        paths = [p for p, count in counted.items() if count == n_tokens]
        # the first position of each context is never scored: this many contexts give back the same tokens
        contexts = -(-n_tokens // max(1, data.context_size - 1))
        measured = description_length_on_model(loaded, {p: load(str(folder / p)) for p in paths}, data, contexts * data.context_size)
        for p, values in measured.items():
            if values["mdl"] is None or values["mdl"]["n_tokens"] != n_tokens:
                continue
            updated[p] = {**_read_metrics(folder / p), **values}
            save_metrics(folder / p, updated[p])
    return updated


def _measure(folder: Path, index: dict[str, Any], paths: list[str], eval_tokens: int, progress: bool, device: str | None) -> dict[str, dict[str, Any]]:
    from saescope.evaluation.on_model import evaluate_on_model, save_metrics
    from saescope.io.checkpoint import load

    loaded, data = _model_and_text(folder, index, device)
    saes = {p: load(str(folder / p)) for p in paths}
    measured = evaluate_on_model(loaded, saes, data, eval_tokens, progress=progress)
    for p, values in measured.items():
        previous = _read_metrics(folder / p)
        if "training" in previous:
            values["training"] = previous["training"]
        save_metrics(folder / p, values)
    return measured


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = [k for k in rows[0] if k not in ("density_histogram", "mdl")] if rows else []
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
