"""A token-level shuffle buffer shared by several hookpoints.

Consecutive LM batches come from the same few documents; training on them in order makes SAE
batches highly correlated. Tokens go into a fixed-size buffer per hookpoint and training batches are
drawn from it at random. All hookpoints draw the same row indices, so the i-th row of every
hookpoint's batch is the same token (useful for multi-layer SAEs and for debugging).
Memory is fixed at construction: ``capacity × Σ d`` floats.
"""

from __future__ import annotations

import torch
from torch import Tensor

from saescope.errors import InvalidInput


class MultiShuffleBuffer:
    def __init__(self, widths: dict[str, int], capacity: int, seed: int = 0, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        if capacity <= 0:
            raise InvalidInput(f"shuffle buffer capacity must be positive, got {capacity}")
        self.capacity = capacity
        self.buffers = {name: torch.empty(capacity, d, dtype=dtype, device=device) for name, d in widths.items()}
        self.pending: dict[str, Tensor] = {}
        self.size = 0
        self.generator = torch.Generator().manual_seed(seed)

    def free(self) -> int:
        return self.capacity - self.size

    def add(self, name: str, rows: Tensor) -> None:
        """Stage ``rows`` for hookpoint ``name``; ``commit`` makes every hookpoint's rows visible together."""
        if rows.shape[0] > self.free():
            raise InvalidInput(f"shuffle buffer overflow: {rows.shape[0]} rows for {self.free()} free slots")
        buffer = self.buffers[name]
        buffer[self.size : self.size + rows.shape[0]].copy_(rows)
        self.pending[name] = rows

    def commit(self, n_rows: int) -> None:
        missing = set(self.buffers) - set(self.pending)
        if missing:
            raise RuntimeError(f"no activations arrived for {sorted(missing)} in this forward pass")
        self.pending.clear()
        self.size += n_rows

    def take_oldest(self, n_rows: int) -> dict[str, Tensor]:
        """Remove the ``n_rows`` rows added first, in order (no shuffling)."""
        if n_rows > self.size:
            raise InvalidInput(f"asked for {n_rows} rows but the buffer holds {self.size}")
        out = {}
        for name, buffer in self.buffers.items():
            out[name] = buffer[:n_rows].clone()
            buffer[: self.size - n_rows] = buffer[n_rows : self.size].clone()
        self.size -= n_rows
        return out

    def take(self, n_rows: int) -> dict[str, Tensor]:
        """Remove ``n_rows`` random rows (the same indices for every hookpoint)."""
        if n_rows > self.size:
            raise InvalidInput(f"asked for {n_rows} rows but the buffer holds {self.size}")
        chosen = torch.randperm(self.size, generator=self.generator)[:n_rows]
        # Fill the holes with the rows at the end that were not chosen.
        keep = torch.ones(self.size, dtype=torch.bool)
        keep[chosen] = False
        tail_start = self.size - n_rows
        holes = chosen[chosen < tail_start]
        movers = torch.arange(tail_start, self.size)[keep[tail_start:]]
        out = {}
        device_chosen = chosen.to(next(iter(self.buffers.values())).device)
        for name, buffer in self.buffers.items():
            out[name] = buffer[device_chosen].clone()
            if holes.numel():
                buffer[holes.to(buffer.device)] = buffer[movers.to(buffer.device)]
        self.size -= n_rows
        return out
