"""Vectors from scientific file formats, for SAEs on data that are not a language model's activations.

``load_vectors(path)`` reads, by suffix:

- ``.npy``: one array ``[n, d]``, memory-mapped;
- ``.npz``: the array named by ``key`` (or the only one);
- ``.csv`` / ``.parquet``: the numeric columns are the vectors; other columns (and numeric ones named
  in ``metadata_columns``, e.g. an integer cluster id) are kept as metadata;
- ``.h5ad`` (AnnData): ``X`` by default, or ``raw`` (``raw.X``), ``layers/<name>`` or
  ``obsm/<name>`` (``X_pca``) by ``key``; ``obs`` is the metadata and ``var_names`` name the input
  dimensions (genes); a sparse matrix is read a block of rows at a time, never densified whole; for
  ``obsm/X_pca`` with ``varm['PCs']`` the loadings map feature directions back to genes;
- a folder of ``.npy`` shards of one width, read in name order as one array.

Every source is an ``ArraySource`` (seeded shuffles, exact resume, ``fingerprint``), and every
malformed input stops with one message naming the file and what is wrong.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saescope.data.activations import ArraySource
from saescope.errors import InvalidInput, MissingDependency, MissingFile, WrongType

VECTOR_SUFFIXES = (".npy", ".npz", ".csv", ".parquet", ".h5ad")


@dataclass
class VectorData:
    """Vectors to train on, with what describes them."""

    source: ArraySource
    metadata: Any = None
    """A pandas DataFrame with one row per vector (labels, ids, QC values), or None."""
    dim_names: list[str] | None = None
    """Names of the input dimensions (genes, column names), or None."""
    what: str = ""
    """Which array of the file was read, for messages and records."""
    back_projection: tuple[np.ndarray, list[str]] | None = None
    """For an embedding with known loadings (an .h5ad's ``X_pca`` and ``varm['PCs']``): a matrix
    [d_in, n_original] taking a direction of the embedding to the original dimensions, and their names."""
    coordinates: tuple[str, np.ndarray] | None = None
    """2-D coordinates the file gives for each row (an .h5ad's ``X_umap``, ``X_tsne`` or the first two
    PCA components), with their name: the browser's scatter. None: the browser uses the inputs' own PCA."""


class _DenseRows(ArraySource):
    """An ``ArraySource`` over any row container that slices like numpy (a list of shards, a sparse matrix)."""

    def __init__(self, rows: Any, n_rows: int, d_in: int, name: str) -> None:  # noqa: D107 - ArraySource's checks do not apply
        if n_rows == 0:
            raise InvalidInput(f"{name}: no vectors (0 rows)")
        self.array = rows
        self.name = name
        self.n_tokens, self.d_in = int(n_rows), int(d_in)

    def _rows(self, index: Tensor | slice) -> Tensor:
        if isinstance(index, Tensor):
            index = np.sort(index.numpy())
        block = self.array[index]
        if hasattr(block, "toarray"):  # scipy sparse: densify one batch at a time
            block = block.toarray()
        return torch.from_numpy(np.asarray(block, dtype=np.float32))


class _Shards:
    """Several ``[n_i, d]`` memmaps read as one ``[Σ n_i, d]`` array (slices and sorted index arrays)."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays
        self.starts = np.cumsum([0] + [a.shape[0] for a in arrays])

    def __getitem__(self, index: slice | np.ndarray) -> np.ndarray:
        rows = np.arange(self.starts[-1])[index] if isinstance(index, slice) else np.asarray(index)
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        return np.concatenate([self.arrays[s][rows[shard == s] - self.starts[s]] for s in np.unique(shard)]) if rows.size else \
            np.empty((0, self.arrays[0].shape[1]), dtype=np.float32)


def _check_float(array: Any, where: str) -> None:
    if np.dtype(array.dtype).kind not in "fiu":
        raise WrongType(f"{where}: vectors must be numbers, found {array.dtype}")


def _from_npy(path: Path) -> VectorData:
    try:
        array = np.load(path, mmap_mode="r")
    except ValueError as error:
        raise InvalidInput(f"{path}: cannot read ({error})") from None
    if array.dtype.kind != "f":
        raise WrongType(f"{path}: vectors must be floating point, found {array.dtype}; save them as float32: np.save(path, array.astype(np.float32))")
    if array.ndim != 2:
        raise InvalidInput(f"{path}: expected a 2-D array [n_vectors, d], found shape {list(array.shape)}")
    return VectorData(ArraySource(array, str(path)), what=f"{list(array.shape)} {array.dtype}")


def _from_npz(path: Path, key: str | None) -> VectorData:
    try:
        archive = np.load(path)
    except (OSError, ValueError) as error:
        raise InvalidInput(f"{path}: cannot read this .npz ({error})") from None
    names = list(archive.files)
    if key is None:
        if len(names) != 1:
            raise InvalidInput(f"{path}: holds {names}; name the array to train on with --data-key")
        key = names[0]
    if key not in names:
        raise InvalidInput(f"{path}: no array {key!r}; it holds {names}")
    array = archive[key]
    _check_float(array, f"{path}[{key}]")
    if array.ndim != 2:
        raise InvalidInput(f"{path}[{key}]: expected a 2-D array [n_vectors, d], found shape {list(array.shape)}")
    return VectorData(ArraySource(array.astype(np.float32), f"{path}[{key}]"), what=key)


def _from_table(path: Path, metadata_columns: tuple[str, ...]) -> VectorData:
    import pandas as pd

    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as error:  # noqa: BLE001 - pandas and pyarrow raise many kinds for a bad file
        raise InvalidInput(f"{path}: cannot read this table ({type(error).__name__}: {str(error).splitlines()[0]})") from None
    missing = [c for c in metadata_columns if c not in frame.columns]
    if missing:
        raise InvalidInput(f"{path}: no column(s) {missing} for --metadata-columns; it has {list(frame.columns)[:20]}")
    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
               and c not in metadata_columns]
    if not numeric:
        raise InvalidInput(f"{path}: no numeric columns to train on (columns: {list(frame.columns)[:20]})")
    values = frame[numeric].to_numpy(dtype=np.float32)
    if np.isnan(values).any():
        row, column = (int(i) for i in np.argwhere(np.isnan(values))[0])
        raise InvalidInput(f"{path}: missing value in column {numeric[column]!r}, row {row + 1}; fill or drop it before training")
    metadata = frame[[c for c in frame.columns if c not in numeric]]
    return VectorData(ArraySource(values, str(path)), metadata if metadata.shape[1] else None, [str(c) for c in numeric],
                      what=f"{len(numeric)} numeric columns")


