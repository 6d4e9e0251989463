"""``saescope demo --bio`` (``make demo-bio``): SAEs on single cells, matched to cell types and marker genes.

The data set is scanpy's ``pbmc68k_reduced`` (700 human blood cells × 765 genes, ten labelled cell
types, PCA and UMAP coordinates). It ships inside the scanpy wheel; the demo installs the wheel
without its dependencies and reads the file with anndata, never importing scanpy.

Three SAEs: on the genes (log-normalised counts, ``raw``) centred as saescope does by default, the
same without centring (to measure what centring does to dead latents), and on the 50-dimensional PCA
embedding, whose features are mapped back to genes through the PCA loadings. For each labelled cell
type the best single feature (AUROC) is reported with its top genes, and the known markers a
biologist would check (CD79A/MS4A1 for B cells, LYZ/S100A8 for monocytes, NKG7/GNLY for NK cells,
CD3E for T cells) are looked up among them. A UMAP scatter coloured by a cell-type feature is saved.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from saescope.errors import MissingFile

DATASET = ("scanpy", "datasets/10x_pbmc68k_reduced.h5ad")
LABELS = "bulk_labels"
MARKERS = {"CD19+ B": ["CD79A", "MS4A1"], "CD14+ Monocyte": ["LYZ", "S100A8"], "CD56+ NK": ["NKG7", "GNLY"],
           "CD8+ Cytotoxic T": ["CD3E", "NKG7"], "CD4+/CD25 T Reg": ["CD3E"]}
RUNS = {  # name: (data key, centre, width, k)
    "genes": ("raw", True, 256, 8),
    "genes-uncentred": ("raw", False, 256, 8),
    "pca": ("obsm/X_pca", True, 128, 8),
}
EPOCHS = 300


def dataset_path() -> Path:
    """The pbmc68k_reduced file inside the installed scanpy wheel (found without importing scanpy)."""
    spec = importlib.util.find_spec(DATASET[0])
    if spec is None or not spec.submodule_search_locations:
        raise MissingFile("the biology demo reads pbmc68k_reduced from the scanpy wheel: pip install --no-deps scanpy==1.11.5 "
                          "(make demo-bio installs it)")
    path = Path(spec.submodule_search_locations[0]) / DATASET[1]
    if not path.is_file():
        raise MissingFile(f"{path}: missing from the scanpy installation; reinstall it (pip install --no-deps --force-reinstall scanpy)")
    return path


def run_bio_demo(out: str | Path = "demo-bio", epochs: int = EPOCHS, report: Any = None) -> dict[str, Any]:
    """Train, interpret and summarise the three SAEs into ``out``; returns the summary (also ``out/summary.json``)."""
    import saescope
    from saescope.data.vectors import load_vectors
    from saescope.interpret.vectors import best_feature_per_category, interpret_vectors

    say = report or (lambda line: print(line, file=sys.stderr, flush=True))
    out = Path(out)
    path = dataset_path()
    summary: dict[str, Any] = {"dataset": str(path), "runs": {}}
    started = time.perf_counter()
    for name, (key, centre, width, k) in RUNS.items():
        data = load_vectors(path, key)
        n = data.source.n_tokens
        plan = {"data": {"array": str(path), "data_key": key, "center": centre},
                "training": {"tokens": n * epochs // 128 * 128, "batch_size": 128, "seed": 0},
                "sweep": {"architectures": ["topk"], "widths": [width], "target_l0s": [k]}}
        say(f"{name}: a TopK SAE (k={k}, {width} latents) on {data.what}, {n} cells × {data.source.d_in}, {epochs} epochs")
        saescope.train(plan, out / name, progress=False, overwrite=True)
        sae = saescope.load(out / name / "topk")
        metrics = saescope.evaluate_sae(sae, data.source, description_length=False)
        result = interpret_vectors(sae, data, out=out / name / "topk")
        best = best_feature_per_category(result, LABELS)
        for entry in best:
            markers = MARKERS.get(entry["category"], [])
            record = result["features"][entry["feature"]]
            top_genes = [gene for gene, weight in record["loadings"] if weight > 0]
            entry["markers_found"] = [m for m in markers if m in top_genes]
            entry["markers_checked"] = markers
        summary["runs"][name] = {"data": data.what, "fvu": round(metrics.fvu, 4), "l0": round(metrics.l0, 2),
                                 "dead_fraction": metrics.dead_fraction, "unfired_fraction": round(metrics.unfired_fraction, 4),
                                 "best_per_cell_type": best}
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["picture"] = str(scatter_picture(path, out, summary))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def scatter_picture(path: Path, out: Path, summary: dict[str, Any]) -> Path:
    """UMAP of the cells coloured by cell type, and by the B-cell and monocyte features of the gene SAE."""
    import anndata
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # OldFormatWarning, FutureWarning: about the file, not the user's code
        cells = anndata.read_h5ad(path)
    umap = cells.obsm["X_umap"]
    labels = cells.obs[LABELS].astype(str).to_numpy()
    record = json.loads((out / "genes" / "topk" / "interpret_vectors.json").read_text())
    best = {e["category"]: e for e in summary["runs"]["genes"]["best_per_cell_type"]}
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for index, kind in enumerate(sorted(set(labels))):
        mask = labels == kind
        axes[0].scatter(umap[mask, 0], umap[mask, 1], s=6, label=kind, color=plt.cm.tab10(index % 10))
    axes[0].legend(fontsize=6, markerscale=2, loc="best")
    axes[0].set_title("cell types (bulk_labels)")
    import saescope
    from saescope.data.vectors import load_vectors

    sae = saescope.load(out / "genes" / "topk")
    data = load_vectors(path, "raw")
    import torch

    with torch.no_grad():
        acts = torch.cat([sae.encode(batch) for batch in data.source.iter_batches(700, shuffle=False)]).numpy()
    for axis, kind in zip(axes[1:], ("CD19+ B", "CD14+ Monocyte")):
        entry = best[kind]
        feature = entry["feature"]
        genes = [g for g, w in record["features"][feature]["loadings"] if w > 0][:4]
        points = axis.scatter(umap[:, 0], umap[:, 1], s=6, c=acts[:, feature], cmap="viridis")
        figure.colorbar(points, ax=axis, fraction=0.046)
        axis.set_title(f"feature {feature}: best for {kind}, AUROC {entry['auroc']:.2f}\ntop genes {', '.join(genes)}", fontsize=9)
    for axis in axes:
        axis.set_xticks([])
        axis.set_yticks([])
        axis.set_xlabel("UMAP 1")
        axis.set_ylabel("UMAP 2")
    figure.suptitle("SAE features on pbmc68k_reduced (700 cells x 765 genes)")
    figure.tight_layout()
    target = out / "cell_type_features.png"
    figure.savefig(target, dpi=110)
    plt.close(figure)
    return target


def format_summary(summary: dict[str, Any]) -> str:
    lines = []
    for name, run in summary["runs"].items():
        dead = run["dead_fraction"]
        lines.append(f"\n{name} ({run['data']}): FVU {run['fvu']:.3f}, L0 {run['l0']:.1f}, "
                     f"dead {dead:.1%}" if dead is not None else f"\n{name}: FVU {run['fvu']:.3f}")
        lines.append(f"  {'cell type':<30} {'feature':>7} {'AUROC':>6}  top genes (markers found)")
        for entry in run["best_per_cell_type"]:
            found = f"  [{', '.join(entry['markers_found'])} of {', '.join(entry['markers_checked'])}]" if entry["markers_checked"] else ""
            genes = ", ".join(entry["loadings"][:6]) or "less " + ", ".join(entry["negative_loadings"])
            lines.append(f"  {entry['category']:<30} {entry['feature']:>7} {entry['auroc']:>6.3f}  {genes}{found}")
    return "\n".join(lines)
