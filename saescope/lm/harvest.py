"""Run a model over contexts and keep its activations: in memory (``harvest``) or as an on-disk cache (``write_cache``)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from saescope.data.cache import SHARD_TOKENS, CacheWriter
from saescope.data.tokens import trainable_mask
from saescope.errors import InvalidInput
from saescope.lm.capture import capture, masked_collector
from saescope.lm.hookpoints import Hookpoint
from saescope.lm.models import LoadedModel


def harvest(loaded: LoadedModel, points: list[Hookpoint], contexts: Tensor, excluded_ids: list[int], batch_contexts: int = 16) -> dict[str, Tensor]:
    """Activations of ordinary tokens at each hookpoint, ``{name: [n_tokens, d]}`` on the CPU."""
    found: dict[str, list[Tensor]] = {p.name: [] for p in points}
    device = loaded.device
    for start in range(0, contexts.shape[0], batch_contexts):
        input_ids = contexts[start : start + batch_contexts].to(device)
        mask = trainable_mask(input_ids, excluded_ids).reshape(-1)
        capture(loaded.model, points, masked_collector(found, mask), input_ids)
    return {name: torch.cat(parts).float() for name, parts in found.items()}


def write_cache(
    source: Any,
    path: str | os.PathLike,
    n_tokens: int,
    dtype: str = "float32",
    shard_tokens: int = SHARD_TOKENS,
    resume: bool = False,
    metadata: dict[str, Any] | None = None,
    progress: bool = True,
    shuffle: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Harvest ``n_tokens`` activations from a ``ModelActivationSource`` into a cache at ``path``.

    Contexts are read in corpus order, or with ``shuffle`` in a seeded random order (so that a cache
    smaller than the corpus is a random sample of it). Readers shuffle tokens again. Returns the
    final manifest.
    """
    from saescope.io.lock import output_lock

    with output_lock(path, "activation cache"):
        return _write_locked_cache(source, path, n_tokens, dtype, shard_tokens, resume, metadata, progress, shuffle, seed)


def _write_locked_cache(source: Any, path: str | os.PathLike, n_tokens: int, dtype: str, shard_tokens: int, resume: bool,
                        metadata: dict[str, Any] | None, progress: bool, shuffle: bool, seed: int) -> dict[str, Any]:
    loaded, contexts = source.loaded, source.contexts
    meta = {"model": loaded.model_id, "dataset": contexts.dataset, "context_size": contexts.context_size,
            "context_order": f"shuffled(seed={seed})" if shuffle else "corpus", **(metadata or {})}
    writer = CacheWriter(path, source.d_in, dtype, meta, resume=resume)
    if writer.manifest.get("complete"):
        if n_tokens > writer.manifest["n_tokens"]:
            raise InvalidInput(f"{path}: the cache is complete with {writer.manifest['n_tokens']:,} tokens, fewer than the {n_tokens:,} asked for "
                               "(the corpus ran out, or it was written with a smaller --tokens); a complete cache does not grow: "
                               "write a new one with the larger --tokens")
        return writer.manifest
    pending: dict[str, list[Tensor]] = {name: [] for name in source.names}
    pending_rows = 0
    digest = hashlib.sha256()
    contexts_read = writer.contexts_read
    bar = tqdm(total=n_tokens, initial=writer.n_tokens, unit="tok", desc="caching", disable=not progress)
    try:
        for input_ids in contexts.iter_batches(source.batch_contexts, seed=seed, shuffle=shuffle, start=contexts_read):
            if writer.n_tokens + pending_rows >= n_tokens:
                break
            input_ids = input_ids.to(source.device)
            kept, rows = source.rows(input_ids)
            for name, values in kept.items():
                pending[name].append(values.cpu())
            digest.update(input_ids.cpu().numpy().tobytes())
            contexts_read += input_ids.shape[0]
            pending_rows += rows
            bar.update(rows)
            if pending_rows >= shard_tokens or writer.n_tokens + pending_rows >= n_tokens:
                writer.write_shard({k: torch.cat(v) for k, v in pending.items()}, contexts_read, digest.hexdigest())
                pending = {name: [] for name in source.names}
                pending_rows, digest = 0, hashlib.sha256()
        if pending_rows:
            writer.write_shard({k: torch.cat(v) for k, v in pending.items()}, contexts_read, digest.hexdigest())
    finally:
        bar.close()
    if writer.n_tokens == 0:
        raise InvalidInput(f"dataset {contexts.dataset!r} produced no tokens to cache")
    writer.finish()
    return writer.manifest
