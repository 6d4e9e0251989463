"""What a feature's decoder direction does: its logit effects, and which features point the same way.

Logit effect of feature i: the decoder row d_i pushed through the final norm's elementwise weight
and the unembedding, W_U · (γ ⊙ d_i) (centred first when the final norm is a LayerNorm, which
subtracts the mean). This is the direct path only, the same approximation Neuronpedia shows; the
norm's data-dependent scale is left out, so the values rank tokens but are not logit differences.

SAEs on ``attn_z`` (concatenated heads) or ``mlp_post`` (MLP neurons) do not live in the residual
stream: their rows first go through the sublayer's output projection (W_O, or the MLP's down
projection, whatever its head count and head size), then the sublayer's output norm (Gemma 2/3,
OLMo 2) and multiplier (Granite), which is what the residual stream receives
(:func:`residual_directions`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from saescope.lm.hookpoints import Hookpoint, available_hookpoints

PROJECTED_SITES = {"attn_z": "attn_out", "mlp_post": "mlp_out"}
"""Sites read before a projection, and the sublayer site their projection writes."""
_FINAL_NORM_NAMES = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.final_layernorm", "model.decoder.final_layer_norm")


def final_norm(model: nn.Module) -> nn.Module | None:
    modules = dict(model.named_modules())
    for name in _FINAL_NORM_NAMES:
        if name in modules:
            return modules[name]
    return None


def output_directions(model: nn.Module, directions: Tensor) -> Tensor:
    """``directions`` [n, d] in the residual stream → the vectors the unembedding sees, [n, d]."""
    norm = final_norm(model)
    out = directions.float()
    if norm is None:
        return out
    if isinstance(norm, nn.LayerNorm):
        out = out - out.mean(dim=1, keepdim=True)
    return _times_norm_weight(norm, out)


def _times_norm_weight(norm: nn.Module, out: Tensor) -> Tensor:
    weight = getattr(norm, "weight", None)
    if weight is None:
        return out
    scale = weight.detach().float().to(out.device)
    if "gemma" in type(norm).__name__.lower():
        scale = 1.0 + scale  # Gemma's RMSNorm multiplies by (1 + weight)
    return out * scale


@torch.no_grad()
def residual_directions(model: nn.Module, point: Hookpoint, directions: Tensor) -> Tensor:
    """``directions`` [n, d_site] at ``point`` → what they add to the residual stream, [n, d_model].

    Residual-stream sites return the directions unchanged. ``attn_z`` and ``mlp_post`` go through
    the projection module itself (its linear part: the bias is subtracted), so Conv1D, fused or
    any head layout work alike; then the sublayer's output norm weight and residual multiplier.
    """
    if point.site not in PROJECTED_SITES:
        return directions.float()
    modules = dict(model.named_modules())
    projection = modules[point.module_name]
    weight = next(projection.parameters())
    rows = directions.to(device=weight.device, dtype=weight.dtype)
    out = (projection(rows) - projection(torch.zeros_like(rows[:1]))).float()
    sublayer = available_hookpoints(model).get(f"layers.{point.layer}.{PROJECTED_SITES[point.site]}")
    if sublayer is not None:
        if sublayer.module_name != point.module_name and sublayer.module_name.rsplit(".", 1)[-1].endswith("norm"):
            out = _times_norm_weight(modules[sublayer.module_name], out)  # a norm after the projection (Gemma 2/3, OLMo 2)
        out = out * sublayer.scale
    return out


@torch.no_grad()
def logit_effects(model: nn.Module, decoder: Tensor, top: int = 10, chunk: int = 512) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per feature, the ``top`` most promoted and most suppressed token ids and their effects.

    Returns (top_ids [F, top], top_values, bottom_ids, bottom_values); bottom is in ascending order.
    """
    unembed = model.get_output_embeddings().weight.detach().float()  # [V, d]
    device = unembed.device
    results: list[list[Tensor]] = [[], [], [], []]
    for start in range(0, decoder.shape[0], chunk):
        rows = output_directions(model, decoder[start : start + chunk].to(device))
        logits = rows @ unembed.T  # [chunk, V]
        high = logits.topk(top, dim=1)
        low = logits.topk(top, dim=1, largest=False)
        for store, tensor in zip(results, (high.indices, high.values, low.indices, low.values)):
            store.append(tensor.cpu())
    top_ids, top_values, bottom_ids, bottom_values = (torch.cat(parts) for parts in results)
    return top_ids, top_values, bottom_ids, bottom_values


@torch.no_grad()
def similar_features(decoder: Tensor, other: Tensor | None = None, top: int = 5, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """Most similar rows of ``other`` (default: ``decoder`` itself, excluding each row) by cosine: (ids, cosines)."""
    same = other is None
    a = nn.functional.normalize(decoder.float(), dim=1)
    b = a if same else nn.functional.normalize(other.float().to(a.device), dim=1)
    top = min(top, b.shape[0] - (1 if same else 0))
    ids, values = [], []
    for start in range(0, a.shape[0], chunk):
        cosine = a[start : start + chunk] @ b.T
        if same:
            rows = torch.arange(start, min(start + chunk, a.shape[0]), device=a.device)
            cosine[torch.arange(rows.numel(), device=a.device), rows] = -2.0
        best = cosine.topk(top, dim=1)
        ids.append(best.indices.cpu())
        values.append(best.values.cpu())
    return torch.cat(ids), torch.cat(values)
