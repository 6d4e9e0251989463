"""Which experts are distinctive for a behaviour: selection rates on a behaviour and a control prompt
set, their difference, risk ratio and normalised PMI, with bootstrap intervals over prompts.

For expert e at layer l, with c_B and c_C the tokens of each set that selected it and n_B, n_C the
tokens counted:

- rate on each set: c/n (pooled over tokens);
- **difference** r_B − r_C, the ranking MoTE's "distinctive experts" reads most naturally;
- **risk ratio** ((c_B + ½)/(n_B + 1)) / ((c_C + ½)/(n_C + 1)), the ½ keeping experts no token of one
  set chose finite;
- **normalised PMI** between "this token selected e" and "this token is from the behaviour set" over
  the pooled tokens: log(p(e, B)/(p(e)p(B))) / −log p(e, B), from −1 (never together) through 0
  (independent) to 1 (always together).

Intervals resample *prompts* with replacement within each set (tokens of one prompt are not
independent), ``draws`` times, and take the central 95%. A difference whose interval excludes 0 is
one this prompt sample supports; rankings of experts inside each other's intervals are not.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saescope.errors import InvalidInput
from saescope.experts.prompts import read_prompts
from saescope.experts.record import Selections, count_selections

STATISTICS = ("diff", "risk_ratio", "npmi")
FORMAT = "saescope-expert-profile"


def selection_statistics(c_b: np.ndarray, n_b: np.ndarray, c_c: np.ndarray, n_c: np.ndarray) -> dict[str, np.ndarray]:
    """The three statistics (and both rates) for counts ``c_*`` against token totals ``n_*`` (broadcast)."""
    c_b, c_c = np.asarray(c_b, dtype=np.float64), np.asarray(c_c, dtype=np.float64)
    n_b, n_c = np.asarray(n_b, dtype=np.float64), np.asarray(n_c, dtype=np.float64)
    rate_b, rate_c = c_b / np.maximum(n_b, 1), c_c / np.maximum(n_c, 1)
    risk_ratio = ((c_b + 0.5) / (n_b + 1)) / ((c_c + 0.5) / (n_c + 1))
    total = n_b + n_c
    p_joint, p_expert, p_set = c_b / total, (c_b + c_c) / total, n_b / total
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(p_joint / (p_expert * p_set))
        npmi = pmi / -np.log(p_joint)
    npmi = np.where(p_joint >= 1.0, 1.0, npmi)
    npmi = np.where(c_b == 0, np.where(c_c > 0, -1.0, 0.0), npmi)
    return {"rate_behaviour": rate_b, "rate_control": rate_c, "diff": rate_b - rate_c, "risk_ratio": risk_ratio, "npmi": npmi}


def bootstrap_intervals(behaviour: Selections, control: Selections, draws: int = 1000, seed: int = 0,
                        level: float = 0.95, chunk: int = 100) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(low, high) of each statistic over prompt resamples, shaped like the counts' [layers, experts]."""
    generator = torch.Generator().manual_seed(seed)
    shape = behaviour.counts.shape[1:]
    samples: dict[str, list[np.ndarray]] = {name: [] for name in STATISTICS}

    def resampled(selections: Selections, n_draws: int) -> tuple[np.ndarray, np.ndarray]:
        n = selections.counts.shape[0]
        picks = torch.randint(n, (n_draws, n), generator=generator)
        weights = torch.zeros(n_draws, n, dtype=torch.float64).scatter_add_(1, picks, torch.ones(n_draws, n, dtype=torch.float64))
        counts = weights @ selections.counts.reshape(n, -1).double()
        return counts.numpy(), (weights @ selections.tokens.double()).numpy()[:, None]

    for start in range(0, draws, chunk):
        n_draws = min(chunk, draws - start)
        c_b, n_b = resampled(behaviour, n_draws)
        c_c, n_c = resampled(control, n_draws)
        stats = selection_statistics(c_b, n_b, c_c, n_c)
        for name in STATISTICS:
            samples[name].append(stats[name])
    tail = (1 - level) / 2
    intervals = {}
    for name in STATISTICS:
        values = np.concatenate(samples[name])
        low, high = np.nanquantile(values, [tail, 1 - tail], axis=0)
        intervals[name] = (low.reshape(shape), high.reshape(shape))
    return intervals


