"""Hookpoint names, resolved once against a model's modules.

Every decoder layer ``L`` offers these sites, named ``layers.L.<site>``, in forward order:

- ``resid_pre``: the residual stream entering the block (``layers.0.resid_pre``, alias ``embed``, is
  the embedded tokens as the first block reads them: positions and Gemma's scaling included);
- ``attn_z``: the concatenated per-head outputs, the input of the attention output projection
  (what Gemma Scope's attention SAEs read);
- ``attn_out``: what the attention sublayer adds to the residual stream (after Gemma 2/3's and
  OLMo 2's post-attention norm, times Granite's ``residual_multiplier``, without the residual that
  Bloom adds inside its attention module);
- ``resid_mid``: ``resid_pre + attn_out``, the residual stream between the sublayers; only for
  sequential blocks (GPT-J, Phi, Cohere, Falcon and GPT-NeoX-style parallel blocks have none);
- ``mlp_in``: what the MLP reads (the normalised residual stream, after the pre-MLP norm), the input
  of a transcoder that replaces the MLP (``mlp_in`` → ``mlp_out``);
- ``mlp_post``: the MLP's hidden activation (its neurons), the input of its down projection; only
  where the MLP has one (not in mixture-of-experts layers);
- ``mlp_out``: what the MLP sublayer adds to the residual stream (with the same corrections);
- ``resid_post``: the residual stream after the block (the block's output).

Layers and sublayers are found by structure (the ``ModuleList`` of decoder blocks, then the
attention, MLP and projection submodules by their usual names). Where a block adds its sublayers
with a multiplier or inside the sublayer, the site says so (``scale``, or a hook on the projection),
and :func:`saescope.lm.site_check.check_sites` verifies ``resid_post = resid_pre + attn_out +
mlp_out`` on the model itself before any run uses a sublayer site, so a family whose structure is
not understood is refused rather than read wrongly. Glob patterns (``layers.*.mlp_out``) and
TransformerLens aliases (``blocks.5.hook_resid_pre``, ``blocks.5.hook_resid_mid``,
``blocks.5.mlp.hook_post``, ``blocks.5.attn.hook_z``) are accepted.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
from dataclasses import dataclass

from torch import nn

from saescope.errors import InvalidInput

SITES = ("resid_pre", "attn_z", "attn_out", "resid_mid", "mlp_in", "mlp_post", "mlp_out", "resid_post")
"""In execution order within a block: the deepest requested site is where the forward can stop."""

SUBLAYER_SITES = ("attn_out", "resid_mid", "mlp_out")
"""Sites whose meaning depends on how the block adds its sublayers: checked on the model before use."""

_LAYER_LIST_NAMES = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers", "transformer.layers", "layers", "h")
_ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")
_OUT_PROJ_NAMES = ("o_proj", "c_proj", "dense", "out_proj")
_DOWN_PROJ_NAMES = ("down_proj", "c_proj", "fc2", "dense_4h_to_h", "fc_out", "w2")
_PARALLEL_MODEL_TYPES = ("gptj", "phi", "cohere", "cohere2")
_TRANSFORMER_LENS = {
    "hook_resid_pre": "resid_pre",
    "hook_resid_mid": "resid_mid",
    "hook_resid_post": "resid_post",
    "hook_attn_out": "attn_out",
    "hook_mlp_out": "mlp_out",
    "mlp.hook_post": "mlp_post",
    "attn.hook_z": "attn_z",
    "hook_z": "attn_z",
    "ln2.hook_normalized": "mlp_in",
    "mlp.hook_in": "mlp_in",
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
    scale: float = 1.0
    """The site's tensor is ``scale`` × the module's (Granite's ``residual_multiplier``)."""
    base_module: str | None = None
    """For a derived site (``resid_mid``): the tensor is this module's input plus the scaled tensor."""
    rows_of: str | None = None
    """The module sees flattened ``[b·s, d]`` rows (OPT's MLP); this module's input has the ``[b, s]`` shape."""

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


def _adds_residual_inside(module: nn.Module) -> bool:
    """Bloom's attention and MLP take the residual as an argument and return sublayer + residual."""
    try:
        return "residual" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def parallel_blocks(model: nn.Module) -> bool:
    """True where attention and MLP both read the block's input (no residual stream between them)."""
    config = getattr(model, "config", None)
    if config is None:
        return False
    if getattr(config, "model_type", None) in _PARALLEL_MODEL_TYPES:
        return True
    return any(bool(getattr(config, flag, False)) for flag in ("use_parallel_residual", "parallel_attn", "new_decoder_architecture"))


def _block_sites(block: nn.Module, base: str, parallel: bool) -> list[tuple[str, str, bool, float, str | None, str | None]]:
    """(site, module path, reads_input, scale, base module, rows_of) for one decoder block, in forward order."""
    scale = float(getattr(block, "residual_multiplier", None) or 1.0)
    # Gemma 2/3 and OLMo 2 normalise each sublayer's output before the residual add.
    output_norms = hasattr(block, "post_feedforward_layernorm")
    sites: list[tuple[str, str, bool, float, str | None, str | None]] = [("resid_pre", base, True, 1.0, None, None)]
    attention = _child(block, _ATTENTION_NAMES)
    if attention is not None:
        attention_module = getattr(block, attention)
        out_proj = _child(attention_module, _OUT_PROJ_NAMES)
        if out_proj is not None:
            sites.append(("attn_z", f"{base}.{attention}.{out_proj}", True, 1.0, None, None))
        attn_out: str | None = f"{base}.{attention}"
        if output_norms and hasattr(block, "post_attention_layernorm"):
            attn_out = f"{base}.post_attention_layernorm"
        elif _adds_residual_inside(attention_module):
            attn_out = f"{base}.{attention}.{out_proj}" if out_proj is not None else None
        if attn_out is not None:
            sites.append(("attn_out", attn_out, False, scale, None, None))
            if not parallel:
                sites.append(("resid_mid", attn_out, False, scale, base, None))
    mlp = _child(block, _MLP_NAMES)
    if mlp is not None:
        mlp_path, mlp_module = f"{base}.{mlp}", getattr(block, mlp)
    elif hasattr(block, "fc1") and hasattr(block, "fc2"):  # OPT keeps the MLP's projections on the block
        mlp_path, mlp_module = base, block
    else:
        mlp_path, mlp_module = None, None
    if mlp_module is not None:
        rows_of = base if mlp_module is block else None  # OPT flattens the tokens before its MLP
        up = _child(mlp_module, ("fc1",)) if mlp_module is block else None
        mlp_in_path = f"{base}.{up}" if up is not None else (mlp_path if mlp_module is not block else None)
        if mlp_in_path is not None:
            sites.append(("mlp_in", mlp_in_path, True, 1.0, None, rows_of))
        down = _child(mlp_module, _DOWN_PROJ_NAMES)
        down_path = f"{mlp_path}.{down}" if down is not None else None
        if down_path is not None:
            sites.append(("mlp_post", down_path, True, 1.0, None, rows_of))
        mlp_out: str | None = mlp_path
        if output_norms:
            mlp_out = f"{base}.post_feedforward_layernorm"
        elif mlp_module is block or _adds_residual_inside(mlp_module):
            mlp_out = down_path
        if mlp_out is not None:
            sites.append(("mlp_out", mlp_out, False, scale, None, rows_of))
    sites.append(("resid_post", base, False, 1.0, None, None))
    return sites


def available_hookpoints(model: nn.Module) -> dict[str, Hookpoint]:
    """Every hookpoint the model offers, by canonical name, in forward order."""
    prefix, layers = find_layers(model)
    parallel = parallel_blocks(model)
    points: dict[str, Hookpoint] = {}
    for index, block in enumerate(layers):
        for site, module_name, reads_input, scale, base_module, rows_of in _block_sites(block, f"{prefix}.{index}", parallel):
            name = f"layers.{index}.{site}"
            points[name] = Hookpoint(name, index, site, module_name, reads_input, scale, base_module, rows_of)
    ordered = sorted(points.values(), key=lambda p: p.order)
    return {p.name: p for p in ordered}


def canonical_name(name: str) -> str:
    """Map aliases (TransformerLens, full module paths) onto ``layers.L.<site>``; patterns pass through."""
    name = name.strip()
    if name == "embed":
        return "layers.0.resid_pre"
    match = re.fullmatch(r"blocks\.([0-9*?\[\]]+)\.(.+)", name)
    if match and match.group(2) in _TRANSFORMER_LENS:
        return f"layers.{match.group(1)}.{_TRANSFORMER_LENS[match.group(2)]}"
    match = re.fullmatch(r"(?:model\.|transformer\.|gpt_neox\.)?(?:layers|h)\.([0-9*?\[\]]+)(?:\.(.+))?", name)
    if match:
        site = match.group(2) or "resid_post"
        return f"layers.{match.group(1)}.{site}"
    return name


def transformer_lens_name(name: str) -> str | None:
    """The TransformerLens hook name of a canonical ``layers.L.<site>`` (``blocks.L.hook_resid_post``), or None."""
    match = re.fullmatch(r"layers\.(\d+)\.(\w+)", name)
    if not match:
        return None
    alias = next((tl for tl, site in _TRANSFORMER_LENS.items() if site == match.group(2) and tl != "hook_z"), None)
    return f"blocks.{match.group(1)}.{alias}" if alias else None


def _describe(points: dict[str, Hookpoint]) -> str:
    n_layers = max(p.layer for p in points.values()) + 1
    sites = [s for s in SITES if any(p.site == s for p in points.values())]
    partial = [s for s in sites if sum(p.site == s for p in points.values()) < n_layers]
    example = next(s for s in ("mlp_out", "attn_out", "resid_post") if s in sites)
    note = f"; {', '.join(partial)} only at some layers" if partial else ""
    return f"layers.0-{n_layers - 1}.{{{', '.join(sites)}}}{note} (e.g. 'layers.{n_layers // 2}.resid_post', or a glob such as 'layers.*.{example}')"


def _why_missing(model: nn.Module, name: str) -> str:
    """A reason when a known site is absent from this model, else ''."""
    site = name.rsplit(".", 1)[-1]
    model_class = type(model).__name__
    if site == "resid_mid" and parallel_blocks(model):
        return f"; {model_class} has parallel blocks (attention and MLP both read resid_pre), so there is no resid_mid: use resid_pre, attn_out or resid_post"
    if site == "mlp_post":
        return f"; this layer of {model_class} has no single MLP hidden layer (a mixture of experts, or no down projection found): use mlp_out"
    if site in ("mlp_out", "mlp_in"):
        return f"; found no MLP module in {model_class}'s decoder block: use resid_post"
    return ""


def resolve_hookpoints(model: nn.Module, names: str | list[str], check: bool = True) -> list[Hookpoint]:
    """Resolve names, aliases and globs to hookpoints, in forward order, without duplicates.

    Raises ValueError naming the offending entry and listing the valid hookpoints. With ``check``
    (the default), the first time a sublayer site of a layer is asked of a model, one short forward
    verifies that the sites add up (:func:`saescope.lm.site_check.check_sites`).
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
            reason = _why_missing(model, name) if re.fullmatch(r"layers\.\d+\.\w+", name) and int(name.split(".")[1]) < len(find_layers(model)[1]) else ""
            raise InvalidInput(f"unknown hookpoint {raw!r} for {type(model).__name__}{reason}; valid hookpoints: {_describe(points)}")
        for point in matches:
            chosen[point.name] = point
    resolved = sorted(chosen.values(), key=lambda p: p.order)
    if check:
        from saescope.lm.site_check import check_sites

        check_sites(model, resolved)
    return resolved


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
