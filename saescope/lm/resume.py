"""Resume a forward pass at a decoder layer, for several variants of one batch at once.

Splicing an SAE at layer L changes nothing before layer L, so the evaluation need not recompute
layers 0..L−1 for every SAE: the clean forward keeps layer L−1's output (``keep_layer_outputs``), and a
spliced forward *replays* it (``replayed_layers``): the early layers' ``forward`` is swapped for one that
returns the kept output, so the model's own code still builds the masks, position embeddings, final
norm, logit soft-capping and so on, for any family. Several splices of one batch (each SAE at one
hookpoint, and the zero ablation) run as one forward over the batch repeated, which also uses a CPU's
matrix units better than small batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from saescope.errors import InvalidInput
from saescope.lm.hookpoints import find_layers


def repeat_batch(value: Any, times: int, batch: int) -> Any:
    """``value`` with every tensor whose first dimension is the batch repeated ``times`` along it (tuples recursed)."""
    if isinstance(value, Tensor):
        if times == 1 or value.dim() == 0 or value.shape[0] != batch:
            return value
        return value.repeat(times, *([1] * (value.dim() - 1)))
    if isinstance(value, tuple):
        return type(value)(repeat_batch(v, times, batch) for v in value) if not hasattr(value, "_fields") else type(value)(
            *(repeat_batch(v, times, batch) for v in value))
    if isinstance(value, list):
        return [repeat_batch(v, times, batch) for v in value]
    return value


@contextmanager
def keep_layer_outputs(model: nn.Module, layers: list[int]) -> Iterator[dict[int, Any]]:
    """Inside the block, each forward stores the output of every decoder layer in ``layers`` (detached), by index."""
    _, blocks = find_layers(model)
    kept: dict[int, Any] = {}

    def keeper(index: int):  # noqa: ANN202 - a forward hook
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            kept[index] = output
        return hook

    handles = [blocks[i].register_forward_hook(keeper(i)) for i in sorted(set(layers))]
    try:
        yield kept
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def replayed_layers(model: nn.Module, upto: int, output: Any, times: int, batch: int) -> Iterator[None]:
    """Layers 0..upto−1 return ``output`` (layer upto−1's kept output for a batch of ``batch``), repeated ``times``.

    Only layer upto−1's output reaches layer upto, so every replayed layer returns the same object.
    The layers' modules stay in place (attributes such as a layer's attention type are still read by
    the model); only their ``forward`` is swapped, and restored on exit.
    """
    if upto <= 0:
        yield
        return
    _, blocks = find_layers(model)
    if upto > len(blocks):
        raise InvalidInput(f"cannot replay {upto} layers of a model with {len(blocks)}")
    repeated = repeat_batch(output, times, batch)

    def replay(*_args: Any, **_kwargs: Any) -> Any:
        return repeated

    swapped = []
    try:
        for block in list(blocks)[:upto]:
            object.__setattr__(block, "forward", replay)
            swapped.append(block)
        yield
    finally:
        for block in swapped:
            object.__delattr__(block, "forward")


def can_replay(model: nn.Module) -> bool:
    """Whether the model's decoder layers can be found (otherwise the evaluation runs full forwards)."""
    try:
        find_layers(model)
    except InvalidInput:
        return False
    return True


@torch.no_grad()
def stacked_logits(model: nn.Module, input_ids: Tensor, times: int) -> Tensor:
    """Logits of the batch repeated ``times`` (the hooks and replays in force decide what each copy computes)."""
    return model(input_ids=input_ids.repeat(times, 1), use_cache=False).logits
