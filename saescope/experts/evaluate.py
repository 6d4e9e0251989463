"""MoTE's table for any model: the behaviour rate with the distinctive experts off, with as many random
experts off (several draws, with their spread), and with the distinctive experts forced on; and what
each switch costs elsewhere.

- **Behaviour rate**: the fraction of held-out prompts whose greedy continuation the scorer flags.
- **KL**: mean over the tokens of neutral text of KL(unsteered ‖ steered) between next-token
  distributions, in nats; 0 means the switch changes nothing on that text.
- **Perplexity** of the neutral text under the steered model, beside the unsteered one.

Random experts are drawn uniformly from the routed experts that are not among the distinctive
ones, with the same count, and re-drawn when a draw would leave a layer with fewer experts than its
top-k. Forcing on keeps at most top-k experts per layer: the best-ranked ones.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saescope.errors import InvalidInput
from saescope.experts.profile import ExpertProfile
from saescope.experts.prompts import read_prompts
from saescope.experts.record import greedy_continuations, prompt_ids
from saescope.experts.scorers import Scorer
from saescope.experts.sites import MoeLayer, find_moe_layers
from saescope.experts.switch import Expert, ExpertSwitch


@dataclass
class Condition:
    """One row of the table."""

    name: str
    off: list[Expert] = field(default_factory=list)
    on: list[Expert] = field(default_factory=list)
    behaviour_rate: float = float("nan")
    kl: float | None = None
    perplexity: float | None = None
    draws: list[dict[str, Any]] = field(default_factory=list)
    """For random switch-offs: each draw's experts and figures; the row holds their mean."""
    examples: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "off": [list(e) for e in self.off], "on": [list(e) for e in self.on],
                "behaviour_rate": self.behaviour_rate, "kl": self.kl, "perplexity": self.perplexity,
                "draws": self.draws, "examples": self.examples}


def behaviour_rate(loaded: Any, prompts: Sequence[str], scorer: Scorer, switch: ExpertSwitch | None = None,
                   max_new_tokens: int = 32, batch_size: int = 16) -> tuple[float, list[str]]:
    """(fraction flagged, the continuations) of greedy continuations under ``switch``."""
    id_lists = [prompt_ids(loaded.tokenizer, prompt) for prompt in prompts]
    if switch is None or switch.empty:
        continuations = greedy_continuations(loaded, id_lists, max_new_tokens, batch_size)
    else:
        continuations = []
        for first in range(0, len(id_lists), batch_size):  # one generation per activation: the first forward is the prompt
            with switch.active():
                continuations += greedy_continuations(loaded, id_lists[first:first + batch_size], max_new_tokens, batch_size)
    texts = [loaded.tokenizer.decode(ids, skip_special_tokens=True) for ids in continuations]
    return sum(bool(scorer(text)) for text in texts) / len(texts), texts


def _log_probs(loaded: Any, texts: Sequence[str], switch: ExpertSwitch | None) -> list[torch.Tensor]:
    out = []
    for text in texts:
        ids = torch.tensor([prompt_ids(loaded.tokenizer, text)], device=loaded.device)
        with torch.no_grad():
            if switch is None or switch.empty:
                logits = loaded.model(input_ids=ids, use_cache=False).logits
            else:
                with switch.active():
                    logits = loaded.model(input_ids=ids, use_cache=False).logits
        out.append((torch.log_softmax(logits[0].float(), dim=-1), ids[0]))
    return out


def kl_and_perplexity(reference: list, steered: list) -> tuple[float, float]:
    """(mean KL(reference ‖ steered) per token, perplexity of the steered model) over the texts."""
    kls, losses = [], []
    for (ref, ids), (new, _ids) in zip(reference, steered):
        kls.append((ref.exp() * (ref - new)).sum(dim=-1)[:-1])
        losses.append(-new[:-1].gather(1, ids[1:, None])[:, 0])
    return float(torch.cat(kls).mean()), math.exp(float(torch.cat(losses).mean()))


def random_experts(layers: list[MoeLayer], n: int, exclude: Sequence[Expert], rng: random.Random) -> list[Expert]:
    """``n`` routed experts drawn uniformly outside ``exclude``, leaving every layer at least top-k experts."""
    pool = [(layer.layer, e) for layer in layers for e in range(layer.n_experts) if (layer.layer, e) not in set(exclude)]
    if n > len(pool):
        raise InvalidInput(f"cannot draw {n} random experts: only {len(pool)} are outside the distinctive ones")
    room = {layer.layer: layer.n_experts - layer.top_k for layer in layers}
    for _ in range(1000):
        draw = rng.sample(pool, n)
        per_layer: dict[int, int] = {}
        for layer, _expert in draw:
            per_layer[layer] = per_layer.get(layer, 0) + 1
        if all(count <= room[layer] for layer, count in per_layer.items()):
            return sorted(draw)
    raise InvalidInput(f"cannot draw {n} random experts without leaving a layer fewer experts than its top-k; lower --top-n")


def forceable(layers: list[MoeLayer], experts: Sequence[Expert]) -> list[Expert]:
    """The best-ranked experts, at most top-k per layer."""
    taken: dict[int, int] = {}
    top_k = {layer.layer: layer.top_k for layer in layers}
    kept = []
    for layer, expert in experts:
        if taken.get(layer, 0) < top_k[layer]:
            kept.append((layer, expert))
            taken[layer] = taken.get(layer, 0) + 1
    return kept


