"""Arithmetic precision of the SAE step on accelerators: TF32 matmuls and optional bf16 autocast.

On CUDA, float32 matmuls can run on the tensor cores in TF32 (10-bit mantissa products, float32
accumulation): several times faster on Ampere and Hopper, with a relative error near 3e-4, far
below an SAE's reconstruction error. ``matmul_precision`` turns it on for one ``fit`` and restores
the process's setting afterwards, so a library call never changes a user's global state.
``step_autocast`` runs the SAE's forward under bf16 autocast (the backward follows the forward's
dtypes); parameters, optimiser state and the loss's reductions stay float32.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16}
"""Autocast dtypes for the SAE step. float16 is left out: it would need a gradient scaler."""


@contextmanager
def matmul_precision(device: torch.device, tf32: bool) -> Iterator[None]:
    """Within the block, CUDA float32 matmuls and convolutions use TF32 when ``tf32`` (no effect off CUDA)."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def step_autocast(device: torch.device, dtype_name: str | None) -> AbstractContextManager[None]:
    """An autocast context for the SAE forward in ``dtype_name`` ("bfloat16"), or a no-op for None."""
    if dtype_name is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[dtype_name])
