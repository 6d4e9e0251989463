"""Replicated placement: every process holds every SAE and trains it on its share of each global batch.

For a few SAEs too large to train fast on one device, the data is split instead of the jobs: each
rank takes rows ``tensor_split(batch, world)[rank]`` of the global batch, computes its gradients,
and the gradients are averaged across ranks before the optimiser step, as PyTorch's
DistributedDataParallel does (here as one flat all-reduce per SAE after the backward: the objectives
compute their own losses, so DDP's forward wrapper has nothing to wrap). Every rank then applies the
same update and the replicas stay identical.

What must be global to keep them identical is synchronised every step in one more all-reduce:
the batch's L0 (the λ controller and the L0 targets read it), which latents fired and how often
(dead-latent counters, firing rates), and the SAE's floating buffers that an objective updates from
its batch (BatchTopK's inference threshold). Loss terms that are means over tokens (MSE, L1, the
L0 penalties) then give the single-process gradient up to float rounding; terms computed over the
whole batch (AuxK's residual variance, BatchTopK's batch-level selection, Feature Choice's per-latent
budget) are computed over each rank's share, so those runs are close to, not equal to, one process.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from saescope.parallel import Ranks


def my_rows(x: Tensor, layer_index: Tensor | None, ranks: Ranks) -> tuple[Tensor, Tensor | None]:
    """This rank's contiguous share of a global batch (and of its rows' layer indices)."""
    part = torch.tensor_split(x, ranks.world)[ranks.rank]
    if layer_index is None:
        return part, None
    return part, torch.tensor_split(layer_index, ranks.world)[ranks.rank]


def _all_reduce_sum(flat: Tensor) -> None:
    import torch.distributed as dist

    dist.all_reduce(flat, op=dist.ReduceOp.SUM)


def average_gradients(parameters: Iterable[nn.Parameter], ranks: Ranks) -> None:
    """Replace each parameter's gradient by its mean over the ranks (a missing gradient counts as zeros)."""
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    _all_reduce_sum(flat)
    flat /= ranks.world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p)
        offset += n


def global_step_statistics(batch_l0: Tensor, counts: Tensor, ranks: Ranks) -> tuple[Tensor, Tensor]:
    """(the global batch's mean L0, each latent's firing count over the global batch) from this rank's share.

    Shares are equal in size (batch sizes are a multiple of the world), so the global mean L0 is the mean of the ranks'.
    """
    flat = torch.cat([batch_l0.reshape(1).float(), counts.float()])
    _all_reduce_sum(flat)
    return flat[0] / ranks.world, flat[1:].round().to(counts.dtype)


def average_buffers(module: nn.Module, ranks: Ranks) -> None:
    """Make every floating buffer the mean over the ranks (a no-op where they already agree)."""
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.reshape(-1).float() for b in buffers])
    _all_reduce_sum(flat)
    flat /= ranks.world
    offset = 0
    for b in buffers:
        n = b.numel()
        b.copy_(flat[offset:offset + n].view_as(b))
        offset += n


def average_tensor(value: Tensor, ranks: Ranks) -> Tensor:
    """The mean of ``value`` over the ranks (a copy)."""
    flat = value.detach().clone().float()
    _all_reduce_sum(flat)
    return (flat / ranks.world).to(value.dtype)
