"""Several processes (``torchrun``), one suite: which process trains which SAE jobs.

**Sharded placement** (what this module implements today): each SAE job lives on one rank, job ``i``
on rank ``i mod world``. Every rank builds every job in the same order from the same seed, so the
initial weights are the single-process ones, then trains only its own. Every rank reads the same
global batches (arrays and caches are cheap to read; data order is a pure function of seed and
step), so each SAE sees exactly the batches it would see in one process, and its result is
bit-identical to the single-process one. Nothing crosses between ranks in the step; metrics are
gathered at log steps so rank 0 can print every SAE's line.

**Data-parallel harvest** (a live model): each forward batch of contexts is split across the ranks,
each runs the model on its part, and ``gather_rows`` puts every rank's activation rows back together
in rank order, which is the order one process would have produced. The shuffle buffer then sees
the same rows as in one process.

Rank 0 alone prints progress, takes the output folder's lock and writes shared files; each rank
saves its own SAEs and its own checkpoint (``checkpoint/rank-R-of-W``). A run resumes only with
the number of ranks it was started with.

The process group is started from torchrun's environment (``RANK``, ``WORLD_SIZE``,
``MASTER_ADDR``, ``MASTER_PORT``): NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from saescope.errors import InvalidInput


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def owns(self, job_index: int) -> bool:
        """Whether this rank trains job number ``job_index`` (round robin)."""
        return job_index % self.world == self.rank

    def checkpoint_folder(self, folder: str | os.PathLike) -> str:
        return str(folder) if not self.distributed else os.path.join(str(folder), f"rank-{self.rank}-of-{self.world}")


def current() -> Ranks:
    """This process's rank and the world size (rank 0 of 1 outside a process group)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def init_from_environment(device: str | None = None) -> Ranks:
    """Join torchrun's process group if this process was started by it with more than one rank."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return current()
    if not dist.is_available():
        raise InvalidInput("WORLD_SIZE > 1 but this torch build has no torch.distributed; run one process")
    on_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if on_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if on_cuda else "gloo")
    return current()


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        import torch.distributed as dist

        dist.barrier()


def gather_objects(value: Any, ranks: Ranks) -> list[Any]:
    """``value`` from every rank, in rank order (``[value]`` in one process)."""
    if not ranks.distributed:
        return [value]
    import torch.distributed as dist

    gathered: list[Any] = [None] * ranks.world
    dist.all_gather_object(gathered, value)
    return gathered


def agree(value: Any, ranks: Ranks, what: str) -> None:
    """Stop with a clear message unless every rank has the same ``value`` (a setting, a job list)."""
    values = gather_objects(value, ranks)
    if any(v != values[0] for v in values):
        raise InvalidInput(f"the ranks disagree on {what}: {values}; start every rank with the same command")


def gather_rows(rows: dict[str, torch.Tensor], ranks: Ranks) -> dict[str, torch.Tensor]:
    """Every rank's rows ``{name: [n_r, d]}`` concatenated in rank order (ranks may hold different n_r)."""
    if not ranks.distributed:
        return rows
    import torch.distributed as dist

    names = sorted(rows)
    first = rows[names[0]]
    count = torch.tensor([first.shape[0]], device=first.device)
    counts = [torch.zeros_like(count) for _ in range(ranks.world)]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    longest = max(sizes)
    out = {}
    for name in names:
        local = rows[name]
        padded = torch.zeros(longest, *local.shape[1:], dtype=local.dtype, device=local.device)
        padded[:local.shape[0]] = local
        parts = [torch.zeros_like(padded) for _ in range(ranks.world)]
        dist.all_gather(parts, padded)
        out[name] = torch.cat([part[:size] for part, size in zip(parts, sizes)])
    return out
