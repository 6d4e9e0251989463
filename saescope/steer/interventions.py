"""Steering a model with SAE features while it runs: add, clamp or ablate features at their hookpoints.

Each ``Intervention`` is (SAE, feature, value) plus a kind and where it applies:

- ``add``: h ← h + value · d_i, with d_i the feature's decoder row; ``value`` may be in units of the
  feature's maximum observed activation (``unit="max"``, ``max_activation`` given or read from the
  SAE's interpretation);
- ``clamp``: encode h, set f_i to ``value``, decode, add back the SAE's error (h − x̂), so nothing
  but feature i changes. Because decoding is linear this is h ← h + (value − f_i(h)) · d_i, which is
  what is computed (exact: clamping a feature to its own value leaves h unchanged);
- ``ablate``: clamp to 0.

``positions`` says which tokens: ``"all"``, ``"prompt"`` (the first forward of a generation, i.e.
the prompt's prefill) or ``"generated"`` (every later forward, one new token each). The first
position of the prompt (BOS) is left alone by default: steering the attention-sink token derails
the whole context.
Several interventions apply together, in order, at one or several hookpoints.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from saescope.errors import InvalidInput
from saescope.saes import SparseAutoencoder
from saescope.saes.stacked import at_hookpoint, stacked_hookpoints

KINDS = ("add", "clamp", "ablate")
POSITIONS = ("all", "prompt", "generated")


@dataclass
class Intervention:
    sae: SparseAutoencoder
    feature: int
    value: float = 0.0
    kind: str = "add"
    positions: str = "all"
    unit: str = "raw"
    """"raw" (activation units) or "max" (multiples of the feature's maximum observed activation)."""
    max_activation: float | None = None
    hookpoint: str | None = None
    """Where to apply; default the SAE's own hookpoint, or the site a transcoder writes (its feature's output contribution
    is added there; clamping and ablating read the feature's activation from the transcoder's input in the same forward)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidInput(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.positions not in POSITIONS:
            raise InvalidInput(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        if self.unit not in ("raw", "max"):
            raise InvalidInput(f"unit must be 'raw' or 'max', got {self.unit!r}")
        if not isinstance(self.feature, int) or not 0 <= self.feature < self.sae.d_sae:
            raise InvalidInput(f"feature {self.feature!r} does not exist: this SAE has features 0..{self.sae.d_sae - 1}")
        stacked = stacked_hookpoints(self.sae)
        if stacked:
            if self.hookpoint is None:
                raise InvalidInput(f"a multi-layer SAE reads {len(stacked)} hookpoints; pass hookpoint= (one of {stacked[0]} … {stacked[-1]})")
            self.sae = at_hookpoint(self.sae, self.hookpoint)  # that layer's scale folded in: values are in its raw units
        if self.sae.cfg.target is not None and self.hookpoint not in (None, self.sae.cfg.target):
            raise InvalidInput(f"a transcoder writes {self.sae.cfg.target}; steer its features there (hookpoint={self.hookpoint!r} was given)")
        self.hookpoint = self.hookpoint or self.sae.cfg.target or self.sae.cfg.hookpoint
        if not self.hookpoint:
            raise InvalidInput("the SAE does not record its hookpoint; pass hookpoint= (e.g. 'layers.10.resid_post')")
        if self.unit == "max" and self.max_activation is None:
            raise InvalidInput("unit='max' needs max_activation (from the feature page, or saescope.steer.feature_max_activation reads it from an interpreted suite)")

    @property
    def raw_value(self) -> float:
        return self.value * self.max_activation if self.unit == "max" else self.value

    @property
    def reads(self) -> str | None:
        """The site a transcoder's feature activation is read from (its input), None for an SAE."""
        return self.sae.cfg.hookpoint if self.sae.cfg.target is not None else None

    def apply(self, hidden: Tensor, source: Tensor | None = None) -> Tensor:
        """``hidden`` at the steered site with the feature changed; ``source``: a transcoder's input at the same positions."""
        if hidden.shape[-1] != self.sae.d_out:
            raise InvalidInput(f"the activations at {self.hookpoint} have width {hidden.shape[-1]}, but the SAE writes width {self.sae.d_out}; "
                             "steer at the hookpoint the SAE was trained on")
        direction = self.sae.W_dec[self.feature].to(hidden.dtype)
        if self.kind == "add":
            return hidden + self.raw_value * direction
        target = 0.0 if self.kind == "ablate" else self.raw_value
        encoded = hidden if self.reads is None else source
        if encoded is None:
            raise InvalidInput(f"clamping or ablating a transcoder's feature needs its input ({self.reads}) from the same forward")
        flat = encoded.reshape(-1, encoded.shape[-1]).float()
        current = self.sae.encode_code(flat).feature(self.feature).reshape(*hidden.shape[:-1], 1).to(hidden.dtype)
        return hidden + (target - current) * direction


class Steering:
    """Hooks that apply interventions. ``with steering.active():`` attaches them for one generation:
    the first forward inside the block is the prompt, every later one a generated token."""

    def __init__(self, model: nn.Module, interventions: Sequence[Intervention], skip_first_position: bool = True) -> None:
        from saescope.lm.hookpoints import resolve_hookpoints

        if not interventions:
            raise InvalidInput("give at least one intervention")
        self.model = model
        self.interventions = list(interventions)
        names = sorted({i.hookpoint for i in self.interventions} | {i.reads for i in self.interventions if i.reads})
        points = {p.name: p for p in resolve_hookpoints(model, names)}
        self._reads = {name: points[name] for name in sorted({i.reads for i in self.interventions if i.reads})}
        """Transcoders' input sites: captured in each forward before their target site is steered."""
        self._seen: dict[str, Tensor] = {}
        self._points = {}
        expected = {}
        for intervention in self.interventions:
            point = points.get(intervention.hookpoint) or resolve_hookpoints(model, intervention.hookpoint)[0]
            self._points.setdefault(point.name, (point, []))[1].append(intervention)
            intervention.sae.to(next(model.parameters()).device).eval()
            expected[f"feature {intervention.feature} at {intervention.hookpoint}"] = (point.name, intervention.sae.d_out)
        from saescope.lm.capture import check_widths

        check_widths(model, [point for point, _group in self._points.values()], expected)
        self.calls_seen: dict[str, int] = {}
        self.skip_first_position = skip_first_position
        """Leave position 0 of the prompt alone: the BOS token, whose state the model uses as an attention sink."""

    def _hook(self, group: list[Intervention], point_name: str):
        def fn(hidden: Tensor) -> Tensor:
            first_call = self.calls_seen.get(point_name, 0) == 0
            self.calls_seen[point_name] = self.calls_seen.get(point_name, 0) + 1
            keep = hidden[:, :1] if first_call and self.skip_first_position and hidden.shape[1] > 1 else None
            steered = hidden[:, 1:] if keep is not None else hidden
            with torch.no_grad():
                for intervention in group:
                    if intervention.positions == "prompt" and not first_call:
                        continue
                    if intervention.positions == "generated" and first_call:
                        continue
                    source = self._seen.get(intervention.reads) if intervention.reads else None
                    if source is not None and keep is not None:
                        source = source[:, 1:]
                    steered = intervention.apply(steered, source)
            return torch.cat([keep, steered], dim=1) if keep is not None else steered

        return fn


    @contextmanager
    def active(self) -> Iterator[Steering]:
        from saescope.lm.capture import hooked, recorder

        self.calls_seen: dict[str, int] = {}
        hooks = [(point, recorder(self._seen, name)) for name, point in self._reads.items()]
        hooks += [(point, self._hook(group, name)) for name, (point, group) in self._points.items()]
        with hooked(self.model, hooks):
            yield self


def feature_max_activation(sae_folder: str | Path, feature: int) -> float | None:
    """The feature's maximum activation from ``saescope interpret`` output next to the SAE, if present."""
    summary = Path(sae_folder) / "interpret" / "summary.json"
    if not summary.is_file():
        return None
    values = json.loads(summary.read_text())["max"]
    return float(values[feature]) if 0 <= feature < len(values) else None
