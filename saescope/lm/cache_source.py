"""An activation cache opened as a training source over some of its hookpoints (names or globs)."""

from __future__ import annotations

import fnmatch
from typing import Any

from saescope.data.cache import CachedActivations, read_manifest
from saescope.errors import InvalidInput
from saescope.lm.hookpoints import canonical_name


def cache_source(path: str, hookpoints: str | list[str] | None) -> tuple[CachedActivations, dict[str, int], dict[str, Any]]:
    """(reader yielding dict batches by hookpoint, {hookpoint: d_in}, the cache's manifest)."""
    manifest = read_manifest(path)
    available = list(manifest["hookpoints"])
    requested = [hookpoints] if isinstance(hookpoints, str) else list(hookpoints or available)
    chosen: list[str] = []
    for raw in requested:
        matches = [h for h in available if fnmatch.fnmatchcase(h, canonical_name(raw))]
        if not matches:
            raise InvalidInput(f"{path}: no hookpoint {raw!r} in this cache; it holds {available}")
        chosen += [m for m in matches if m not in chosen]
    source = CachedActivations(path, chosen, as_dict=True)  # batches routed by hookpoint
    return source, dict(source.d_in), manifest
