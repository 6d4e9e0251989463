"""An activation cache opened as a training source over some of its hookpoints (names or globs)."""

from __future__ import annotations

from typing import Any

from saescope.data.cache import CachedActivations, read_manifest
from saescope.lm.hookpoints import select_hookpoints


def cache_source(path: str, hookpoints: str | list[str] | None) -> tuple[CachedActivations, dict[str, int], dict[str, Any]]:
    """(reader yielding dict batches by hookpoint, {hookpoint: d_in}, the cache's manifest)."""
    manifest = read_manifest(path)
    available = list(manifest["hookpoints"])
    requested = [hookpoints] if isinstance(hookpoints, str) else list(hookpoints or available)
    chosen = select_hookpoints(requested, available, f"the cache {path}")
    source = CachedActivations(path, chosen, as_dict=True)  # batches routed by hookpoint
    return source, dict(source.d_in), manifest
