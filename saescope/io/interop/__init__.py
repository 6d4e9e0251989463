"""Other tools' SAE formats: Gemma Scope (1 and 2), SAELens and circuit-tracer in; SAELens and circuit-tracer out."""

from saescope.io.interop.formats import (
    detect_format,
    export_saelens,
    load_gemma_scope,
    load_saelens,
)
from saescope.io.interop.loading import load_sae
from saescope.io.interop.transcoders import (
    export_circuit_tracer,
    load_circuit_tracer,
    load_circuit_tracer_set,
    load_gemma_scope_2,
)

__all__ = ["detect_format", "export_circuit_tracer", "export_saelens", "load_circuit_tracer", "load_circuit_tracer_set", "load_gemma_scope",
           "load_gemma_scope_2", "load_sae", "load_saelens"]