@dataclass
class ExpertProfile:
    """The profile of every routed expert on one behaviour/control pair; ``ranked()`` is the table."""

    model: str
    layers: list[int]
    n_experts: list[int]
    top_k: list[int]
    behaviour: dict[str, Any]
    control: dict[str, Any]
    tokens: str
    statistics: dict[str, np.ndarray]
    intervals: dict[str, tuple[np.ndarray, np.ndarray]]
    bootstrap: dict[str, Any] = field(default_factory=dict)
    rank_by: str = "diff"

    def ranked(self, by: str | None = None) -> list[dict[str, Any]]:
        """One row per (layer, expert), most distinctive first."""
        by = by or self.rank_by
        if by not in STATISTICS:
            raise InvalidInput(f"rank_by must be one of {STATISTICS}, got {by!r}")
        rows = []
        for position, layer in enumerate(self.layers):
            for expert in range(self.n_experts[position]):
                row: dict[str, Any] = {"layer": layer, "expert": expert}
                for name, values in self.statistics.items():
                    row[name] = float(values[position, expert])
                for name, (low, high) in self.intervals.items():
                    row[f"{name}_low"], row[f"{name}_high"] = float(low[position, expert]), float(high[position, expert])
                rows.append(row)
        rows.sort(key=lambda row: (-row[by], row["layer"], row["expert"]))
        for rank, row in enumerate(rows, 1):
            row["rank"] = rank
        return rows

    def top(self, n: int, by: str | None = None) -> list[tuple[int, int]]:
        return [(row["layer"], row["expert"]) for row in self.ranked(by)[:n]]

    def matrix(self, name: str) -> np.ndarray:
        """[layers, max experts] of one statistic (NaN beyond a layer's experts)."""
        return self.statistics[name]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": 1, "model": self.model, "tokens": self.tokens, "rank_by": self.rank_by,
            "layers": self.layers, "n_experts": self.n_experts, "top_k": self.top_k,
            "behaviour": self.behaviour, "control": self.control, "bootstrap": self.bootstrap,
            "statistics": {name: values.tolist() for name, values in self.statistics.items()},
            "intervals": {name: [low.tolist(), high.tolist()] for name, (low, high) in self.intervals.items()},
            "experts": self.ranked(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "profile") -> ExpertProfile:
        if data.get("format") != FORMAT:
            raise InvalidInput(f"{where}: not an expert profile (no format {FORMAT!r}); make one with saescope experts profile")
        return cls(
            model=data["model"], layers=list(data["layers"]), n_experts=list(data["n_experts"]), top_k=list(data["top_k"]),
            behaviour=data["behaviour"], control=data["control"], tokens=data["tokens"],
            statistics={name: np.asarray(values, dtype=np.float64) for name, values in data["statistics"].items()},
            intervals={name: (np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64))
                       for name, (low, high) in data["intervals"].items()},
            bootstrap=data.get("bootstrap", {}), rank_by=data.get("rank_by", "diff"))

    def save(self, path: str | Path) -> Path:
        from saescope.io.atomic import atomic_write_text

        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> ExpertProfile:
        path = Path(path)
        if path.is_dir():
            path = path / "experts.json"
        if not path.is_file():
            raise InvalidInput(f"{path}: no expert profile here; make one with saescope experts profile")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise InvalidInput(f"{path}: not valid JSON ({error.msg})") from None
        return cls.from_dict(data, where=str(path))


def _describe_set(source: str | Path | Sequence[str], selections: Selections) -> dict[str, Any]:
    return {"source": str(source) if isinstance(source, (str, Path)) else "list", "prompts": int(selections.counts.shape[0]),
            "tokens": int(selections.tokens.sum())}


