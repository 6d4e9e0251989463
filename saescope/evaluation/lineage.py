"""Feature lineage between two SAEs at adjacent layers: which feature below continues which feature above.

Two kinds of evidence, both reported for every link:

- **decoder cosine**: cos(d_i, d_j) between the unit decoder directions of feature i (the parent, at
  the lower layer) and feature j (the child, one layer up). The residual stream carries a direction
  forward unless a layer writes over it, so a continued feature keeps its direction.
- **co-activation** on the same tokens: the Jaccard index |fires_i ∧ fires_j| / |fires_i ∨ fires_j| of
  the two features' firing sets over the tokens both SAEs read.

Each child (upper feature) gets a parent by each kind: the lower feature of highest decoder cosine,
and the lower feature of highest Jaccard index over all lower features. A link is *strong* when its
cosine reaches ``cosine_threshold`` or its Jaccard index reaches ``jaccard_threshold``. Chance is
measured, not assumed: the cosine matching against the lower dictionary turned by a random rotation
(its geometry kept, its alignment with the upper one destroyed), and the co-activation matching with
the lower SAE's firings shuffled across tokens, give the share of children that would find a clear
parent by accident.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from saescope.errors import InvalidInput

COSINE_THRESHOLD = 0.6
"""Decoder cosine from which a parent is 'clear' (random unit vectors in d_in = 576 rarely exceed 0.2)."""
JACCARD_THRESHOLD = 0.3
"""Co-activation (Jaccard) from which a link is strong even when the directions differ."""
LINKS_PER_CHILD = 3
CHUNK = 1024


@dataclass
class PairLineage:
    """Links from the features of ``lower`` (layer L) to those of ``upper`` (the next layer present)."""

    lower: str
    upper: str
    parent: list[int]
    """Per upper feature: the lower feature of highest decoder cosine."""
    parent_cosine: list[float]
    coactive_parent: list[int | None] = field(default_factory=list)
    """Per upper feature: the lower feature of highest Jaccard index on shared tokens (None without activations)."""
    coactive_jaccard: list[float | None] = field(default_factory=list)
    links: list[list[float]] = field(default_factory=list)
    """Strong links [child, parent, cosine, jaccard] (jaccard −1 when not measured): the cosine candidates
    (up to LINKS_PER_CHILD) that reach the cosine threshold, and the co-activation parent if it reaches its threshold."""
    clear_parent_fraction: float = 0.0
    """Share of the upper SAE's live features whose best decoder cosine reaches the threshold."""
    chance_clear_parent_fraction: float = 0.0
    """The same share against a randomly rotated lower dictionary (what chance gives)."""
    mean_parent_cosine: float = 0.0
    chance_mean_parent_cosine: float = 0.0
    coactive_parent_fraction: float | None = None
    """Share of live upper features whose best Jaccard index reaches the co-activation threshold."""
    chance_coactive_parent_fraction: float | None = None
    """The same share with the lower SAE's firings shuffled across tokens (what chance gives)."""
    agreement: float | None = None
    """Of the live features with both a clear cosine parent and a clear co-activation parent, the share where they are the same feature."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if k not in ("parent", "parent_cosine", "coactive_parent", "coactive_jaccard", "links")} | {
            "strong_links": len(self.links)}


def unit_rows(matrix: Tensor) -> Tensor:
    return torch.nn.functional.normalize(matrix.detach().float(), dim=1)


def best_matches(lower: Tensor, upper: Tensor, top: int = LINKS_PER_CHILD) -> tuple[Tensor, Tensor]:
    """For each row of ``upper`` [F_u, d], the ``top`` rows of ``lower`` [F_l, d] of highest cosine: (cosines, indices), [F_u, top]."""
    a, b = unit_rows(lower), unit_rows(upper)
    values, indices = [], []
    for start in range(0, b.shape[0], CHUNK):
        v, i = (b[start : start + CHUNK] @ a.T).topk(min(top, a.shape[0]), dim=1)
        values.append(v)
        indices.append(i)
    return torch.cat(values), torch.cat(indices)


def best_coactive(fires_lower: Tensor, fires_upper: Tensor) -> tuple[Tensor, Tensor]:
    """Per upper feature, the lower feature whose firing set has the highest Jaccard index with its own: (jaccard, index), [F_u]."""
    lower, upper = fires_lower.float(), fires_upper.float()
    lower_counts, upper_counts = lower.sum(dim=0), upper.sum(dim=0)
    values, indices = [], []
    for start in range(0, upper.shape[1], CHUNK):
        both = upper[:, start : start + CHUNK].T @ lower  # [chunk, F_l] co-firing counts
        either = upper_counts[start : start + CHUNK, None] + lower_counts[None, :] - both
        v, i = torch.where(either > 0, both / either.clamp_min(1), 0.0).max(dim=1)
        values.append(v)
        indices.append(i)
    return torch.cat(values), torch.cat(indices)


def random_rotation(d: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


def pair_lineage(
    lower_name: str,
    upper_name: str,
    lower_decoder: Tensor,
    upper_decoder: Tensor,
    fires_lower: Tensor | None = None,
    fires_upper: Tensor | None = None,
    cosine_threshold: float = COSINE_THRESHOLD,
    jaccard_threshold: float = JACCARD_THRESHOLD,
    seed: int = 0,
) -> PairLineage:
    """Link the features of two SAEs at adjacent layers (decoders [F, d_in]; optional firing masks [n_tokens, F] on shared tokens)."""
    if lower_decoder.shape[1] != upper_decoder.shape[1]:
        raise InvalidInput(f"lineage {lower_name} -> {upper_name}: the SAEs read different widths "
                           f"({lower_decoder.shape[1]} and {upper_decoder.shape[1]}); link SAEs of one site")
    if (fires_lower is None) != (fires_upper is None):
        raise InvalidInput("lineage: give both SAEs' firing masks or neither")
    if fires_lower is not None and fires_lower.shape[0] != fires_upper.shape[0]:
        raise InvalidInput(f"lineage: firing masks cover {fires_lower.shape[0]} and {fires_upper.shape[0]} tokens; they must be the same tokens")
    cosines, parents = best_matches(lower_decoder, upper_decoder)
    live = torch.ones(upper_decoder.shape[0], dtype=torch.bool) if fires_upper is None else fires_upper.any(dim=0).cpu()
    chance_cosines, _ = best_matches(lower_decoder.float() @ random_rotation(lower_decoder.shape[1], seed), upper_decoder, top=1)
    n_live = max(int(live.sum()), 1)
    best_cos, best_parent = cosines[:, 0], parents[:, 0]
    result = PairLineage(
        lower=lower_name, upper=upper_name, parent=best_parent.tolist(), parent_cosine=[round(v, 4) for v in best_cos.tolist()],
        coactive_parent=[None] * len(best_parent), coactive_jaccard=[None] * len(best_parent),
        clear_parent_fraction=float((best_cos[live] >= cosine_threshold).sum()) / n_live,
        chance_clear_parent_fraction=float((chance_cosines[live, 0] >= cosine_threshold).sum()) / n_live,
        mean_parent_cosine=float(best_cos[live].mean()) if live.any() else 0.0,
        chance_mean_parent_cosine=float(chance_cosines[live, 0].mean()) if live.any() else 0.0,
    )
    jaccards = coactive = None
    if fires_lower is not None:
        fires_lower, fires_upper = fires_lower.cpu(), fires_upper.cpu()
        jaccards, coactive = best_coactive(fires_lower, fires_upper)
        permutation = torch.randperm(fires_lower.shape[0], generator=torch.Generator().manual_seed(seed))
        chance_jaccards, _ = best_coactive(fires_lower[permutation], fires_upper)
        clear_co = jaccards >= jaccard_threshold
        clear_cos = best_cos >= cosine_threshold
        both = live & clear_co & clear_cos
        result.coactive_parent = coactive.tolist()
        result.coactive_jaccard = [round(v, 4) for v in jaccards.tolist()]
        result.coactive_parent_fraction = float((clear_co & live).sum()) / n_live
        result.chance_coactive_parent_fraction = float(((chance_jaccards >= jaccard_threshold) & live).sum()) / n_live
        result.agreement = float((best_parent[both] == coactive[both]).float().mean()) if both.any() else None
    lower_unit, upper_unit = unit_rows(lower_decoder), unit_rows(upper_decoder)
    for child in torch.nonzero(live).flatten().tolist():
        chosen: dict[int, float] = {}
        for rank in range(parents.shape[1]):
            if float(cosines[child, rank]) >= cosine_threshold:
                chosen[int(parents[child, rank])] = float(cosines[child, rank])
        if jaccards is not None and float(jaccards[child]) >= jaccard_threshold:
            parent = int(coactive[child])
            chosen.setdefault(parent, float(lower_unit[parent] @ upper_unit[child]))
        for parent, cos in chosen.items():
            jac = _jaccard_of(fires_lower, fires_upper, parent, child) if fires_lower is not None else -1.0
            result.links.append([child, parent, round(cos, 4), round(jac, 4)])
    return result


def _jaccard_of(fires_lower: Tensor, fires_upper: Tensor, parent: int, child: int) -> float:
    a, b = fires_lower[:, parent], fires_upper[:, child]
    either = int((a | b).sum())
    return int((a & b).sum()) / either if either else 0.0


def strong_parent(pair: PairLineage, child: int, cosine_threshold: float = COSINE_THRESHOLD,
                  jaccard_threshold: float = JACCARD_THRESHOLD) -> int | None:
    """A child's parent for chains: its decoder-cosine parent if clear, else its co-activation parent if clear, else None."""
    if pair.parent_cosine[child] >= cosine_threshold:
        return pair.parent[child]
    jaccard = pair.coactive_jaccard[child] if pair.coactive_jaccard else None
    if jaccard is not None and jaccard >= jaccard_threshold:
        return pair.coactive_parent[child]
    return None


