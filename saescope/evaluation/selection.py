"""Choosing among a suite's SAEs, per hookpoint: by minimum description length at a distortion bound, or by another column.

Choosing by sparsity alone rewards dictionaries that are too wide and too sparse (memorised examples,
split features). The MDL criterion (Ayonrinde, Pearce & Sharkey 2024) keeps the SAEs whose quantised
reconstruction meets FVU ≤ ε and picks the one whose code is shortest in bits per token. The other
criteria (``l0``: the sparsest, ``fvu``, ``delta_lm_loss``) keep the SAEs with FVU ≤ ε and rank by
that column, so the MDL choice can be compared with what they would have picked.

Works on ``saescope eval`` rows (each holds ``mdl``, the description length at every quantisation
tried), so any ε is answered without reading activations again.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from saescope.errors import InvalidInput
from saescope.evaluation.description_length import DescriptionLength

CRITERIA = {
    "mdl": "description length in bits per token (quantised reconstruction within the bound)",
    "l0": "mean active latents per token (the sparsest; equal L0 goes to the lower FVU)",
    "fvu": "fraction of variance unexplained",
    "delta_lm_loss": "increase in the language model's loss with the SAE spliced in",
}
DEFAULT_MAX_FVU = 0.1


@dataclass
class Candidate:
    """One SAE as the selection saw it: its figures, its rank among the eligible, or why it was out."""

    path: str
    hookpoint: str
    architecture: str | None
    width: int | None
    l0: float | None
    fvu: float | None
    delta_lm_loss: float | None
    bits: float | None
    bins: int | None
    quantised_fvu: float | None
    rank: int | None = None
    reason: str | None = None
    """Why it was out (None when it is ranked)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def select_saes(rows: list[dict[str, Any]], by: str = "mdl", max_fvu: float = DEFAULT_MAX_FVU) -> dict[str, list[Candidate]]:
    """Per hookpoint, the eligible SAEs ranked by ``by`` (rank 1 is the choice), then the others with the reason they were out."""
    if by not in CRITERIA:
        raise InvalidInput(f"--by {by}: choose one of {', '.join(CRITERIA)}")
    if not (isinstance(max_fvu, (int, float)) and max_fvu > 0 and math.isfinite(max_fvu)):
        raise InvalidInput(f"--max-fvu {max_fvu}: give a positive bound on the fraction of variance unexplained, such as 0.1")
    groups: dict[str, list[Candidate]] = {}
    for row in rows:
        if row.get("layer_of"):  # one layer of a multi-layer SAE: the SAE itself is a row of its own
            continue
        candidate = _candidate(row, by, float(max_fvu))
        groups.setdefault(candidate.hookpoint, []).append(candidate)
    for candidates in groups.values():
        eligible = sorted((c for c in candidates if c.reason is None), key=lambda c: (_key(c, by), _tiebreak(c), c.path))
        for rank, candidate in enumerate(eligible, start=1):
            candidate.rank = rank
        out = sorted((c for c in candidates if c.reason is not None), key=lambda c: c.path)
        candidates[:] = eligible + out
    return groups


def chosen(groups: dict[str, list[Candidate]]) -> dict[str, Candidate]:
    """The rank-1 SAE of each hookpoint that has one."""
    return {hookpoint: c[0] for hookpoint, c in groups.items() if c and c[0].rank == 1}


def _candidate(row: dict[str, Any], by: str, max_fvu: float) -> Candidate:
    record = row.get("mdl")
    dl = DescriptionLength.from_dict(record).at(max_fvu) if record else None
    candidate = Candidate(
        path=str(row["path"]), hookpoint=str(row.get("hookpoint") or "-"), architecture=row.get("architecture"),
        width=row.get("width"), l0=row.get("l0"), fvu=row.get("fvu"), delta_lm_loss=row.get("delta_lm_loss"),
        bits=dl.bits if dl else None, bins=dl.bins if dl else None, quantised_fvu=dl.quantised_fvu if dl else None,
    )
    if by == "mdl":
        if dl is None:
            candidate.reason = "no description-length table (measured by an older saescope, or without description length); rerun saescope eval --recompute"
        else:
            candidate.reason = dl.reason()
    elif not isinstance(candidate.fvu, (int, float)):
        candidate.reason = "no FVU measured"
    elif candidate.fvu > max_fvu:
        candidate.reason = f"FVU {candidate.fvu:.4f} > {max_fvu:g}"
    elif not isinstance(getattr(candidate, by), (int, float)):
        candidate.reason = f"no {by} measured"
    return candidate


def _key(candidate: Candidate, by: str) -> float:
    if by == "l0":  # L0 to one decimal: 7.998 and 8.000 are the same sparsity
        return round(float(candidate.l0), 1)  # type: ignore[arg-type]
    return float(candidate.bits if by == "mdl" else getattr(candidate, by))


def _tiebreak(candidate: Candidate) -> float:
    """Equal scores (TopK SAEs of one k share their L0) go to the better reconstruction."""
    return float(candidate.fvu) if isinstance(candidate.fvu, (int, float)) else float("inf")


def format_selection(groups: dict[str, list[Candidate]], by: str, max_fvu: float) -> str:
    """A terminal table per hookpoint: the ranked SAEs, then each one that was out and why."""
    lines = [f"selection by {by} ({CRITERIA[by]}) among SAEs with {'quantised ' if by == 'mdl' else ''}FVU ≤ {max_fvu:g}"]
    for hookpoint, candidates in groups.items():
        name_width = max([len("SAE")] + [len(c.path) for c in candidates])
        header = (f"{'rank':>4}  {'SAE':<{name_width}} {'DL bits':>8} {'bins':>5} {'FVU q':>7} {'FVU':>7} "
                  f"{'L0':>6} {'width':>6} {'ΔLM':>7}")
        lines += ["", hookpoint, header, "-" * len(header)]
        for c in candidates:
            rank = str(c.rank) if c.rank is not None else "out"
            lines.append(
                f"{rank:>4}  {c.path:<{name_width}} {_fmt(c.bits, '{:.1f}'):>8} {_fmt(c.bins, '{}'):>5} "
                f"{_fmt(c.quantised_fvu, '{:.4f}'):>7} {_fmt(c.fvu, '{:.4f}'):>7} {_fmt(c.l0, '{:.1f}'):>6} "
                f"{_fmt(c.width, '{}'):>6} {_fmt(c.delta_lm_loss, '{:.4f}'):>7}" + (f"  {c.reason}" if c.reason else "")
            )
        if not candidates or candidates[0].rank is None:
            lines.append(f"no SAE at {hookpoint} meets FVU ≤ {max_fvu:g}; loosen --max-fvu or train wider/denser SAEs")
    return "\n".join(lines)


def _fmt(value: Any, fmt: str) -> str:
    return fmt.format(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"
