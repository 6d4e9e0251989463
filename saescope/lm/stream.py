"""Activations streamed from a live model: one forward per batch of contexts feeds every hookpoint.

``ModelActivationSource`` is an activation source like an array or a cache reader, except that its
batches are dicts ``{hookpoint: [batch_size, d]}``. The ``Trainer`` routes each SAE to its
hookpoint, so one LM forward trains every SAE of every hookpoint. Inside the forward, each
hookpoint's activation is masked (BOS/EOS/pad dropped) and copied into a token shuffle buffer the
moment its layer produces it; the forward stops after the deepest hookpoint. The only memory that
grows with the number of hookpoints is the fixed-size buffer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor

from saescope.data.lm_config import LmDataConfig
from saescope.data.shuffle_buffer import MultiShuffleBuffer
from saescope.data.tokens import TextContexts, trainable_mask
from saescope.errors import InvalidInput
from saescope.lm.capture import capture, masked_collector, site_widths
from saescope.lm.hookpoints import resolve_hookpoints
from saescope.lm.models import LoadedModel


class ModelActivationSource:
    """Activations of ``hookpoints`` while ``model`` reads ``contexts``.

    Args:
        model: a ``LoadedModel`` (from ``load_model``).
        contexts: token contexts (``TextContexts``).
        hookpoints: names, aliases or globs (see ``saescope.lm.hookpoints``).
        batch_contexts: contexts per LM forward.
        shuffle_buffer_tokens: tokens held per hookpoint for shuffling (0 disables the shuffle).
        exclude_special: drop BOS/EOS/pad positions and position 0 (the attention sink).
        stop_early: end each forward after the deepest hookpoint.
        outlier_norm_ratio: also drop tokens whose norm at any hookpoint exceeds this multiple of the
            forward's median norm there (None keeps them).
        autocast: on CUDA with a float32 model, run the forward under bf16 autocast (training activations only).
    """

    reiterable = True
    n_tokens = None

    def __init__(
        self,
        model: LoadedModel,
        contexts: TextContexts,
        hookpoints: str | list[str],
        *,
        batch_contexts: int = 16,
        shuffle_buffer_tokens: int = LmDataConfig.shuffle_buffer_tokens,
        exclude_special: bool = True,
        stop_early: bool = True,
        buffer_dtype: torch.dtype = torch.float32,
        outlier_norm_ratio: float | None = None,
        autocast: bool = True,
    ) -> None:
        if outlier_norm_ratio is not None and not outlier_norm_ratio > 1:
            raise InvalidInput(f"outlier_norm_ratio must be a number above 1 (e.g. 10), got {outlier_norm_ratio!r}")
        self.outlier_norm_ratio = outlier_norm_ratio
        self.loaded = model
        self.contexts = contexts
        self.points = resolve_hookpoints(model.model, hookpoints)
        self.names = [p.name for p in self.points]
        self.batch_contexts = batch_contexts
        self.shuffle_buffer_tokens = shuffle_buffer_tokens
        self.exclude_special = exclude_special
        self.stop_early = stop_early
        self.buffer_dtype = buffer_dtype
        self.device = model.device
        self.autocast = autocast and self.device.type == "cuda" and model.model.dtype == torch.float32
        self.d_in = site_widths(model.model, self.points)
        self.contexts_read = 0
        """Contexts consumed so far in the current ``iter_batches`` (resume state)."""
        self._resume_from = 0
        self._buffer: MultiShuffleBuffer | None = None
        self._restored_buffer: dict[str, Tensor] | None = None
        self._needs: list[list[str]] | None = None

    # -- resume ---------------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run checks: the same model, corpus, context size and hookpoints."""
        return {"model": self.loaded.model_id, "dataset": self.contexts.dataset, "context_size": self.contexts.context_size,
                "hookpoints": list(self.names)}

    def resume_state(self) -> dict[str, Any]:
        """Where the stream stands: contexts consumed and rows waiting in the shuffle buffer."""
        return {"contexts_read": self.contexts_read, "buffer_rows": self._buffer.size if self._buffer is not None else 0}

    def resume_tensors(self) -> dict[str, Tensor]:
        """The shuffle buffer's waiting rows and its generator state, so a resumed run draws exactly the same batches."""
        if self._buffer is None:
            return {}
        buffer = self._buffer
        tensors = {f"buffer::{name}": rows[: buffer.size].detach().cpu().clone() for name, rows in buffer.buffers.items()}
        tensors["buffer_rng"] = buffer.generator.get_state()
        return tensors

    def restore(self, state: dict[str, Any], tensors: dict[str, Tensor] | None = None) -> None:
        """Continue after the contexts a checkpointed run had read, with its shuffle buffer as it was (when saved)."""
        self._resume_from = int(state.get("contexts_read", 0))
        self._restored_buffer = tensors if tensors and "buffer_rng" in tensors else None

    def restrict_to_ranks(self, needs: list[list[str]]) -> None:
        """Under torchrun: rank ``r`` keeps only the hookpoints ``needs[r]`` (its jobs'), received with one all-to-all.

        Without effect when the norm-outlier filter is on (it needs every hookpoint's rows on every rank)."""
        unknown = sorted({h for names in needs for h in names} - set(self.names))
        if unknown:
            raise InvalidInput(f"jobs read hookpoint(s) {unknown} that this model source does not capture ({self.names})")
        self._needs = None if self.outlier_norm_ratio is not None else [list(names) for names in needs]

    @property
    def held(self) -> list[str]:
        """The hookpoints whose rows this process receives and buffers."""
        from saescope.parallel import current

        ranks = current()
        return self._needs[ranks.rank] if self._needs is not None and ranks.distributed else list(self.names)

    # -- reading --------------------------------------------------------------------------------
    def position_mask(self, input_ids: Tensor) -> Tensor:
        """Flattened [b·s] mask of the positions whose activations are kept."""
        if not self.exclude_special:
            return torch.ones(input_ids.numel(), dtype=torch.bool, device=input_ids.device)
        return trainable_mask(input_ids, self.contexts.excluded_ids).reshape(-1)

    def rows(self, input_ids: Tensor) -> tuple[dict[str, Tensor], int]:
        """One forward: each hookpoint's kept rows ``{name: [n, d]}`` (the same positions for all) and n.

        Under torchrun each process runs the model on its share of the contexts and the rows come back in
        order: only this process's hookpoints after ``restrict_to_ranks`` (``saescope.parallel.exchange_rows``),
        else every hookpoint (``saescope.parallel.gather_rows``)."""
        from saescope.parallel import current, exchange_rows, gather_rows

        ranks = current()
        if ranks.distributed:
            input_ids = torch.tensor_split(input_ids, ranks.world)[ranks.rank]
        found: dict[str, list[Tensor]] = {name: [] for name in self.names}
        if input_ids.shape[0]:
            flat_mask = self.position_mask(input_ids)
            with torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else nullcontext():
                capture(self.loaded.model, self.points, masked_collector(found, flat_mask, to_cpu=False), input_ids, stop_early=self.stop_early)
            rows = {name: parts[0] for name, parts in found.items()}
        else:  # fewer contexts than processes in this batch: this rank contributes nothing
            rows = {name: torch.zeros(0, self.d_in[name], dtype=self.loaded.model.dtype, device=self.device) for name in self.names}
        if self._needs is not None and ranks.distributed:
            rows = exchange_rows(rows, self._needs, ranks)
            return rows, int(next(iter(rows.values())).shape[0])
        rows = gather_rows(rows, ranks)
        if self.outlier_norm_ratio is not None:
            rows = drop_norm_outliers(rows, self.outlier_norm_ratio)
        return rows, int(next(iter(rows.values())).shape[0])

    def _forward_into(self, buffer: MultiShuffleBuffer, input_ids: Tensor) -> int:
        rows, n_rows = self.rows(input_ids)
        for name, values in rows.items():
            buffer.add(name, values)
        buffer.commit(n_rows)
        return n_rows

    def iter_batches(self, batch_size: int, *, shuffle: bool = True, seed: int = 0, start_batch: int = 0, loop: bool = False) -> Iterator[dict[str, Tensor]]:
        """Batches ``{hookpoint: [batch_size, d]}``. ``start_batch`` is ignored: use ``restore`` to resume."""
        max_rows = self.batch_contexts * self.contexts.context_size
        fill = max(self.shuffle_buffer_tokens, batch_size) if shuffle else batch_size
        held = {name: self.d_in[name] for name in self.held}
        buffer = MultiShuffleBuffer(held, fill + max_rows, seed=seed, dtype=self.buffer_dtype, device=self.device)
        self._buffer = buffer
        start = self._resume_from
        self.contexts_read = start
        if self._restored_buffer is not None:
            self._load_buffer(buffer, self._restored_buffer)
            self._restored_buffer = None
            while buffer.size >= fill:  # where the checkpointed generator stood: between two takes
                yield self._take(buffer, batch_size, shuffle)
        for input_ids in self.contexts.iter_batches(self.batch_contexts, seed=seed, shuffle=shuffle, loop=loop, start=start):
            self._forward_into(buffer, input_ids.to(self.device))
            self.contexts_read += input_ids.shape[0]
            while buffer.size >= fill:
                yield self._take(buffer, batch_size, shuffle)
        while buffer.size >= batch_size:  # drain; the ragged tail is dropped
            yield self._take(buffer, batch_size, shuffle)

    def _load_buffer(self, buffer: MultiShuffleBuffer, saved: dict[str, Tensor]) -> None:
        held = self.held
        rows = {name: saved[f"buffer::{name}"] for name in held if f"buffer::{name}" in saved}
        if set(rows) != set(held) or any(key.startswith("buffer::") and key[8:] not in held for key in saved):
            stored = sorted(key[8:] for key in saved if key.startswith("buffer::"))
            raise InvalidInput(f"the checkpoint's shuffle buffer holds {stored}, this process reads {held}; resume with the same hookpoints, "
                               "SAEs and number of processes")
        size = int(next(iter(rows.values())).shape[0])
        if size > buffer.capacity:
            raise InvalidInput(f"the checkpoint's shuffle buffer holds {size} rows, more than this run's {buffer.capacity}; resume with the same settings")
        for name, values in rows.items():
            buffer.buffers[name][:size].copy_(values.to(buffer.buffers[name].device, buffer.buffers[name].dtype))
        buffer.size = size
        buffer.generator.set_state(saved["buffer_rng"])

    @staticmethod
    def _take(buffer: MultiShuffleBuffer, batch_size: int, shuffle: bool) -> dict[str, Tensor]:
        rows = buffer.take(batch_size) if shuffle else buffer.take_oldest(batch_size)
        return {name: r.float() for name, r in rows.items()}

    def head(self, n_tokens: int) -> dict[str, Tensor]:
        """Activations of the first ``n_tokens`` trainable tokens (in corpus order), for normalisation."""
        chunks: dict[str, list[Tensor]] = {name: [] for name in self.held}
        got = 0
        for input_ids in self.contexts.iter_batches(self.batch_contexts, shuffle=False):
            rows, n_rows = self.rows(input_ids.to(self.device))
            for name, values in rows.items():
                chunks[name].append(values.cpu())
            got += n_rows
            if got >= n_tokens:
                break
        return {name: torch.cat(parts)[:n_tokens].float() for name, parts in chunks.items()}


def drop_norm_outliers(rows: dict[str, Tensor], ratio: float) -> dict[str, Tensor]:
    """Keep the rows whose norm is at most ``ratio`` × the median norm at every hookpoint (one mask for all)."""
    keep: Tensor | None = None
    for values in rows.values():
        norms = values.float().norm(dim=1)
        ok = norms <= ratio * norms.median()
        keep = ok if keep is None else keep & ok
    return rows if keep is None else {name: values[keep] for name, values in rows.items()}
