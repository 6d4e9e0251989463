"""Activation sources: one interface over tensors, numpy arrays or memmaps, and generators.

The trainer and the metrics read activations only through ``iter_batches``, so a source that
streams from a live model can join later without touching them. Batches have a fixed size (the
ragged tail of an epoch is dropped) so every training step has the same shape. Array sources are
shuffled by a seeded permutation per epoch and can start at any batch index, which is what makes
resume exact; iterable sources resume by skipping batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from saescope.errors import InvalidInput, WrongType

_FLOAT_DTYPES = (np.float16, np.float32, np.float64)


class ActivationSource(Protocol):
    d_in: int | None
    """Activation width, or None until the first batch is seen."""
    n_tokens: int | None
    """Tokens in one pass, or None for streams."""
    reiterable: bool
    """Whether ``iter_batches`` can be called more than once."""

    def iter_batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, start_batch: int = 0, loop: bool = False) -> Iterator[Tensor]:
        ...

    def head(self, n_tokens: int) -> Tensor:
        """Up to ``n_tokens`` activations from the start (for estimating normalisation)."""
        ...


def to_float_tensor(batch: Any, where: str) -> Tensor:
    """Convert one batch to a float32 [n, d] tensor, with errors that say what was wrong."""
    if isinstance(batch, Tensor):
        tensor = batch
    elif isinstance(batch, np.ndarray):
        if batch.dtype not in _FLOAT_DTYPES:
            raise WrongType(f"{where}: activations must be floating point, got numpy dtype {batch.dtype}; convert them with .astype(np.float32)")
        tensor = torch.from_numpy(np.array(batch, dtype=np.float32))  # a copy: memmaps are read-only
    else:
        raise TypeError(f"{where}: expected a torch.Tensor or numpy array of activations, got {type(batch).__name__}")
    if not tensor.is_floating_point():
        raise WrongType(f"{where}: activations must be floating point, got {tensor.dtype}; convert them with .float()")
    if tensor.ndim < 2:
        raise InvalidInput(f"{where}: activations must have shape [n_tokens, d_in] (or [..., d_in]), got {tuple(tensor.shape)}")
    return tensor.reshape(-1, tensor.shape[-1]).float()


class ArraySource:
    """Activations held in a tensor, a numpy array or a numpy memmap of shape [..., d_in]."""

    reiterable = True

    def __init__(self, array: Tensor | np.ndarray, name: str = "activations") -> None:
        if isinstance(array, np.ndarray) and array.dtype not in _FLOAT_DTYPES:
            raise WrongType(f"{name}: activations must be floating point, got numpy dtype {array.dtype}; "
                            f"save them as float32 (np.save(path, array.astype(np.float32)))")
        if isinstance(array, Tensor) and not array.is_floating_point():
            raise WrongType(f"{name}: activations must be floating point, got {array.dtype}; convert them with .float()")
        if array.ndim < 2:
            raise InvalidInput(f"{name}: activations must have shape [n_tokens, d_in] (or [..., d_in]), got {tuple(array.shape)}")
        self.array = array.reshape(-1, array.shape[-1])
        self.name = name
        self.n_tokens, self.d_in = int(self.array.shape[0]), int(self.array.shape[1])
        if self.n_tokens == 0:
            raise InvalidInput(f"{name}: no activations (0 rows)")

    def _rows(self, index: Tensor | slice) -> Tensor:
        if isinstance(self.array, Tensor):
            return self.array[index].float()
        if isinstance(index, Tensor):
            index = np.sort(index.numpy())  # sorted reads are sequential-ish on a memmap
        return to_float_tensor(self.array[index], self.name)

    def head(self, n_tokens: int) -> Tensor:
        return self._rows(slice(0, min(n_tokens, self.n_tokens)))

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run checks it is reading the same data: shape and a hash of the first and last rows."""
        import hashlib

        edge = min(256, self.n_tokens)
        digest = hashlib.sha256()
        for rows in (slice(0, edge), slice(self.n_tokens - edge, self.n_tokens)):
            digest.update(self._rows(rows).numpy().tobytes())
        return {"rows": self.n_tokens, "d_in": self.d_in, "sample_sha256": digest.hexdigest()[:16]}

    def iter_batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, start_batch: int = 0, loop: bool = False) -> Iterator[Tensor]:
        per_epoch = self.n_tokens // batch_size
        if per_epoch == 0:
            if loop:
                raise InvalidInput(f"{self.name}: {self.n_tokens} rows is fewer than one batch of {batch_size}; lower batch_size")
            yield self._rows(slice(0, self.n_tokens))
            return
        epoch, offset = divmod(start_batch, per_epoch)
        while True:
            order = None
            if shuffle:
                generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
                order = torch.randperm(self.n_tokens, generator=generator)
            for b in range(offset, per_epoch):
                rows = slice(b * batch_size, (b + 1) * batch_size)
                yield self._rows(order[rows] if order is not None else rows)
            if not loop:
                if not shuffle and per_epoch * batch_size < self.n_tokens:
                    yield self._rows(slice(per_epoch * batch_size, self.n_tokens))  # evaluation sees every row
                return
            epoch, offset = epoch + 1, 0


