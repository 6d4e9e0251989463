"""``saescope info PATH``: a short description of a suite folder or of a single SAE folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from saescope.errors import InvalidInput, MissingFile
from saescope.io.suite_index import is_suite, layer_and_site, read_index
from saescope.plan import RunPlan


def describe(path: str | Path) -> str:
    folder = Path(path)
    if is_suite(folder):
        return _describe_suite(folder)
    if (folder / "cfg.json").is_file():
        return _describe_sae(folder)
    if not folder.exists():
        raise MissingFile(f"{path}: no such file or folder")
    raise InvalidInput(f"{path}: neither a suite (suite.json) nor an SAE folder (cfg.json)")


def _describe_suite(folder: Path) -> str:
    index = read_index(folder)
    plan = RunPlan.stored(index, folder)
    saes = index["saes"]
    hookpoints = sorted({h for e in saes for h in e.get("hookpoints") or [e["hookpoint"]]}, key=lambda h: (layer_and_site(h)[0], h))
    lines = [
        f"suite {folder} ({index.get('status')})",
        f"  model      {index.get('model')}",
        f"  dataset    {index.get('dataset')}, {plan.training.tokens:,} training tokens per SAE, batch {plan.training.batch_size}",
        f"  hookpoints {len(hookpoints)}: {_short_list(hookpoints)}",
        f"  SAEs       {len(saes)}: architectures {sorted({e['architecture'] for e in saes})}, "
        f"widths {sorted({e['width'] for e in saes})}, target L0s {sorted({e['target_l0'] for e in saes})}",
    ]
    stacked = [e for e in saes if e.get("hookpoints")]
    if stacked:
        lines.append(f"  multi-layer {len(stacked)} SAE(s) each over {_short_list(stacked[0]['hookpoints'])}")
    if index.get("train_seconds") is not None:
        lines.append(f"  trained in {index['train_seconds'] / 60:.1f} min")
    measured = [e for e in saes if e.get("metrics")]
    if measured:
        from saescope.suite.evaluate import format_table

        lines.append("")
        lines.append(format_table([{"path": e["path"], **e["metrics"]} for e in saes]))
    extras = [name for name in ("eval.json", "eval.csv", "plots") if (folder / name).exists()]
    if extras:
        lines.append(f"\n  evaluation outputs: {', '.join(str(folder / n) for n in extras)}")
    return "\n".join(lines)


def _describe_sae(folder: Path) -> str:
    cfg = json.loads((folder / "cfg.json").read_text())
    training: dict[str, Any] = cfg.get("training") or {}
    lines = [
        f"SAE {folder}",
        f"  architecture {cfg.get('architecture')}, d_in {cfg.get('d_in')}, latents {cfg.get('d_sae')}",
        f"  hookpoint    {cfg.get('hookpoint')} of {cfg.get('model_id')}",
    ]
    stacked = list(((cfg.get("normalization") or {}).get("hookpoint_multipliers") or {}))
    if stacked:
        lines[-1] = f"  hookpoints   {len(stacked)} stacked (a multi-layer SAE): {_short_list(stacked)} of {cfg.get('model_id')}"
    if cfg.get("target_l0") is not None:
        lines.append(f"  target L0    {cfg['target_l0']:g}")
    if training:
        lines.append(f"  trained on   {training.get('n_tokens', 0):,} tokens, lr {training.get('lr', 0):.3g}, {training.get('seconds', 0):.0f} s")
    metrics_file = folder / "metrics.json"
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        shown = [(k, metrics[k]) for k in ("l0", "fvu", "delta_lm_loss", "loss_recovered", "kl", "dead_fraction", "unfired_fraction", "dense_fraction") if isinstance(metrics.get(k), (int, float))]
        lines.append("  metrics      " + ", ".join(f"{k} {v:.4g}" for k, v in shown))
    return "\n".join(lines)


def _short_list(items: list[str], limit: int = 6) -> str:
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:3]) + f", ... , {items[-1]}"
