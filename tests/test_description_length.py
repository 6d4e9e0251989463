"""Description length (MDL-SAEs): hand-computed cases, the distortion bound after quantisation, both variants, bad input."""

import math

import numpy as np
import pytest
import torch

from saescope.errors import InvalidInput
from saescope.evaluation.description_length import (
    BIN_COUNTS,
    DescriptionLength,
    binary_entropy,
    coarsen,
    histogram_entropy,
    index_bits,
    mean_record,
    measure_description_length,
    quantise,
    uniform_index_bits,
    value_bits,
)
from saescope.saes import create_sae


def identity_sae(d: int = 4):
    """A ReLU SAE whose code is the input itself (non-negative inputs): every figure is known by hand."""
    sae = create_sae("relu", d, d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def planted(n: int = 4000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One active coordinate per token (latent i with probability (0.4, 0.3, 0.2, 0.1)), value 1 or 2 with equal odds."""
    generator = torch.Generator().manual_seed(seed)
    idx = torch.multinomial(torch.tensor([0.4, 0.3, 0.2, 0.1]), n, replacement=True, generator=generator)
    values = torch.randint(1, 3, (n,), generator=generator).float()
    x = torch.zeros(n, 4)
    x[torch.arange(n), idx] = values
    return x, idx


def test_uniform_densities_give_the_closed_form_index_bits():
    for n_latents, l0 in ((16_384, 32), (4096, 8), (1000, 10)):
        density = torch.full((n_latents,), l0 / n_latents, dtype=torch.float64)
        exact = index_bits(density)
        assert exact == pytest.approx(n_latents * binary_entropy(torch.tensor(l0 / n_latents)).item())
        assert exact == pytest.approx(uniform_index_bits(l0, n_latents), rel=0.01)  # L0 ≪ F: the approximation holds
    assert uniform_index_bits(32, 16_384) == pytest.approx(32 * (9 + math.log2(math.e)))
    assert binary_entropy(torch.tensor([0.0, 0.5, 1.0])).tolist() == pytest.approx([0.0, 1.0, 0.0])


def test_value_bits_on_hand_made_histograms():
    histogram = torch.tensor([[2, 2, 0, 0], [4, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]])
    assert histogram_entropy(histogram).tolist() == pytest.approx([1.0, 0.0, 2.0, 0.0])
    density = torch.tensor([0.5, 0.25, 0.125, 0.0])
    assert value_bits(histogram, density) == pytest.approx(0.5 * 1 + 0.25 * 0 + 0.125 * 2)
    assert coarsen(histogram, 2).tolist() == [[4, 0], [4, 0], [2, 2], [0, 0]]
    index, midpoint = quantise(torch.tensor([0.0, 0.49, 0.5, 1.0]), torch.tensor([1.0, 1.0, 1.0, 1.0]), 2)
    assert index.tolist() == [0, 0, 1, 1] and midpoint.tolist() == [0.25, 0.25, 0.75, 0.75]
    with pytest.raises(InvalidInput, match="does not divide"):
        coarsen(histogram, 3)


def test_planted_code_matches_the_hand_computation_in_both_variants():
    x, idx = planted()
    n = x.shape[0]
    density = torch.bincount(idx, minlength=4).double() / n
    h_index = binary_entropy(density).sum().item()
    dl = measure_description_length(identity_sae(), x, batch_size=512)
    assert dl.fvu == pytest.approx(0.0, abs=1e-12) and dl.index_bits == pytest.approx(h_index)
    # values 1 and 2 of max 2 share a bin at b = 2 (one midpoint, 1.5: zero value bits, a large error) and
    # fall into two bins from b = 4 on: each active latent then costs the entropy of its two values' split
    two = [q for q in dl.table if q.bins == 2][0]
    assert two.value_bits == pytest.approx(0.0) and two.fvu > 0.1
    split = torch.tensor([((x[idx == i, i] == 2).double().mean()).item() for i in range(4)])
    expected_values = (density * binary_entropy(split)).sum().item()
    for q in dl.table:
        if q.bins >= 4:
            assert q.value_bits == pytest.approx(expected_values, abs=1e-9)
    # b bins on [0, 2] send 1 as 1 + 1/b and 2 as 2 - 1/b: the squared error per token is 1/b²
    variance = (x.double() - x.double().mean(0)).pow(2).sum().item()
    for q in dl.table:
        assert q.fvu == pytest.approx(n / q.bins**2 / variance, rel=1e-9)
    # the default bound (own FVU + 0.01) takes the coarsest quantisation that meets it
    assert dl.bins == min(q.bins for q in dl.table if q.fvu <= 0.01) and dl.quantised_fvu <= 0.01
    assert dl.bits == pytest.approx(h_index + expected_values)

    reference = measure_description_length(identity_sae(), x, variant="saebench", batch_size=512)
    # SAEBench's histogram also holds each latent's zeros (in the first bin)
    for q in reference.table:
        if q.bins >= 4:
            per_latent = []
            for i in range(4):
                on = density[i].item()
                parts = torch.tensor([1 - on, on * (1 - split[i].item()), on * split[i].item()], dtype=torch.float64)
                per_latent.append(on * -(parts * parts.log2()).sum().item())
            assert q.value_bits == pytest.approx(sum(per_latent), abs=1e-9)
    assert reference.index_bits == pytest.approx(dl.index_bits)


def test_the_bound_holds_after_quantisation_and_tightening_it_costs_bits():
    torch.manual_seed(0)
    x = torch.rand(3000, 4) * (torch.rand(3000, 4) < 0.3)
    sae = identity_sae()
    loose = measure_description_length(sae, x, max_fvu=0.05)
    tight = loose.at(0.0005)
    for dl in (loose, tight):
        assert dl.bits is not None and dl.quantised_fvu <= dl.max_fvu
    assert tight.bins > loose.bins and tight.bits > loose.bits
    # the table's quantised FVU is what decoding the midpoints really gives
    index, midpoints = quantise(x[x > 0], x.max(dim=0).values.expand_as(x)[x > 0], tight.bins)
    rebuilt = torch.zeros_like(x, dtype=torch.float64)
    rebuilt[x > 0] = midpoints
    fvu = ((x.double() - rebuilt).pow(2).sum() / (x.double() - x.double().mean(0)).pow(2).sum()).item()
    assert tight.quantised_fvu == pytest.approx(fvu, rel=1e-6)
    # value bits never fall as the bins get finer (each histogram coarsens the next)
    bits = [q.value_bits for q in loose.table]
    assert bits == sorted(bits)
    # no quantisation can meet a bound below the SAE's own FVU: a reason, not a number
    impossible = measure_description_length(create_sae("topk", 4, 8, k=1), x, max_fvu=1e-6)
    assert impossible.bits is None and "before quantisation" in impossible.reason()
    assert measure_description_length(sae, x, max_fvu=1e-9, bin_counts=(2, 4)).reason().startswith("quantised FVU")


def test_records_round_trip_and_layers_average():
    x, _ = planted(1000)
    dl = measure_description_length(identity_sae(), x)
    again = DescriptionLength.from_dict(dl.to_dict())
    assert again == dl and again.bits == dl.bits
    averaged = DescriptionLength.from_dict(mean_record([dl.to_dict(), dl.to_dict()]))
    assert averaged.bits == pytest.approx(dl.bits)
    assert mean_record([dl.to_dict(), None]) is None


def test_bad_input_is_named():
    x, _ = planted(100)
    sae = identity_sae()
    with pytest.raises(InvalidInput, match="variant='bits'"):
        measure_description_length(sae, x, variant="bits")
    with pytest.raises(InvalidInput, match="bin_counts"):
        measure_description_length(sae, x, bin_counts=(3, 4))
    with pytest.raises(InvalidInput, match="max_fvu=-1"):
        measure_description_length(sae, x, max_fvu=-1)
    with pytest.raises(InvalidInput, match="reads the data twice"):
        measure_description_length(sae, iter([x]))
    with pytest.raises(InvalidInput, match="d_in=4"):
        measure_description_length(sae, np.zeros((10, 5), dtype=np.float32))
    assert BIN_COUNTS == tuple(sorted(BIN_COUNTS)) and all(BIN_COUNTS[-1] % b == 0 for b in BIN_COUNTS)
