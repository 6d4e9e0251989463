"""Where a mixture-of-experts model routes: per MoE layer, its router, its routed experts and its shared experts.

Found by structure, like the hookpoints: a decoder layer's MLP module (``mlp``, ``block_sparse_moe``,
``feed_forward``, …) is an MoE block when it holds a router child (``gate``, ``router``) whose
forward returns ``(router_logits, top_k_weights, top_k_index)``, the contract every transformers 5
MoE family follows (Mixtral, Qwen2-MoE, Qwen3-MoE, DeepSeek-V2/V3, OLMoE, GPT-OSS, Granite-MoE,
Jamba, GLM-4-MoE, MiniMax, …), and an ``experts`` child. Hooking the router's *output* is what
makes profiling and switching model-agnostic: the router is the one place where the choice of
experts exists as a tensor, whatever kernel the experts run.

Models whose router returns something else (DBRX returns logits only, Llama 4 returns
``(scores, logits)``) are refused with what was found, so nobody profiles the wrong tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from saescope.errors import InvalidInput

_MOE_NAMES = ("mlp", "block_sparse_moe", "feed_forward", "moe", "ffn", "sparse_moe")
_ROUTER_NAMES = ("gate", "router")
_SHARED_NAMES = ("shared_expert", "shared_experts", "shared_mlp")


@dataclass(frozen=True)
class MoeLayer:
    """One MoE layer: module names (from ``model.named_modules()``) and its routing sizes."""

    layer: int
    block: str
    router: str
    experts: str
    n_experts: int
    top_k: int
    shared: str | None = None
    """The always-on shared expert(s), where the model has them (Qwen2-MoE, DeepSeek)."""
    shared_gate: str | None = None
    """Qwen2-MoE's sigmoid gate on the shared expert's output."""

    @property
    def router_class(self) -> str:
        return self.router.rsplit(".", 1)[-1]


def _n_experts(router: nn.Module, experts: nn.Module) -> int | None:
    for owner in (router, experts):
        for name in ("num_experts", "n_routed_experts", "num_local_experts"):
            value = getattr(owner, name, None)
            if isinstance(value, int) and value > 0:
                return value
    weight = getattr(router, "weight", None)
    if weight is not None and weight.dim() == 2:
        return int(weight.shape[0])
    return len(experts) if isinstance(experts, nn.ModuleList) else None


def _top_k(router: nn.Module, block: nn.Module) -> int | None:
    for owner in (router, block):
        for name in ("top_k", "num_experts_per_tok", "topk"):
            value = getattr(owner, name, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def _blocks(model: nn.Module) -> list[tuple[int, str, nn.Module]]:
    from saescope.lm.hookpoints import find_layers

    base, layers = find_layers(model)
    found = []
    for index, layer in enumerate(layers):
        for name in _MOE_NAMES:
            child = getattr(layer, name, None)
            if isinstance(child, nn.Module) and any(isinstance(getattr(child, r, None), nn.Module) for r in _ROUTER_NAMES):
                found.append((index, f"{base}.{index}.{name}", child))
                break
    return found


def find_moe_layers(model: nn.Module) -> list[MoeLayer]:
    """Every MoE layer of ``model``, in layer order. Raises ``InvalidInput`` naming what was found when
    the model has none, or when a router is not of the ``(logits, weights, indices)`` kind."""
    names = {module: name for name, module in model.named_modules()}
    layers = []
    refused = []
    for index, block_name, block in _blocks(model):
        router_attr = next(r for r in _ROUTER_NAMES if isinstance(getattr(block, r, None), nn.Module))
        router = getattr(block, router_attr)
        experts = getattr(block, "experts", None)
        n_experts = _n_experts(router, experts) if experts is not None else None
        top_k = _top_k(router, block)
        if experts is None or n_experts is None or top_k is None or type(router).__name__ in ("DbrxRouter", "Llama4Router"):
            refused.append(f"layer {index}: {type(block).__name__} with router {type(router).__name__}")
            continue
        shared_attr = next((s for s in _SHARED_NAMES if isinstance(getattr(block, s, None), nn.Module)), None)
        shared_gate = getattr(block, "shared_expert_gate", None)
        layers.append(MoeLayer(
            layer=index, block=block_name, router=names[router], experts=names[experts], n_experts=n_experts, top_k=top_k,
            shared=names[getattr(block, shared_attr)] if shared_attr else None,
            shared_gate=names[shared_gate] if isinstance(shared_gate, nn.Module) else None))
    if not layers:
        kind = type(model).__name__
        if refused:
            raise InvalidInput(f"{kind}: found MoE blocks whose router does not return (logits, weights, indices), which expert "
                               f"profiling and switching read: {'; '.join(refused[:3])}. This family is not supported yet")
        raise InvalidInput(f"{kind} has no mixture-of-experts layer (looked for a router child {_ROUTER_NAMES} in each layer's "
                           f"{'/'.join(_MOE_NAMES)} module); expert profiling needs an MoE model such as Mixtral, Qwen3-MoE, "
                           "DeepSeek-V3 or OLMoE")
    return layers


def describe_moe(layers: list[MoeLayer]) -> str:
    """One line: how many MoE layers, experts per layer, top-k, shared experts."""
    first = layers[0]
    total = sum(layer.n_experts for layer in layers)
    shared = ", with shared experts" if any(layer.shared for layer in layers) else ""
    return (f"{len(layers)} MoE layers ({layers[0].layer}–{layers[-1].layer}), {first.n_experts} routed experts each, "
            f"top-{first.top_k}{shared}: {total} routed experts")


def layer_by_index(layers: list[MoeLayer], index: int, where: str = "layer") -> MoeLayer:
    for layer in layers:
        if layer.layer == index:
            return layer
    raise InvalidInput(f"{where} {index} is not an MoE layer; the MoE layers are {[layer.layer for layer in layers]}")
