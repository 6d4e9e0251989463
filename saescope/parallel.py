"""Several processes (``torchrun``), one suite: which process trains which SAE jobs.

**Sharded placement** (the default whenever there are at least as many jobs as processes): each SAE job
lives on one rank (``assign_owners``: balanced blocks of the jobs ordered by hookpoint). Every rank builds every job in the same order from the same seed, so the
initial weights are the single-process ones, then trains only its own. Every rank reads the same
global batches (arrays and caches are cheap to read; data order is a pure function of seed and
step), so each SAE sees exactly the batches it would see in one process, and its result is
bit-identical to the single-process one. Nothing crosses between ranks in the step; metrics are
gathered at log steps so rank 0 can print every SAE's line.

**Replicated placement** (fewer jobs than processes, or asked for): every rank holds every job and
trains it on its share of each global batch, with gradients averaged as DDP does
(``saescope/training/replicas.py``); rank 0 returns and saves the SAEs.

**Data-parallel harvest** (a live model): each forward batch of contexts is split across the ranks,
each runs the model on its part, and the rows come back together in rank order, which is the order
one process would have produced, so the shuffle buffer sees the same rows as in one process. Under
sharded placement ``exchange_rows`` sends each rank only its own jobs' hookpoints with one
all-to-all, and each rank's shuffle buffer holds only those; otherwise (replicated placement, or the
norm-outlier filter, which needs every hookpoint's rows) ``gather_rows`` gives every rank every row.

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


def assign_owners(hookpoints_per_job: list[tuple[str, ...]], world: int) -> list[int]:
    """The rank that trains each job under sharded placement: contiguous, balanced blocks of the jobs ordered by hookpoint.

    Jobs of one hookpoint sit next to each other, so each rank reads few hookpoints and, with the
    all-to-all exchange, holds only those in its shuffle buffer. Block sizes differ by at most one.
    """
    first_seen: dict[str, int] = {}
    for hookpoints in hookpoints_per_job:
        for name in hookpoints:
            first_seen.setdefault(name, len(first_seen))
    order = sorted(range(len(hookpoints_per_job)),
                   key=lambda i: (first_seen[hookpoints_per_job[i][0]] if hookpoints_per_job[i] else -1, i))
    owners = [0] * len(order)
    for position, job in enumerate(order):
        owners[job] = position * world // max(1, len(order))
    return owners


def _row_counts(local: torch.Tensor, ranks: Ranks) -> list[int]:
    """Every rank's number of rows, in rank order (ranks hold different numbers after masking special tokens)."""
    import torch.distributed as dist

    count = torch.tensor([local.shape[0]], device=local.device)
    counts = [torch.zeros_like(count) for _ in range(ranks.world)]
    dist.all_gather(counts, count)
    return [int(c.item()) for c in counts]


def exchange_rows(rows: dict[str, torch.Tensor], needs: list[list[str]], ranks: Ranks) -> dict[str, torch.Tensor]:
    """Every rank's rows of the hookpoints this rank needs, in rank order, with one all-to-all.

    ``rows`` holds this rank's rows ``{name: [n_r, d]}`` for every hookpoint; ``needs[q]`` lists the hookpoints
    rank ``q`` keeps. Each rank receives only its own hookpoints' rows: the result equals ``gather_rows``
    restricted to ``needs[rank]``, at a fraction of the traffic and of the buffer memory.
    """
    import torch.distributed as dist

    names = sorted(rows)
    first = rows[names[0]]
    sizes = _row_counts(first, ranks)
    widths = {name: rows[name].shape[1] for name in names}
    mine = needs[ranks.rank]
    parts = []
    for wanted in needs:
        block = torch.cat([rows[name] for name in wanted], dim=1) if wanted else first.new_zeros(first.shape[0], 0)
        parts.append(block.reshape(-1))
    send = torch.cat(parts)
    width = sum(widths[name] for name in mine)
    received = send.new_empty(sum(sizes) * width)
    dist.all_to_all_single(received, send, [n * width for n in sizes], [part.numel() for part in parts])
    by_source = [chunk.view(n, width) for chunk, n in zip(received.split([n * width for n in sizes]), sizes)]
    stacked = torch.cat(by_source)
    columns = stacked.split([widths[name] for name in mine], dim=1)
    return {name: column.contiguous() for name, column in zip(mine, columns)}


def choose_placement(requested: str, n_jobs: int, ranks: Ranks) -> str:
    """"single" in one process; else "sharded" or "replicated" as asked, "auto" choosing sharded when every rank gets a job."""
    if not ranks.distributed:
        return "single"
    if requested == "auto":
        return "sharded" if n_jobs >= ranks.world else "replicated"
    if requested == "sharded" and n_jobs < ranks.world:
        raise InvalidInput(f"{ranks.world} processes for {n_jobs} SAE jobs: sharded placement trains each job on one process, "
                           f"so run at most {n_jobs} processes, or use placement replicated (or auto)")
    return requested


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
    sizes = _row_counts(rows[names[0]], ranks)
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
