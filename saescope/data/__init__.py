"""Where activations and text come from: arrays, memmaps, generators, on-disk caches, text corpora and token contexts."""

from saescope.data.activations import (
    ActivationSource,
    ArraySource,
    IterableSource,
    as_source,
)

__all__ = ["ActivationSource", "ArraySource", "IterableSource", "as_source"]
