"""Pictures of a multi-layer SAE (Lawson et al. 2024's analysis), one PNG per SAE: ``plots/multilayer_<arch>-w<width>-l0_<target>.png``.

Four panels:
- latent × layer heat map: each firing latent's share of activation mass at each layer, latents
  sorted by mean layer (a diagonal band means latents live at a few adjacent layers);
- the variance of the layer index per latent, aggregated over the data against within one token
  (log scale; the paper's headline: the first is about 100× the second);
- FVU and ΔLM loss layer by layer, the multi-layer SAE against per-layer SAEs of the same
  architecture, width and target where the suite has them;
- cosine similarity of adjacent layers' residual vectors.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from saescope.evaluation.multilayer import LAYER_SPREAD_FILE
from saescope.io.atomic import read_json

HEATMAP_LATENTS = 512
"""Most latents drawn in the heat map (an evenly spaced sample of the firing ones, in mean-layer order)."""


def write_multilayer_plots(suite: str | Path, paths: list[str], rows: list[dict[str, Any]], folder: str | Path) -> list[Path]:
    """One figure per multi-layer SAE in ``paths`` (suite-relative folders holding ``layer_spread.json``)."""
    import matplotlib

    matplotlib.use("Agg")
    written = []
    for path in paths:
        spread_file = Path(suite) / path / LAYER_SPREAD_FILE
        if spread_file.is_file():
            spread = read_json(spread_file, hint="re-run `saescope eval --recompute`")
            written.append(_figure(path, spread, rows, Path(folder) / f"{path.replace('/', '_')}.png"))
    return written


def _figure(path: str, spread: dict[str, Any], rows: list[dict[str, Any]], out: Path) -> Path:
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    out.parent.mkdir(parents=True, exist_ok=True)
    hookpoints = spread["hookpoints"]
    mass = np.asarray(spread["mass"], dtype=float)
    firing = mass.sum(axis=1) > 0
    order = np.argsort([m if m is not None else math.inf for m in spread["mean_layer"]])
    order = order[firing[order]]
    if len(order) > HEATMAP_LATENTS:
        order = order[np.linspace(0, len(order) - 1, HEATMAP_LATENTS).round().astype(int)]
    shares = mass[order] / mass[order].sum(axis=1, keepdims=True).clip(min=1e-300)

    figure, axes = plt.subplots(2, 2, figsize=(12, 9))
    heat = axes[0][0]
    image = heat.imshow(shares, aspect="auto", interpolation="nearest", cmap="viridis")
    heat.set_xlabel("layer (position among the SAE's hookpoints)")
    heat.set_ylabel(f"latent ({len(order)} firing latents, sorted by mean layer)")
    heat.set_title("share of each latent's activation mass by layer")
    figure.colorbar(image, ax=heat, fraction=0.046)

    variance = axes[0][1]
    data = np.asarray([v for v in spread["variance_data"] if v is not None], dtype=float)
    token = np.asarray([v for v in spread["variance_token"] if v is not None], dtype=float)
    floor = 1e-4
    bins = np.logspace(math.log10(floor), math.log10(max(float(data.max(initial=1.0)), 1.0) * 1.5), 40)
    variance.hist(data.clip(min=floor), bins=bins, alpha=0.6, label="over the data")
    variance.hist(token.clip(min=floor), bins=bins, alpha=0.6, label="within one token (weighted mean)")
    variance.set_xscale("log")
    ratio = spread.get("variance_ratio")
    variance.set_title(f"variance of a latent's layer; ratio of means {ratio:.1f}×" if ratio else "variance of a latent's layer")
    variance.set_xlabel(f"variance of the layer index (values below {floor:g} drawn at {floor:g})")
    variance.set_ylabel("latents")
    variance.legend(fontsize=8)

    per_layer = axes[1][0]
    mine = sorted((r for r in rows if r.get("layer_of") == path), key=lambda r: r["layer"])
    own = next((r for r in rows if r["path"] == path), None)
    peers = sorted((r for r in rows if own and not r.get("layer_of") and r["layer"] >= 0 and r["architecture"] == own["architecture"]
                    and r["width"] == own["width"] and r["target_l0"] == own["target_l0"]), key=lambda r: r["layer"])
    twin = per_layer.twinx()
    for axis, metric, colour, label in ((per_layer, "fvu", "#1f77b4", "FVU"), (twin, "delta_lm_loss", "#d62728", "ΔLM loss")):
        points = [r for r in mine if isinstance(r.get(metric), (int, float))]
        axis.plot([r["layer"] for r in points], [r[metric] for r in points], "-o", color=colour, markersize=3, label=f"{label}, multi-layer SAE")
        baseline = [r for r in peers if isinstance(r.get(metric), (int, float))]
        if baseline:
            axis.plot([r["layer"] for r in baseline], [r[metric] for r in baseline], "s", color=colour, markerfacecolor="none", markersize=8,
                      label=f"{label}, per-layer SAE")
        axis.set_ylabel(label, color=colour)
    per_layer.set_xlabel("layer")
    per_layer.set_title("reconstruction when spliced at each layer")
    handles = per_layer.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    per_layer.legend(handles, [h.get_label() for h in handles], fontsize=7)
    per_layer.grid(True, alpha=0.3)

    cosine = axes[1][1]
    adjacent = spread["adjacent_cosine"]
    cosine.plot(range(len(adjacent)), adjacent, "-o", markersize=3)
    cosine.set_xlabel("layer l (pair l, l+1)")
    cosine.set_ylabel("mean cos(x_l, x_l+1)")
    cosine.set_title("adjacent layers' residual vectors")
    cosine.grid(True, alpha=0.3)

    summary = (f"{path}: {len(hookpoints)} hookpoints, {spread['n_tokens']:,} tokens; latents firing at >1 layer: "
               f"{spread['multi_layer_fraction_data']:.0%} over the data, {spread['multi_layer_fraction_token']:.0%} of (token, latent) firings")
    for axis in (heat, per_layer, cosine):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    figure.suptitle(summary, fontsize=10)
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
