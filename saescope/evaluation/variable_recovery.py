"""How well latents recover known hidden variables, by correlation (Schuster 2024, the omics simulation).

Given latent activations [n, F] and named groups of ground-truth variables ([n, V] each: program
activities, cell types as one-hot columns, genes...), for every group:

- ``highest_corr``: for each variable, the largest |Pearson r| with any **active** latent (one that
  is non-zero on some row), averaged over the group's variables;
- ``n_above``: how many latents have |r| > ``threshold`` (0.95) with at least one of the group's variables.

And for the latents themselves: ``n_active`` (non-zero on some row) and ``n_redundant`` (active
latents with r > ``threshold`` to another active latent). Constant variables and latents have no
correlation (counted as 0).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

THRESHOLD = 0.95


def correlation_matrix(a: Tensor, b: Tensor, chunk: int = 4096) -> Tensor:
    """Pearson r between every column of ``a`` [n, p] and of ``b`` [n, q], as [p, q] (0 where a column is constant)."""
    a = a.double() - a.double().mean(dim=0)
    b = b.double() - b.double().mean(dim=0)
    a_norm, b_norm = a.norm(dim=0), b.norm(dim=0)
    out = torch.zeros(a.shape[1], b.shape[1], dtype=torch.float64)
    for start in range(0, b.shape[1], chunk):
        block = b[:, start:start + chunk]
        denominator = a_norm[:, None] * b_norm[None, start:start + chunk]
        out[:, start:start + chunk] = torch.where(denominator > 1e-12, (a.T @ block) / denominator.clamp_min(1e-300), 0.0)
    return out


def variable_recovery(latents: Tensor, variables: dict[str, Tensor], threshold: float = THRESHOLD) -> dict[str, Any]:
    """The recovery figures above for ``latents`` [n, F] against each group of ``variables``."""
    active = (latents != 0).any(dim=0)
    live = latents[:, active]
    result: dict[str, Any] = {"n_latents": int(latents.shape[1]), "n_active": int(active.sum())}
    for name, values in variables.items():
        values = values.reshape(values.shape[0], -1)
        if values.shape[0] != latents.shape[0]:
            raise ValueError(f"variables {name!r} have {values.shape[0]} rows, the latents {latents.shape[0]}")
        if live.shape[1] == 0:
            result[name] = {"highest_corr": 0.0, "n_above": 0, "n_variables": int(values.shape[1])}
            continue
        r = correlation_matrix(live, values).abs()
        result[name] = {"highest_corr": float(r.max(dim=0).values.mean()), "n_above": int((r.max(dim=1).values > threshold).sum()),
                        "n_variables": int(values.shape[1])}
    if live.shape[1] > 1:
        r = correlation_matrix(live, live)
        r.fill_diagonal_(0)
        result["n_redundant"] = int((r.max(dim=1).values > threshold).sum())
    else:
        result["n_redundant"] = 0
    return result


def one_hot(labels: Tensor, n: int) -> Tensor:
    """Category labels [rows] as indicator columns [rows, n]."""
    return torch.nn.functional.one_hot(labels.long(), n).double()
