"""Experts and SAE features together: which experts are selected when a feature fires.

For feature f of an SAE and routed expert e of a nearby MoE layer, over the same tokens:

    P(e | f) = tokens where f fires and e is selected / tokens where f fires
    lift     = P(e | f) / P(e)

Lift is symmetric (it is also P(f | e) / P(f)), so one table answers both "which experts does this
feature go with?" (the feature page) and "which features go with this expert?" (the experts page).
Only MoE layers within one layer of the SAE's layer are counted (the router that reads the SAE's
layer and its neighbours): a full feature × all-experts table of a large model would not fit.
Features that fire on fewer than ``min_fires`` counted tokens get no entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from saescope.experts.sites import MoeLayer


def window_layers(layers: list[MoeLayer], sae_layers: list[int], reach: int = 1) -> list[MoeLayer]:
    """The MoE layers within ``reach`` of any of the SAE's layers."""
    return [layer for layer in layers if any(abs(layer.layer - own) <= reach for own in sae_layers)]


@dataclass
class ExpertCoactivation:
    """Running counts for one SAE: feature fires, expert selections and both together."""

    n_features: int
    layers: list[MoeLayer]
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        self.columns = [(layer.layer, expert) for layer in self.layers for expert in range(layer.n_experts)]
        self.offsets = {}
        start = 0
        for layer in self.layers:
            self.offsets[layer.layer] = start
            start += layer.n_experts
        n = len(self.columns)
        self.together = torch.zeros(self.n_features, n, dtype=torch.float64, device=self.device)
        self.selected = torch.zeros(n, dtype=torch.float64, device=self.device)
        self.fires = torch.zeros(self.n_features, dtype=torch.float64, device=self.device)
        self.tokens = torch.zeros(n, dtype=torch.float64, device=self.device)
        self._pending: Tensor | None = None

    def features(self, fired: Tensor) -> None:
        """``fired`` [n, F] (0/1) for the counted tokens of this batch; routers follow with ``experts``."""
        self._pending = fired.to(self.device, torch.float32)

    def experts(self, chosen: dict[int, Tensor], mask: Tensor) -> None:
        """``chosen[layer]`` [n_all, k] expert indices of every position; ``mask`` [n_all] the counted ones."""
        if self._pending is None:
            return
        fired = self._pending
        self._pending = None
        ran = [layer for layer in self.layers if layer.layer in chosen]
        if not ran:
            return
        self.fires += fired.sum(dim=0).double()
        for layer in ran:
            indices = chosen[layer.layer].reshape(mask.shape[0], -1)[mask].to(self.device).long()
            onehot = torch.zeros(indices.shape[0], layer.n_experts, device=self.device).scatter_(1, indices, 1.0)
            start = self.offsets[layer.layer]
            self.together[:, start:start + layer.n_experts] += (fired.T @ onehot).double()
            self.selected[start:start + layer.n_experts] += onehot.sum(dim=0).double()
            self.tokens[start:start + layer.n_experts] += indices.shape[0]

    def tables(self, top: int = 5, min_fires: int = 5, top_features: int = 12) -> dict[str, Any]:
        """Per feature its ``top`` experts by lift; per expert its ``top_features`` features by lift."""
        measured = self.tokens > 0
        base = torch.where(measured, self.selected / self.tokens.clamp(min=1), torch.zeros_like(self.selected))
        conditional = self.together / self.fires.clamp(min=1)[:, None]
        lift = torch.where((base > 0) & measured, conditional / base.clamp(min=1e-12), torch.zeros_like(conditional))
        eligible = self.fires >= min_fires
        lift = torch.where(eligible[:, None], lift, torch.zeros_like(lift))
        per_feature: list[list[list[float]]] = []
        k = min(top, lift.shape[1])
        values, columns = lift.topk(k, dim=1) if k else (lift[:, :0], lift[:, :0].long())
        for feature in range(self.n_features):
            rows = []
            if eligible[feature]:
                for value, column in zip(values[feature].tolist(), columns[feature].tolist()):
                    if value > 1.0:
                        layer, expert = self.columns[column]
                        rows.append([layer, expert, round(float(conditional[feature, column]), 4), round(float(base[column]), 4), round(value, 3)])
            per_feature.append(sorted(rows, key=lambda row: (-row[4], row[0], row[1])))
        per_expert = {}
        k = min(top_features, self.n_features)
        values, features = lift.topk(k, dim=0)
        for column, (layer, expert) in enumerate(self.columns):
            if not measured[column]:
                continue
            rows = [[int(f), round(float(conditional[f, column]), 4), round(v, 3)]
                    for v, f in zip(values[:, column].tolist(), features[:, column].tolist()) if v > 1.0]
            per_expert[f"{layer}:{expert}"] = {"base": round(float(base[column]), 4), "features": sorted(rows, key=lambda row: (-row[2], row[0]))}
        return {"columns": "layer, expert, P(expert | feature), P(expert), lift", "min_fires": min_fires,
                "layers": sorted({layer for (layer, _e), ran in zip(self.columns, measured.tolist()) if ran}), "per_feature": per_feature, "per_expert": per_expert}