@dataclass
class SwitchingEvaluation:
    model: str
    top_n: int
    prompts: int
    conditions: list[Condition]
    neutral_texts: int = 0
    unsteered_perplexity: float | None = None
    random_spread: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": "saescope-expert-evaluation", "version": 1, "model": self.model, "top_n": self.top_n, "prompts": self.prompts,
                "neutral_texts": self.neutral_texts, "unsteered_perplexity": self.unsteered_perplexity,
                "random_spread": self.random_spread, "conditions": [c.to_dict() for c in self.conditions]}

    def save(self, path: str | Path) -> Path:
        import json

        from saescope.io.atomic import atomic_write_text

        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    def rate(self, name: str) -> float:
        return next(c.behaviour_rate for c in self.conditions if c.name == name)


def evaluate_switching(loaded: Any, profile: ExpertProfile, prompts: str | Path | Sequence[str], scorer: Scorer, top_n: int = 10,
                       random_draws: int = 5, neutral: str | Path | Sequence[str] | None = None, max_new_tokens: int = 32,
                       seed: int = 0, rank_by: str | None = None, text_field: str = "text", examples: int = 3,
                       progress: bool = False) -> SwitchingEvaluation:
    """The table: unsteered, top-N off, N random off (``random_draws`` draws), top-N forced on."""
    if top_n < 1:
        raise InvalidInput(f"top_n must be at least 1, got {top_n}")
    if random_draws < 1:
        raise InvalidInput(f"random_draws must be at least 1, got {random_draws}")
    held_out = read_prompts(prompts, text_field, where="prompts")
    neutral_texts = read_prompts(neutral, text_field, where="neutral") if neutral is not None else []
    layers = find_moe_layers(loaded.model)
    if [layer.layer for layer in layers] != profile.layers or [layer.n_experts for layer in layers] != profile.n_experts:
        raise InvalidInput(f"the profile was made on {profile.model} with MoE layers {profile.layers}; this model's are "
                           f"{[layer.layer for layer in layers]}: profile this model first")
    distinctive = profile.top(top_n, rank_by)
    rng = random.Random(seed)
    plan = [Condition("unsteered"), Condition(f"top {top_n} off", off=distinctive)]
    plan += [Condition(f"random {top_n} off #{i + 1}", off=random_experts(layers, top_n, distinctive, rng)) for i in range(random_draws)]
    plan.append(Condition(f"top {top_n} forced on", on=forceable(layers, distinctive)))
    reference = _log_probs(loaded, neutral_texts, None) if neutral_texts else []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(plan), desc="switching experts", unit="condition")
    for condition in plan:
        switch = ExpertSwitch(loaded.model, off=condition.off, on=condition.on)
        condition.behaviour_rate, texts = behaviour_rate(loaded, held_out, scorer, switch, max_new_tokens)
        condition.examples = [{"prompt": p, "continuation": t} for p, t in zip(held_out[:examples], texts[:examples])]
        if neutral_texts:
            condition.kl, condition.perplexity = kl_and_perplexity(reference, _log_probs(loaded, neutral_texts, switch))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    draws = [c for c in plan if c.name.startswith("random")]
    summary = Condition(f"random {top_n} off (mean of {len(draws)})", off=[])
    summary.behaviour_rate = float(np.mean([c.behaviour_rate for c in draws]))
    if neutral_texts:
        summary.kl = float(np.mean([c.kl for c in draws]))
        summary.perplexity = float(np.mean([c.perplexity for c in draws]))
    summary.draws = [c.to_dict() for c in draws]
    rates = [c.behaviour_rate for c in draws]
    conditions = [c for c in plan if not c.name.startswith("random")]
    conditions.insert(2, summary)
    unsteered_ppl = kl_and_perplexity(reference, reference)[1] if neutral_texts else None
    return SwitchingEvaluation(str(loaded.model_id), top_n, len(held_out), conditions, len(neutral_texts), unsteered_ppl,
                               {"min": float(min(rates)), "max": float(max(rates)), "std": float(np.std(rates))})


def format_evaluation(evaluation: SwitchingEvaluation) -> str:
    lines = [f"{'condition':<28} {'behaviour rate':>14} {'KL (nats)':>10} {'perplexity':>10}"]
    for c in evaluation.conditions:
        kl = f"{c.kl:.4f}" if c.kl is not None else "–"
        ppl = f"{c.perplexity:.2f}" if c.perplexity is not None else "–"
        rate = f"{c.behaviour_rate:.3f}"
        if c.draws:
            spread = evaluation.random_spread
            rate = f"{c.behaviour_rate:.3f} [{spread['min']:.2f}–{spread['max']:.2f}]"
        lines.append(f"{c.name:<28} {rate:>14} {kl:>10} {ppl:>10}")
    tail = f"{evaluation.prompts} held-out prompts, greedy continuations"
    if evaluation.neutral_texts:
        tail += f"; KL and perplexity on {evaluation.neutral_texts} neutral texts (unsteered perplexity {evaluation.unsteered_perplexity:.2f})"
    return "\n".join(lines + [tail])
