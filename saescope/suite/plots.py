"""The suite's plots, as PNG files (matplotlib, headless).

- ``delta_lm_vs_l0.png``: ΔLM loss against L0, one colour per architecture (and kind: transcoders apart), one line per
  (hookpoint, width) through its target-L0 sweep: the Pareto view (lower left is better).
- ``fvu_vs_l0.png``: the same with FVU.
- ``depth.png``: FVU, ΔLM loss and dead fraction layer by layer, one panel row per site.
- ``density.png``: histograms of log10 feature density, one panel per hookpoint, one line per SAE.
- ``description_length.png``: description length against L0 and width, the MDL choice marked (``mdl_plot``).

A multi-layer SAE is one point (its mean over layers) in the L0 plots and one line through its
per-layer rows in ``depth.png``; its own figures are in ``multilayer_plots``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

ARCH_COLOURS = {"jumprelu": "#1f77b4", "topk": "#d62728", "batchtopk": "#ff7f0e", "relu": "#2ca02c", "gated": "#9467bd"}
FALLBACK_COLOURS = ["#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def write_plots(rows: list[dict[str, Any]], folder: str | Path, max_fvu: float | None = None) -> list[Path]:
    """Write every plot for ``rows`` (``saescope eval`` rows) into ``folder``; return the files written.

    ``max_fvu``: the bound of the description-length plot's MDL choice (None: the selection default).
    """
    import matplotlib

    from saescope.suite.mdl_plot import plot_description_length

    matplotlib.use("Agg")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for metric, label, name in (("delta_lm_loss", "ΔLM loss (nats)", "delta_lm_vs_l0.png"), ("fvu", "FVU", "fvu_vs_l0.png")):
        if any(isinstance(r.get(metric), (int, float)) for r in rows):
            written.append(_pareto(rows, metric, label, out / name))
    written.append(_depth(rows, out / "depth.png"))
    if any(r.get("density_histogram") for r in rows):
        written.append(_density(rows, out / "density.png"))
    dl_plot = plot_description_length(rows, out / "description_length.png", max_fvu)
    if dl_plot is not None:
        written.append(dl_plot)
    return written


MARKERS = ["o", "s", "^", "D", "v"]


def series(row: dict[str, Any]) -> str:
    """A row's legend name: its architecture, with its kind for a transcoder (``topk transcoder``)."""
    kind = row.get("kind", "sae")
    return row["architecture"] if kind == "sae" else f"{row['architecture']} {kind.replace('_', ' ')}"


def _colour(arch: str, seen: dict[str, str]) -> str:
    if arch not in seen:
        seen[arch] = ARCH_COLOURS.get(arch) or FALLBACK_COLOURS[len(seen) % len(FALLBACK_COLOURS)]
    return seen[arch]


def _panels(count: int, width: float = 5.0, height: float = 4.0, columns: int = 3):
    import matplotlib.pyplot as plt

    columns = min(columns, max(count, 1))
    rows = -(-max(count, 1) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(width * columns, height * rows), squeeze=False)
    flat = [a for row in axes for a in row]
    for unused in flat[count:]:
        unused.set_visible(False)
    return figure, flat


def _pareto(rows: list[dict[str, Any]], metric: str, label: str, path: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    by_site: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if isinstance(row.get(metric), (int, float)) and isinstance(row.get("l0"), (int, float)) and not row.get("layer_of"):
            by_site[row["site"]].append(row)
    figure, axes = _panels(len(by_site))
    colours: dict[str, str] = {}
    for axis, (site, site_rows) in zip(axes, sorted(by_site.items())):
        lines: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
        for row in site_rows:
            lines[(series(row), row["layer"], row["width"])].append(row)
        several_layers = len({r["layer"] for r in site_rows}) > 1
        widths = sorted({r["width"] for r in site_rows})
        labelled = set()
        for (arch, layer, width), points in sorted(lines.items()):
            points.sort(key=lambda r: r["l0"])
            colour = _colour(arch, colours)
            marker = MARKERS[widths.index(width) % len(MARKERS)]
            legend = f"{arch} w{width}" if len(widths) > 1 else arch
            axis.plot([p["l0"] for p in points], [p[metric] for p in points], "-" + marker, color=colour, alpha=0.85, markersize=4,
                      label=legend if legend not in labelled else None)
            labelled.add(legend)
            if several_layers:
                axis.annotate(f"layer {layer}" if layer >= 0 else "multi-layer (mean)", (points[-1]["l0"], points[-1][metric]), fontsize=7, xytext=(3, 2), textcoords="offset points")
        axis.set_xscale("log")
        axis.xaxis.set_major_formatter(ScalarFormatter())
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xticks(sorted({round(r["l0"]) for r in site_rows if r["l0"] > 0})[:12])
        axis.set_xlabel("L0 (active latents per token)")
        axis.set_ylabel(label)
        axis.set_title(site)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"{label} against L0 (lower left is better)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _depth(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metrics = [("fvu", "FVU"), ("delta_lm_loss", "ΔLM loss (nats)"), ("dead_fraction", "dead fraction (training window)")]
    sites = sorted({r["site"] for r in rows})
    figure, axes = plt.subplots(len(sites), len(metrics), figsize=(5 * len(metrics), 3.6 * len(sites)), squeeze=False)
    colours: dict[str, str] = {}
    for site_axes, site in zip(axes, sites):
        lines: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            if row["site"] == site and row["layer"] >= 0:  # a multi-layer SAE appears through its per-layer rows
                arch = f"{row['architecture']} multi-layer" if row.get("layer_of") else series(row)
                lines[(arch, row["width"], row["target_l0"])].append(row)
        styles = ["-o", "--s", ":^", "-.d"]
        targets = sorted({key[2] for key in lines})
        for axis, (metric, label) in zip(site_axes, metrics):
            for (arch, width, target), points in sorted(lines.items()):
                points = sorted((p for p in points if isinstance(p.get(metric), (int, float))), key=lambda r: r["layer"])
                if not points:
                    continue
                style = styles[targets.index(target) % len(styles)]
                axis.plot([p["layer"] for p in points], [p[metric] for p in points], style, color=_colour(arch, colours),
                          markersize=4, label=f"{arch} w{width} L0 {target:g}")
            axis.set_xlabel("layer")
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.set_ylabel(label)
            axis.set_title(f"{site}: {label}")
            axis.grid(True, alpha=0.3)
        site_axes[0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _density(rows: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib.pyplot as plt

    by_hookpoint: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row.get("density_histogram") and not row.get("layer_of"):
            by_hookpoint[row["hookpoint"]].append(row)
    figure, axes = _panels(len(by_hookpoint), width=5.0, height=3.6)
    colours: dict[str, str] = {}
    for axis, (hookpoint, hook_rows) in zip(axes, sorted(by_hookpoint.items(), key=lambda item: (item[1][0]["layer"], item[0]))):
        for index, row in enumerate(sorted(hook_rows, key=lambda r: (series(r), r["width"], r["target_l0"]))):
            histogram = row["density_histogram"]
            edges, counts = histogram["log10_density_edges"], histogram["counts"]
            style = ["-", "--", ":", "-."][index % 4]
            axis.stairs(counts, edges, color=_colour(series(row), colours), linestyle=style,
                        label=f"{series(row)} w{row['width']} L0 {row['target_l0']:g} ({histogram['dead']} unfired)")
        axis.set_xlabel("log10 feature density")
        axis.set_ylabel("latents")
        axis.set_title(hookpoint)
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle("Feature density (fraction of held-out tokens on which each latent fires)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
