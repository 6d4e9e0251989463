"""Several processes (``torchrun``), one suite: which process trains which SAE jobs.

**Sharded placement** (what this module implements today): each SAE job lives on one rank, job ``i``
on rank ``i mod world``. Every rank builds every job in the same order from the same seed, so the
initial weights are the single-process ones, then trains only its own. Every rank reads the same
global batches (arrays and caches are cheap to read; data order is a pure function of seed and
step), so each SAE sees exactly the batches it would see in one process, and its result is
bit-identical to the single-process one. Nothing crosses between ranks in the step; metrics are
gathered at log steps so rank 0 can print every SAE's line.

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


def other_world_checkpoint(folder: str | os.PathLike | None, ranks: Ranks) -> str | None:
    """Why ``folder`` cannot be resumed by this many processes (it was checkpointed with another number), or None."""
    from pathlib import Path

    from saescope.io.trainer_state import has_trainer_state

    if folder is None or not Path(folder).is_dir() or has_trainer_state(ranks.checkpoint_folder(folder)):
        return None
    found = sorted(p.name for p in Path(folder).glob("rank-*-of-*") if has_trainer_state(p))
    if not found and not has_trainer_state(folder):
        return None
    started = f"{found[0].split('-of-')[1]} processes" if found else "one process"
    return (f"{folder}: the run was checkpointed with {started}, and this one has {ranks.world}; resume with the same "
            "number of processes (each process holds its own SAE jobs' state)")
