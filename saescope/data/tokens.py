"""Pack documents into fixed-length token contexts, and mark the positions SAEs should not see.

Each context is ``[BOS] + (context_size − 1)`` tokens of a running stream in which documents are
joined by EOS (or BOS when the tokenizer has no EOS), as SAELens and sparsify do. BOS, EOS and pad
positions carry activations unlike any other token (huge norms at BOS in most models), so they are
excluded from SAE training and evaluation by default (``trainable_mask``), and so is position 0 of
every context whatever its token: models use the first position as an attention sink, and
Qwen-family tokenizers have no BOS, so without this rule their sink would be trained on and scored.

Context order is shuffled deterministically from a seed: a full permutation per epoch for corpora
held in memory, and within windows of contexts for streams that never fit in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from saescope.data.lm_config import LmDataConfig
from saescope.data.text import iter_documents, split_documents
from saescope.errors import InvalidInput


def special_token_ids(tokenizer: Any) -> list[int]:
    """Token ids of BOS, EOS and pad (whichever the tokenizer defines)."""
    ids = {getattr(tokenizer, f"{kind}_token_id", None) for kind in ("bos", "eos", "pad")}
    return sorted(i for i in ids if i is not None)


def trainable_mask(input_ids: Tensor, excluded_ids: list[int] | Tensor) -> Tensor:
    """True where a position is an ordinary token: not BOS, EOS or pad, and not position 0 (the attention sink)."""
    excluded = torch.as_tensor(excluded_ids, dtype=input_ids.dtype, device=input_ids.device)
    mask = torch.ones_like(input_ids, dtype=torch.bool) if excluded.numel() == 0 else ~torch.isin(input_ids, excluded)
    mask[..., 0] = False
    return mask


class TextContexts:
    """Token contexts ``[context_size]`` from a text dataset, re-readable epoch after epoch.

    Local and built-in corpora are tokenised once and kept in memory (a 300K-token corpus is ~2 MB
    of int64); hub streams are re-read each epoch.
    """

    def __init__(
        self,
        dataset: str,
        tokenizer: Any,
        context_size: int = LmDataConfig.context_size,
        *,
        part: str = "train",
        eval_fraction: float = 0.05,
        text_field: str = "text",
        split: str = "train",
        prepend_bos: bool = True,
        shuffle_window: int = 1024,
        max_contexts: int | None = None,
    ) -> None:
        if context_size < 2:
            raise InvalidInput(f"context_size must be at least 2, got {context_size}")
        self.dataset, self.tokenizer, self.context_size = dataset, tokenizer, context_size
        self.part, self.eval_fraction, self.text_field, self.split = part, eval_fraction, text_field, split
        self.shuffle_window, self.max_contexts = shuffle_window, max_contexts
        self.bos_id = getattr(tokenizer, "bos_token_id", None) if prepend_bos else None
        eos = getattr(tokenizer, "eos_token_id", None)
        self.separator_id = eos if eos is not None else getattr(tokenizer, "bos_token_id", None)
        self.excluded_ids = special_token_ids(tokenizer)
        self.streaming = dataset != "pydocs" and _is_hub(dataset)
        self._memo: Tensor | None = None

    def _documents(self) -> Iterator[str]:
        documents = iter_documents(self.dataset, self.text_field, self.split)
        return split_documents(documents, self.part, self.eval_fraction)

    def _read(self) -> Iterator[Tensor]:
        """Contexts in corpus order."""
        body = self.context_size - (1 if self.bos_id is not None else 0)
        pending: list[int] = []
        produced = 0
        batch: list[str] = []

        def flush(texts: list[str]) -> Iterator[Tensor]:
            nonlocal pending, produced
            encoded = self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
            for ids in encoded:
                pending.extend(ids)
                if self.separator_id is not None:
                    pending.append(self.separator_id)
            while len(pending) >= body:
                chunk, pending = pending[:body], pending[body:]
                head = [self.bos_id] if self.bos_id is not None else []
                yield torch.tensor(head + chunk, dtype=torch.long)
                produced += 1
                if self.max_contexts is not None and produced >= self.max_contexts:
                    return

        for document in self._documents():
            batch.append(document)
            if len(batch) == 64:
                yield from flush(batch)
                batch = []
                if self.max_contexts is not None and produced >= self.max_contexts:
                    return
        if batch:
            yield from flush(batch)

    def all_contexts(self) -> Tensor:
        """Every context as one tensor ``[n, context_size]`` (local corpora; memoised)."""
        if self._memo is None:
            contexts = list(self._read())
            if not contexts:
                raise InvalidInput(f"dataset {self.dataset!r} ({self.part} part) holds fewer than {self.context_size} tokens; nothing to read")
            self._memo = torch.stack(contexts)
        return self._memo

    def iter_contexts(self, seed: int = 0, epoch: int = 0, shuffle: bool = True, start: int = 0) -> Iterator[Tensor]:
        """Contexts of one epoch, shuffled from ``(seed, epoch)``, skipping the first ``start``."""
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        if not self.streaming:
            # A corpus held in memory gets a full permutation per epoch.
            contexts = self.all_contexts()
            order = torch.randperm(contexts.shape[0], generator=generator) if shuffle else torch.arange(contexts.shape[0])
            for item in order[start:].tolist():
                yield contexts[item]
            return
        source: Iterator[Tensor] = self._read()
        index = 0
        window: list[Tensor] = []
        for context in source:
            window.append(context)
            if len(window) == self.shuffle_window:
                for item in _shuffled(window, generator, shuffle):
                    if index >= start:
                        yield item
                    index += 1
                window = []
        for item in _shuffled(window, generator, shuffle):
            if index >= start:
                yield item
            index += 1

    def iter_batches(self, batch_contexts: int, seed: int = 0, shuffle: bool = True, loop: bool = False, start: int = 0) -> Iterator[Tensor]:
        """Batches ``[batch_contexts, context_size]``; ``start`` counts contexts already consumed over all epochs."""
        epoch = 0
        consumed = 0
        while True:
            buffer: list[Tensor] = []
            for context in self.iter_contexts(seed, epoch, shuffle):
                consumed += 1
                if consumed <= start:
                    continue
                buffer.append(context)
                if len(buffer) == batch_contexts:
                    yield torch.stack(buffer)
                    buffer = []
            if buffer:
                yield torch.stack(buffer)
            if consumed == 0:
                raise InvalidInput(f"dataset {self.dataset!r} ({self.part} part) produced no contexts of {self.context_size} tokens")
            if not loop:
                return
            epoch += 1


def _shuffled(window: list[Tensor], generator: torch.Generator, shuffle: bool) -> list[Tensor]:
    if not shuffle:
        return window
    order = torch.randperm(len(window), generator=generator).tolist()
    return [window[i] for i in order]


def _is_hub(dataset: str) -> bool:
    return dataset.startswith("hf:") or not Path(dataset).expanduser().exists()
