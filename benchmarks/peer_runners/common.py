"""What every peer runner shares: the batch reader, the clock and the result file. Imports numpy and torch only.

Each runner runs in its own virtual environment (a peer's pinned release, or saescope's), reads the same
``.npy`` of activations in file order, ``batch`` rows per step, and writes ``result.json`` (tokens/s,
wall time, peak resident memory) beside the trained SAE. Reading is by ``seek`` + ``fromfile``, not a
memory map, so the peak resident memory measures the trainer, not the page cache of the data file.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch


def arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data", required=True, help=".npy of float32 [n_tokens, d_in] training activations")
    parser.add_argument("--out", required=True, help="folder for the SAE and result.json")
    parser.add_argument("--arch", required=True)
    parser.add_argument("--l0", type=int, required=True, help="target L0 (k for TopK)")
    parser.add_argument("--width", type=int, default=4608)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--variant", default="default")
    return parser


def npy_layout(path: str | Path) -> tuple[tuple[int, ...], int]:
    """(shape, byte offset of the data) of a C-ordered float32 .npy."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(handle)
        if fortran or dtype != np.float32:
            raise SystemExit(f"{path}: need a C-ordered float32 array, got dtype {dtype}, fortran={fortran}")
        return shape, handle.tell()


def batches(path: str | Path, batch: int, steps: int) -> Iterator[torch.Tensor]:
    """``steps`` batches of ``batch`` rows in file order, from the start again after the last whole batch (epochs).

    No shuffle: every runner sees the same batches in the same order.
    """
    shape, offset = npy_layout(path)
    per_epoch = shape[0] // batch
    if per_epoch == 0:
        raise SystemExit(f"{path}: {shape[0]:,} rows, fewer than one batch of {batch}")
    with open(path, "rb") as handle:
        for step in range(steps):
            if step % per_epoch == 0:
                handle.seek(offset)
            rows = np.fromfile(handle, dtype=np.float32, count=batch * shape[1])
            yield torch.from_numpy(rows.reshape(batch, shape[1]))


def d_in_of(path: str | Path) -> int:
    return npy_layout(path)[0][1]


class Clock:
    """Wall time of the training loop alone (imports, set-up and saving excluded)."""

    def __enter__(self) -> Clock:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_result(out: str | Path, args: argparse.Namespace, seconds: float, **extra: object) -> None:
    tokens = args.steps * args.batch
    result = {
        "arch": args.arch, "l0": args.l0, "variant": args.variant, "width": args.width, "batch": args.batch, "steps": args.steps,
        "tokens": tokens, "train_seconds": seconds, "tokens_per_second": tokens / seconds, "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, **extra,
    }
    Path(out, "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
