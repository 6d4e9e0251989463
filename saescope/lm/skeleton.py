"""A model's modules from its config alone, on the meta device: shapes, hookpoints and parameter counts, no weights.

Planning a suite for a model this machine cannot hold (Gemma 2 9B, a 70B model) needs only the model's
structure: which hookpoints exist, how wide each is and how many parameters a forward runs through.
``model_skeleton`` reads the config (a ``config.json`` of a few KB, or a GGUF header), builds the
model on the meta device, where parameters have shapes but no storage, and ``site_widths`` runs its
usual two-token forward there, which produces shapes without computing anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from saescope.errors import InvalidInput, MissingFile
from saescope.lm.models import BUILTIN_MODELS, builtin_gguf, cache_root


def _config(model: str) -> Any:
    from transformers import AutoConfig

    path = Path(model).expanduser()
    if model in BUILTIN_MODELS:
        converted = cache_root() / "models" / model
        if (converted / "config.json").is_file():
            return AutoConfig.from_pretrained(converted)
        gguf = builtin_gguf(model)
        return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise MissingFile(f"{path}: no such GGUF file")
        return AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MissingFile(f"{path}: not a model folder (no config.json); give a hub id, a model folder or a .gguf file")
        return AutoConfig.from_pretrained(path)
    try:
        return AutoConfig.from_pretrained(model)  # a hub id: only its config.json is downloaded
    except OSError as error:
        raise MissingFile(f"{model}: could not read its config ({error}); give a hub id this machine can reach, "
                          "or a folder holding the model's config.json") from error


def model_skeleton(model: str) -> nn.Module:
    """The model built from its config on the meta device (eval mode): no weight is read or allocated."""
    from transformers import AutoModelForCausalLM

    config = _config(model)
    with torch.device("meta"):
        try:
            network = AutoModelForCausalLM.from_config(config)
        except ValueError as error:
            raise InvalidInput(f"{model}: transformers builds no causal language model from its config ({error})") from error
    return network.eval()


def parameter_count(network: nn.Module) -> int:
    """Parameters, counting a tied embedding once."""
    return sum(p.numel() for p in {id(p): p for p in network.parameters()}.values())


RESIDUAL_SITES = ("resid_pre", "resid_mid", "mlp_in", "resid_post", "attn_out", "mlp_out")
"""Sites on (or added into, or normalised from) the residual stream: their width is the model's d_model."""


def skeleton_site_widths(network: nn.Module, hookpoints: list) -> dict[str, int]:
    """Each hookpoint's width from the modules' shapes (no forward, which the meta device cannot always run).

    Residual-stream sites have the embedding's width; the others read a projection's input (attn_z: the
    attention output projection, mlp_post: the MLP's down projection), whose ``in_features`` is the width.
    """
    d_model = network.get_input_embeddings().embedding_dim
    modules = dict(network.named_modules())
    widths = {}
    for point in hookpoints:
        if point.site in RESIDUAL_SITES:
            widths[point.name] = d_model
            continue
        module = modules[point.module_name]
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.Linear):
            widths[point.name] = module.in_features if point.reads_input else module.out_features
        elif weight is not None and weight.dim() == 2 and hasattr(module, "nf"):  # GPT-2's Conv1D: weight [in, out]
            widths[point.name] = int(weight.shape[0] if point.reads_input else weight.shape[1])
        else:
            raise InvalidInput(f"{point.name}: cannot tell its width from {type(module).__name__}'s shapes without running the model; "
                               "estimate with residual-stream, attn_z or mlp_post hookpoints, or load the model")
    return widths
