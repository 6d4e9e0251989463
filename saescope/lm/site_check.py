"""A runtime check that a model's sublayer sites mean what their names say.

Hookpoints are found by structure, and a family that wires its blocks differently (a residual added
inside the sublayer, a multiplier, a norm after the add) would otherwise be read wrongly without a
warning. Before a run uses ``attn_out``, ``resid_mid`` or ``mlp_out`` at some layer, one short
forward on fixed token ids verifies, at that layer,

    resid_post(L) = resid_pre(L) + attn_out(L) + mlp_out(L)

within a tolerance, and stops with a message naming the model class and the site if it does not hold.
Before a run uses ``mlp_in`` (a transcoder's input), a second check verifies that the MLP's output is a
function of that tensor alone, token by token: with ``mlp_in`` replaced by its own rows in reversed
order, ``mlp_out`` must come out reversed. A transcoder spliced in place of the MLP then sees exactly
what the MLP saw.
``resid_mid`` is built as ``resid_pre + attn_out``, so the same identity vouches for it. Each model
is checked once per layer (remembered in a weak dictionary); the token ids are fixed, so the check
draws nothing from the random generator and leaves seeded runs unchanged.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import nn

from saescope.errors import InvalidInput
from saescope.lm.hookpoints import SUBLAYER_SITES, Hookpoint, available_hookpoints

CHECK_TOKENS = 16
_checked: weakref.WeakKeyDictionary[nn.Module, set[int]] = weakref.WeakKeyDictionary()


def tolerance(dtype: torch.dtype) -> float:
    """Relative error allowed: rounding in float32 is ~1e-7, in half precision ~1e-3 per add."""
    return 1e-3 if dtype in (torch.float32, torch.float64) else 3e-2


def _check_ids(model: nn.Module, device: torch.device) -> torch.Tensor:
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 256)
    # Fixed, varied ids away from the usual special tokens at 0-3.
    ids = (torch.arange(CHECK_TOKENS, dtype=torch.long) * 37 + 5) % max(vocab - 4, 1) + min(4, vocab - 1)
    return ids.unsqueeze(0).to(device)


def sublayer_errors(model: nn.Module, layers: list[int]) -> dict[int, float]:
    """Relative error of ``resid_pre + attn_out + mlp_out`` against ``resid_post`` at each layer.

    Layers without both sublayer sites are left out (there is nothing to add up).
    """
    from saescope.lm.capture import capture_dict

    points = available_hookpoints(model)
    wanted: list[Hookpoint] = []
    for layer in layers:
        names = [f"layers.{layer}.{site}" for site in ("resid_pre", "attn_out", "mlp_out", "resid_post")]
        if all(name in points for name in names):
            wanted += [points[name] for name in names]
    if not wanted:
        return {}
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    acts = capture_dict(model, wanted, _check_ids(model, device))
    errors = {}
    for layer in sorted({p.layer for p in wanted}):
        pre, attn, mlp, post = (acts[f"layers.{layer}.{site}"].double() for site in ("resid_pre", "attn_out", "mlp_out", "resid_post"))
        change = (post - pre).norm()
        errors[layer] = float((post - pre - attn - mlp).norm() / change.clamp_min(1e-12))
    return errors


def mlp_input_errors(model: nn.Module, layers: list[int]) -> dict[int, float]:
    """Relative error of ``mlp_out`` computed from a token-reversed ``mlp_in`` against the reversed ``mlp_out``.

    Zero (to rounding) where the MLP reads ``mlp_in`` and nothing else, per token. Layers without both
    sites are left out.
    """
    from saescope.lm.capture import capture_dict, hooked

    points = available_hookpoints(model)
    layers = [layer for layer in layers if f"layers.{layer}.mlp_in" in points and f"layers.{layer}.mlp_out" in points]
    if not layers:
        return {}
    parameter = next(model.parameters(), None)
    ids = _check_ids(model, parameter.device if parameter is not None else torch.device("cpu"))
    clean = capture_dict(model, [points[f"layers.{layer}.mlp_out"] for layer in layers], ids)
    errors = {}
    for layer in layers:
        seen: dict[str, torch.Tensor] = {}

        def keep(tensor: torch.Tensor) -> None:
            seen["out"] = tensor.detach().clone()
            return None

        with torch.no_grad(), hooked(model, [(points[f"layers.{layer}.mlp_in"], lambda t: t.flip(1)),
                                             (points[f"layers.{layer}.mlp_out"], keep)]):
            model(input_ids=ids, use_cache=False)
        expected = clean[f"layers.{layer}.mlp_out"].flip(1).double()
        errors[layer] = float((seen["out"].double() - expected).norm() / expected.norm().clamp_min(1e-12))
    return errors


def check_sites(model: nn.Module, hookpoints: list[Hookpoint]) -> None:
    """Refuse sublayer sites that do not add up to the residual stream on this model (once per layer), and
    ``mlp_in`` sites whose MLP reads something else (once per layer)."""

    def wrong_sum(layer: int, error: float, limit: float) -> str:
        sites = sorted({p.name for p in hookpoints if p.layer == layer and p.site in SUBLAYER_SITES})
        return (f"{type(model).__name__}: {', '.join(sites)} would read the wrong tensor: at layer {layer}, "
                f"resid_post - resid_pre - attn_out - mlp_out is {error:.3g} of resid_post - resid_pre "
                f"(tolerance {limit:g}), so this model class wires its blocks in a way saescope does not understand. "
                f"Use layers.{layer}.resid_pre or layers.{layer}.resid_post, which are always right, and please report the model class.")

    def reads_more(layer: int, error: float, limit: float) -> str:
        return (f"{type(model).__name__}: layers.{layer}.mlp_in is not all the MLP reads: with it replaced, layers.{layer}.mlp_out "
                f"moved by {error:.3g} of its norm from what the replaced input implies (tolerance {limit:g}), so a transcoder "
                f"could not stand in for this MLP. Train SAEs on layers.{layer}.mlp_out instead, and please report the model class.")

    _check_once(model, {p.layer for p in hookpoints if p.site == "mlp_in"}, _mlp_checked, mlp_input_errors, reads_more)
    _check_once(model, {p.layer for p in hookpoints if p.site in SUBLAYER_SITES}, _checked, sublayer_errors, wrong_sum)


_mlp_checked: weakref.WeakKeyDictionary[nn.Module, set[int]] = weakref.WeakKeyDictionary()


def _check_once(model: nn.Module, layers: set[int], checked: weakref.WeakKeyDictionary[nn.Module, set[int]],
                errors: Callable[[nn.Module, list[int]], dict[int, float]], message: Callable[[int, float, float], str]) -> None:
    """Run one check at the layers not yet checked on this model; raise ``message(layer, error, tolerance)`` on a failure."""
    done = checked.setdefault(model, set())
    todo = sorted(layers - done)
    if not todo:
        return
    parameter = next(model.parameters(), None)
    limit = tolerance(parameter.dtype if parameter is not None else torch.float32)
    for layer, error in errors(model, todo).items():
        if error > limit:
            raise InvalidInput(message(layer, error, limit))
    done.update(todo)