def _from_h5ad(path: Path, key: str | None) -> VectorData:
    try:
        import anndata
    except ImportError as error:
        raise MissingDependency(f"{path}: reading .h5ad needs anndata: pip install anndata (or pip install 'saescope[bio]')") from error
    try:
        with warnings.catch_warnings():  # anndata's notices about old file layouts are not the user's concern
            warnings.simplefilter("ignore")  # OldFormatWarning, FutureWarning: about the file, not the user's code
            data = anndata.read_h5ad(path)
    except Exception as error:  # noqa: BLE001 - h5py and anndata raise many kinds for a bad file
        raise InvalidInput(f"{path}: cannot read this .h5ad ({type(error).__name__}: {str(error).splitlines()[0]})") from None
    dim_names: list[str] | None = [str(v) for v in data.var_names]
    back_projection = None
    if key in (None, "X"):
        matrix, what = data.X, "X"
    elif key == "raw":
        if data.raw is None:
            raise InvalidInput(f"{path}: --data-key raw, but the file has no raw matrix")
        matrix, what, dim_names = data.raw.X, "raw", [str(v) for v in data.raw.var_names]
    elif key.startswith("layers/") or key in data.layers:
        name = key.removeprefix("layers/")
        if name not in data.layers:
            raise InvalidInput(f"{path}: no layer {name!r}; layers: {list(data.layers)}")
        matrix, what = data.layers[name], f"layers/{name}"
    elif key.startswith("obsm/") or key in data.obsm:
        name = key.removeprefix("obsm/")
        if name not in data.obsm:
            raise InvalidInput(f"{path}: no obsm embedding {name!r}; obsm: {list(data.obsm)}")
        matrix, what, dim_names = data.obsm[name], f"obsm/{name}", None  # an embedding's dimensions are not genes
        loadings = data.varm.get("PCs") if name == "X_pca" else None
        if loadings is not None and loadings.shape[1] == matrix.shape[1]:
            # genes left out of the PCA (not highly variable) carry NaN loadings: they receive nothing
            back_projection = (np.nan_to_num(np.asarray(loadings, dtype=np.float32)).T, [str(v) for v in data.var_names])
    else:
        raise InvalidInput(f"{path}: --data-key {key!r} is neither X, raw, a layer ({list(data.layers)}) nor an obsm embedding ({list(data.obsm)})")
    if matrix is None:
        raise InvalidInput(f"{path}: {what} is empty")
    if hasattr(matrix, "to_numpy"):
        matrix = matrix.to_numpy()
    _check_float(matrix, f"{path}:{what}")
    n_rows, d_in = matrix.shape
    if hasattr(matrix, "tocsr"):
        source: ArraySource = _DenseRows(matrix.tocsr(), n_rows, d_in, f"{path}:{what}")
        what += " (sparse, read a block of rows at a time)"
    else:
        source = ArraySource(np.asarray(matrix, dtype=np.float32), f"{path}:{what}")
    return VectorData(source, data.obs.copy() if data.obs.shape[1] else None, dim_names, what=what, back_projection=back_projection,
                      coordinates=_coordinates(data))


