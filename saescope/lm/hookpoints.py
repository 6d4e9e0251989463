"""Hookpoint names, resolved once against a model's modules.

Every decoder layer ``L`` offers four sites, named ``layers.L.<site>``:

- ``resid_post``: the residual stream after the block (the block's output);
- ``attn_out``: the attention sublayer's output before it is added to the residual stream
  (for Gemma 2/3, after the post-attention norm, since that is what is added);
- ``attn_z``: the concatenated per-head outputs, the input of the attention output projection
  (what Gemma Scope's attention SAEs read);
- ``mlp_out``: the MLP sublayer's output before the residual add (for Gemma 2/3, after the
  post-feedforward norm).

Layers and sublayers are found by structure (the ``ModuleList`` of decoder blocks, then the
attention, MLP and output-projection submodules by their usual names), which covers the Llama,
Mistral, Qwen2, Gemma 2/3, GPT-2 and GPT-NeoX families. Glob patterns (``layers.*.mlp_out``) and
TransformerLens aliases (``blocks.5.hook_resid_post``, ``blocks.5.attn.hook_z``) are accepted.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

from torch import nn

from saescope.errors import InvalidInput

SITES = ("attn_z", "attn_out", "mlp_out", "resid_post")
"""In execution order within a block: the deepest requested site is where the forward can stop."""

_LAYER_LIST_NAMES = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers", "transformer.layers", "layers", "h")
_ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")
_OUT_PROJ_NAMES = ("o_proj", "c_proj", "dense", "out_proj")
_TRANSFORMER_LENS = {
    "hook_resid_post": "resid_post",
    "hook_attn_out": "attn_out",
    "hook_mlp_out": "mlp_out",
    "attn.hook_z": "attn_z",
    "hook_z": "attn_z",
}


@dataclass(frozen=True)
class Hookpoint:
    """One resolved site: where to hook and which tensor to take."""

    name: str
    """Canonical name, ``layers.L.<site>``."""
    layer: int
    site: str
    module_name: str
    """Path in ``model.named_modules()``."""
    reads_input: bool
    """True: the module's first input (a pre-hook); False: its output (first element if a tuple)."""

    @property
    def order(self) -> tuple[int, int]:
        """Position in the forward pass, for early stopping."""
        return (self.layer, SITES.index(self.site))


def find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ``ModuleList`` of decoder blocks and its path."""
    modules = dict(model.named_modules())
    for name in _LAYER_LIST_NAMES:
        candidate = modules.get(name)
        if isinstance(candidate, nn.ModuleList) and len(candidate) > 0:
            return name, candidate
    # Fall back to the longest ModuleList of identical blocks (unusual wrappers).
    lists = [(n, m) for n, m in modules.items() if isinstance(m, nn.ModuleList) and len(m) > 0 and len({type(b) for b in m}) == 1]
    if not lists:
        raise InvalidInput(f"{type(model).__name__}: found no ModuleList of decoder layers; saescope supports decoder-only transformers")
    return max(lists, key=lambda item: len(item[1]))


def _child(module: nn.Module, names: tuple[str, ...]) -> str | None:
    for name in names:
        if isinstance(getattr(module, name, None), nn.Module):
            return name
    return None


def available_hookpoints(model: nn.Module) -> dict[str, Hookpoint]:
    """Every hookpoint the model offers, by canonical name, in forward order."""
    prefix, layers = find_layers(model)
    points: dict[str, Hookpoint] = {}
    for index, block in enumerate(layers):
        base = f"{prefix}.{index}"

        def add(site: str, module_name: str, reads_input: bool = False, layer: int = index) -> None:
            points[f"layers.{layer}.{site}"] = Hookpoint(f"layers.{layer}.{site}", layer, site, module_name, reads_input)

        attention = _child(block, _ATTENTION_NAMES)
        mlp = _child(block, _MLP_NAMES)
        # Gemma 2/3 normalise each sublayer's output before the residual add (a "sandwich" norm).
        sandwich = hasattr(block, "pre_feedforward_layernorm") and hasattr(block, "post_feedforward_layernorm")
        if attention is not None:
            out_proj = _child(getattr(block, attention), _OUT_PROJ_NAMES)
            if out_proj is not None:
                add("attn_z", f"{base}.{attention}.{out_proj}", reads_input=True)
            add("attn_out", f"{base}.post_attention_layernorm" if sandwich else f"{base}.{attention}")
        if mlp is not None:
            add("mlp_out", f"{base}.post_feedforward_layernorm" if sandwich else f"{base}.{mlp}")
        add("resid_post", base)
    ordered = sorted(points.values(), key=lambda p: p.order)
    return {p.name: p for p in ordered}


def canonical_name(name: str) -> str:
    """Map aliases (TransformerLens, full module paths) onto ``layers.L.<site>``; patterns pass through."""
    name = name.strip()
    match = re.fullmatch(r"blocks\.([0-9*?\[\]]+)\.(.+)", name)
    if match and match.group(2) in _TRANSFORMER_LENS:
        return f"layers.{match.group(1)}.{_TRANSFORMER_LENS[match.group(2)]}"
    match = re.fullmatch(r"(?:model\.|transformer\.|gpt_neox\.)?(?:layers|h)\.([0-9*?\[\]]+)(?:\.(.+))?", name)
    if match:
        site = match.group(2) or "resid_post"
        return f"layers.{match.group(1)}.{site}"
    return name


def _describe(points: dict[str, Hookpoint]) -> str:
    n_layers = max(p.layer for p in points.values()) + 1
    sites = [s for s in SITES if any(p.site == s for p in points.values())]
    return f"layers.0-{n_layers - 1}.{{{', '.join(sites)}}} (e.g. 'layers.{n_layers // 2}.resid_post', or a glob such as 'layers.*.mlp_out')"


def resolve_hookpoints(model: nn.Module, names: str | list[str]) -> list[Hookpoint]:
    """Resolve names, aliases and globs to hookpoints, in forward order, without duplicates.

    Raises ValueError naming the offending entry and listing the valid hookpoints.
    """
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    if not names:
        raise InvalidInput("no hookpoints requested")
    points = available_hookpoints(model)
    chosen: dict[str, Hookpoint] = {}
    for raw in names:
        name = canonical_name(raw)
        matches = [p for key, p in points.items() if fnmatch.fnmatchcase(key, name)]
        if not matches:
            raise InvalidInput(f"unknown hookpoint {raw!r} for {type(model).__name__}; valid hookpoints: {_describe(points)}")
        for point in matches:
            chosen[point.name] = point
    return sorted(chosen.values(), key=lambda p: p.order)


def select_hookpoints(patterns: list[str], available: list[str], where: str) -> list[str]:
    """The names of ``available`` that the names or globs ``patterns`` pick, by pattern then in ``available``'s order.

    A pattern that picks nothing raises, naming ``where`` (a cache folder, this run) and what it holds.
    """
    chosen: list[str] = []
    for raw in patterns:
        matches = [h for h in available if fnmatch.fnmatchcase(h, canonical_name(raw))]
        if not matches:
            raise InvalidInput(f"no hookpoint {raw!r} in {where}; it holds {available}")
        chosen += [m for m in matches if m not in chosen]
    return chosen
