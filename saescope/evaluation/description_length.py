"""Description length of activations under an SAE (MDL-SAEs, Ayonrinde, Pearce & Sharkey 2024), defined once.

An SAE is a lossy code for activations: to send a token, send which latents are on, then each
active latent's value at some precision. The description length (DL) is what that costs in bits per
token; among SAEs whose reconstruction is good enough, the one with the shortest description is the
simplest explanation of the activations (minimum description length).

Definitions (N tokens, F latents, p_i the fraction of tokens on which latent i fires, H(p) the binary
entropy, max_i the largest value latent i takes on the evaluation set):

- Index bits = Σ_i H(p_i): which latents are active. With every p_i = L0/F this is close to
  L0·(log2(F/L0) + log2 e) (``uniform_index_bits``): DL grows with the log of the width, linearly in L0.
- Value bits at b bins = Σ_i p_i·H(h_i,b), where h_i,b is the histogram of latent i's **active**
  values over b equal-width bins on [0, max_i] (the textbook, conditional quantity). A value is sent
  as its bin's midpoint.
- The quantised reconstruction decodes those midpoints (inactive latents stay exactly zero); its FVU
  is the distortion. DL(ε) = index bits + the least value bits over the bin counts whose quantised
  FVU is at most ε. The bin counts double (``BIN_COUNTS``), so each histogram is a coarsening of the
  next: value bits never fall as b grows, and the choice is the coarsest quantisation that meets ε.
- With no bound given, ε is the SAE's own FVU + ``DEFAULT_QUANTISATION_SLACK``: quantising may cost
  at most one percent of the variance. Selection (``saescope select``) uses a fixed ε for every SAE.

The ``saebench`` variant reproduces SAEBench's reference computation (``sae_bench/evals/mdl``): each
latent's histogram is taken over all N tokens, so its zeros fall into the first bin. For a rare latent
that histogram is nearly all zeros and its entropy nearly zero, so the variant charges rare latents
much less than the textbook quantity does and favours wide, sparse dictionaries. SAEBench checks
distortion as sqrt(MSE)/d_in < 0.01, which depends on d_in and the activations' scale; saescope bounds
FVU under both variants and reports SAEBench's number beside it (``saebench_distortion``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from saescope.errors import InvalidInput

BIN_COUNTS = (2, 4, 8, 16, 32, 64, 128, 256)
VARIANTS = ("active", "saebench")
DEFAULT_QUANTISATION_SLACK = 0.01


# -- definitions on counts (the hand-checkable parts) -------------------------------------------------
def binary_entropy(p: Tensor) -> Tensor:
    """H(p) in bits, elementwise (0 at p = 0 and p = 1)."""
    p = p.double()
    q = 1 - p
    return -(p * p.clamp_min(1e-300).log2() + q * q.clamp_min(1e-300).log2())


def index_bits(density: Tensor) -> float:
    """Bits per token to send which latents are active: Σ_i H(p_i)."""
    return binary_entropy(density).sum().item()


def uniform_index_bits(l0: float, n_latents: int) -> float:
    """The closed form of ``index_bits`` when all F latents share density L0/F and L0 ≪ F: L0·(log2(F/L0) + log2 e)."""
    return l0 * (math.log2(n_latents / l0) + math.log2(math.e))


def histogram_entropy(counts: Tensor) -> Tensor:
    """Entropy in bits of each row of a [F, b] histogram of counts (0 for an empty row)."""
    counts = counts.double()
    probs = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    return -(probs * probs.clamp_min(1e-300).log2()).sum(dim=1)


def value_bits(histogram: Tensor, density: Tensor) -> float:
    """Bits per token to send the active values: Σ_i p_i·H(histogram_i)."""
    return (density.double() * histogram_entropy(histogram)).sum().item()


def coarsen(histogram: Tensor, bins: int) -> Tensor:
    """A [F, B] histogram of equal-width bins merged into ``bins`` bins (B a multiple of ``bins``)."""
    finest = histogram.shape[1]
    if finest % bins:
        raise InvalidInput(f"bins={bins} does not divide the {finest} bins of the histogram")
    return histogram.view(histogram.shape[0], bins, finest // bins).sum(dim=2)


def quantise(values: Tensor, maxima: Tensor, bins: int) -> tuple[Tensor, Tensor]:
    """(bin index, bin midpoint) of each value in ``bins`` equal-width bins on [0, its latent's max]."""
    relative = values.double() / maxima.double().clamp_min(1e-30)
    index = (relative * bins).long().clamp_(0, bins - 1)
    return index, (index.double() + 0.5) / bins * maxima.double()


# -- the result ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Quantisation:
    """One bin count: what the values cost and how well the quantised code reconstructs."""

    bins: int
    value_bits: float
    fvu: float
    saebench_distortion: float
    """sqrt(mean over tokens of ‖x - x̂_q‖²)/d_in for the quantised reconstruction x̂_q: SAEBench's distortion measure (reported, not used)."""


@dataclass(frozen=True)
class DescriptionLength:
    """The description length of one SAE's code at a distortion bound ``max_fvu``, with every quantisation tried.

    ``at(ε)`` gives the same measurement at another bound without touching the data again.
    """

    variant: str
    n_tokens: int
    fvu: float
    """FVU of the unquantised reconstruction."""
    index_bits: float
    max_fvu: float
    table: tuple[Quantisation, ...] = field(default=())

    def at(self, max_fvu: float) -> DescriptionLength:
        return replace(self, max_fvu=float(max_fvu))

    @property
    def chosen(self) -> Quantisation | None:
        """The cheapest quantisation whose reconstruction meets the bound (fewest bins on ties); None if none does."""
        valid = [q for q in self.table if q.fvu <= self.max_fvu]
        return min(valid, key=lambda q: (q.value_bits, q.bins)) if valid else None

    @property
    def bits(self) -> float | None:
        chosen = self.chosen
        return None if chosen is None else self.index_bits + chosen.value_bits

    @property
    def bins(self) -> int | None:
        chosen = self.chosen
        return None if chosen is None else chosen.bins

    @property
    def quantised_fvu(self) -> float | None:
        chosen = self.chosen
        return None if chosen is None else chosen.fvu

    def reason(self) -> str | None:
        """Why there is no description length at this bound (None when there is one)."""
        if self.chosen is not None:
            return None
        if self.fvu > self.max_fvu:
            return f"FVU {self.fvu:.4f} > {self.max_fvu:g} before quantisation"
        finest = min(self.table, key=lambda q: q.fvu) if self.table else None
        if finest is None:
            return "no quantisation was measured"
        return f"quantised FVU {finest.fvu:.4f} > {self.max_fvu:g} even at {finest.bins} bins"

    def to_dict(self) -> dict[str, Any]:
        return {"variant": self.variant, "n_tokens": self.n_tokens, "fvu": self.fvu, "index_bits": self.index_bits,
                "max_fvu": self.max_fvu, "bits": self.bits, "bins": self.bins, "quantised_fvu": self.quantised_fvu,
                "table": [vars(q) for q in self.table]}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DescriptionLength:
        table = tuple(Quantisation(**{k: row[k] for k in ("bins", "value_bits", "fvu", "saebench_distortion")})
                      for row in values.get("table") or [])
        return cls(variant=values["variant"], n_tokens=int(values["n_tokens"]), fvu=float(values["fvu"]),
                   index_bits=float(values["index_bits"]), max_fvu=float(values["max_fvu"]), table=table)


# -- measurement ---------------------------------------------------------------------------------------
@torch.no_grad()
def measure_description_length(
    sae: Any,
    data: Any,
    max_fvu: float | None = None,
    variant: str = "active",
    bin_counts: tuple[int, ...] = BIN_COUNTS,
    batch_size: int = 4096,
    device: str | torch.device | None = None,
    stats: Any = None,
) -> DescriptionLength:
    """The description length of ``sae`` on ``data`` (re-iterable: a tensor, array, memmap or source).

    Two passes: the first (skipped when ``stats``, a filled ``ReconstructionStats``, is given) finds
    each latent's density and maximum and the data's variance; the second fills one histogram at the
    finest bin count and decodes each quantisation. ``max_fvu`` None means the SAE's own FVU + 0.01.
    """
    from saescope.data import as_source
    from saescope.evaluation.metrics import checked_pair, reconstruction_stats

    if variant not in VARIANTS:
        raise InvalidInput(f"variant={variant!r}: choose one of {', '.join(VARIANTS)}")
    counts = sorted(set(int(b) for b in bin_counts))
    finest = counts[-1] if counts else 0
    if not counts or counts[0] < 1 or any(finest % b for b in counts):
        raise InvalidInput(f"bin_counts={tuple(bin_counts)}: give positive counts that each divide the largest (e.g. {BIN_COUNTS})")
    if max_fvu is not None and not (max_fvu > 0 and math.isfinite(max_fvu)):
        raise InvalidInput(f"max_fvu={max_fvu}: give a positive bound on the fraction of variance unexplained, such as 0.1")
    source = as_source(data)
    if not source.reiterable:
        raise InvalidInput("description length reads the data twice; give an array, a tensor or a file, not a one-shot iterator")
    device = torch.device(device) if device is not None else sae.W_enc.device
    was_training = sae.training
    sae.eval()
    if stats is None:
        stats = reconstruction_stats(sae, source, batch_size, device)
    if stats.n_tokens == 0:
        raise InvalidInput("description length: no activations to measure")
    maxima = stats.max_acts.to(device)
    histogram = torch.zeros(sae.d_sae, finest, dtype=torch.long, device=device)
    sq_errors = {b: torch.zeros((), dtype=torch.float64, device=device) for b in counts}
    for batch in source.iter_batches(batch_size):
        x, reference = checked_pair(batch, sae, device)
        code = sae.encode_code(x)
        skip = sae.skip_output(x)
        if skip is not None:
            reference = reference - skip  # the skip connection costs no bits: only the code is quantised
        _rows, cols, values = code.active_entries()
        fine, _ = quantise(values, maxima[cols], finest)
        histogram.view(-1).index_add_(0, cols * finest + fine, torch.ones_like(fine))
        for b in counts:
            _index, midpoints = quantise(values, maxima[cols], b)
            error = reference.double() - sae.decode_code(code.with_active_values(midpoints.to(values.dtype))).double()
            sq_errors[b] += error.pow(2).sum()
    sae.train(was_training)

    n = stats.n_tokens
    density = stats.fire_counts.double().to(device) / n
    if variant == "saebench":
        histogram[:, 0] += n - stats.fire_counts.to(device)  # the zeros, counted into the first bin as the reference does
    variance = stats.sum_sq_dev.clamp_min(1e-30)
    table = tuple(
        Quantisation(bins=b, value_bits=value_bits(coarsen(histogram, b), density), fvu=(sq_errors[b] / variance).item(),
                     saebench_distortion=math.sqrt((sq_errors[b] / n).item()) / sae.d_in)
        for b in counts
    )
    fvu = (stats.sum_sq_error / variance).item()
    bound = fvu + DEFAULT_QUANTISATION_SLACK if max_fvu is None else float(max_fvu)
    return DescriptionLength(variant=variant, n_tokens=n, fvu=fvu, index_bits=index_bits(density), max_fvu=bound, table=table)


def mean_record(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The mean of several ``to_dict`` records (a multi-layer SAE's layers): bits per token per layer.

    None unless every record measured the same variant and bin counts.
    """
    parsed = [DescriptionLength.from_dict(r) for r in records if r]
    if not parsed or len(parsed) != len(records):
        return None
    first = parsed[0]
    if any(p.variant != first.variant or [q.bins for q in p.table] != [q.bins for q in first.table] for p in parsed):
        return None

    def mean(values: list[float]) -> float:
        return sum(values) / len(values)

    table = tuple(
        Quantisation(bins=rows[0].bins, value_bits=mean([q.value_bits for q in rows]), fvu=mean([q.fvu for q in rows]),
                     saebench_distortion=mean([q.saebench_distortion for q in rows]))
        for rows in zip(*(p.table for p in parsed))
    )
    return DescriptionLength(variant=first.variant, n_tokens=first.n_tokens, fvu=mean([p.fvu for p in parsed]),
                             index_bits=mean([p.index_bits for p in parsed]), max_fvu=mean([p.max_fvu for p in parsed]),
                             table=table).to_dict()
