"""Per-feature statistics of one SAE, gathered for all features at once in one pass over the contexts.

For every batch of contexts the SAE encodes the hookpoint's activations into a ``FeatureCode`` and
the collector updates, on the device (the only host reads are the batch's token count and the
number of active entries, for the histogram):

- the top-k activating tokens of every feature, each with a window of the feature's activations and
  token ids around it (running top-k merged with the batch's top-k);
- a uniform random sample of every feature's activating tokens (random keys, the same merge), from
  which examples at activation quantiles are picked;
- a histogram of log10 activation per feature, firing counts, sums and maxima.

A multi-layer SAE reads several layers of the same tokens: each layer's code is one ``update`` with
its ``layer`` index, examples remember the layer they fired at, and ``layer_fires`` counts firings
per feature and layer.

Never one forward pass per feature: the cost is the LM forward plus one encode per batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from saescope.errors import InvalidInput
from saescope.saes.code import FeatureCode

NO_TOKEN = -1


@dataclass
class FeatureStats:
    """What the collector found; arrays are indexed by feature."""

    top_values: Tensor
    """[F, k] activations of the top-k tokens (descending; 0 where a feature fired fewer than k times)."""
    top_windows: Tensor
    """[F, k, 2w+1] the feature's activation on the window around each top token."""
    top_tokens: Tensor
    """[F, k, 2w+1] token ids of those windows (-1 outside the context)."""
    sample_values: Tensor
    """[F, s] activations of uniformly sampled firing tokens (0 where fewer were seen)."""
    sample_windows: Tensor
    sample_tokens: Tensor
    histogram: Tensor
    """[F, bins] counts of log10(activation) in ``bin_edges``."""
    bin_edges: Tensor
    fire_counts: Tensor
    """[F] tokens on which each feature fired."""
    activation_sums: Tensor
    max_values: Tensor
    n_tokens: int
    top_layers: Tensor | None = None
    """[F, k] the layer index of each top example (multi-layer SAEs; None for one hookpoint)."""
    sample_layers: Tensor | None = None
    layer_fires: Tensor | None = None
    """[F, layers] firings per feature at each layer (multi-layer SAEs)."""

    @property
    def density(self) -> Tensor:
        """Fraction of vectors on which each feature fires (a multi-layer SAE reads layers × tokens vectors)."""
        layers = 1 if self.layer_fires is None else self.layer_fires.shape[1]
        return self.fire_counts.double() / max(self.n_tokens * layers, 1)


