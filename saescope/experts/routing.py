"""The routers' selection rules, re-run with experts switched off or forced on (MoTE's intervention).

A router maps logits to ``(top_k_weights, top_k_index)`` by one of a few rules. To switch experts we
take the router's own logits and re-run its rule with two masks:

- **off**: the expert's logit is −∞ before the rule (Dahlke et al. 2025): it cannot be chosen and the
  next-best expert takes its slot; softmax weights renormalise over the others as the paper's −∞ does.
- **on**: the expert is chosen in every token whatever its score, and its logit is raised to the
  token's highest (allowed) logit, so it is weighted like the router's own first choice. A forced
  expert with its original, often tiny, weight would be switched on in name only.

Which rule a router uses is not read from its class name: on the first call the candidate rules
(those whose attributes the router has) are run on its logits with empty masks and the one that
reproduces the router's own output (same experts, same weights) is kept. A router no rule reproduces
is refused with its class name, rather than rerouted by a guess.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from saescope.errors import InvalidInput

Rule = Callable[[nn.Module, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
"""(router, logits [n, E] float32, off [E] bool, on [E] bool) → (weights [n, k], indices [n, k])."""


def _raise_forced(logits: Tensor, off: Tensor, on: Tensor) -> Tensor:
    """Logits with switched-off experts at −∞ and forced ones at the token's highest allowed logit."""
    logits = logits.masked_fill(off, float("-inf"))
    if bool(on.any()):
        top = logits.max(dim=-1, keepdim=True).values
        logits = torch.where(on, top.expand_as(logits), logits)
    return logits


def _choose(scores: Tensor, k: int, off: Tensor, on: Tensor) -> Tensor:
    """Top-k of ``scores`` with forced experts first and switched-off ones never."""
    scores = scores.masked_fill(off, float("-inf")).masked_fill(on, float("inf"))
    return torch.topk(scores, k, dim=-1).indices


def softmax_topk(renormalise: bool) -> Rule:
    """Mixtral, Qwen2/3-MoE, OLMoE, Jamba, MiniMax, HunYuan: softmax over all experts, top-k, optionally renormalised."""

    def rule(router: nn.Module, logits: Tensor, off: Tensor, on: Tensor) -> tuple[Tensor, Tensor]:
        probs = torch.softmax(_raise_forced(logits, off, on), dim=-1)
        indices = _choose(probs, router.top_k, off, on)
        weights = probs.gather(1, indices)
        if renormalise:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights, indices

    return rule


def topk_softmax(router: nn.Module, logits: Tensor, off: Tensor, on: Tensor) -> tuple[Tensor, Tensor]:
    """GPT-OSS, Granite-MoE, JetMoE: top-k of the logits, softmax over the chosen ones."""
    raised = _raise_forced(logits, off, on)
    indices = _choose(raised, router.top_k, off, on)
    return torch.softmax(raised.gather(1, indices), dim=-1), indices


