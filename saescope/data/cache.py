"""An on-disk activation cache: sharded ``.npy`` files per hookpoint plus a manifest.

Layout::

    CACHE/manifest.json
    CACHE/<hookpoint>/shard_00000.npy   [n_tokens_in_shard, d]  (fp32, fp16, or bf16 stored as uint16)

Shard ``i`` of every hookpoint holds the same tokens. A shard counts only once the manifest lists
it: shards are written to a temporary name, flushed, renamed, and then the manifest is replaced
atomically. A writer killed at any moment therefore leaves the old manifest or the new one, never a
corrupt listed shard; what the old manifest does not list (a half-written ``.tmp`` file, or a whole
shard renamed just before the kill) is ignored by readers and deleted on resume. ``resume=True``
continues after the last listed shard, since shards end on context boundaries and the manifest
records how many contexts they cover.

``CachedActivations`` reads a cache through the same source interface as arrays and the live model,
so training from the cache and from the model is the same call.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saescope.errors import AlreadyExists, InvalidInput, MissingFile
from saescope.io.atomic import atomic_write, atomic_write_json, file_sha256, read_json

MANIFEST = "manifest.json"
SHARD_TOKENS = 65_536
"""Default tokens per shard file (each hookpoint has its own shards)."""
FORMAT = "saescope-activation-cache"
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def storage_dtype_name(dtype: str) -> str:
    name = _ALIASES.get(dtype, dtype)
    if name not in STORAGE_DTYPES:
        raise InvalidInput(f"cache dtype must be one of fp32, fp16, bf16 (got {dtype!r})")
    return name


def _to_numpy(rows: Tensor, dtype_name: str) -> np.ndarray:
    rows = rows.detach().to("cpu", STORAGE_DTYPES[dtype_name]).contiguous()
    if dtype_name == "bfloat16":
        return rows.view(torch.uint16).numpy()  # numpy has no bfloat16: keep the bits
    return rows.numpy()


def _from_numpy(array: np.ndarray, dtype_name: str) -> Tensor:
    tensor = torch.from_numpy(np.array(array))  # a copy: memmaps are read-only
    if dtype_name == "bfloat16":
        tensor = tensor.view(torch.bfloat16)
    return tensor.float()


def _write_json_atomic(path: Path, value: dict[str, Any]) -> None:
    atomic_write_json(path, value, indent=2)


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    def write(temporary: Path) -> None:
        with temporary.open("wb") as handle:
            np.save(handle, array)

    atomic_write(path, write)


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise MissingFile(f"{path}: not an activation cache (no {MANIFEST}); write one with `saescope cache`")
    manifest = read_json(file)
    if manifest.get("format") != FORMAT:
        raise InvalidInput(f"{file}: not a saescope activation cache manifest (format={manifest.get('format')!r})")
    return manifest


class CacheWriter:
    """Append activations shard by shard; see the module docstring for the crash-safety rules."""

    def __init__(self, path: str | os.PathLike, widths: dict[str, int], dtype: str, metadata: dict[str, Any], resume: bool = False) -> None:
        from saescope._version import __version__

        self.path = Path(path)
        self.dtype = storage_dtype_name(dtype)
        if (self.path / MANIFEST).is_file():
            if not resume:
                raise AlreadyExists(f"{self.path}: a cache already exists here; pass --resume to continue it or choose another folder")
            self.manifest = read_manifest(self.path)
            for key in ("model", "dataset", "context_size", "dtype", "context_order"):
                wanted = metadata.get(key, self.dtype if key == "dtype" else None)
                if key in self.manifest and wanted is not None and self.manifest[key] != wanted:
                    raise InvalidInput(f"{self.path}: cache has {key}={self.manifest[key]!r} but this run has {wanted!r}; resume with the same settings")
            if sorted(self.manifest["hookpoints"]) != sorted(widths):
                raise InvalidInput(f"{self.path}: cache holds hookpoints {sorted(self.manifest['hookpoints'])}, this run asks for {sorted(widths)}")
            for stray in self.path.rglob("*.tmp"):
                stray.unlink()  # half-written shards from a killed run
            for name, entry in self.manifest["hookpoints"].items():
                listed = {shard["file"] for shard in entry["shards"]}
                for orphan in (self.path / name).glob("shard_*.npy"):
                    if f"{name}/{orphan.name}" not in listed:
                        orphan.unlink()  # renamed just before the kill, never listed
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self.manifest = {
                "format": FORMAT,
                "version": 1,
                **metadata,
                "dtype": self.dtype,
                "saescope_version": __version__,
                "n_tokens": 0,
                "contexts_read": 0,
                "complete": False,
                "shard_digests": [],
                "corpus_fingerprint": None,
                "hookpoints": {name: {"d": d, "shards": []} for name, d in widths.items()},
            }
            _write_json_atomic(self.path / MANIFEST, self.manifest)
        for name in widths:
            (self.path / name).mkdir(exist_ok=True)

    @property
    def contexts_read(self) -> int:
        return int(self.manifest["contexts_read"])

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["n_tokens"])

    def write_shard(self, rows: dict[str, Tensor], contexts_read: int, token_digest: str) -> None:
        """Write one shard per hookpoint (same tokens), then publish them in the manifest."""
        counts = {r.shape[0] for r in rows.values()}
        if len(counts) != 1:
            raise InvalidInput(f"shard rows differ between hookpoints: {counts}")
        n_rows = counts.pop()
        index = len(self.manifest["shard_digests"])
        for name, tensor in rows.items():
            file = f"{name}/shard_{index:05d}.npy"
            _save_npy_atomic(self.path / file, _to_numpy(tensor, self.dtype))
            self.manifest["hookpoints"][name]["shards"].append({"file": file, "n_tokens": n_rows, "sha256": file_sha256(self.path / file)})
        self.manifest["shard_digests"].append(token_digest)
        self.manifest["n_tokens"] += n_rows
        self.manifest["contexts_read"] = contexts_read
        _write_json_atomic(self.path / MANIFEST, self.manifest)

    def finish(self) -> None:
        digest = hashlib.sha256("".join(self.manifest["shard_digests"]).encode()).hexdigest()
        self.manifest.update(complete=True, corpus_fingerprint=digest)
        _write_json_atomic(self.path / MANIFEST, self.manifest)


class CachedActivations:
    """Read a cache as an activation source.

    With one hookpoint (the cache's only one, or ``hookpoints=``) batches are tensors; otherwise, or
    with ``as_dict=True``, they are dicts ``{hookpoint: tensor}``, like the live-model source. Each epoch visits shards in a
    seeded random order, ``shards_in_memory`` at a time, and shuffles rows within that group.
    """

    reiterable = True

    def __init__(self, path: str | os.PathLike, hookpoints: str | list[str] | None = None, shards_in_memory: int = 4, as_dict: bool | None = None) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        available = list(self.manifest["hookpoints"])
        if hookpoints is None:
            chosen = available
        else:
            chosen = [hookpoints] if isinstance(hookpoints, str) else list(hookpoints)
            unknown = [h for h in chosen if h not in available]
            if unknown:
                raise InvalidInput(f"{self.path}: no hookpoint(s) {unknown} in this cache; it holds {available}")
        self.hookpoints = chosen
        self.single = len(chosen) == 1 if as_dict is None else not as_dict
        if self.single and len(chosen) > 1:
            raise InvalidInput("as_dict=False needs exactly one hookpoint")
        self.dtype = self.manifest["dtype"]
        self.shards_in_memory = max(1, shards_in_memory)
        self._verified: set[Path] = set()

        self.n_shards = len(self.manifest["shard_digests"])
        if self.n_shards == 0:
            raise InvalidInput(f"{self.path}: the cache holds no shards yet")
        for name in chosen:
            for shard in self.manifest["hookpoints"][name]["shards"]:
                if not (self.path / shard["file"]).is_file():
                    raise MissingFile(f"{self.path / shard['file']}: listed in the manifest but missing; the cache is damaged")
        self.n_tokens = int(self.manifest["n_tokens"])
        widths = {name: int(self.manifest["hookpoints"][name]["d"]) for name in chosen}
        self.d_in = widths[chosen[0]] if self.single else widths

    def restrict_to_ranks(self, needs: list[list[str]]) -> None:
        """Under torchrun (sharded placement): this rank reads only ``needs[rank]``, its own jobs' hookpoints.

        Batches stay dicts, and the shard order and row permutation do not depend on the hookpoints read,
        so every rank's batches are the single-process batches restricted to its hookpoints."""
        from saescope.parallel import current

        ranks = current()
        mine = needs[ranks.rank] if ranks.distributed else None
        if not mine or sorted(mine) == sorted(self.hookpoints):
            return
        unknown = sorted(set(mine) - set(self.hookpoints))
        if unknown:
            raise InvalidInput(f"{self.path}: jobs read hookpoint(s) {unknown} that this cache reader does not hold ({self.hookpoints})")
        self.hookpoints = list(mine)
        self.single = False

    def _shard(self, name: str, index: int) -> Tensor:
        """One shard, checked against the manifest (rows, width, dtype) so a damaged or foreign file is named, not trained on."""
        entry = self.manifest["hookpoints"][name]["shards"][index]
        file = self.path / entry["file"]
        if entry.get("sha256") and file not in self._verified:  # once per shard and process: flipped bytes are named
            if file_sha256(file) != entry["sha256"]:
                raise InvalidInput(f"{file}: its SHA-256 does not match {self.path / MANIFEST}: the shard changed or was corrupted "
                                   "after it was written; write the cache again")
            self._verified.add(file)
        try:
            array = np.load(file, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise InvalidInput(f"{file}: cannot read this cache shard ({error}); the cache is damaged: write it again") from None
        expected = (int(entry["n_tokens"]), int(self.manifest["hookpoints"][name]["d"]))
        if array.shape != expected:
            raise InvalidInput(f"{file}: holds shape {list(array.shape)}, but {self.path / MANIFEST} lists {list(expected)}; "
                               "the cache is damaged (or two writers mixed it): write it again")
        stored = "uint16" if self.dtype == "bfloat16" else ("float16" if self.dtype == "float16" else "float32")
        if array.dtype != np.dtype(stored):
            raise InvalidInput(f"{file}: holds {array.dtype}, but the cache stores {self.dtype}; the cache is damaged: write it again")
        return _from_numpy(array, self.dtype)

    def _pack(self, rows: dict[str, Tensor]) -> Tensor | dict[str, Tensor]:
        return rows[self.hookpoints[0]] if self.single else rows

    def head(self, n_tokens: int) -> Tensor | dict[str, Tensor]:
        parts: dict[str, list[Tensor]] = {name: [] for name in self.hookpoints}
        got = 0
        for index in range(self.n_shards):
            for name in self.hookpoints:
                parts[name].append(self._shard(name, index))
            got += parts[self.hookpoints[0]][-1].shape[0]
            if got >= n_tokens:
                break
        return self._pack({name: torch.cat(p)[:n_tokens] for name, p in parts.items()})

    def _epoch(self, batch_size: int, shuffle: bool, generator: torch.Generator) -> Iterator[dict[str, Tensor]]:
        order = torch.randperm(self.n_shards, generator=generator).tolist() if shuffle else list(range(self.n_shards))
        carry: dict[str, Tensor] | None = None
        for group_start in range(0, len(order), self.shards_in_memory):
            group = order[group_start : group_start + self.shards_in_memory]
            rows = {name: torch.cat([self._shard(name, i) for i in group]) for name in self.hookpoints}
            if carry is not None:
                rows = {name: torch.cat([carry[name], rows[name]]) for name in rows}
            n = rows[self.hookpoints[0]].shape[0]
            if shuffle:
                permutation = torch.randperm(n, generator=generator)
                rows = {name: r[permutation] for name, r in rows.items()}
            full = n - n % batch_size
            for start in range(0, full, batch_size):
                yield {name: r[start : start + batch_size] for name, r in rows.items()}
            carry = {name: r[full:] for name, r in rows.items()}

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run checks: the same cache contents (its shard digests) and hookpoints."""
        shards = hashlib.sha256("".join(self.manifest["shard_digests"]).encode()).hexdigest()[:16]
        return {"cache_tokens": self.manifest["n_tokens"], "hookpoints": sorted(self.hookpoints), "shards_sha256": shards}

    def iter_batches(self, batch_size: int, *, shuffle: bool = True, seed: int = 0, start_batch: int = 0, loop: bool = False) -> Iterator[Tensor | dict[str, Tensor]]:
        if self.n_tokens < batch_size:
            raise InvalidInput(f"{self.path}: the cache holds {self.n_tokens} tokens, fewer than one batch of {batch_size}")
        index = 0
        epoch = 0
        while True:
            generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            for batch in self._epoch(batch_size, shuffle, generator):
                if index >= start_batch:
                    yield self._pack(batch)
                index += 1
            if not loop:
                return
            epoch += 1