def _coordinates(data: Any) -> tuple[str, np.ndarray] | None:
    """The file's own 2-D picture of the rows: UMAP, else t-SNE, else the first two PCA components."""
    for name, label in (("X_umap", "UMAP"), ("X_tsne", "t-SNE"), ("X_pca", "PCA (components 1 and 2)")):
        if name in data.obsm:
            points = np.asarray(data.obsm[name], dtype=np.float32)
            if points.ndim == 2 and points.shape[1] >= 2 and np.isfinite(points[:, :2]).all():
                return label, points[:, :2]
    return None


def _from_folder(path: Path) -> VectorData:
    files = sorted(path.glob("*.npy"))
    if not files:
        raise InvalidInput(f"{path}: a folder of vectors must hold .npy shards; found none")
    arrays = []
    for file in files:
        array = np.load(file, mmap_mode="r")
        if array.ndim != 2 or array.dtype.kind != "f":
            raise InvalidInput(f"{file}: each shard must be a 2-D float array, found {array.dtype} {list(array.shape)}")
        if arrays and array.shape[1] != arrays[0].shape[1]:
            raise InvalidInput(f"{file}: width {array.shape[1]}, but {files[0].name} has {arrays[0].shape[1]}; every shard needs one width")
        arrays.append(array)
    n_rows = sum(a.shape[0] for a in arrays)
    return VectorData(_DenseRows(_Shards(arrays), n_rows, arrays[0].shape[1], str(path)), what=f"{len(files)} shards")


def load_vectors(path: str | Path, key: str | None = None, metadata_columns: tuple[str, ...] | list[str] = ()) -> VectorData:
    """The vectors in ``path`` (see the module docstring for the formats, ``key`` and ``metadata_columns``).

    Example:
        >>> cells = load_vectors("pbmc.h5ad", key="obsm/X_pca")            # doctest: +SKIP
        >>> cells.source.n_tokens, cells.metadata.columns                  # doctest: +SKIP
    """
    file = Path(path)
    if not file.exists():
        raise MissingFile(f"--data {path}: no such file or folder")
    if file.is_dir():
        return _from_folder(file)
    suffix = file.suffix.lower()
    if suffix == ".npy":
        return _from_npy(file)
    if suffix == ".npz":
        return _from_npz(file, key)
    if suffix in (".csv", ".parquet"):
        return _from_table(file, tuple(metadata_columns))
    if suffix == ".h5ad":
        return _from_h5ad(file, key)
    raise InvalidInput(f"--data {path}: unknown format {suffix!r}; saescope reads {', '.join(VECTOR_SUFFIXES)} and folders of .npy shards")
