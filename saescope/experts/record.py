"""Count which routed experts each prompt's tokens select (the paper's fTRI), one forward per batch.

A forward hook on every router reads the experts it chose (``top_k_index``). Hooks registered after
an ``ExpertSwitch`` see the switched choice, so the same counter measures a steered model.
Position 0 (the BOS token every prompt shares, the attention sink) is not counted; with
``generated=True`` only the tokens the model generated after the prompt are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from saescope.experts.sites import MoeLayer, find_moe_layers


@dataclass
class Selections:
    """Per prompt and MoE layer, how many counted tokens selected each expert."""

    counts: Tensor
    """[n_prompts, n_layers, n_experts] int64."""
    tokens: Tensor
    """[n_prompts] int64: tokens counted per prompt."""
    layers: list[MoeLayer]


def prompt_ids(tokenizer: Any, prompt: str) -> list[int]:
    """The prompt's ids with BOS first, as ``saescope steer`` feeds them."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids


def padded(id_lists: Sequence[list[int]], pad: int, left: bool) -> tuple[Tensor, Tensor]:
    """(input ids, attention mask) [n, longest], padded on the left (for ``generate``) or on the right."""
    length = max(len(ids) for ids in id_lists)
    input_ids = torch.full((len(id_lists), length), pad, dtype=torch.long)
    attention = torch.zeros(len(id_lists), length, dtype=torch.long)
    for row, ids in enumerate(id_lists):
        span = slice(length - len(ids), length) if left else slice(0, len(ids))
        input_ids[row, span] = torch.tensor(ids)
        attention[row, span] = 1
    return input_ids, attention


def greedy_continuations(loaded: Any, id_lists: Sequence[list[int]], max_new_tokens: int, batch_size: int = 16) -> list[list[int]]:
    """Greedy continuations of many prompts, ``batch_size`` at a time, left-padded (what ``generate``
    expects of a decoder-only model); each stops at its first EOS."""
    tokenizer, model = loaded.tokenizer, loaded.model
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[list[int]] = []
    for first in range(0, len(id_lists), batch_size):
        input_ids, attention = padded(id_lists[first:first + batch_size], pad, left=True)
        length = input_ids.shape[1]
        with torch.no_grad():
            generated = model.generate(input_ids.to(loaded.device), attention_mask=attention.to(loaded.device),
                                       max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
        for row in generated[:, length:].tolist():
            if tokenizer.eos_token_id is not None and tokenizer.eos_token_id in row:
                row = row[:row.index(tokenizer.eos_token_id) + 1]
            out.append(row)
    return out


def count_selections(loaded: Any, prompts: Sequence[str], generated: bool = False, max_new_tokens: int = 32,
                     batch_size: int = 8, layers: list[MoeLayer] | None = None, progress: Any = None) -> Selections:
    """Expert-selection counts per prompt over the prompt's tokens (or, ``generated``, its greedy continuation's)."""
    model, tokenizer = loaded.model, loaded.tokenizer
    layers = layers or find_moe_layers(model)
    id_lists = [prompt_ids(tokenizer, prompt) for prompt in prompts]
    if generated:
        continuations = greedy_continuations(loaded, id_lists, max_new_tokens, batch_size)
        sequences = [ids + new for ids, new in zip(id_lists, continuations)]
        starts = [len(ids) for ids in id_lists]
        if progress is not None:
            progress.update(len(prompts))
    else:
        sequences = id_lists
        starts = [1 if ids and ids[0] == tokenizer.bos_token_id else 0 for ids in id_lists]
    n_experts = max(layer.n_experts for layer in layers)
    counts = torch.zeros(len(prompts), len(layers), n_experts, dtype=torch.int64)
    tokens = torch.zeros(len(prompts), dtype=torch.int64)
    modules = dict(model.named_modules())
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for first in range(0, len(sequences), batch_size):
        batch = sequences[first:first + batch_size]
        input_ids, attention = padded(batch, pad, left=False)
        length = input_ids.shape[1]
        counted = attention.bool()
        for row in range(len(batch)):
            counted[row, :starts[first + row]] = False
        chosen: dict[int, Tensor] = {}

        def recorder(position: int, store: dict[int, Tensor] = chosen, shape: tuple[int, int] = (len(batch), length)):
            def hook(_module, _args, output):
                store[position] = output[2].detach().reshape(*shape, -1)
            return hook

        handles = [modules[layer.router].register_forward_hook(recorder(i)) for i, layer in enumerate(layers)]
        try:
            with torch.no_grad():
                model(input_ids=input_ids.to(loaded.device), attention_mask=attention.to(loaded.device), use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        mask = counted.to(torch.int64)
        for position, layer in enumerate(layers):
            selected = torch.zeros(len(batch), length, n_experts, dtype=torch.int64)
            selected.scatter_(2, chosen[position].cpu().long(), 1)
            counts[first:first + len(batch), position] = (selected * mask[..., None]).sum(dim=1)
        tokens[first:first + len(batch)] = counted.sum(dim=1)
        if progress is not None:
            progress.update(len(batch))
    return Selections(counts, tokens, layers)
