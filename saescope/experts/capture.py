"""Read an MoE model's routing in one forward: per MoE layer the block's input, the router logits, the
chosen experts and their weights, the routed experts' combined output and the shared experts' output.

Each routed expert's own output is not a tensor of the forward (the experts run fused); it is computed
on demand by calling the layer's experts module with every token sent to that one expert at weight 1,
the same call the block makes, so it is exactly what the expert adds when chosen (times its weight).

>>> routing = capture_routing(loaded.model, input_ids)            # doctest: +SKIP
>>> routing[3].indices.shape, routing[3].logits.shape             # doctest: +SKIP
(torch.Size([1, 12, 8]), torch.Size([1, 12, 256]))
>>> out = expert_output(loaded.model, routing[3], expert=17)       # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saescope.experts.sites import MoeLayer, find_moe_layers


@dataclass
class LayerRouting:
    layer: MoeLayer
    hidden: Tensor
    """[b, s, d] the MoE block's input (what the router reads)."""
    logits: Tensor
    """[b, s, n_experts] router logits."""
    indices: Tensor
    """[b, s, top_k] the chosen experts."""
    weights: Tensor
    """[b, s, top_k] their weights."""
    routed: Tensor
    """[b, s, d] the routed experts' weighted sum."""
    shared: Tensor | None
    """[b, s, d] the shared experts' output (before Qwen2-MoE's sigmoid gate), where the model has them."""


def capture_routing(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None) -> dict[int, LayerRouting]:
    """One full forward; returns ``{layer index: LayerRouting}`` for every MoE layer."""
    layers = find_moe_layers(model)
    modules = dict(model.named_modules())
    b, s = input_ids.shape
    seen: dict[tuple[int, str], object] = {}
    handles = []

    def keep(index: int, what: str, take):
        def hook(_module, args, output):
            seen[(index, what)] = take(args, output)
        return hook

    for layer in layers:
        handles.append(modules[layer.block].register_forward_hook(keep(layer.layer, "hidden", lambda a, o: a[0].detach())))
        handles.append(modules[layer.router].register_forward_hook(keep(layer.layer, "router", lambda a, o: tuple(t.detach() for t in o[:3]))))
        handles.append(modules[layer.experts].register_forward_hook(keep(layer.layer, "routed", lambda a, o: o.detach())))
        if layer.shared:
            handles.append(modules[layer.shared].register_forward_hook(keep(layer.layer, "shared", lambda a, o: o.detach())))
    try:
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    routing = {}
    for layer in layers:
        logits, weights, indices = seen[(layer.layer, "router")]
        shared = seen.get((layer.layer, "shared"))
        routing[layer.layer] = LayerRouting(
            layer=layer, hidden=seen[(layer.layer, "hidden")].reshape(b, s, -1), logits=logits.reshape(b, s, -1),
            weights=weights.reshape(b, s, -1), indices=indices.long().reshape(b, s, -1),
            routed=seen[(layer.layer, "routed")].reshape(b, s, -1), shared=shared.reshape(b, s, -1) if shared is not None else None)
    return routing


def expert_output(model: nn.Module, routing: LayerRouting, expert: int) -> Tensor:
    """[b, s, d] what routed expert ``expert`` of this layer outputs on every token (at weight 1)."""
    experts = dict(model.named_modules())[routing.layer.experts]
    b, s, d = routing.hidden.shape
    flat = routing.hidden.reshape(b * s, d)
    index = torch.full((b * s, 1), expert, dtype=torch.long, device=flat.device)
    weight = torch.ones(b * s, 1, dtype=flat.dtype, device=flat.device)
    with torch.no_grad():
        return experts(flat, index, weight).reshape(b, s, -1)
