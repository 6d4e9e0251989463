"""Before training a suite: will it fit in memory and on disk, and roughly how long will it take?

The estimates are deliberately simple and on the safe side:

- memory: every SAE keeps weights, gradients and two Adam moments (4 copies of its parameters, fp32);
  one SAE step at a time adds its transients (~8 [rows, d_sae] fp32 tensors: pre-activations,
  masks, activations and their gradients; rows = batch × hookpoints read); the shuffle buffer holds ``shuffle_buffer_tokens`` rows
  of every hookpoint twice; the normalisation sample holds every hookpoint's vectors (at most 1 GiB);
  the model holds its parameters.
- disk: weights of every SAE, plus a checkpoint of 4 copies when checkpointing (and, from a live
  model, the shuffle buffer's waiting rows, saved so that a resumed run draws the same batches).
- time: FLOPs (10·d_in·d_sae per token per SAE step, 2 × the parameters the forward runs through
  per token, and one full forward per SAE for the ΔLM evaluation) divided by a matmul throughput
  measured here in a fraction of a second, at 60% efficiency (what the training step reaches,
  benchmarks/RESULTS.md).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from saescope.errors import InsufficientDisk, InsufficientResources
from saescope.parallel import assign_owners
from saescope.plan_jobs import PlannedJob

GIB = 2**30
STEP_TRANSIENTS = 8
"""[batch, d_sae] fp32 tensors alive during one SAE step."""
EFFICIENCY = 0.6


@dataclass
class Estimate:
    memory_bytes: int
    available_memory_bytes: int | None
    disk_bytes: int
    free_disk_bytes: int | None
    seconds: float
    device: str
    processes: int = 1
    gathered_bytes_per_step: int = 0
    """Activation rows each process receives from the others per training step (data-parallel harvest)."""
    memory_parts: dict[str, int] | None = None
    """``memory_bytes`` by what holds it."""
    placement: str = "sharded"
    """How SAEs are placed on the processes (``saescope.parallel.choose_placement``)."""
    reduced_bytes_per_step: int = 0
    """Replicated placement: gradient bytes each process all-reduces per training step."""

    def summary(self) -> str:
        available = f" of {self.available_memory_bytes / GIB:.1f} GiB available" if self.available_memory_bytes else ""
        free = f" of {self.free_disk_bytes / GIB:.1f} GiB free" if self.free_disk_bytes is not None else ""
        per = f" per process ({self.processes} processes)" if self.processes > 1 else ""
        traffic = f"; {self.gathered_bytes_per_step / 2**20:.1f} MiB of activations gathered per step" if self.gathered_bytes_per_step else ""
        return (f"estimate: memory {self.memory_bytes / GIB:.2f} GiB{per}{available} ({self.device}); "
                f"disk {self.disk_bytes / GIB:.2f} GiB{free}; time about {format_duration(self.seconds)}{traffic}")


def available_memory(device: str) -> int | None:
    """Free bytes on ``device``: MemAvailable on the host, free memory on a CUDA device."""
    if device.startswith("cuda") and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def matmul_flops_per_second(device: str, size: int = 1024, repeats: int = 3) -> float:
    """Best of a few square fp32 matmuls: the ceiling the estimate scales from."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(repeats + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / max(best, 1e-9)


