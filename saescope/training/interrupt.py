"""Ctrl-C during training stops at the next step boundary, so the checkpoint written then is whole.

A ``KeyboardInterrupt`` raised in the middle of an optimiser step would leave some SAEs updated and
others not. While training, SIGINT only sets a flag; the loop checks it after each step, writes a
checkpoint and stops with one line saying how to resume. A second Ctrl-C stops at once. Outside the
main thread (where signal handlers cannot be set) Ctrl-C keeps Python's default behaviour.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class StopRequest:
    requested: bool = False


@contextmanager
def stop_at_step_boundary() -> Iterator[StopRequest]:
    """Within the block, the first SIGINT sets ``requested``; the second raises ``KeyboardInterrupt``."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = signal.getsignal(signal.SIGINT)

    def on_interrupt(_signum: int, _frame: object) -> None:
        if request.requested:
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        request.requested = True
        print("\nCtrl-C: stopping after this step and saving a checkpoint (press Ctrl-C again to stop at once)", file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)
