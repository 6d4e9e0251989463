"""Stacked SAEs: one dictionary over several hookpoints (a multi-layer SAE), and its per-hookpoint views.

A stacked SAE is trained on ``c_h · x_h`` for every hookpoint ``h`` it reads, with one input scale
``c_h`` per hookpoint (residual norms grow with depth). One set of weights cannot fold several scales
in, so the saved weights fold the geometric mean ``c`` of the scales and the checkpoint records each
hookpoint's multiplier ``m_h = c_h / c``: the SAE then takes ``m_h · x_h``. ``at_hookpoint(sae, h)``
folds ``m_h`` too and returns an ordinary single-hookpoint SAE that takes raw activations of ``h``,
sharing the stacked SAE's weight matrices, so evaluation, interpretation and steering at one layer
use the code they use for any SAE.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

from torch import nn

from saescope.errors import InvalidInput
from saescope.saes.base import SparseAutoencoder

MULTIPLIERS_KEY = "hookpoint_multipliers"
"""Key of ``sae.normalization`` holding {hookpoint: input multiplier}, in read order."""


def stacked_normalization(hookpoints: tuple[str, ...] | list[str], scales: list[float], folded_scale: float) -> dict[str, Any]:
    """The normalisation record of a stacked SAE whose folded scale is ``folded_scale``."""
    return {
        MULTIPLIERS_KEY: {h: scale / folded_scale for h, scale in zip(hookpoints, scales)},
        "stacked_note": "a stacked SAE takes multiplier*x at each hookpoint; saescope.saes.stacked.at_hookpoint folds it in",
    }


def stacked_hookpoints(sae: SparseAutoencoder) -> list[str]:
    """The hookpoints a stacked SAE reads, in layer-index order ([] for a single-hookpoint SAE)."""
    return list((sae.normalization or {}).get(MULTIPLIERS_KEY) or {})


def reads_record(sae: SparseAutoencoder) -> dict[str, Any]:
    """What the SAE reads and what it writes, as ``cfg.json`` records it: ``{"hookpoints": [...], "target": ...}``.

    ``hookpoints`` is [] for an SAE on plain arrays, one name for a single site, several for a stacked
    SAE; ``target`` is the site a transcoder writes (None: the SAE reconstructs what it reads).
    """
    hookpoints = stacked_hookpoints(sae) or ([sae.cfg.hookpoint] if sae.cfg.hookpoint else [])
    return {"hookpoints": hookpoints, "target": sae.cfg.target}


def is_stacked(sae: SparseAutoencoder) -> bool:
    return bool(stacked_hookpoints(sae))


def input_multiplier(sae: SparseAutoencoder, hookpoint: str) -> float:
    """What to multiply raw activations of ``hookpoint`` by before the stacked SAE's own encode."""
    multipliers = (sae.normalization or {}).get(MULTIPLIERS_KEY) or {}
    if hookpoint not in multipliers:
        raise InvalidInput(f"this SAE was trained on {list(multipliers) or 'one hookpoint'}, not on {hookpoint!r}; choose one of its hookpoints")
    return float(multipliers[hookpoint])


def read_multipliers(sae: SparseAutoencoder, hookpoint: str | None = None) -> list[tuple[str, float]]:
    """[(hookpoint, input multiplier)] in layer order: every layer of a stacked SAE, else its one hookpoint (or ``hookpoint``) with 1.0.

    Encoding ``multiplier * x`` puts every layer in the stacked SAE's common units, so activations compare across layers.
    """
    multipliers = (sae.normalization or {}).get(MULTIPLIERS_KEY) or {}
    if multipliers:
        return [(h, float(m)) for h, m in multipliers.items()]
    own = hookpoint or sae.cfg.hookpoint
    if own is None:
        raise InvalidInput("this SAE records no hookpoint; give the hookpoint it reads")
    return [(own, 1.0)]


def at_hookpoint(sae: SparseAutoencoder, hookpoint: str) -> SparseAutoencoder:
    """A single-hookpoint SAE for raw activations of ``hookpoint``: the stacked SAE with that layer's scale folded in.

    W_enc and W_dec are shared with ``sae`` (no copy); biases and thresholds are the view's own.
    A single-hookpoint SAE is returned as it is when ``hookpoint`` is its own.

    Example:
        >>> import torch
        >>> from saescope.saes import create_sae
        >>> sae = create_sae("topk", 8, 32, k=4)
        >>> sae.normalization = stacked_normalization(["a", "b"], [2.0, 0.5], 1.0)
        >>> x = torch.randn(5, 8)
        >>> torch.allclose(at_hookpoint(sae, "a")(x), sae(2.0 * x) / 2.0, atol=1e-6)
        True
    """
    hookpoints = stacked_hookpoints(sae)
    if not hookpoints:
        if sae.cfg.hookpoint not in (None, hookpoint):
            raise InvalidInput(f"this SAE reads {sae.cfg.hookpoint!r}, not {hookpoint!r}")
        return sae
    multiplier = input_multiplier(sae, hookpoint)
    view = copy.copy(sae)  # a new module object; its tensor tables are replaced below so nothing is written through
    view._parameters = {name: p if name in ("W_enc", "W_dec") else nn.Parameter(p.detach().clone(), p.requires_grad)
                        for name, p in sae._parameters.items()}
    view._buffers = {name: b.clone() if b is not None else None for name, b in sae._buffers.items()}
    view._modules = dict(sae._modules)
    view.cfg = replace(sae.cfg, hookpoint=hookpoint)
    view.normalization = {key: value for key, value in sae.normalization.items() if key not in (MULTIPLIERS_KEY, "stacked_note")}
    view.normalization["input_scale"] = float(sae.normalization.get("input_scale", 1.0)) * multiplier
    view.normalization["stacked_source"] = {"hookpoints": hookpoints, "layer_index": hookpoints.index(hookpoint)}
    view.fold_input_scale(multiplier)
    return view


def per_hookpoint(sae: SparseAutoencoder) -> dict[str, SparseAutoencoder]:
    """{hookpoint: view} for a stacked SAE; {its hookpoint: sae} otherwise."""
    hookpoints = stacked_hookpoints(sae)
    if not hookpoints:
        return {sae.cfg.hookpoint: sae} if sae.cfg.hookpoint else {}
    return {h: at_hookpoint(sae, h) for h in hookpoints}
