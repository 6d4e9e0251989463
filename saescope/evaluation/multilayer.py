"""How a multi-layer SAE's latents spread over layers (Lawson et al. 2024, "Residual Stream Analysis with MLSAEs").

Inputs: one stacked SAE and the activations of every hookpoint it reads on the same tokens (rows
aligned across hookpoints, as ``harvest`` returns them). Each layer's vectors are encoded in the
SAE's common input units (``m_h · x_h``), so activations are comparable across layers. With a_{t,j,l}
the activation of latent j on token t at layer l (layer l = position in the read order):

- a latent's **layer distribution** over the dataset: p_j(l) ∝ Σ_t a_{t,j,l}; its mean layer μ_j and
  its variance over layers Var_data(j) = Σ_l p_j(l) (l − μ_j)².
- its **per-token variance**: for one token, p_{t,j}(l) ∝ a_{t,j,l} and Var_t(j) likewise; Var_token(j)
  is the average of Var_t(j) over tokens, weighted by Σ_l a_{t,j,l} (the token's share of the mass).
- the paper's headline contrast is mean Var_data / mean Var_token over latents that fire: about two
  orders of magnitude on Pythia.
- **multi-layer fractions**: of the latents that fire, the share active at more than one layer over
  the dataset; of the (token, latent) pairs where a latent fires, the share where it fires at more
  than one layer for that same token.
- **adjacent-layer cosine similarity**: mean over tokens of cos(x_l, x_{l+1}) of the raw activations
  (multi-layer activity grows with it, per the paper).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from saescope.errors import InvalidInput
from saescope.saes import SparseAutoencoder
from saescope.saes.stacked import read_multipliers, stacked_hookpoints

LAYER_SPREAD_FILE = "layer_spread.json"
"""Where an SAE folder keeps its full ``LayerSpread`` (metrics.json keeps the summary)."""
CHUNK_TOKENS = 256
"""Tokens per chunk: the dense [layers, chunk, d_sae] code of one chunk is what memory holds."""


@dataclass
class LayerSpread:
    hookpoints: list[str]
    """The SAE's hookpoints; a layer index is a position in this list."""
    n_tokens: int
    mass: list[list[float]]
    """[d_sae][layers]: Σ_t a_{t,j,l} (the latent × layer heat map before normalising rows)."""
    fires: list[list[int]]
    """[d_sae][layers]: tokens on which latent j fires at layer l."""
    mean_layer: list[float | None]
    """μ_j (None for a latent that never fires)."""
    variance_data: list[float | None]
    """Var_data(j): variance of the layer index under p_j, aggregated over tokens."""
    variance_token: list[float | None]
    """Var_token(j): the activation-weighted mean over tokens of the variance for one token."""
    variance_ratio: float | None
    """mean Var_data / mean Var_token over firing latents (the paper: about 100 on Pythia)."""
    multi_layer_fraction_data: float
    """Share of firing latents active at more than one layer somewhere in the data."""
    multi_layer_fraction_token: float
    """Share of firing (token, latent) pairs where the latent fires at more than one layer of that token."""
    layers_per_firing_token: float
    """Mean number of layers a latent fires at, over the (token, latent) pairs where it fires."""
    adjacent_cosine: list[float]
    """[layers − 1]: mean cos(x_l, x_{l+1}) over tokens."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """The scalar findings (what eval.json and the suite index carry without the per-latent arrays)."""
        return {
            "n_tokens": self.n_tokens, "n_layers": len(self.hookpoints), "variance_ratio": self.variance_ratio,
            "multi_layer_fraction_data": self.multi_layer_fraction_data, "multi_layer_fraction_token": self.multi_layer_fraction_token,
            "layers_per_firing_token": self.layers_per_firing_token,
            "mean_variance_data": _mean(self.variance_data), "mean_variance_token": _mean(self.variance_token),
            "adjacent_cosine": self.adjacent_cosine,
        }


@torch.no_grad()
def layer_spread(sae: SparseAutoencoder, activations: dict[str, Tensor], device: torch.device | str = "cpu") -> LayerSpread:
    """The paper's analysis of a stacked ``sae`` over ``activations`` ({hookpoint: [n_tokens, d_in]}, rows aligned)."""
    hookpoints = stacked_hookpoints(sae)
    if not hookpoints:
        raise InvalidInput("layer_spread needs a multi-layer (stacked) SAE; this SAE reads one hookpoint")
    missing = [h for h in hookpoints if h not in activations]
    if missing:
        raise InvalidInput(f"layer_spread: no activations for hookpoint(s) {missing}; harvest every hookpoint the SAE reads")
    n_tokens = {activations[h].shape[0] for h in hookpoints}
    if len(n_tokens) != 1:
        raise InvalidInput(f"layer_spread: the hookpoints' activations have different token counts {sorted(n_tokens)}; they must be the same tokens")
    n = n_tokens.pop()
    n_layers, d_sae = len(hookpoints), sae.d_sae
    multipliers = torch.tensor([m for _h, m in read_multipliers(sae)], device=device).view(n_layers, 1, 1)
    depth = torch.arange(n_layers, dtype=torch.float64, device=device).view(n_layers, 1, 1)
    mass = torch.zeros(n_layers, d_sae, dtype=torch.float64, device=device)
    fires = torch.zeros(n_layers, d_sae, dtype=torch.long, device=device)
    token_variance_mass = torch.zeros(d_sae, dtype=torch.float64, device=device)  # Σ_t S0·Var_t
    firing_pairs = multi_pairs = layer_count_total = 0
    cosine_sums = torch.zeros(max(n_layers - 1, 0), dtype=torch.float64, device=device)
    sae = sae.to(device)
    for start in range(0, n, CHUNK_TOKENS):
        x = torch.stack([activations[h][start : start + CHUNK_TOKENS].to(device).float() for h in hookpoints])  # [L, t, d]
        if n_layers > 1:
            cosine_sums += torch.nn.functional.cosine_similarity(x[:-1], x[1:], dim=-1).double().sum(dim=1)
        code = sae.encode((x * multipliers).reshape(-1, sae.d_in)).reshape(n_layers, x.shape[1], d_sae).double()
        active = code > 0
        mass += code.sum(dim=1)
        fires += active.sum(dim=1)
        s0, s1, s2 = code.sum(dim=0), (code * depth).sum(dim=0), (code * depth.pow(2)).sum(dim=0)  # [t, d_sae]
        positive = s0 > 0
        token_variance_mass += torch.where(positive, s2 - s1.pow(2) / s0.clamp_min(1e-300), 0.0).clamp_min(0).sum(dim=0)
        layers_active = active.sum(dim=0)
        firing_pairs += int(positive.sum())
        multi_pairs += int((layers_active > 1).sum())
        layer_count_total += int(layers_active.sum())
    total = mass.sum(dim=0)  # [d_sae]
    fired = total > 0
    p = mass / total.clamp_min(1e-300)
    layer_axis = torch.arange(n_layers, dtype=torch.float64, device=device).view(n_layers, 1)
    mean_layer = (p * layer_axis).sum(dim=0)
    variance_data = (p * (layer_axis - mean_layer).pow(2)).sum(dim=0)
    variance_token = token_variance_mass / total.clamp_min(1e-300)
    ratio = None
    if fired.any() and variance_token[fired].mean() > 0:
        ratio = float(variance_data[fired].mean() / variance_token[fired].mean())
    n_fired = int(fired.sum())
    return LayerSpread(
        hookpoints=hookpoints,
        n_tokens=n,
        mass=mass.T.float().tolist(),
        fires=fires.T.tolist(),
        mean_layer=_masked(mean_layer, fired),
        variance_data=_masked(variance_data, fired),
        variance_token=_masked(variance_token, fired),
        variance_ratio=ratio,
        multi_layer_fraction_data=float(((fires > 0).sum(dim=0) > 1).sum() / max(n_fired, 1)),
        multi_layer_fraction_token=multi_pairs / max(firing_pairs, 1),
        layers_per_firing_token=layer_count_total / max(firing_pairs, 1),
        adjacent_cosine=(cosine_sums / max(n, 1)).tolist(),
    )


def _masked(values: Tensor, keep: Tensor) -> list[float | None]:
    return [float(v) if k else None for v, k in zip(values.tolist(), keep.tolist())]


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None