def chains(pairs: list[PairLineage], cosine_threshold: float = COSINE_THRESHOLD, jaccard_threshold: float = JACCARD_THRESHOLD,
           longest: int = 20) -> dict[str, Any]:
    """Follow each feature's strong parent (``strong_parent``) down through consecutive pairs (ordered bottom-up).

    Returns the number of chains by length (in SAEs spanned; a chain ends where no feature one layer up
    continues it) and the ``longest`` chains, each a list of [sae, feature] from the lowest layer up.
    """
    parent_maps = [{child: p for child in range(len(pair.parent)) if (p := strong_parent(pair, child, cosine_threshold, jaccard_threshold)) is not None}
                   for pair in pairs]
    lengths: list[dict[int, int]] = []
    for index, (pair, parents) in enumerate(zip(pairs, parent_maps)):
        below = lengths[index - 1] if index > 0 and pairs[index - 1].upper == pair.lower else {}
        lengths.append({child: below.get(parent, 1) + 1 for child, parent in parents.items()})
    counts: dict[int, int] = {}
    ends = []
    for index, found in enumerate(lengths):
        continued = set(parent_maps[index + 1].values()) if index + 1 < len(pairs) and pairs[index + 1].lower == pairs[index].upper else set()
        for child, length in found.items():
            if child not in continued:
                counts[length] = counts.get(length, 0) + 1
                ends.append((length, index, child))
    ends.sort(key=lambda item: -item[0])
    result = []
    for _length, index, child in ends[:longest]:
        path, feature = [[pairs[index].upper, child]], child
        while index >= 0 and feature in parent_maps[index]:
            feature = parent_maps[index][feature]
            path.append([pairs[index].lower, feature])
            if index == 0 or pairs[index - 1].upper != pairs[index].lower:
                break
            index -= 1
        result.append(path[::-1])
    return {"length_counts": {str(k): v for k, v in sorted(counts.items())}, "longest": result}
