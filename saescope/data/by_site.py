"""Activations of several sites held in memory, read in step: ``{"layers.3.mlp_in": x, "layers.3.mlp_out": y}``.

The trainer routes dict batches by hookpoint (a transcoder reads one site and predicts another, so it
needs the same tokens' rows of both). A live model and a cache already yield such dicts; this source
gives arrays, tensors and memmaps the same shape of batch, with every site's rows taken at the same
indices: each site is an ``ArraySource`` of the same length, shuffled by the same seeded permutation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from torch import Tensor

from saescope.data.activations import ArraySource
from saescope.errors import InvalidInput


class SiteArraysSource:
    """Row-aligned arrays by site name; batches are ``{site: [batch, d_site]}``.

    Example:
        >>> import torch
        >>> source = SiteArraysSource({"in": torch.randn(10, 4), "out": torch.randn(10, 3)})
        >>> batch = next(source.iter_batches(5, shuffle=True))
        >>> sorted(batch), tuple(batch["out"].shape)
        (['in', 'out'], (5, 3))
    """

    reiterable = True

    def __init__(self, arrays: Mapping[str, Tensor | np.ndarray], name: str = "activations") -> None:
        if not arrays:
            raise InvalidInput(f"{name}: no sites given; pass {{site name: [n_tokens, d] array}}")
        self.sites = {site: ArraySource(array, f"{name}[{site!r}]") for site, array in arrays.items()}
        rows = {site: source.n_tokens for site, source in self.sites.items()}
        if len(set(rows.values())) > 1:
            raise InvalidInput(f"{name}: the sites hold different numbers of rows {rows}; each row must be the same token at every site")
        self.name = name
        self.n_tokens = next(iter(rows.values()))
        self.d_in = {site: source.d_in for site, source in self.sites.items()}

    def head(self, n_tokens: int) -> dict[str, Tensor]:
        return {site: source.head(n_tokens) for site, source in self.sites.items()}

    def fingerprint(self) -> dict[str, Any]:
        return {site: source.fingerprint() for site, source in self.sites.items()}

    def iter_batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, start_batch: int = 0,
                     loop: bool = False) -> Iterator[dict[str, Tensor]]:
        streams = {site: source.iter_batches(batch_size, shuffle=shuffle, seed=seed, start_batch=start_batch, loop=loop)
                   for site, source in self.sites.items()}
        for parts in zip(*streams.values()):
            yield dict(zip(streams, parts))
