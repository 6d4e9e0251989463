"""Where a language model's text comes from and how it is cut, for training and for held-out evaluation."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LmDataConfig:
    dataset: str = "pydocs"
    """pydocs (built in), a .txt/.jsonl/.parquet file, a saved datasets folder or a hub dataset id."""
    text_field: str = "text"
    """Text column of .jsonl/.parquet/datasets sources."""
    split: str = "train"
    """Split of a datasets source."""
    context_size: int = 128
    """Tokens per context (with BOS)."""
    batch_contexts: int = 16
    """Contexts per LM forward."""
    shuffle_buffer_tokens: int = 65_536
    """Tokens held in the shuffle buffer between the model and the trainer."""
    eval_fraction: float = 0.05
    """Share of documents held out (by a hash of their text) for evaluation."""
    exclude_special: bool = True
    """Leave BOS/EOS/pad positions and position 0 (the attention sink) out of training and scoring."""
    outlier_norm_ratio: float | None = None
    """Also drop training tokens whose activation norm at any hookpoint exceeds this multiple of the
    batch's median (dictionary_learning's filter for sink-like outliers; 10 is a common choice). None keeps them."""
    harvest_autocast: bool = True
    """On CUDA with a float32 model, run the forward that produces training activations under bf16 autocast
    (matmuls in bf16, the residual stream and norms in float32; Gemma Scope trained on bf16 activations).
    Held-out evaluation always runs in the model's own dtype. No effect on CPU or on a bf16/fp16 model."""
