"""Experts as features: profile, switch and evaluate the routed experts of mixture-of-experts models
(MoTE, Dahlke et al. 2025), with no training.

- ``sites``: the MoE layers, routers and experts of a model, found by structure;
- ``capture``: one forward's routing (logits, choices, weights, routed and shared outputs) and any
  expert's own output;
- ``record`` / ``profile``: which experts each prompt set selects, and which are distinctive;
- ``routing`` / ``switch``: the router's rule re-run with experts switched off or forced on;
- ``evaluate``: the behaviour rate under each switch against random switches, and its cost.
"""

from saescope.experts.capture import LayerRouting, capture_routing, expert_output
from saescope.experts.evaluate import (
    SwitchingEvaluation,
    evaluate_switching,
    format_evaluation,
)
from saescope.experts.profile import ExpertProfile, format_profile, profile_experts
from saescope.experts.scorers import make_scorer
from saescope.experts.sites import MoeLayer, describe_moe, find_moe_layers
from saescope.experts.switch import ExpertSwitch, parse_experts, switch_experts

__all__ = [
    "ExpertProfile",
    "LayerRouting",
    "ExpertSwitch",
    "MoeLayer",
    "SwitchingEvaluation",
    "capture_routing",
    "describe_moe",
    "evaluate_switching",
    "expert_output",
    "find_moe_layers",
    "format_evaluation",
    "format_profile",
    "make_scorer",
    "parse_experts",
    "profile_experts",
    "switch_experts",
]
