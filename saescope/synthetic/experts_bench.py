"""``saescope bench experts``: expert profiling and switching scored against a planted answer.

Trains the planted MoE (``planted_moe``), profiles its experts on refused against answered prompts,
then runs MoTE's table on held-out prompts (half of them should be refused): the top-N experts off,
N random experts off, the top-N forced on. It reports whether the planted experts are the top-ranked
ones and how far each switch moves the refusal rate.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from saescope.experts.evaluate import evaluate_switching, format_evaluation
from saescope.experts.profile import format_profile, profile_experts
from saescope.experts.scorers import regex_scorer
from saescope.synthetic.planted_moe import (
    REFUSAL_PATTERN,
    PlantedMoe,
    PlantedMoeConfig,
    answer,
    train_planted_moe,
)


def neutral_texts(planted: PlantedMoe) -> list[str]:
    """Answered lines with their answers: text on which a switch should cost little."""
    return [f"{prompt} {answer(prompt)}" for prompt in planted.control_prompts[:40]]


def run_experts_benchmark(config: PlantedMoeConfig | None = None, random_draws: int = 5, progress: bool = False,
                          planted: PlantedMoe | None = None) -> dict[str, Any]:
    """Train (unless ``planted`` is given), profile, evaluate; the figures as a dict."""
    start = time.perf_counter()
    planted = planted or train_planted_moe(config, progress=progress)
    trained = time.perf_counter()
    loaded = planted.loaded()
    profile = profile_experts(loaded, planted.behaviour_prompts, planted.control_prompts)
    truth = set(planted.planted_experts)
    top = profile.top(len(truth))
    evaluation = evaluate_switching(loaded, profile, planted.held_out_prompts, regex_scorer(REFUSAL_PATTERN), top_n=len(truth),
                                    random_draws=random_draws, neutral=neutral_texts(planted), max_new_tokens=8,
                                    seed=planted.config.seed, progress=progress)
    return {
        "config": asdict(planted.config), "planted": sorted(truth), "top_ranked": top,
        "planted_recovered": len(truth & set(top)) / len(truth), "training": planted.history,
        "train_seconds": trained - start, "total_seconds": time.perf_counter() - start,
        "profile": profile, "evaluation": evaluation,
    }


def format_experts_bench(result: dict[str, Any]) -> str:
    profile, evaluation = result["profile"], result["evaluation"]
    lines = [f"planted experts (layer, expert): {result['planted']}",
             (f"top-{len(result['planted'])} by profile: {result['top_ranked']}  "
              f"(recovered {result['planted_recovered']:.0%})"), "", format_profile(profile, top=len(result["planted"]) + 4), "",
             format_evaluation(evaluation), "",
             f"trained in {result['train_seconds']:.0f} s; whole benchmark {result['total_seconds']:.0f} s"]
    return "\n".join(lines)
