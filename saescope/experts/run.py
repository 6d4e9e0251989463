"""The three expert workflows as the CLI runs them: profile into a folder, steer side by side, evaluate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saescope.errors import InvalidInput
from saescope.experts.evaluate import SwitchingEvaluation, evaluate_switching
from saescope.experts.profile import ExpertProfile, profile_experts
from saescope.experts.scorers import Scorer
from saescope.experts.switch import Expert, ExpertSwitch


def write_profile(profile: ExpertProfile, out: str | Path, top: int = 10) -> dict[str, Path]:
    """``experts.json`` and ``experts.png`` in ``out``."""
    from saescope.experts.heatmap import plot_expert_heatmap

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return {"profile": profile.save(out / "experts.json"), "heatmap": plot_expert_heatmap(profile, out / "experts.png", top=top)}


def run_profile(loaded: Any, behaviour: str | Path | Sequence[str], control: str | Path | Sequence[str], out: str | Path,
                top: int = 10, **options: Any) -> tuple[ExpertProfile, dict[str, Path]]:
    """Profile and write the folder; ``options`` go to ``profile_experts``."""
    profile = profile_experts(loaded, behaviour, control, **options)
    return profile, write_profile(profile, out, top=top)


@dataclass
class SideBySide:
    prompt: str
    unsteered: str
    steered: str
    off: list[Expert]
    on: list[Expert]


def steer_side_by_side(loaded: Any, prompts: Sequence[str], off: Sequence[Expert] = (), on: Sequence[Expert] = (),
                       positions: str = "all", max_new_tokens: int = 40, seed: int = 0, temperature: float = 0.7,
                       top_p: float = 0.9) -> list[SideBySide]:
    """Each prompt's continuation without and with the switch, from the same seed."""
    from saescope.steer.generate import generate

    if not off and not on:
        raise InvalidInput("nothing to switch: give --off and/or --on (LAYER:EXPERT), or --profile with --top-n")
    switch = ExpertSwitch(loaded.model, off, on, positions)
    results = []
    for prompt in prompts:
        texts = []
        for active in (None, switch):
            ids = generate(loaded, prompt, max_new_tokens, seed, temperature, top_p, steering=active)
            texts.append(loaded.tokenizer.decode(ids, skip_special_tokens=True))
        results.append(SideBySide(prompt, texts[0], texts[1], list(off), list(on)))
    return results


def run_evaluation(loaded: Any, profile: ExpertProfile | str | Path, prompts: str | Path | Sequence[str], scorer: Scorer,
                   out: str | Path | None = None, **options: Any) -> SwitchingEvaluation:
    """Evaluate and, with ``out``, write ``evaluation.json`` there."""
    if not isinstance(profile, ExpertProfile):
        profile = ExpertProfile.load(profile)
    evaluation = evaluate_switching(loaded, profile, prompts, scorer, **options)
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        evaluation.save(Path(out) / "evaluation.json")
    return evaluation