class FeatureCollector:
    def __init__(self, n_features: int, top_k: int = 20, n_samples: int = 24, window: int = 12, n_bins: int = 40,
                 log10_range: tuple[float, float] = (-4.0, 3.0), device: torch.device | str = "cpu", seed: int = 0,
                 n_layers: int = 1) -> None:
        if top_k <= 0 or n_samples < 0 or window < 0:
            raise InvalidInput("top_k must be > 0, n_samples and window >= 0")
        self.k, self.s, self.w = top_k, n_samples, window
        span = 2 * window + 1
        f, dev = n_features, torch.device(device)
        self.device = dev
        self.top_values = torch.zeros(f, top_k, device=dev)
        self.top_windows = torch.zeros(f, top_k, span, device=dev)
        self.top_tokens = torch.full((f, top_k, span), NO_TOKEN, dtype=torch.long, device=dev)
        self.sample_keys = torch.full((f, n_samples), -1.0, device=dev)
        self.sample_values = torch.zeros(f, n_samples, device=dev)
        self.sample_windows = torch.zeros(f, n_samples, span, device=dev)
        self.sample_tokens = torch.full((f, n_samples, span), NO_TOKEN, dtype=torch.long, device=dev)
        self.bin_edges = torch.linspace(log10_range[0], log10_range[1], n_bins + 1, device=dev)
        self.histogram = torch.zeros(f, n_bins, dtype=torch.long, device=dev)
        self.fire_counts = torch.zeros(f, dtype=torch.long, device=dev)
        self.activation_sums = torch.zeros(f, dtype=torch.float64, device=dev)
        self.max_values = torch.zeros(f, device=dev)
        self.n_tokens = 0
        self.n_layers = n_layers
        self.top_layers = torch.zeros(f, top_k, 1, dtype=torch.long, device=dev)
        self.sample_layers = torch.zeros(f, n_samples, 1, dtype=torch.long, device=dev)
        self.layer_fires = torch.zeros(f, n_layers, dtype=torch.long, device=dev)
        self.generator = torch.Generator(device=dev).manual_seed(seed)

    @torch.no_grad()
    def update(self, code: FeatureCode | Tensor, tokens: Tensor, mask: Tensor, layer: int = 0) -> None:
        """``code`` the SAE's ``FeatureCode`` over the B·T positions (or dense [B, T, F] activations),
        ``tokens`` [B, T] ids, ``mask`` [B, T] positions that count, ``layer`` which of a multi-layer
        SAE's layers the code is from (each layer of a batch is one update; tokens count once).

        Counts, sums, maxima and histograms come from the code's active entries; the top examples and
        samples need whole windows of a feature, so they read the dense matrix, built once per batch.
        """
        b, t = tokens.shape
        if isinstance(code, Tensor):
            code = FeatureCode.from_dense(code.reshape(b * t, -1))
        if not 0 <= layer < self.n_layers:
            raise InvalidInput(f"layer {layer} is outside this collector's {self.n_layers} layer(s)")
        code = code.masked(mask.reshape(-1))
        if layer == 0:
            self.n_tokens += int(mask.sum())
        counts = code.count_per_feature().long()
        self.fire_counts += counts
        self.layer_fires[:, layer] += counts
        self.activation_sums += code.sum_per_feature()
        self.max_values = torch.maximum(self.max_values, code.max_per_feature().float())
        _rows, cols, values = code.active_entries()
        bins = torch.bucketize(values.float().log10(), self.bin_edges[1:-1])
        self.histogram.view(-1).index_add_(0, cols * self.histogram.shape[1] + bins, torch.ones_like(bins))

        flat = code.dense().float()
        f = flat.shape[1]
        acts = flat.view(b, t, f)
        fired = flat > 0

        k = min(self.k, b * t)
        values, index = flat.topk(k, dim=0)  # [k, F]
        windows, window_tokens = self._windows(acts, tokens, index.T)
        layers = torch.full((f, k, 1), layer, dtype=torch.long, device=flat.device)
        self.top_values, (self.top_windows, self.top_tokens, self.top_layers) = _merge(
            self.top_values, values.T, (self.top_windows, self.top_tokens, self.top_layers), (windows, window_tokens, layers), self.k)

        if self.s:
            keys = torch.rand(flat.shape, generator=self.generator, device=flat.device).masked_fill_(~fired, -1.0)
            s = min(self.s, b * t)
            chosen_keys, index = keys.topk(s, dim=0)
            chosen_values = flat.gather(0, index)
            windows, window_tokens = self._windows(acts, tokens, index.T)
            merged_keys = torch.cat([self.sample_keys, chosen_keys.T], dim=1)
            order = merged_keys.topk(self.s, dim=1).indices
            self.sample_keys = merged_keys.gather(1, order)
            self.sample_values = torch.cat([self.sample_values, chosen_values.T], dim=1).gather(1, order)
            span = self.sample_windows.shape[-1]
            expand = order.unsqueeze(-1).expand(-1, -1, span)
            self.sample_windows = torch.cat([self.sample_windows, windows], dim=1).gather(1, expand)
            self.sample_tokens = torch.cat([self.sample_tokens, window_tokens], dim=1).gather(1, expand)
            batch_layers = torch.full((f, s, 1), layer, dtype=torch.long, device=flat.device)
            self.sample_layers = torch.cat([self.sample_layers, batch_layers], dim=1).gather(1, order.unsqueeze(-1))

    def _windows(self, acts: Tensor, tokens: Tensor, flat_index: Tensor) -> tuple[Tensor, Tensor]:
        """For [F, n] flat token indices: the feature's activations and the token ids in ±w around each."""
        _b, t, f = acts.shape
        context = flat_index // t
        position = flat_index % t
        offsets = torch.arange(-self.w, self.w + 1, device=acts.device)
        positions = position.unsqueeze(-1) + offsets  # [F, n, span]
        inside = (positions >= 0) & (positions < t)
        positions = positions.clamp(0, t - 1)
        contexts = context.unsqueeze(-1).expand_as(positions)
        features = torch.arange(f, device=acts.device).view(f, 1, 1).expand_as(positions)
        values = acts[contexts, positions, features] * inside
        ids = tokens[contexts, positions].masked_fill(~inside, NO_TOKEN)
        return values, ids

    def finish(self) -> FeatureStats:
        order = self.sample_values.argsort(dim=1, descending=True)
        span = self.sample_windows.shape[-1]
        expand = order.unsqueeze(-1).expand(-1, -1, span)
        return FeatureStats(
            top_values=self.top_values.cpu(), top_windows=self.top_windows.cpu(), top_tokens=self.top_tokens.cpu(),
            sample_values=self.sample_values.gather(1, order).cpu(), sample_windows=self.sample_windows.gather(1, expand).cpu(),
            sample_tokens=self.sample_tokens.gather(1, expand).cpu(), histogram=self.histogram.cpu(), bin_edges=self.bin_edges.cpu(),
            fire_counts=self.fire_counts.cpu(), activation_sums=self.activation_sums.cpu(), max_values=self.max_values.cpu(),
            n_tokens=self.n_tokens,
            **({} if self.n_layers == 1 else {
                "top_layers": self.top_layers[..., 0].cpu(), "sample_layers": self.sample_layers[..., 0].gather(1, order).cpu(),
                "layer_fires": self.layer_fires.cpu()}),
        )


def _merge(running: Tensor, batch: Tensor, running_extra: tuple[Tensor, ...], batch_extra: tuple[Tensor, ...], k: int):
    """Keep the k largest of running ∪ batch per row, carrying the extra [F, n, span] tensors along."""
    values = torch.cat([running, batch], dim=1)
    top, order = values.topk(k, dim=1)
    carried = []
    for old, new in zip(running_extra, batch_extra):
        both = torch.cat([old, new], dim=1)
        carried.append(both.gather(1, order.unsqueeze(-1).expand(-1, -1, both.shape[-1])))
    return top, tuple(carried)


def quantile_examples(stats: FeatureStats, feature: int, n_bands: int = 5, per_band: int = 2) -> list[tuple[float, int]]:
    """(lower quantile, sample index) pairs: ``per_band`` samples from each of ``n_bands`` activation bands."""
    values = stats.sample_values[feature]
    present = int((values > 0).sum())
    chosen = []
    for band in range(n_bands):
        low, high = math.floor(present * band / n_bands), math.floor(present * (band + 1) / n_bands)
        for index in range(low, min(high, low + per_band)):
            chosen.append((band / n_bands, index))
    return chosen