class IterableSource:
    """Activations from an iterable of batches of any size, re-cut to the requested batch size.

    Pass a function that returns a fresh iterator to make the source reiterable (needed for looping
    over several epochs and for two-pass metrics); a bare generator can be read once.
    """

    def __init__(self, batches: Iterable[Any] | Callable[[], Iterable[Any]], name: str = "activation stream") -> None:
        self.name = name
        self._factory = batches if callable(batches) and not isinstance(batches, Iterable) else None
        self._iterable = None if self._factory else batches
        self.reiterable = self._factory is not None or not isinstance(batches, Iterator)
        self._consumed = False
        self._head: list[Tensor] = []
        self._head_tokens = 0
        self._stream: Iterator[Any] | None = None
        self.n_tokens = None
        self.d_in: int | None = None

    def _open(self) -> Iterator[Tensor]:
        if self._factory is not None:
            raw = iter(self._factory())
        else:
            if self._consumed and not self.reiterable:
                raise RuntimeError(f"{self.name}: this iterator was already read; pass a function returning a new one to read it again")
            raw = iter(self._iterable)
        self._consumed = True
        for i, item in enumerate(raw):
            batch = to_float_tensor(item, f"{self.name} item {i}")
            if self.d_in is None:
                self.d_in = batch.shape[1]
            elif batch.shape[1] != self.d_in:
                raise InvalidInput(f"{self.name} item {i}: width {batch.shape[1]} differs from earlier items ({self.d_in})")
            yield batch

    def _chunks(self) -> Iterator[Tensor]:
        """Yields the buffered head first (if the stream is one-shot), then the rest of the stream."""
        if self._stream is not None:  # a one-shot stream whose head() was taken
            stream, self._stream = self._stream, None
            yield from self._head
            self._head = []
            yield from stream
        else:
            yield from self._open()

    def head(self, n_tokens: int) -> Tensor:
        if self.reiterable:
            parts, total = [], 0
            for chunk in self._open():
                parts.append(chunk)
                total += chunk.shape[0]
                if total >= n_tokens:
                    break
        else:
            if self._stream is None:
                self._stream = self._open()
            while self._head_tokens < n_tokens:
                chunk = next(self._stream, None)
                if chunk is None:
                    break
                self._head.append(chunk)
                self._head_tokens += chunk.shape[0]
            parts = self._head
        if not parts:
            raise InvalidInput(f"{self.name}: no activations (the iterable is empty)")
        return torch.cat(parts)[:n_tokens]

    def iter_batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, start_batch: int = 0, loop: bool = False) -> Iterator[Tensor]:
        produced = 0
        while True:
            buffer: list[Tensor] = []
            buffered = 0
            saw_any = False
            for chunk in self._chunks():
                saw_any = True
                buffer.append(chunk)
                buffered += chunk.shape[0]
                while buffered >= batch_size:
                    joined = torch.cat(buffer)
                    batch, rest = joined[:batch_size], joined[batch_size:]
                    buffer, buffered = ([rest] if rest.shape[0] else []), rest.shape[0]
                    if produced >= start_batch:
                        yield batch
                    produced += 1
            if not saw_any:
                raise InvalidInput(f"{self.name}: no activations (the iterable is empty)")
            if not loop:
                if buffered and produced >= start_batch:
                    yield torch.cat(buffer)  # the ragged tail, for evaluation
                return
            if not self.reiterable:
                return  # a one-shot stream ends the run when it runs dry


def as_source(data: Any, name: str = "activations") -> ActivationSource:
    """Wrap a tensor, numpy array/memmap, ``{site: array}`` mapping, iterable of batches or batch-iterator factory."""
    if isinstance(data, (ArraySource, IterableSource)) or (hasattr(data, "iter_batches") and hasattr(data, "head")):
        return data
    if isinstance(data, (Tensor, np.ndarray)):
        return ArraySource(data, name)
    if isinstance(data, Mapping):  # {site: array}: row-aligned activations of several sites (a transcoder's input and target)
        from saescope.data.by_site import SiteArraysSource

        return SiteArraysSource(data, name)
    if isinstance(data, Iterable) or callable(data):
        return IterableSource(data, name)
    raise TypeError(f"{name}: cannot read activations from a {type(data).__name__}; pass a tensor, numpy array, memmap or iterable of batches")
