"""What an SAE's features mean when its inputs are not tokens: cells, images, embeddings.

``interpret_vectors(sae, data)`` encodes every vector once and writes, per feature:

- its density, maximum and mean activation, and a histogram of its non-zero activations;
- the top-activating rows, each with its metadata (cell type, sample, QC values);
- **enrichment** against every categorical metadata column: for each category, the AUROC of the
  feature's activation for rows in the category against rows outside it (ties averaged: the
  Mann-Whitney statistic), and the mean activation in and out;
- the Pearson correlation with every numeric metadata column;
- the rows it fires on among those the browser's **scatter** shows (the file's UMAP, t-SNE or PCA
  coordinates, else the inputs' first two principal components; at most ``MAX_SCATTER_POINTS`` rows);
- the **input dimensions it writes to**: the decoder row's largest loadings, by name (genes for cell
  data, column names for tables); for an embedding with known loadings (PCA of genes) the decoder
  row is first mapped back to the original dimensions (``VectorData.back_projection``).

With ``image_shape`` (pixels: ``(28, 28)``) each feature also gets its decoder row drawn as an image
and each top row the input image itself (PNG data URLs, ``saescope.interpret.images``).

It all goes to ``<sae>/interpret_vectors.json``. A column is categorical when it is not numeric, or
is a pandas category, and has at most ``MAX_CATEGORIES`` values.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saescope.errors import InvalidInput
from saescope.interpret.images import (
    parse_image_shape,
    plain_image,
    png_data_url,
    signed_image,
)
from saescope.io.atomic import atomic_write_json
from saescope.saes import SparseAutoencoder

MAX_CATEGORIES = 50
VECTORS_FILE = "interpret_vectors.json"
MAX_SCATTER_POINTS = 3000


def scatter_rows(n_rows: int, limit: int = MAX_SCATTER_POINTS, seed: int = 0) -> np.ndarray:
    """The rows the scatter shows: all of them, or a seeded uniform sample of ``limit``, in row order."""
    if n_rows <= limit:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=limit, replace=False))


def principal_plane(rows: Tensor) -> np.ndarray:
    """The rows projected on their first two principal components (signs fixed: each axis's largest loading positive)."""
    centred = rows.double() - rows.double().mean(dim=0)
    _u, _s, vh = torch.linalg.svd(centred, full_matrices=False)
    axes = vh[:2]
    if axes.shape[0] < 2:
        axes = torch.cat([axes, torch.zeros(2 - axes.shape[0], axes.shape[1], dtype=axes.dtype)])
    signs = torch.sign(axes.gather(1, axes.abs().argmax(dim=1, keepdim=True))).clamp_min(0) * 2 - 1
    return (centred @ (axes * signs).T).float().numpy()


def auroc_by_category(acts: Tensor, groups: np.ndarray) -> tuple[list[Any], Tensor, Tensor, Tensor]:
    """For activations ``acts`` [n, F] and labels ``groups`` [n]: (categories, AUROC [F, C], mean in [F, C], mean out [F, C]).

    AUROC of category c = (R_c − n_c(n_c+1)/2) / (n_c · (n − n_c)), with R_c the sum of the in-category
    rows' ranks among all n (average ranks for ties): the probability that a random row of c activates
    the feature more than a random row outside it, ties counting one half.
    """
    from scipy.stats import rankdata

    categories = [c for c in dict.fromkeys(groups.tolist()) if c is not None and not (isinstance(c, float) and math.isnan(c))]
    n = acts.shape[0]
    onehot = torch.zeros(n, len(categories), dtype=torch.float64)
    index = {c: i for i, c in enumerate(categories)}
    for row, value in enumerate(groups.tolist()):
        if value in index:
            onehot[row, index[value]] = 1.0
    counts = onehot.sum(dim=0)
    values = acts.double()
    ranks = torch.from_numpy(rankdata(values.numpy(), axis=0, method="average"))  # [n, F]
    rank_sums = ranks.T @ onehot  # [F, C]
    outside = n - counts
    auroc = (rank_sums - counts * (counts + 1) / 2) / (counts * outside).clamp_min(1)
    totals = values.T @ onehot
    mean_in = totals / counts.clamp_min(1)
    mean_out = (values.sum(dim=0)[:, None] - totals) / outside.clamp_min(1)
    return categories, auroc.float(), mean_in.float(), mean_out.float()


def _pearson(acts: Tensor, column: np.ndarray) -> Tensor:
    x = acts.double() - acts.double().mean(dim=0)
    y = torch.from_numpy(column.astype(np.float64))
    y = y - y.mean()
    denominator = (x.pow(2).sum(dim=0) * y.pow(2).sum()).sqrt()
    return ((x * y[:, None]).sum(dim=0) / denominator.clamp_min(1e-30)).float()


def _columns(metadata: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The metadata's categorical and numeric columns (others, such as unique ids, are only shown with the top rows)."""
    import pandas as pd

    categorical, numeric = {}, {}
    if metadata is None:
        return categorical, numeric
    for name in metadata.columns:
        column = metadata[name]
        if isinstance(column.dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
            if column.nunique(dropna=True) <= MAX_CATEGORIES:
                categorical[str(name)] = column.astype(object).to_numpy()
        else:
            values = column.to_numpy(dtype=np.float64)
            if np.isfinite(values).all() and values.std() > 0:
                numeric[str(name)] = values
    return categorical, numeric


def _r(value: float) -> float:
    return float(f"{value:.4g}")


@torch.no_grad()
def interpret_vectors(sae: SparseAutoencoder, data: Any, out: str | Path | None = None, top_k: int = 10, top_loadings: int = 10,
                      batch_size: int = 4096, max_entries: int = 500_000_000, image_shape: tuple[int, ...] | str | None = None) -> dict[str, Any]:
    """Interpret ``sae`` on ``data`` (a ``VectorData`` from ``load_vectors``); write ``VECTORS_FILE`` in ``out`` when given.

    Every activation is held at once (ranks need them all), so rows × latents is capped at ``max_entries``.
    """
    source, metadata, dim_names = data.source, data.metadata, data.dim_names
    if source.n_tokens * sae.d_sae > max_entries:
        raise InvalidInput(f"{data.what or 'the data'}: {source.n_tokens:,} rows × {sae.d_sae:,} latents is more than {max_entries:,} "
                           "activations to hold at once; interpret a sample of the rows (a smaller file)")
    if source.d_in != sae.d_in:
        raise InvalidInput(f"{data.what or 'the data'}: vectors of width {source.d_in}, but the SAE expects d_in={sae.d_in}; "
                           "give the data (and --data-key) it was trained on")
    if image_shape is not None:
        image_shape = parse_image_shape(image_shape, sae.d_in)
    sae = sae.eval()
    inputs = []
    acts_list = []
    shown = scatter_rows(source.n_tokens)
    coordinates = getattr(data, "coordinates", None)
    if coordinates is not None and len(coordinates[1]) != source.n_tokens:
        coordinates = None  # coordinates for other rows than these: the inputs' own PCA instead
    shown_inputs, start = [], 0
    for batch in source.iter_batches(batch_size, shuffle=False):
        acts_list.append(sae.encode(batch.to(sae.W_enc.device)).cpu())
        if image_shape is not None:
            inputs.append(batch.cpu())
        if coordinates is None:
            local = shown[(shown >= start) & (shown < start + batch.shape[0])] - start
            shown_inputs.append(batch[torch.from_numpy(local)].cpu())
        start += batch.shape[0]
    acts = torch.cat(acts_list)
    if coordinates is None:
        scatter = {"name": "PCA of the inputs (components 1 and 2)", "points": principal_plane(torch.cat(shown_inputs))}
    else:
        scatter = {"name": coordinates[0], "points": np.asarray(coordinates[1])[shown]}
    shown_acts = acts[torch.from_numpy(shown)]
    n_rows = acts.shape[0]
    categorical, numeric = _columns(metadata)
    enrichment = {name: auroc_by_category(acts, values) for name, values in categorical.items()}
    correlation = {name: _pearson(acts, values) for name, values in numeric.items()}
    decoder = sae.W_dec.detach().float().cpu()
    names = dim_names or [f"dim {i}" for i in range(sae.d_in)]
    if getattr(data, "back_projection", None) is not None:
        matrix, names = data.back_projection
        decoder = decoder @ torch.from_numpy(matrix)  # [d_sae, n_original]: what each feature writes to the original dimensions
    inputs_all = torch.cat(inputs) if inputs else None
    fired = acts > 0
    density = fired.double().mean(dim=0)
    top_values, top_rows = acts.topk(min(top_k, n_rows), dim=0)  # [k, F]
    records = []
    for feature in range(sae.d_sae):
        column = acts[:, feature]
        active = column[column > 0]
        record: dict[str, Any] = {"id": feature, "density": _r(float(density[feature])), "max": _r(float(column.max())),
                                  "mean_active": _r(float(active.mean())) if active.numel() else 0.0}
        if active.numel():
            counts, edges = np.histogram(active.numpy(), bins=20)
            record["histogram"] = {"counts": counts.tolist(), "edges": [_r(e) for e in edges]}
            rows = []
            for value, row in zip(top_values[:, feature].tolist(), top_rows[:, feature].tolist()):
                if value <= 0:
                    break
                entry = {"row": int(row), "act": _r(value)}
                if image_shape is not None:
                    entry["image"] = png_data_url(plain_image(inputs_all[int(row)].numpy(), image_shape))
                if metadata is not None:
                    entry["metadata"] = {str(k): (v if isinstance(v, (int, float, str, bool)) or v is None else str(v))
                                         for k, v in metadata.iloc[int(row)].items()}
                rows.append(entry)
            record["top"] = rows
        record["enrichment"] = {name: sorted(({"category": str(c), "auroc": _r(float(auroc[feature, i])), "mean_in": _r(float(inside[feature, i])),
                                               "mean_out": _r(float(outside[feature, i]))} for i, c in enumerate(categories)),
                                             key=lambda e: -e["auroc"])
                                for name, (categories, auroc, inside, outside) in enrichment.items()}
        record["correlation"] = {name: _r(float(r[feature])) for name, r in correlation.items()}
        row = decoder[feature]
        order = row.abs().argsort(descending=True)[:top_loadings].tolist()
        record["loadings"] = [[names[i], _r(float(row[i]))] for i in order]
        on = (shown_acts[:, feature] > 0).nonzero().flatten().tolist()
        record["scatter"] = [[i, _r(float(shown_acts[i, feature]))] for i in on]
        if image_shape is not None:
            record["decoder_image"] = png_data_url(signed_image(sae.W_dec[feature].detach().float().cpu().numpy(), image_shape))
        records.append(record)
    result = {"n_rows": n_rows, "n_features": sae.d_sae, "alive": int((density > 0).sum()), "categorical": list(categorical),
              "numeric": list(numeric), "dim_names": dim_names is not None or getattr(data, "back_projection", None) is not None,
              "image_shape": list(image_shape) if image_shape is not None else None, "what": getattr(data, "what", None),
              "scatter": {"name": scatter["name"], "rows": shown.tolist(), "points": [[_r(float(x)), _r(float(y))] for x, y in scatter["points"]]},
              "features": records}
    if out is not None:
        atomic_write_json(Path(out) / VECTORS_FILE, result)
    return result


def best_feature_per_category(result: dict[str, Any], column: str) -> list[dict[str, Any]]:
    """For each category of ``column``, the feature with the highest AUROC and its top loadings (a cell-type table)."""
    best: dict[str, dict[str, Any]] = {}
    for record in result["features"]:
        for entry in record["enrichment"].get(column, []):
            if entry["category"] not in best or entry["auroc"] > best[entry["category"]]["auroc"]:
                best[entry["category"]] = {"category": entry["category"], "feature": record["id"], "auroc": entry["auroc"],
                                           "density": record["density"], "loadings": [name for name, weight in record["loadings"] if weight > 0][:6],
                                           "negative_loadings": [name for name, weight in record["loadings"] if weight < 0][:3]}
    if not best:
        raise InvalidInput(f"no categorical metadata column {column!r}; categorical columns: {result['categorical']}")
    return sorted(best.values(), key=lambda entry: entry["category"])
