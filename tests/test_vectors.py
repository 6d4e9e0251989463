"""Vectors from scientific file formats (issue 16, item 1): every format on small files written here, bad inputs,
and training from the command line on each."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse
import torch

from saescope.cli import main
from saescope.data.vectors import load_vectors

RNG = np.random.default_rng(0)
VALUES = RNG.normal(size=(300, 12)).astype(np.float32)


def _all_rows(source):
    return torch.cat(list(source.iter_batches(64, shuffle=False))).numpy()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("vectors")
    np.save(root / "a.npy", VALUES)
    np.savez(root / "two.npz", cells=VALUES, other=np.zeros((3, 3), np.float32))
    frame = pd.DataFrame(VALUES, columns=[f"g{i}" for i in range(12)])
    frame.insert(0, "cell_id", [f"c{i}" for i in range(300)])
    frame["cluster"] = RNG.integers(0, 4, size=300)
    frame.to_csv(root / "t.csv", index=False)
    frame.to_parquet(root / "t.parquet")
    (root / "shards").mkdir()
    np.save(root / "shards" / "000.npy", VALUES[:100])
    np.save(root / "shards" / "001.npy", VALUES[100:])
    import anndata

    counts = scipy.sparse.random(300, 12, density=0.2, format="csr", random_state=0, dtype=np.float32)
    obs = pd.DataFrame({"cell_type": pd.Categorical(RNG.choice(["B", "T", "NK"], size=300)), "n_genes": RNG.integers(100, 900, 300)},
                       index=[f"cell{i}" for i in range(300)])
    data = anndata.AnnData(X=counts, obs=obs, var=pd.DataFrame(index=[f"GENE{i}" for i in range(12)]))
    data.layers["dense"] = VALUES
    data.obsm["X_pca"] = VALUES[:, :5].copy()
    data.write_h5ad(root / "cells.h5ad")
    return root, counts


def test_every_format_reads_the_same_numbers(files):
    root, counts = files
    for name, key in (("a.npy", None), ("two.npz", "cells"), ("t.csv", None), ("t.parquet", None), ("shards", None)):
        vectors = load_vectors(root / name, key, metadata_columns=["cluster"])
        np.testing.assert_allclose(_all_rows(vectors.source), VALUES, rtol=1e-6, err_msg=name)
    table = load_vectors(root / "t.csv", metadata_columns=["cluster"])
    assert table.dim_names == [f"g{i}" for i in range(12)] and list(table.metadata.columns) == ["cell_id", "cluster"]
    cells = load_vectors(root / "cells.h5ad")
    np.testing.assert_allclose(_all_rows(cells.source), counts.toarray(), rtol=1e-6)
    assert cells.dim_names[:2] == ["GENE0", "GENE1"] and list(cells.metadata.columns) == ["cell_type", "n_genes"]
    assert "sparse" in cells.what and not isinstance(cells.source.array, np.ndarray)  # never densified whole
    batch = next(cells.source.iter_batches(50, shuffle=True, seed=1))
    assert batch.shape == (50, 12)
    np.testing.assert_allclose(_all_rows(load_vectors(root / "cells.h5ad", "layers/dense").source), VALUES, rtol=1e-6)
    pca = load_vectors(root / "cells.h5ad", "obsm/X_pca")
    assert pca.source.d_in == 5 and pca.dim_names is None
    # the file's own 2-D picture of the cells, for the browser's scatter (no UMAP here: the first two PCs)
    assert cells.coordinates[0] == "PCA (components 1 and 2)" and np.allclose(cells.coordinates[1], VALUES[:, :2])
    assert load_vectors(root / "a.npy").coordinates is None


@pytest.mark.parametrize("name,key,message", [
    ("two.npz", None, r"holds \['cells', 'other'\]; name the array to train on with --data-key"),
    ("two.npz", "nope", r"no array 'nope'; it holds"),
    ("cells.h5ad", "obsm/X_umap", r"no obsm embedding 'X_umap'; obsm: \['X_pca'\]"),
    ("cells.h5ad", "spliced", r"--data-key 'spliced' is neither X, raw, a layer \(\['dense'\]\) nor an obsm embedding"),
    ("missing.csv", None, "no such file or folder"),
    ("bad.txt", None, r"unknown format '.txt'; saescope reads .npy, .npz, .csv, .parquet, .h5ad"),
    ("holes.csv", None, r"missing value in column 'b', row 2"),
    ("words.csv", None, "no numeric columns to train on"),
    ("ints.npy", None, "vectors must be floating point, found int64"),
    ("broken.h5ad", None, "cannot read this .h5ad"),
])
def test_bad_inputs_name_the_file_and_the_problem(files, name, key, message):
    root, _counts = files
    (root / "bad.txt").write_text("x")
    (root / "holes.csv").write_text("a,b\n1,2\n3,\n")
    (root / "words.csv").write_text("a,b\nx,y\n")
    np.save(root / "ints.npy", np.arange(12).reshape(3, 4))
    (root / "broken.h5ad").write_bytes(b"not hdf5")
    with pytest.raises(Exception, match=message) as info:
        load_vectors(root / name, key)
    assert name.split(".")[0] in str(info.value) or "--data" in str(info.value)


@pytest.mark.parametrize("name,extra", [("t.parquet", ["--metadata-columns", "cluster"]), ("cells.h5ad", ["--data-key", "obsm/X_pca"]),
                                        ("shards", []), ("two.npz", ["--data-key", "cells"])])
def test_train_and_eval_from_the_command_line_on_each_format(files, tmp_path, name, extra, capsys):
    root, _counts = files
    assert main(["train", "--data", str(root / name), *extra, "--arch", "topk", "--width", "16", "--target-l0", "2",
                 "--tokens", "1024", "--batch-size", "128", "--out", str(tmp_path / "run")]) == 0
    cfg = json.loads((tmp_path / "run" / "topk" / "cfg.json").read_text())
    assert cfg["d_in"] == (5 if "obsm/X_pca" in extra else 12)
    assert main(["eval", str(tmp_path / "run" / "topk"), "--data", str(root / name), *extra]) == 0
    assert "fvu:" in capsys.readouterr().out
