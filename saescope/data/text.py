"""Text documents from local files, Hugging Face ``datasets`` or the built-in corpus.

``iter_documents(spec)`` accepts:

- ``pydocs``: the built-in corpus (see ``saescope.data.pydocs``);
- a ``.txt`` file (documents separated by blank lines), a ``.jsonl`` file (one JSON object per line,
  text in ``text_field``) or a ``.parquet`` file (column ``text_field``);
- a folder written by ``datasets.Dataset.save_to_disk``, or a folder of .txt/.jsonl/.parquet files;
- a Hugging Face hub dataset id (``hf:`` prefix optional), read with ``load_dataset(streaming=True)``.

``held_out`` splits documents by a hash of their text, so the split is stable across runs,
machines and orders: the same document is always on the same side.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from pathlib import Path

from saescope.errors import InvalidInput, MissingDependency, MissingFile

TEXT_SUFFIXES = (".txt", ".jsonl", ".parquet")


def _utf8_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file; a NUL byte or invalid UTF-8 stops with the byte offset.

    Decoding with replacement would train on mojibake without a word (a Latin-1 or binary file).
    """
    offset = 0
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, 1):
            nul = raw.find(b"\x00")
            if nul >= 0:
                raise InvalidInput(f"{path}: a NUL byte at byte {offset + nul} (line {number}): this looks like a binary file, not text")
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise InvalidInput(f"{path}: not UTF-8 at byte {offset + error.start} (line {number}); convert the file to UTF-8 "
                                   "(e.g. iconv -f latin1 -t utf-8)") from None
            offset += len(raw)


def _txt_documents(path: Path) -> Iterator[str]:
    paragraph: list[str] = []
    for _number, line in _utf8_lines(path):
        if line.strip():
            paragraph.append(line)
        elif paragraph:
            yield "".join(paragraph).strip()
            paragraph = []
    if paragraph:
        yield "".join(paragraph).strip()


def jsonl_documents(path: Path, text_field: str) -> Iterator[str]:
    """The non-empty ``text_field`` of each line of a .jsonl file; a bad line is named by number."""
    for number, line in _utf8_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InvalidInput(f"{path}:{number}: not valid JSON ({error.msg})") from error
        if not isinstance(record, dict) or text_field not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise InvalidInput(f"{path}:{number}: no field {text_field!r} (found {keys}); pass --text-field")
        if record[text_field]:
            yield str(record[text_field])


def _parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    if text_field not in parquet.schema_arrow.names:
        raise InvalidInput(f"{path}: no column {text_field!r} (columns: {parquet.schema_arrow.names}); pass --text-field")
    for batch in parquet.iter_batches(columns=[text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text:
                yield str(text)


def _dataset_documents(dataset: object, text_field: str, where: str) -> Iterator[str]:
    columns = getattr(dataset, "column_names", None)
    if isinstance(columns, list) and text_field not in columns:
        raise InvalidInput(f"{where}: no column {text_field!r} (columns: {columns}); pass --text-field")
    for record in dataset:  # type: ignore[attr-defined]
        text = record.get(text_field) if isinstance(record, dict) else None
        if text:
            yield str(text)


def _file_documents(path: Path, text_field: str) -> Iterator[str]:
    if path.suffix == ".txt":
        return _txt_documents(path)
    if path.suffix == ".jsonl":
        return jsonl_documents(path, text_field)
    if path.suffix == ".parquet":
        return _parquet_documents(path, text_field)
    raise InvalidInput(f"{path}: unsupported file type {path.suffix!r}; use .txt, .jsonl or .parquet")


def _folder_documents(path: Path, text_field: str, split: str) -> Iterator[str]:
    if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
        from datasets import DatasetDict, load_from_disk

        dataset = load_from_disk(str(path))
        if isinstance(dataset, DatasetDict):
            if split not in dataset:
                raise InvalidInput(f"{path}: no split {split!r} (splits: {list(dataset)}); pass --split")
            dataset = dataset[split]
        yield from _dataset_documents(dataset, text_field, str(path))
        return
    files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
    if not files:
        raise InvalidInput(f"{path}: no dataset here (no save_to_disk files and no .txt/.jsonl/.parquet files)")
    for file in files:
        yield from _file_documents(file, text_field)


def _hub_documents(name: str, text_field: str, split: str) -> Iterator[str]:
    try:
        from datasets import load_dataset
    except ImportError as error:
        raise MissingDependency(f"reading the hub dataset {name!r} needs the datasets package: pip install datasets") from error
    dataset = load_dataset(name, split=split, streaming=True)
    yield from _dataset_documents(dataset, text_field, name)


def iter_documents(spec: str, text_field: str = "text", split: str = "train") -> Iterator[str]:
    """Documents (strings) from ``spec``, in a deterministic order (see the module docstring)."""
    if spec == "pydocs":
        from saescope.data.pydocs import pydocs_documents

        return pydocs_documents()
    if spec.startswith("hf:"):
        return _hub_documents(spec[3:], text_field, split)
    path = Path(spec).expanduser()
    if path.is_file():
        return _file_documents(path, text_field)
    if path.is_dir():
        return _folder_documents(path, text_field, split)
    looks_local = spec.startswith((".", "/", "~")) or path.suffix in TEXT_SUFFIXES or spec.count("/") > 1
    if looks_local:
        raise MissingFile(f"dataset {spec!r}: no such file or folder")
    return _hub_documents(spec, text_field, split)


def check_dataset(spec: str) -> None:
    """Fail fast on a local path that does not exist (before any model is loaded)."""
    if spec == "pydocs" or spec.startswith("hf:"):
        return
    path = Path(spec).expanduser()
    if not path.exists() and (spec.startswith((".", "/", "~")) or path.suffix in TEXT_SUFFIXES or spec.count("/") > 1):
        raise MissingFile(f"dataset {spec!r}: no such file or folder")


def is_held_out(document: str, fraction: float) -> bool:
    """Whether ``document`` belongs to the held-out part (stable hash of its text)."""
    return zlib.crc32(document.encode("utf-8", errors="replace")) % 10_000 < fraction * 10_000


def split_documents(documents: Iterator[str], part: str, fraction: float = 0.05) -> Iterator[str]:
    """Keep the ``"train"`` or ``"eval"`` part of a document stream, or everything (``"all"``)."""
    if part not in ("train", "eval", "all"):
        raise InvalidInput(f"part must be 'train', 'eval' or 'all', got {part!r}")
    for document in documents:
        if part == "all" or is_held_out(document, fraction) == (part == "eval"):
            yield document
