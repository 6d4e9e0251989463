"""Every number saescope reports about an SAE, with its definition.

All sums are pooled over the whole evaluation set and accumulated in float64, so no metric depends
on the batch size. Definitions (x: input activation, x̂: reconstruction, f: latent activations,
N tokens, F latents):

- L0 = mean over tokens of #{i : f_i > 0}.
- MSE = mean over tokens of Σ_j (x_j - x̂_j)²  (summed over the d_in dimensions, not averaged).
- FVU = Σ_t ‖x_t - x̂_t‖² / Σ_t ‖x_t - x̄‖², with x̄ the mean over the evaluation set. Variance is
  measured about the mean, not about zero: the latter inflates explained variance on residual
  streams with a large mean. Explained variance = 1 - FVU.
- Feature density of latent i = fraction of tokens with f_i > 0. Dense: density > 10%.
- Dead: no firing over the training run's last ``dead_window_tokens`` tokens (10M at most, as in
  Gemma Scope), from the trainer's tracker, recorded with the SAE (None for an SAE that records no
  training run). Unfired: density 0 over the evaluation set, reported with its token count; an
  evaluation window of a few thousand tokens calls many rare latents "unfired" that are not dead.
- Shrinkage γ = E‖x̂‖² / E[x·x̂]  (Gated SAE paper, eq. 10); γ < 1 means reconstructions are shrunk.
- Description length (MDL-SAE, Ayonrinde et al. 2024), in bits per token: which latents are active
  plus their quantised values, at the coarsest quantisation whose reconstruction meets a bound on
  FVU (by default the SAE's own FVU + 0.01). Defined in ``saescope.evaluation.description_length``;
  ``mdl`` holds every quantisation tried, so selection can re-read it at any bound.
- Ground truth (synthetic data): MMCS = mean over true directions g of max_i cos(g, d_i); recovered =
  fraction of g with max_i cos(g, d_i) > 0.9.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from saescope.data import as_source
from saescope.errors import InvalidInput
from saescope.saes import FeatureCode, SparseAutoencoder

DENSE_THRESHOLD = 0.1


# -- single-batch definitions (the references the streaming code is tested against) ------------------
def l0(feature_acts: Tensor) -> float:
    return (feature_acts > 0).sum(dim=-1).double().mean().item()


def fvu(x: Tensor, reconstruction: Tensor) -> float:
    x, reconstruction = x.double(), reconstruction.double()
    return ((x - reconstruction).pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum()).item()


def shrinkage(x: Tensor, reconstruction: Tensor) -> float:
    x, reconstruction = x.double(), reconstruction.double()
    return (reconstruction.pow(2).sum() / (x * reconstruction).sum()).item()


def mmcs(true_directions: Tensor, W_dec: Tensor) -> Tensor:
    """Per true direction, the best cosine similarity with any decoder row (shape [n_true])."""
    truth = torch.nn.functional.normalize(true_directions.double(), dim=1)
    decoder = torch.nn.functional.normalize(W_dec.detach().double().to(truth.device), dim=1)
    return (truth @ decoder.T).max(dim=1).values


def density_histogram(density: Tensor, n_bins: int = 40, low: float = -8.0) -> dict[str, Any]:
    """Histogram of log10(feature density) on [low, 0]; dead latents are counted apart."""
    alive = density[density > 0].double()
    counts = torch.histc(alive.log10().clamp(min=low), bins=n_bins, min=low, max=0.0) if alive.numel() else torch.zeros(n_bins)
    edges = torch.linspace(low, 0.0, n_bins + 1)
    return {"log10_density_edges": edges.tolist(), "counts": counts.long().tolist(), "dead": int((density == 0).sum())}


# -- streaming accumulation -------------------------------------------------------------------------
class ReconstructionStats:
    """Pooled sums for FVU, MSE, L0, shrinkage and densities, merged batch by batch in float64.

    The variance about the mean is merged with Chan's parallel formula rather than as
    Σ‖x‖² - N‖x̄‖², which cancels catastrophically when the mean is large.
    """

    def __init__(self, d_in: int, d_sae: int, device: torch.device | str = "cpu") -> None:
        f64 = dict(dtype=torch.float64, device=device)
        self.n_tokens = 0
        self.mean = torch.zeros(d_in, **f64)
        self.sum_sq_dev = torch.zeros((), **f64)
        self.sum_sq_error = torch.zeros((), **f64)
        self.sum_sq_recon = torch.zeros((), **f64)
        self.sum_dot = torch.zeros((), **f64)
        self.sum_l0 = torch.zeros((), **f64)
        self.fire_counts = torch.zeros(d_sae, dtype=torch.long, device=device)
        self.max_acts = torch.zeros(d_sae, dtype=torch.float32, device=device)

    @torch.no_grad()
    def update(self, x: Tensor, reconstruction: Tensor, code: FeatureCode | Tensor) -> None:
        """Add one batch; ``code`` is the SAE's ``FeatureCode`` (or a dense [n, d_sae] matrix)."""
        if isinstance(code, Tensor):
            code = FeatureCode.from_dense(code)
        n = x.shape[0]
        x64, r64 = x.double(), reconstruction.double()
        batch_mean = x64.mean(dim=0)
        batch_sq_dev = (x64 - batch_mean).pow(2).sum()
        delta = batch_mean - self.mean
        total = self.n_tokens + n
        self.sum_sq_dev += batch_sq_dev + delta.pow(2).sum() * (self.n_tokens * n / total)
        self.mean += delta * (n / total)
        self.n_tokens = total
        self.sum_sq_error += (x64 - r64).pow(2).sum()
        self.sum_sq_recon += r64.pow(2).sum()
        self.sum_dot += (x64 * r64).sum()
        counts = code.count_per_feature()
        self.sum_l0 += counts.sum()
        self.fire_counts += counts.long()
        torch.maximum(self.max_acts, code.max_per_feature().float(), out=self.max_acts)

    def summary(self) -> dict[str, Any]:
        n = max(self.n_tokens, 1)
        fvu_value = (self.sum_sq_error / self.sum_sq_dev.clamp_min(1e-30)).item()
        density = self.fire_counts.double() / n
        return {
            "n_tokens": self.n_tokens,
            "l0": (self.sum_l0 / n).item(),
            "mse": (self.sum_sq_error / n).item(),
            "fvu": fvu_value,
            "explained_variance": 1.0 - fvu_value,
            "shrinkage": (self.sum_sq_recon / self.sum_dot).item() if self.sum_dot.item() != 0 else math.nan,
            "unfired_fraction": (density == 0).double().mean().item(),
            "dense_fraction": (density > DENSE_THRESHOLD).double().mean().item(),
            "feature_density": density.float().cpu(),
        }


