"""Where activations come from: in-memory arrays, memory-mapped files, generators."""

from saescope.data.activations import ActivationSource, ArraySource, IterableSource, as_source

__all__ = ["ActivationSource", "ArraySource", "IterableSource", "as_source"]
