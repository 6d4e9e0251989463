"""Matryoshka SAEs: the nested loss against a hand computation, prefixes that reconstruct alone, bad settings."""

import pytest
import torch

import saescope
from saescope.jobs import create_job
from saescope.objectives import StepContext
from saescope.objectives.batchtopk import batch_top_k
from saescope.synthetic.synthetic import SyntheticActivations, SyntheticConfig
from saescope.training import TrainConfig, Trainer


def test_the_loss_is_the_weighted_sum_of_each_prefixs_own_error():
    torch.manual_seed(0)
    job = create_job("matryoshka", 6, 24, target_l0=3, prefixes=[2, 8, 24], prefix_weights=[0.5, 0.3, 0.2])
    sae = job.sae.train()
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(6))
    x = torch.randn(32, 6)
    out = job.objective.loss(sae, x, StepContext(0, 0.0, 0.0))
    # independently: the same global selection, then each prefix decoded with every other latent zeroed
    acts = torch.relu(sae.pre_activations(x))
    selected, _cutoff = batch_top_k(acts, 3 * 32, torch.tensor(0.0))
    expected = 0.0
    for size, weight in zip([2, 8, 24], [0.5, 0.3, 0.2]):
        masked = selected.clone()
        masked[:, size:] = 0
        expected = expected + weight * (x - (masked @ sae.W_dec + sae.b_dec)).pow(2).sum(dim=-1).mean()
    assert torch.allclose(out.loss, expected, rtol=1e-5)
    assert torch.allclose(out.reconstruction, selected @ sae.W_dec + sae.b_dec, atol=1e-5)
    assert [sae.prefix_level(i) for i in (0, 1, 2, 7, 8, 23)] == [0, 0, 1, 1, 2, 2]


def test_inner_prefixes_reconstruct_alone_better_than_batchtopk_latents_do():
    data = SyntheticActivations(SyntheticConfig(d_in=16, n_features=64, mean_l0=3, seed=0))
    torch.manual_seed(0)
    jobs = [create_job("matryoshka", 16, 64, target_l0=4, prefixes=[8, 64], name="nested"),
            create_job("batchtopk", 16, 64, target_l0=4, name="flat")]
    config = TrainConfig(total_tokens=256 * 200, batch_size=256, progress=False, log_every=50)
    trained = Trainer(jobs, config).fit(lambda: data.stream(256, seed=1))
    held_out = data.sample(8192, seed=2)

    def inner_fvu(sae):
        with torch.no_grad():
            acts = sae.encode(held_out)
            acts[:, 8:] = 0
            error = (held_out - sae.decode(acts)).pow(2).sum()
        return float(error / (held_out - held_out.mean(0)).pow(2).sum())

    assert inner_fvu(trained["nested"]) < 0.8 * inner_fvu(trained["flat"])
    assert saescope.evaluate_sae(trained["nested"], held_out, description_length=False).fvu < 0.6


def test_bad_prefixes_are_named():
    with pytest.raises(ValueError, match=r"prefixes=\[8, 4, 64\]: give strictly increasing sizes from 1 up to d_sae=64"):
        create_job("matryoshka", 16, 64, prefixes=[8, 4, 64])
    with pytest.raises(ValueError, match="prefix_weights has 1 weights for 3 prefixes"):
        create_job("matryoshka", 16, 64, prefix_weights=[1.0])
