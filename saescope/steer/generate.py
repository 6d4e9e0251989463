"""Steered against unsteered generation, with the same seed, and the two steering measures.

- **Feature rate**: the fraction of generated tokens on which the steered feature fires when the
  *unsteered* model reads the steered text (did the text come to carry the feature?).
- **Perplexity** of the generated tokens under the unsteered model (a fluency proxy: steering too hard
  produces text the model itself finds unlikely).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from saescope.steer.interventions import Intervention, Steering


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    feature_rate: float | None
    perplexity: float


def generate(loaded: Any, prompt: str, max_new_tokens: int = 40, seed: int = 0, temperature: float = 0.7,
             top_p: float = 0.9, steering: Steering | None = None) -> list[int]:
    """Token ids of a continuation of ``prompt``; sampling is seeded, so the same seed gives the same text."""
    tokenizer, model = loaded.tokenizer, loaded.model
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    input_ids = torch.tensor([ids], device=loaded.device)
    torch.manual_seed(seed)
    options = {"max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
               "attention_mask": torch.ones_like(input_ids)}
    if temperature > 0:
        options.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        options.update(do_sample=False)
    with torch.no_grad():
        if steering is None:
            out = model.generate(input_ids, **options)
        else:
            with steering.active():
                out = model.generate(input_ids, **options)
    return out[0, len(ids):].tolist()


def measure(loaded: Any, prompt: str, new_ids: list[int], intervention: Intervention | None) -> tuple[float | None, float]:
    """(feature rate, perplexity) of ``new_ids`` after ``prompt`` under the unsteered model."""
    from saescope.lm.capture import capture_dict
    from saescope.lm.hookpoints import resolve_hookpoints

    tokenizer = loaded.tokenizer
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id] + ids
    if not new_ids:
        return None, float("nan")
    full = torch.tensor([ids + new_ids], device=loaded.device)
    with torch.no_grad():
        logits = loaded.model(input_ids=full, use_cache=False).logits[0].float()
        start = len(ids)
        losses = torch.nn.functional.cross_entropy(logits[start - 1 : -1], full[0, start:], reduction="none")
        perplexity = math.exp(float(losses.mean()))
        rate = None
        if intervention is not None:
            point = resolve_hookpoints(loaded.model, intervention.hookpoint)[0]
            hidden = capture_dict(loaded.model, [point], full)[point.name][0]
            acts = intervention.sae.encode_code(hidden.float()).feature(intervention.feature)[start:]
            rate = float((acts > 0).float().mean())
    return rate, perplexity


def steer_and_compare(loaded: Any, prompt: str, interventions: list[Intervention], max_new_tokens: int = 40, seed: int = 0,
                      temperature: float = 0.7, top_p: float = 0.9) -> tuple[Generation, Generation]:
    """(unsteered, steered) continuations of ``prompt`` from the same seed, each with its measures."""
    tokenizer = loaded.tokenizer
    steering = Steering(loaded.model, interventions)
    results = []
    for active in (None, steering):
        new_ids = generate(loaded, prompt, max_new_tokens, seed, temperature, top_p, steering=active)
        rate, perplexity = measure(loaded, prompt, new_ids, interventions[0])
        results.append(Generation(tokenizer.decode(new_ids, skip_special_tokens=True), new_ids, rate, perplexity))
    return results[0], results[1]
