"""Interpretation without tokens (issue 16, item 3): enrichment AUROC against a brute-force count, correlations,
loadings by name, and a planted cell-type feature found from the command line."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from saescope.cli import main
from saescope.interpret.vectors import auroc_by_category


def _brute_auroc(values, inside):
    positives, negatives = values[inside], values[~inside]
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def test_auroc_and_means_against_a_pairwise_count():
    rng = np.random.default_rng(0)
    acts = torch.from_numpy(np.round(rng.exponential(size=(60, 3)) * (rng.random((60, 3)) < 0.5), 1))  # ties and zeros
    groups = rng.choice(["a", "b", "c"], size=60).astype(object)
    categories, auroc, mean_in, mean_out = auroc_by_category(acts, groups)
    for f in range(3):
        for i, category in enumerate(categories):
            inside = groups == category
            assert float(auroc[f, i]) == pytest.approx(_brute_auroc(acts[:, f].numpy(), inside), abs=1e-6)
            assert float(mean_in[f, i]) == pytest.approx(acts[inside, f].mean().item(), rel=1e-5)
            assert float(mean_out[f, i]) == pytest.approx(acts[~inside, f].mean().item(), rel=1e-5)


def test_a_planted_cell_type_feature_is_found_with_its_marker_genes(tmp_path, capsys):
    rng = np.random.default_rng(1)
    n, genes = 2000, [f"G{i}" for i in range(40)]
    cell_type = rng.choice(["B", "T", "NK", "Mono"], size=n)
    markers = {"B": [0, 1, 2], "T": [10, 11], "NK": [20, 21, 22], "Mono": [30, 31]}
    values = rng.normal(scale=0.1, size=(n, 40)) + 2.0
    for kind, columns in markers.items():
        values[np.ix_(cell_type == kind, columns)] += rng.exponential(3.0, size=((cell_type == kind).sum(), len(columns)))
    frame = pd.DataFrame(values.astype(np.float32), columns=genes)
    frame["cell_type"] = cell_type
    frame["depth"] = values.sum(axis=1)
    frame.to_parquet(tmp_path / "cells.parquet")
    assert main(["train", "--data", str(tmp_path / "cells.parquet"), "--metadata-columns", "depth", "--arch", "topk", "--width", "32",
                 "--target-l0", "3", "--tokens", str(2000 * 30), "--batch-size", "250", "--out", str(tmp_path / "run")]) == 0
    assert main(["interpret", str(tmp_path / "run" / "topk"), "--data", str(tmp_path / "cells.parquet"), "--metadata-columns", "depth"]) == 0
    printed = capsys.readouterr().out
    assert "best feature per cell_type" in printed
    result = json.loads((tmp_path / "run" / "topk" / "interpret_vectors.json").read_text())
    assert result["categorical"] == ["cell_type"] and result["numeric"] == ["depth"] and result["n_rows"] == 2000
    from saescope.interpret.vectors import best_feature_per_category

    for entry in best_feature_per_category(result, "cell_type"):
        assert entry["auroc"] > 0.95, entry
        planted = {genes[i] for i in markers[entry["category"]]}
        assert planted & set(entry["loadings"][:3]), entry  # its strongest loadings are the planted markers
    record = result["features"][best_feature_per_category(result, "cell_type")[0]["feature"]]
    assert record["top"][0]["metadata"]["cell_type"] in markers and "depth" in record["correlation"]


def test_the_scatter_uses_the_files_coordinates_else_the_inputs_pca():
    from saescope.data.vectors import ArraySource, VectorData
    from saescope.interpret.vectors import (
        interpret_vectors,
        principal_plane,
        scatter_rows,
    )
    from saescope.saes import create_sae

    assert scatter_rows(10).tolist() == list(range(10))
    sample = scatter_rows(10_000, limit=50)
    assert len(sample) == 50 and sample.tolist() == sorted(set(sample.tolist())) and (sample == scatter_rows(10_000, limit=50)).all()
    # points on a line along (1, 2, 0): all the spread lands on the first axis, with a positive largest loading
    t = torch.linspace(-1, 1, 21, dtype=torch.float64)
    rows = torch.stack([t, 2 * t, torch.zeros_like(t)], dim=1) + 5
    plane = principal_plane(rows)
    assert np.allclose(plane[:, 0], (t * 5**0.5).numpy(), atol=1e-5) and np.allclose(plane[:, 1], 0, atol=1e-5)

    torch.manual_seed(0)
    values = torch.rand(300, 6)
    sae = create_sae("topk", 6, 8, k=2)
    result = interpret_vectors(sae, VectorData(ArraySource(values.numpy(), "v")))
    assert result["scatter"]["name"].startswith("PCA of the inputs") and len(result["scatter"]["points"]) == 300
    acts = sae.encode(values)
    for record in result["features"]:
        assert [i for i, _ in record["scatter"]] == (acts[:, record["id"]] > 0).nonzero().flatten().tolist()
    umap = np.stack([np.arange(300), -np.arange(300)], axis=1).astype(np.float32)
    given = interpret_vectors(sae, VectorData(ArraySource(values.numpy(), "v"), coordinates=("UMAP", umap)))
    assert given["scatter"]["name"] == "UMAP" and given["scatter"]["points"][7] == [7.0, -7.0]
    # coordinates for another number of rows are not used
    other = interpret_vectors(sae, VectorData(ArraySource(values.numpy(), "v"), coordinates=("UMAP", umap[:10])))
    assert other["scatter"]["name"].startswith("PCA")
