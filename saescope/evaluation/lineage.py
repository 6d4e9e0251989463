"""Feature lineage between two SAEs at adjacent layers: which feature below continues which feature above.

Two kinds of evidence, both reported for every link:

- **decoder cosine**: cos(d_i, d_j) between the unit decoder directions of feature i (the parent, at
  the lower layer) and feature j (the child, one layer up). The residual stream carries a direction
  forward unless a layer writes over it, so a continued feature keeps its direction.
- **co-activation** on the same tokens: the Jaccard index |fires_i ∧ fires_j| / |fires_i ∨ fires_j| of
  the two features' firing sets over the tokens both SAEs read.

A child's *parent* is the lower feature of highest decoder cosine; the link is *strong* when that
cosine reaches ``cosine_threshold`` or the pair's Jaccard index reaches ``jaccard_threshold``.
Chance is measured, not assumed: the same matching against the lower dictionary turned by a random
rotation (its geometry kept, its alignment with the upper one destroyed) gives the fraction of
children that would find a "clear parent" by accident.
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
    parent_jaccard: list[float | None]
    """Jaccard index of that pair on shared tokens (None without activations)."""
    links: list[list[float]] = field(default_factory=list)
    """Strong links [child, parent, cosine, jaccard] (jaccard −1 when not measured), up to LINKS_PER_CHILD per child."""
    clear_parent_fraction: float = 0.0
    """Share of the upper SAE's live features whose best decoder cosine reaches the threshold."""
    chance_clear_parent_fraction: float = 0.0
    """The same share against a randomly rotated lower dictionary (what chance gives)."""
    mean_parent_cosine: float = 0.0
    chance_mean_parent_cosine: float = 0.0
    co_activation_links: int = 0
    """Strong links found by co-activation alone (cosine under the threshold)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if k not in ("parent", "parent_cosine", "parent_jaccard", "links")} | {
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


def jaccard(fires_lower: Tensor, fires_upper: Tensor, pairs: tuple[Tensor, Tensor]) -> Tensor:
    """Jaccard index of the firing sets of (lower i, upper j) for each pair; fires are bool [n_tokens, F] on the same tokens."""
    lower, upper = pairs
    both = (fires_lower[:, lower] & fires_upper[:, upper]).sum(dim=0).double()
    either = (fires_lower[:, lower] | fires_upper[:, upper]).sum(dim=0).double()
    return torch.where(either > 0, both / either.clamp_min(1), 0.0)


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

    pair_jaccard = None
    if fires_lower is not None:
        children = torch.arange(upper_decoder.shape[0]).repeat_interleave(parents.shape[1])
        pair_jaccard = jaccard(fires_lower, fires_upper, (parents.reshape(-1), children)).reshape(parents.shape).float()
    best_cos, best_parent = cosines[:, 0], parents[:, 0]
    links = []
    co_only = 0
    for child in torch.nonzero(live).flatten().tolist():
        for rank in range(parents.shape[1]):
            cos = float(cosines[child, rank])
            jac = float(pair_jaccard[child, rank]) if pair_jaccard is not None else -1.0
            if cos >= cosine_threshold or jac >= jaccard_threshold:
                links.append([child, int(parents[child, rank]), round(cos, 4), round(jac, 4)])
                co_only += cos < cosine_threshold
    n_live = max(int(live.sum()), 1)
    return PairLineage(
        lower=lower_name, upper=upper_name,
        parent=best_parent.tolist(), parent_cosine=[round(v, 4) for v in best_cos.tolist()],
        parent_jaccard=[round(v, 4) for v in pair_jaccard[:, 0].tolist()] if pair_jaccard is not None else [None] * len(best_parent),
        links=links,
        clear_parent_fraction=float((best_cos[live] >= cosine_threshold).sum()) / n_live,
        chance_clear_parent_fraction=float((chance_cosines[live, 0] >= cosine_threshold).sum()) / n_live,
        mean_parent_cosine=float(best_cos[live].mean()) if live.any() else 0.0,
        chance_mean_parent_cosine=float(chance_cosines[live, 0].mean()) if live.any() else 0.0,
        co_activation_links=int(co_only),
    )


def chains(pairs: list[PairLineage], cosine_threshold: float = COSINE_THRESHOLD, longest: int = 20) -> dict[str, Any]:
    """Follow each feature's clear parent down through consecutive pairs (ordered bottom-up).

    Returns the distribution of chain lengths (in SAEs spanned) and the ``longest`` chains, each a
    list of [sae, feature] from the lowest layer up.
    """
    if not pairs:
        return {"length_counts": {}, "longest": []}
    # parent_of[p][child] for pair p (upper SAE = pairs[p].upper)
    length_below: list[dict[int, int]] = []
    for p, pair in enumerate(pairs):
        lengths = {}
        for child, (parent, cos) in enumerate(zip(pair.parent, pair.parent_cosine)):
            if cos >= cosine_threshold:
                below = length_below[p - 1].get(parent, 1) if p > 0 and pairs[p - 1].upper == pair.lower else 1
                lengths[child] = below + 1
        length_below.append(lengths)
    counts: dict[int, int] = {}
    ends = []
    for p, lengths in enumerate(length_below):
        continued = set()
        if p + 1 < len(pairs) and pairs[p + 1].lower == pairs[p].upper:
            continued = {pairs[p + 1].parent[c] for c, cos in enumerate(pairs[p + 1].parent_cosine) if cos >= cosine_threshold}
        for child, length in lengths.items():
            if child not in continued:  # a chain ends here
                counts[length] = counts.get(length, 0) + 1
                ends.append((length, p, child))
    ends.sort(key=lambda item: -item[0])
    result = []
    for length, p, child in ends[:longest]:
        path = [[pairs[p].upper, child]]
        feature, q = child, p
        while q >= 0 and pairs[q].parent_cosine[feature] >= cosine_threshold:
            feature = pairs[q].parent[feature]
            path.append([pairs[q].lower, feature])
            if q == 0 or pairs[q - 1].upper != pairs[q].lower:
                break
            q -= 1
        result.append(path[::-1])
    return {"length_counts": {str(k): v for k, v in sorted(counts.items())}, "longest": result}
