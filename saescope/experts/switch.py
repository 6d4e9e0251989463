"""Switch routed experts off or force them on while the model runs (MoTE, Dahlke et al. 2025).

>>> with switch_experts(model, off=[(3, 17), (5, 2)]):        # doctest: +SKIP
...     model.generate(input_ids, max_new_tokens=40)

Experts are named ``(layer, expert)`` with ``layer`` the decoder layer's index. The router's own
output is rerouted (``routing.Rerouter``): a switched-off expert's slot goes to the next-best
expert; a forced expert is chosen for every token with the weight of the router's first choice.
``positions`` is ``"all"``, ``"prompt"`` (the first forward inside the block: the prompt's prefill)
or ``"generated"`` (every later forward). With nothing to switch no hook is attached, so the model
is untouched bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from saescope.errors import InvalidInput
from saescope.experts.routing import Rerouter
from saescope.experts.sites import MoeLayer, find_moe_layers, layer_by_index

POSITIONS = ("all", "prompt", "generated")
Expert = tuple[int, int]


def parse_experts(specs: Iterable[str], where: str = "--off") -> list[Expert]:
    """``["3:17", "5:2,9"]`` → ``[(3, 17), (5, 2), (5, 9)]``."""
    experts: list[Expert] = []
    for spec in specs:
        layer, sep, rest = str(spec).partition(":")
        try:
            if not sep:
                raise ValueError
            experts += [(int(layer), int(expert)) for expert in rest.split(",")]
        except ValueError:
            raise InvalidInput(f"{where} {spec!r}: expected LAYER:EXPERT[,EXPERT…], e.g. 3:17 or 5:2,9") from None
    return experts


def check_experts(layers: list[MoeLayer], experts: Iterable[Expert], where: str) -> dict[int, list[int]]:
    """Experts grouped by layer, each checked to exist."""
    grouped: dict[int, list[int]] = {}
    for layer_index, expert in experts:
        layer = layer_by_index(layers, int(layer_index), where=f"{where}: layer")
        if not 0 <= int(expert) < layer.n_experts:
            raise InvalidInput(f"{where}: expert {expert} does not exist at layer {layer_index} (experts 0..{layer.n_experts - 1})")
        if int(expert) not in grouped.setdefault(layer.layer, []):
            grouped[layer.layer].append(int(expert))
    return grouped


class ExpertSwitch:
    """A set of experts to switch off and a set to force on; ``with switch.active():`` applies them."""

    def __init__(self, model: nn.Module, off: Iterable[Expert] = (), on: Iterable[Expert] = (), positions: str = "all") -> None:
        if positions not in POSITIONS:
            raise InvalidInput(f"positions must be one of {POSITIONS}, got {positions!r}")
        self.model = model
        self.positions = positions
        off, on = list(off), list(on)
        self.layers = find_moe_layers(model) if off or on else []
        self.off = check_experts(self.layers, off, "off")
        self.on = check_experts(self.layers, on, "on")
        for layer in self.layers:
            off_here, on_here = set(self.off.get(layer.layer, [])), set(self.on.get(layer.layer, []))
            if off_here & on_here:
                raise InvalidInput(f"layer {layer.layer}: experts {sorted(off_here & on_here)} are both switched off and forced on")
            if layer.n_experts - len(off_here) < layer.top_k:
                raise InvalidInput(f"layer {layer.layer}: {len(off_here)} of {layer.n_experts} experts switched off leaves fewer "
                                   f"than the {layer.top_k} each token needs")
            if len(on_here) > layer.top_k:
                raise InvalidInput(f"layer {layer.layer}: {len(on_here)} experts forced on, but each token takes only {layer.top_k}")
        self.rerouters: dict[str, Rerouter] = {}

    @property
    def empty(self) -> bool:
        return not self.off and not self.on

    def _hook(self, layer: MoeLayer, calls: dict[str, int]):
        def masks(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
            off = torch.zeros(layer.n_experts, dtype=torch.bool, device=device)
            on = torch.zeros_like(off)
            off[self.off.get(layer.layer, [])] = True
            on[self.on.get(layer.layer, [])] = True
            return off, on

        def hook(module: nn.Module, _args: tuple, output: tuple) -> tuple | None:
            logits, weights, indices = output[0], output[1], output[2]
            first = calls.get(layer.router, 0) == 0
            calls[layer.router] = calls.get(layer.router, 0) + 1
            flat = logits.reshape(-1, logits.shape[-1])
            if layer.router not in self.rerouters:
                self.rerouters[layer.router] = Rerouter.detect(module, flat, weights.reshape(flat.shape[0], -1),
                                                               indices.reshape(flat.shape[0], -1), where=f"layer {layer.layer}")
            if (self.positions == "prompt" and not first) or (self.positions == "generated" and first):
                return None
            off, on = masks(flat.device)
            new_weights, new_indices = self.rerouters[layer.router](module, flat, off, on, like=(weights, indices))
            return (logits, new_weights.reshape(weights.shape), new_indices.reshape(indices.shape), *output[3:])

        return hook

    @contextmanager
    def active(self) -> Iterator[ExpertSwitch]:
        modules = dict(self.model.named_modules())
        calls: dict[str, int] = {}
        handles = []
        try:
            for layer in self.layers:
                if layer.layer in self.off or layer.layer in self.on:
                    handles.append(modules[layer.router].register_forward_hook(self._hook(layer, calls)))
            yield self
        finally:
            for handle in handles:
                handle.remove()


@contextmanager
def switch_experts(model: nn.Module, off: Iterable[Expert] = (), on: Iterable[Expert] = (), positions: str = "all") -> Iterator[ExpertSwitch]:
    """Switch ``off`` experts off and force ``on`` experts on inside the block; see the module docstring."""
    with ExpertSwitch(model, off, on, positions).active() as switch:
        yield switch
