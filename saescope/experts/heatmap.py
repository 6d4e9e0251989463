"""``experts.png``: a layer × expert heat map of how distinctive each expert is for the behaviour.

Red: selected more on the behaviour set; blue: more on the control set; the colour scale is
symmetric about 0 so white means "no difference". The top-ranked experts are ringed and numbered
by rank. Beside it, each expert's selection rate on both sets (a scatter), where experts far from
the diagonal are the distinctive ones whatever their base rate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from saescope.experts.profile import ExpertProfile

LABELS = {"diff": "selection-rate difference (behaviour − control)", "risk_ratio": "log2 risk ratio", "npmi": "normalised PMI"}


def plot_expert_heatmap(profile: ExpertProfile, path: str | Path, by: str | None = None, top: int = 10) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = by or profile.rank_by
    values = profile.matrix(by).astype(np.float64)
    if by == "risk_ratio":
        values = np.log2(values)
    for position, n in enumerate(profile.n_experts):
        values[position, n:] = np.nan
    n_layers, n_experts = values.shape
    limit = float(np.nanmax(np.abs(values))) or 1.0
    width = min(4 + n_experts * 0.22, 22)
    figure, (heat, scatter) = plt.subplots(1, 2, figsize=(width + 4.5, 1.6 + 0.32 * n_layers + 1.5),
                                           gridspec_kw={"width_ratios": [width, 4]})
    image = heat.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
    heat.set_yticks(range(n_layers), [str(layer) for layer in profile.layers])
    heat.set_xlabel("expert")
    heat.set_ylabel("layer")
    figure.colorbar(image, ax=heat, label=LABELS[by], fraction=0.04)
    position_of = {layer: i for i, layer in enumerate(profile.layers)}
    neutral = 1.0 if by == "risk_ratio" else 0.0
    top_rows = [row for row in profile.ranked(by)[:top] if row[by] > neutral]
    for row in top_rows:
        y, x = position_of[row["layer"]], row["expert"]
        heat.scatter([x], [y], s=130, facecolors="white", edgecolors="black", linewidths=1.0)
        heat.annotate(str(row["rank"]), (x, y), ha="center", va="center", fontsize=6.5)
    heat.set_title(f"{profile.model}: experts by {by} (the top {len(top_rows)} numbered)", fontsize=10)
    rate_b, rate_c = profile.statistics["rate_behaviour"], profile.statistics["rate_control"]
    mask = ~np.isnan(values)
    scatter.scatter(rate_c[mask], rate_b[mask], s=8, c=values[mask], cmap="RdBu_r", vmin=-limit, vmax=limit, edgecolors="none")
    scatter.scatter([r["rate_control"] for r in top_rows], [r["rate_behaviour"] for r in top_rows], s=40,
                    facecolors="none", edgecolors="black", linewidths=1.0)
    high = float(max(np.nanmax(rate_b), np.nanmax(rate_c), 1e-3)) * 1.05
    scatter.plot([0, high], [0, high], color="grey", linewidth=0.8, linestyle="--")
    scatter.set_xlim(0, high)
    scatter.set_ylim(0, high)
    scatter.set_xlabel("selection rate, control")
    scatter.set_ylabel("selection rate, behaviour")
    scatter.set_title("each expert", fontsize=10)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
