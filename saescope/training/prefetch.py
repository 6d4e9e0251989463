"""Batches on their way to a CUDA device: read ahead on a thread, pinned, copied on a side stream.

With the SAE step on a GPU taking a millisecond or two, reading the next batch from a memory map and
copying it over PCIe would otherwise sit on the critical path. ``to_device_ahead`` overlaps both
with the step: a reader thread pulls batches from the source and pins them (page-locked host
memory, which is what makes a host-to-device copy asynchronous), and each batch's copy is issued on
a separate CUDA stream one step before the trainer uses it; the compute stream waits on that copy's
event only. Off CUDA the batches pass through unchanged.

The reader thread runs ahead of the trainer, so it is used only for sources whose position is the
step count (arrays, caches, plain iterables); a source that checkpoints its own read position (a
live model's stream) is read on the trainer's thread, where its state stays in step.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

READ_AHEAD_BATCHES = 3
"""Batches the reader thread may hold ready (pinned) beyond the one being copied."""
_END = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _apply(batch: Any, function: Callable[[Tensor], Tensor]) -> Any:
    if isinstance(batch, Mapping):
        return {name: function(tensor) for name, tensor in batch.items()}
    return function(batch)


def _pinned(tensor: Tensor) -> Tensor:
    return tensor.pin_memory() if tensor.device.type == "cpu" else tensor


def read_ahead(batches: Iterator[Any], depth: int = READ_AHEAD_BATCHES, prepare: Callable[[Any], Any] = lambda b: b) -> Iterator[Any]:
    """Yield ``prepare(batch)`` for each batch, produced on a background thread up to ``depth`` ahead.

    Order is kept; an exception in the source is raised here, at the batch where it happened; when
    the consumer stops early (or fails), the thread stops at its next hand-over.
    """
    ready: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def hand_over(item: Any) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for batch in batches:
                if not hand_over(prepare(batch)):
                    return
            hand_over(_END)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which re-raises it
            hand_over(_Failed(error))

    thread = threading.Thread(target=work, name="saescope-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def to_device_ahead(batches: Iterator[Any], device: torch.device, background: bool = True) -> Iterator[Any]:
    """``batches`` (tensors or dicts of tensors) on ``device``, each copied one step ahead (CUDA only).

    ``background`` also reads and pins the batches on a thread (see the module docstring for when not to).
    """
    if device.type != "cuda":
        yield from batches
        return
    host = read_ahead(batches, prepare=lambda b: _apply(b, _pinned)) if background else (_apply(b, _pinned) for b in batches)
    copy_stream = torch.cuda.Stream(device)
    compute_stream = torch.cuda.current_stream(device)
    pending: tuple[Any, torch.cuda.Event] | None = None

    def ready(moved: Any, copied: torch.cuda.Event) -> Any:
        compute_stream.wait_event(copied)

        def hand_to_compute(tensor: Tensor) -> Tensor:
            tensor.record_stream(compute_stream)  # its memory is not reused by the copy stream while the step reads it
            return tensor

        return _apply(moved, hand_to_compute)

    for batch in host:
        with torch.cuda.stream(copy_stream):
            moved = _apply(batch, lambda t: t.to(device, non_blocking=True))
            copied = torch.cuda.Event()
            copied.record(copy_stream)
        if pending is not None:
            yield ready(*pending)
        pending = (moved, copied)
    if pending is not None:
        yield ready(*pending)