def estimate(
    saes: list[PlannedJob],
    *,
    tokens: int,
    batch_size: int,
    shuffle_buffer_tokens: int,
    model_params: int,
    model_bytes: int,
    forward_fraction: float,
    eval_tokens: int,
    checkpointing: bool,
    out_dir: str | Path,
    device: str,
    live_model: bool = True,
    processes: int = 1,
    flops_per_second: float | None = None,
    placement: str = "sharded",
) -> Estimate:
    """The whole suite's needs; with ``processes`` > 1 (torchrun, sharded placement: balanced blocks of SAEs
    ordered by hookpoint, ``saescope.parallel.assign_owners``) the memory of the busiest process, and the time with the SAE steps, the model
    forwards and the evaluation shared out. With ``placement="replicated"`` every process holds every SAE
    and trains it on 1/``processes`` of each batch, all-reducing its gradients. ``flops_per_second``: one
    device's matmul peak, for planning on hardware other than this machine's (default: measured here)."""
    replicated = placement == "replicated" and processes > 1
    if replicated:
        shares = [saes] * processes
    else:
        owners = assign_owners([tuple(s.hookpoints) for s in saes], processes)
        shares = [[s for s, owner in zip(saes, owners) if owner == rank] for rank in range(processes)]
    rows = batch_size // processes if replicated else batch_size
    widths = {h: w for s in saes for h, w in s.site_widths().items()}
    d_total = sum(widths.values())
    from saescope.training.trainer import NORMALIZATION_SAMPLE_BYTES

    def held_width(share: list[PlannedJob]) -> int:
        return sum({h: w for s in share for h, w in s.site_widths().items()}.values())

    def parts_of(share: list[PlannedJob]) -> dict[str, int]:
        # sharded with several processes: each holds (and evaluates) only its own SAEs' hookpoints (the all-to-all)
        held = held_width(share) if processes > 1 and not replicated else d_total
        return {"SAE state": sum(4 * 4 * s.n_params for s in share),
                "step transients": max((STEP_TRANSIENTS * 4 * rows * len(s.reads.hookpoints) * s.width for s in share), default=0),
                "shuffle buffer": 2 * 4 * shuffle_buffer_tokens * held if live_model else 2 * 4 * batch_size * held,
                "evaluation activations": 4 * eval_tokens * held, "model": model_bytes,
                "normalisation sample": min(NORMALIZATION_SAMPLE_BYTES, 4 * tokens * held)}

    parts = max((parts_of(share) for share in shares), key=lambda p: sum(p.values()))
    memory = sum(parts.values())
    weights = sum(4 * s.n_params for s in saes)
    waiting_rows = 4 * shuffle_buffer_tokens * d_total if live_model else 0
    disk = weights + (4 * weights + waiting_rows if checkpointing else 0)  # activations are written only as the buffer's rows
    flops = tokens * max(sum(10 * len(s.reads.hookpoints) * s.d_in * s.width for s in share) for share in shares)
    if replicated:
        flops /= processes  # each process steps every SAE on its share of the rows
    if live_model:
        flops += tokens * 2 * model_params * forward_fraction / processes
    flops += eval_tokens * 2 * model_params * (max(sum(len(s.reads.hookpoints) for s in share) for share in shares) + 2 * len(widths))
    seconds = flops / (EFFICIENCY * (flops_per_second or matmul_flops_per_second(device)))
    received = d_total if replicated else max(held_width(share) for share in shares)
    gathered = 4 * batch_size * received * (processes - 1) // processes if live_model and processes > 1 else 0
    reduced = 4 * sum(s.n_params for s in saes) if replicated else 0
    return Estimate(memory, available_memory(device), disk, _free_disk(out_dir), seconds, device, processes, gathered, parts,
                    "replicated" if replicated else "sharded", reduced)


def check(estimate_: Estimate, out_dir: str | Path) -> None:
    """Refuse a suite that cannot fit; the message says what to change."""
    if estimate_.available_memory_bytes is not None and estimate_.memory_bytes > 0.9 * estimate_.available_memory_bytes:
        raise InsufficientResources(
            f"this suite needs about {estimate_.memory_bytes / GIB:.1f} GiB on {estimate_.device} but only "
            f"{estimate_.available_memory_bytes / GIB:.1f} GiB is available; train fewer SAEs per run (fewer hookpoints, "
            "architectures, widths or target L0s), use smaller widths or a smaller batch_size, or shuffle_buffer_tokens"
        )
    if estimate_.free_disk_bytes is not None and estimate_.disk_bytes > estimate_.free_disk_bytes:
        raise InsufficientDisk(
            f"too little disk at {out_dir}: the suite writes about {estimate_.disk_bytes / GIB:.2f} GiB but "
            f"{estimate_.free_disk_bytes / GIB:.2f} GiB is free; free space, choose another --out, or set checkpoint_every: 0"
        )


def _free_disk(path: str | Path) -> int | None:
    folder = Path(path).resolve()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
