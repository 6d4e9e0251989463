"""Forward hooks that read activations at hookpoints, stop the forward early, or replace activations.

``capture`` runs a forward and hands each hookpoint's activation to a consumer as soon as the layer
produces it, so the caller can copy what it needs and let the tensor go before the next layer runs.
Once the deepest requested hookpoint has fired, an exception unwinds the rest of the forward: layers
after it, the final norm and the unembedding never run.

``replace_activation`` is the splice used by evaluation and steering: a function of the activation
returns the tensor the rest of the model sees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from saescope.errors import InvalidInput
from saescope.lm.hookpoints import Hookpoint

Consumer = Callable[[Hookpoint, Tensor], None]


class _StopForward(Exception):
    """Raised inside the deepest hook to skip the rest of the forward pass."""


def _output_tensor(output: Any) -> Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _wrap_output(output: Any, replaced: Tensor) -> Any:
    if isinstance(output, tuple):
        return (replaced, *output[1:])
    if isinstance(output, list):
        return [replaced, *output[1:]]
    return replaced


def _first_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _register(modules: dict[str, nn.Module], point: Hookpoint, fn: Callable[[Tensor], Tensor | None]) -> list[torch.utils.hooks.RemovableHandle]:
    """Call ``fn`` on the hookpoint's tensor; a returned tensor replaces it.

    A scaled site (Granite) reads ``scale × tensor`` and writes back ``replaced / scale``; a derived
    site (``resid_mid``) reads ``base input + scale × tensor`` and writes back the difference, so the
    block's own residual add produces exactly the replaced value.
    """
    module = modules[point.module_name]
    handles = []
    shape: dict[str, torch.Size] = {}
    if point.rows_of is not None:

        def keep_shape(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            shape["tokens"] = _first_input(args, kwargs).shape[:-1]

        handles.append(modules[point.rows_of].register_forward_pre_hook(keep_shape, with_kwargs=True))

    def unflatten(tensor: Tensor) -> Tensor:
        return tensor.reshape(*shape["tokens"], tensor.shape[-1]) if shape and tensor.dim() == 2 else tensor

    def flatten_like(replaced: Tensor, original: Tensor) -> Tensor:
        return replaced.reshape(original.shape) if replaced.shape != original.shape else replaced

    if point.reads_input:

        def pre_hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            original = _first_input(args, kwargs)
            replaced = fn(unflatten(original))
            if replaced is None:
                return None
            replaced = flatten_like(replaced, original)
            if args:
                return (replaced, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": replaced}

        handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        return handles

    base: dict[str, Tensor] = {}
    if point.base_module is not None:

        def keep_base(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            base["input"] = _first_input(args, kwargs)

        handles.append(modules[point.base_module].register_forward_pre_hook(keep_base, with_kwargs=True))
    scale = point.scale

    def hook(_module: nn.Module, _args: Any, output: Any) -> Any:
        tensor = _output_tensor(output)
        offset = base.get("input")
        value = unflatten(tensor * scale if scale != 1.0 else tensor)
        if offset is not None:
            value = offset + value
        replaced = fn(value)
        if replaced is None:
            return None
        if offset is not None:
            replaced = replaced - offset
        if scale != 1.0:
            replaced = replaced / scale
        return _wrap_output(output, flatten_like(replaced, tensor))

    handles.append(module.register_forward_hook(hook))
    return handles


@contextmanager
def hooked(model: nn.Module, hooks: list[tuple[Hookpoint, Callable[[Tensor], Tensor | None]]]) -> Iterator[None]:
    """Attach hooks for the duration of a ``with`` block; they are always removed."""
    modules = dict(model.named_modules())
    handles = [handle for point, fn in hooks for handle in _register(modules, point, fn)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def capture(
    model: nn.Module,
    hookpoints: list[Hookpoint],
    consumer: Consumer,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    stop_early: bool = True,
) -> None:
    """Run ``model`` on ``input_ids`` and give ``consumer(hookpoint, activation [b, s, d])`` each activation.

    With ``stop_early`` the forward ends right after the deepest hookpoint.
    """
    if not hookpoints:
        raise InvalidInput("capture needs at least one hookpoint")
    last = max(hookpoints, key=lambda p: p.order)

    def reader(point: Hookpoint) -> Callable[[Tensor], None]:
        def read(tensor: Tensor) -> None:
            consumer(point, tensor.detach())
            if stop_early and point is last:
                raise _StopForward

        return read

    with torch.no_grad(), hooked(model, [(p, reader(p)) for p in hookpoints]):
        try:
            model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass


def recorder(store: dict[str, Tensor], name: str) -> Callable[[Tensor], None]:
    """A hook function that keeps the site's tensor in ``store[name]`` and changes nothing: how a transcoder's
    input is read earlier in the same forward that replaces its output."""

    def keep(tensor: Tensor) -> None:
        store[name] = tensor

    return keep


def masked_collector(store: dict[str, list[Tensor]], mask: Tensor, to_cpu: bool = True) -> Consumer:
    """A consumer that appends each hookpoint's rows at ``mask`` (flattened [b·s]) to ``store`` (on the CPU by default)."""

    def consume(point: Hookpoint, activation: Tensor) -> None:
        rows = activation.reshape(-1, activation.shape[-1])[mask]
        store[point.name].append(rows.cpu() if to_cpu else rows)

    return consume


def capture_dict(model: nn.Module, hookpoints: list[Hookpoint], input_ids: Tensor, stop_early: bool = True) -> dict[str, Tensor]:
    """Activations at every hookpoint as ``{name: [b, s, d]}`` (convenience for small inputs)."""
    found: dict[str, Tensor] = {}
    capture(model, hookpoints, lambda p, t: found.__setitem__(p.name, t.clone()), input_ids, stop_early=stop_early)
    return found


@contextmanager
def replace_activation(model: nn.Module, point: Hookpoint, fn: Callable[[Tensor], Tensor]) -> Iterator[None]:
    """Within the block, the model continues from ``fn(activation)`` at ``point``."""
    with hooked(model, [(point, fn)]):
        yield


def site_widths(model: nn.Module, hookpoints: list[Hookpoint]) -> dict[str, int]:
    """The activation width at each hookpoint, from one forward over two fixed tokens (stops after the deepest)."""
    parameter = next(model.parameters())
    ids = torch.tensor([[1, 2]], device=parameter.device)
    return {name: int(tensor.shape[-1]) for name, tensor in capture_dict(model, hookpoints, ids).items()}


def check_widths(model: nn.Module, hookpoints: list[Hookpoint], expected: dict[str, tuple[str, int]]) -> None:
    """Refuse SAEs whose d_in is not the width of their hookpoint: ``expected`` maps a label to (hookpoint, d_in)."""
    widths = site_widths(model, hookpoints)
    for label, (hookpoint, d_in) in expected.items():
        if hookpoint in widths and widths[hookpoint] != d_in:
            raise InvalidInput(f"{label}: the SAE expects d_in={d_in}, but {hookpoint} of {type(model).__name__} has width {widths[hookpoint]}; "
                               "was it trained on another model or hookpoint? Pass the model it was trained on (--model) or its own hookpoint")