@dataclass
class SaeMetrics:
    """The evaluation of one SAE on one activation set (definitions in this module's docstring)."""

    n_tokens: int
    l0: float
    mse: float
    fvu: float
    explained_variance: float
    shrinkage: float
    unfired_fraction: float
    """Never fired in these ``n_tokens`` evaluation tokens."""
    dense_fraction: float
    dead_fraction: float | None = None
    """Never fired in the training run's last ``dead_window_tokens`` tokens; None without a training record."""
    dead_window_tokens: int | None = None
    description_length: float | None = None
    """Bits per token, or None if no quantisation met the tolerance (or it was not computed)."""
    description_length_bins: int | None = None
    mdl: dict[str, Any] | None = None
    """``DescriptionLength.to_dict()``: index bits and, per bin count, value bits and quantised FVU."""
    feature_density: Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        density = values.pop("feature_density")
        if density is not None:
            values["density_histogram"] = density_histogram(density)
        return values


@torch.no_grad()
def evaluate_sae(
    sae: SparseAutoencoder,
    data: Any,
    batch_size: int = 4096,
    description_length: bool = True,
    dl_max_fvu: float | None = None,
    dl_variant: str = "active",
    device: str | torch.device | None = None,
) -> SaeMetrics:
    """Measure ``sae`` on raw activations ``data`` (tensor, array, memmap or iterable of batches).

    The SAE must take raw activations (saved SAEs do: normalisation is folded in). Description length
    needs a second pass, so it is skipped for one-shot iterators; it is measured at ``dl_max_fvu``
    (None: the SAE's own FVU + 0.01) with the ``dl_variant`` definition (``active`` or ``saebench``).

    Example:
        >>> metrics = evaluate_sae(sae, activations)              # doctest: +SKIP
        >>> metrics.l0, metrics.fvu                               # doctest: +SKIP
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInput(f"evaluate_sae: batch_size must be a positive integer, got {batch_size!r}")
    source = as_source(data)
    device = torch.device(device) if device is not None else sae.W_enc.device
    was_training = sae.training
    sae.eval()
    stats = reconstruction_stats(sae, source, batch_size, device)
    if stats.n_tokens == 0:
        raise InvalidInput("evaluate_sae: no activations to evaluate")
    summary = stats.summary()
    metrics = SaeMetrics(**summary, **training_dead(sae))
    if description_length and source.reiterable:
        from saescope.evaluation.description_length import measure_description_length

        dl = measure_description_length(sae, source, max_fvu=dl_max_fvu, variant=dl_variant, batch_size=batch_size,
                                        device=device, stats=stats)
        metrics.description_length, metrics.description_length_bins, metrics.mdl = dl.bits, dl.bins, dl.to_dict()
    sae.train(was_training)
    return metrics


def reconstruction_stats(sae: SparseAutoencoder, source: Any, batch_size: int, device: torch.device) -> ReconstructionStats:
    """One pass of ``sae`` over ``source`` (an activation source), every batch checked, pooled in ``ReconstructionStats``."""
    stats = ReconstructionStats(sae.d_out, sae.d_sae, device)
    for batch in source.iter_batches(batch_size):
        x, reference = checked_pair(batch, sae, device)
        code = sae.encode_code(x)
        stats.update(reference, sae.output(x, code), code)
    return stats


def training_dead(sae: SparseAutoencoder) -> dict[str, Any]:
    """The dead fraction and window the training run recorded with ``sae`` (None for both if it recorded none)."""
    training = getattr(sae, "training_summary", None) or {}
    dead = training.get("dead_fraction", (training.get("final_train_metrics") or {}).get("dead_fraction"))
    window = training.get("dead_window_tokens")
    if dead is None or window is None:
        return {"dead_fraction": None, "dead_window_tokens": None}
    return {"dead_fraction": float(dead), "dead_window_tokens": int(min(window, training.get("n_tokens") or window))}


def checked_pair(batch: Tensor | dict[str, Tensor], sae: SparseAutoencoder, device: torch.device) -> tuple[Tensor, Tensor]:
    """The SAE's input and what its output is compared with, both checked and on ``device``.

    For an SAE: ``x`` and ``x`` (``log1p(x)`` with that input transform). For a transcoder the batch is
    ``{site: rows}`` (``SiteArraysSource``, a cache or a harvest) holding its input and its target site.
    """
    target = sae.cfg.target
    if target is None:
        x = checked_batch(batch[sae.cfg.hookpoint] if isinstance(batch, dict) else batch, sae, device)
        return x, sae.reconstruction_target(x)
    if not isinstance(batch, dict) or sae.cfg.hookpoint not in batch or target not in batch:
        held = sorted(batch) if isinstance(batch, dict) else "one array"
        raise InvalidInput(f"a transcoder from {sae.cfg.hookpoint} to {target} is measured on both sites' activations: pass "
                           f"{{{sae.cfg.hookpoint!r}: inputs, {target!r}: targets}} (row-aligned), got {held}")
    x = checked_batch(batch[sae.cfg.hookpoint], sae, device)
    reference = batch[target]
    if reference.shape != (x.shape[0], sae.d_out):
        raise InvalidInput(f"{target}: target activations have shape {tuple(reference.shape)}, but the transcoder writes "
                           f"[{x.shape[0]}, d_out={sae.d_out}]; were they harvested at another site or model?")
    reference = reference.to(device, non_blocking=True)
    if not torch.isfinite(reference).all():
        raise InvalidInput(f"{target}: target activations contain NaN or inf; clean the data before evaluating")
    return x, reference


def checked_batch(x: Tensor, sae: SparseAutoencoder, device: torch.device) -> Tensor:
    if x.shape[1] != sae.d_in:
        raise InvalidInput(f"activations have width {x.shape[1]}, but the SAE expects d_in={sae.d_in}; was it trained on another hookpoint?")
    x = x.to(device, non_blocking=True)
    if not torch.isfinite(x).all():
        raise InvalidInput("activations contain NaN or inf; clean the data before evaluating")
    return x
