"""The synthetic ground truth: each variant's sparsity, structure and correlations, measured on samples."""

import pytest
import torch

from saescope.synthetic.synthetic import VARIANTS, SyntheticActivations, SyntheticConfig


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_has_its_mean_l0_and_reproduces_from_its_seed(variant):
    data = SyntheticActivations(SyntheticConfig(variant=variant, seed=3))
    x, features = data.sample_with_features(40_000, seed=1)
    assert (features > 0).sum(dim=1).float().mean().item() == pytest.approx(4.0, rel=0.05)
    noise = 0.02 if variant == "synthsae" else 0.0
    assert (x - features @ data.directions).std().item() == pytest.approx(noise, abs=2e-3)
    assert torch.equal(data.sample(100, seed=7), data.sample(100, seed=7))


def test_synthsae_has_zipf_parents_exclusive_children_and_correlated_groups():
    config = SyntheticConfig(variant="synthsae", n_features=256, correlation=0.5, correlation_groups=8)
    _x, features = SyntheticActivations(config).sample_with_features(200_000, seed=0)
    active = (features > 0).view(-1, 64, 4)  # 64 families: parent, then 3 children
    parents, children = active[:, :, 0], active[:, :, 1:]
    assert not (children.any(dim=-1) & ~parents).any()  # a child only with its parent
    assert (children.sum(dim=-1) <= 1).all()  # children exclude each other
    rates = parents.float().mean(dim=0)
    assert rates[0] / rates[9] == pytest.approx(10.0, rel=0.1)  # Zipf: rank 1 against rank 10
    correlation = torch.corrcoef(parents[:, :16].T.float())
    assert correlation[0, 8] > 0.03 and correlation[1, 9] > 0.03  # same group (rank mod 8)
    assert abs(correlation[0, 1]) < 0.015 and abs(correlation[2, 5]) < 0.015  # different groups