def profile_experts(loaded: Any, behaviour: str | Path | Sequence[str], control: str | Path | Sequence[str],
                    generated: bool = False, max_new_tokens: int = 32, draws: int = 1000, seed: int = 0,
                    rank_by: str = "diff", text_field: str = "text", batch_size: int = 8, progress: bool = False) -> ExpertProfile:
    """Profile every routed expert of ``loaded`` (a ``LoadedModel``) on two prompt sets.

    >>> profile = profile_experts(load_model("allenai/OLMoE-1B-7B-0125-Instruct"),   # doctest: +SKIP
    ...                           "refused.txt", "answered.txt")
    >>> profile.top(10)                                                                # doctest: +SKIP
    """
    if rank_by not in STATISTICS:
        raise InvalidInput(f"rank_by must be one of {STATISTICS}, got {rank_by!r}")
    if draws < 1:
        raise InvalidInput(f"draws must be at least 1, got {draws}")
    behaviour_prompts = read_prompts(behaviour, text_field, where="behaviour")
    control_prompts = read_prompts(control, text_field, where="control")
    from saescope.experts.sites import find_moe_layers

    layers = find_moe_layers(loaded.model)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        steps = (len(behaviour_prompts) + len(control_prompts)) * (2 if generated else 1)
        bar = tqdm(total=steps, desc="generating and routing" if generated else "routing prompts", unit="step" if generated else "prompt")
    try:
        chosen_b = count_selections(loaded, behaviour_prompts, generated, max_new_tokens, batch_size, layers, bar)
        chosen_c = count_selections(loaded, control_prompts, generated, max_new_tokens, batch_size, layers, bar)
    finally:
        if bar is not None:
            bar.close()
    for name, chosen in (("behaviour", chosen_b), ("control", chosen_c)):
        if int(chosen.tokens.sum()) == 0:
            raise InvalidInput(f"{name}: no tokens to count (prompts of BOS only, or nothing generated)")
    n_b, n_c = chosen_b.tokens.sum().item(), chosen_c.tokens.sum().item()
    statistics = selection_statistics(chosen_b.counts.sum(0).numpy(), n_b, chosen_c.counts.sum(0).numpy(), n_c)
    intervals = bootstrap_intervals(chosen_b, chosen_c, draws=draws, seed=seed)
    return ExpertProfile(
        model=str(loaded.model_id), layers=[layer.layer for layer in layers], n_experts=[layer.n_experts for layer in layers],
        top_k=[layer.top_k for layer in layers], behaviour=_describe_set(behaviour, chosen_b), control=_describe_set(control, chosen_c),
        tokens="generated" if generated else "prompt", statistics=statistics, intervals=intervals,
        bootstrap={"draws": draws, "seed": seed, "level": 0.95, "unit": "prompt"}, rank_by=rank_by)


def format_profile(profile: ExpertProfile, top: int = 20, by: str | None = None) -> str:
    """The ranked table's first ``top`` rows, with the intervals."""
    rows = profile.ranked(by)[:top]
    lines = [f"{'rank':>4} {'layer':>5} {'expert':>6} {'rate B':>7} {'rate C':>7} {'diff [95% CI]':>22} {'risk ratio':>10} {'NPMI':>6}"]
    for row in rows:
        interval = f"[{row['diff_low']:+.3f}, {row['diff_high']:+.3f}]"
        lines.append(f"{row['rank']:>4} {row['layer']:>5} {row['expert']:>6} {row['rate_behaviour']:>7.3f} {row['rate_control']:>7.3f} "
                     f"{row['diff']:>+7.3f} {interval:>14} {row['risk_ratio']:>10.2f} {row['npmi']:>+6.2f}")
    lines.append(f"{profile.behaviour['prompts']} behaviour prompts ({profile.behaviour['tokens']} tokens) against "
                 f"{profile.control['prompts']} control prompts ({profile.control['tokens']} tokens), {profile.tokens} tokens counted; "
                 f"intervals from {profile.bootstrap.get('draws')} resamples of prompts")
    return "\n".join(lines)
