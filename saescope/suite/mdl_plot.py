"""``description_length.png``: description length against L0 and against width, with the MDL choice marked.

One row of two panels per hookpoint. Filled points are SAEs whose quantised reconstruction meets the
bound FVU ≤ ε, at their description length at that bound; hollow grey points are the others, at
their description length at their own FVU + 0.01 (so the reader sees what the bound excluded). The
star is the hookpoint's MDL choice. Lines join SAEs that differ only in L0 (left) or width (right).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from saescope.evaluation.selection import DEFAULT_MAX_FVU, chosen, select_saes

MAX_HOOKPOINTS = 12


def plot_description_length(rows: list[dict[str, Any]], path: str | Path, max_fvu: float | None = None) -> Path | None:
    """Write the plot for ``saescope eval`` rows; None (nothing written) when no row has a description-length table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bound = DEFAULT_MAX_FVU if max_fvu is None else max_fvu
    rows = [r for r in rows if r.get("mdl") and not r.get("layer_of")]
    if not rows:
        return None
    groups = select_saes(rows, by="mdl", max_fvu=bound)
    picks = chosen(groups)
    hookpoints = list(groups)[:MAX_HOOKPOINTS]
    figure, axes = plt.subplots(len(hookpoints), 2, figsize=(11, 3.8 * len(hookpoints)), squeeze=False)
    by_path = {r["path"]: r for r in rows}
    for (left, right), hookpoint in zip(axes, hookpoints):
        candidates = groups[hookpoint]
        for axis, x_key, line_key, x_label in ((left, "l0", "width", "L0 (active latents per token)"),
                                               (right, "width", "target_l0", "width (latents)")):
            lines: dict[Any, list[tuple[float, float]]] = defaultdict(list)
            for c in candidates:
                x = c.l0 if x_key == "l0" else c.width
                if c.bits is not None and isinstance(x, (int, float)):
                    lines[(c.architecture, by_path[c.path].get(line_key))].append((float(x), c.bits))
                    continue
                fallback = by_path[c.path].get("description_length")
                if isinstance(fallback, (int, float)) and isinstance(x, (int, float)):
                    axis.scatter([x], [fallback], facecolors="none", edgecolors="#999999", s=28, zorder=2)
            for (arch, value), points in sorted(lines.items(), key=lambda item: (str(item[0][0]), _number(item[0][1]))):
                points.sort()
                shown = f"{value:g}" if isinstance(value, (int, float)) else str(value)
                label = f"{arch}, {'width' if line_key == 'width' else 'L0'} {shown}"
                axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=4, lw=1.2, label=label)
            pick = picks.get(hookpoint)
            if pick is not None:
                x = pick.l0 if x_key == "l0" else pick.width
                axis.scatter([x], [pick.bits], marker="*", s=260, c="gold", edgecolors="black", zorder=5,
                             label=f"MDL choice: {pick.path.split('/')[-1]}")
            axis.set_xlabel(x_label)
            axis.set_ylabel("description length (bits/token)")
            if x_key == "width":
                axis.set_xscale("log", base=2)
            axis.set_title(f"{hookpoint}: FVU_q ≤ {bound:g}", fontsize=10)
            axis.grid(alpha=0.3)
            if axis.get_legend_handles_labels()[0]:
                axis.legend(fontsize=7, loc="best")
    figure.suptitle("Description length (filled: meets the bound; hollow: does not; star: the MDL choice)", fontsize=11)
    figure.tight_layout()
    out = Path(path)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else float("inf")
