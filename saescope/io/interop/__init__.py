"""Other tools' SAE formats: Gemma Scope params.npz and SAELens folders in, SAELens folders out."""

from saescope.io.interop.formats import (
    detect_format,
    export_saelens,
    load_gemma_scope,
    load_saelens,
)
from saescope.io.interop.loading import load_sae

__all__ = ["detect_format", "export_saelens", "load_gemma_scope", "load_sae", "load_saelens"]