def _group_mask(group_scores: Tensor, router: nn.Module, n_experts: int, forced_groups: Tensor) -> Tensor:
    chosen = torch.topk(group_scores.masked_fill(forced_groups, float("inf")), k=router.topk_group, dim=-1).indices
    mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, chosen, True) | forced_groups
    return mask.unsqueeze(-1).expand(-1, router.num_group, n_experts // router.num_group).reshape(-1, n_experts)


def softmax_scaled(router: nn.Module, logits: Tensor, off: Tensor, on: Tensor) -> tuple[Tensor, Tensor]:
    """DeepSeek-V2: softmax, greedy or group-limited top-k, weights times ``routed_scaling_factor``."""
    n, n_experts = logits.shape
    scores = torch.softmax(_raise_forced(logits, off, on), dim=-1)
    choice = scores
    if router.topk_method == "group_limited_greedy":
        groups = scores.masked_fill(off, 0.0).view(n, router.num_group, -1).max(dim=-1).values
        forced = on.view(router.num_group, -1).any(dim=-1).expand(n, -1)
        choice = scores.masked_fill(~_group_mask(groups, router, n_experts, forced), 0.0)
    indices = _choose(choice, router.top_k, off, on)
    return scores.gather(1, indices) * router.routed_scaling_factor, indices


def sigmoid_grouped(router: nn.Module, logits: Tensor, off: Tensor, on: Tensor) -> tuple[Tensor, Tensor]:
    """DeepSeek-V3, GLM-4-MoE: sigmoid scores plus the load-balancing bias, the best groups by their
    top-2 sum, top-k inside them; weights are the unbiased scores, normalised, times the scaling factor."""
    n, n_experts = logits.shape
    scores = torch.sigmoid(_raise_forced(logits, off, on))
    choice = scores + router.e_score_correction_bias
    groups = choice.masked_fill(off, float("-inf")).view(n, router.num_group, -1).topk(2, dim=-1).values.sum(dim=-1)
    forced = on.view(router.num_group, -1).any(dim=-1).expand(n, -1)
    choice = choice.masked_fill(~_group_mask(groups, router, n_experts, forced), float("-inf"))
    indices = _choose(choice, router.top_k, off, on)
    weights = scores.gather(1, indices)
    if router.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return weights * router.routed_scaling_factor, indices


def candidate_rules(router: nn.Module) -> list[tuple[str, Rule]]:
    """The rules a router could follow, judged by the attributes it has."""
    if hasattr(router, "e_score_correction_bias") and hasattr(router, "num_group"):
        return [("sigmoid_grouped", sigmoid_grouped)]
    if hasattr(router, "topk_method"):
        return [("softmax_scaled", softmax_scaled)]
    rules: list[tuple[str, Rule]] = []
    norm = getattr(router, "norm_topk_prob", None)
    if norm is None:
        rules += [("softmax_topk_renormalised", softmax_topk(True)), ("softmax_topk", softmax_topk(False))]
    else:
        rules.append(("softmax_topk_renormalised" if norm else "softmax_topk", softmax_topk(bool(norm))))
    rules.append(("topk_softmax", topk_softmax))
    return rules


def _same_choice(weights: Tensor, indices: Tensor, ref_weights: Tensor, ref_indices: Tensor) -> bool:
    if indices.shape != ref_indices.shape:
        return False
    order, ref_order = indices.sort(dim=-1), ref_indices.sort(dim=-1)
    if not torch.equal(order.values, ref_order.values.to(order.values.dtype)):
        return False
    mine = weights.gather(1, order.indices).float()
    theirs = ref_weights.float().gather(1, ref_order.indices)
    return bool(torch.allclose(mine, theirs, rtol=1e-3, atol=1e-5))


@dataclass
class Rerouter:
    """The rule one router follows, found on its first call by reproducing its output."""

    name: str
    rule: Rule

    @classmethod
    def detect(cls, router: nn.Module, logits: Tensor, weights: Tensor, indices: Tensor, where: str) -> Rerouter:
        n_experts = logits.shape[-1]
        none = torch.zeros(n_experts, dtype=torch.bool, device=logits.device)
        tried = []
        for name, rule in candidate_rules(router):
            tried.append(name)
            try:
                mine = rule(router, logits.float(), none, none)
            except (AttributeError, RuntimeError):
                continue
            if _same_choice(*mine, weights, indices):
                return cls(name, rule)
        raise InvalidInput(f"{where}: the router {type(router).__name__} follows none of the selection rules saescope can re-run "
                           f"({', '.join(tried)} tried; none reproduced its choice of experts), so experts cannot be switched "
                           "in this model; profiling still works")

    def __call__(self, router: nn.Module, logits: Tensor, off: Tensor, on: Tensor, like: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        weights, indices = self.rule(router, logits.float(), off, on)
        return weights.to(like[0].dtype), indices.to(like[1].dtype)
