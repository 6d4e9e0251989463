"""Signum, per-SAE optimiser settings, and JumpReLU's data-based encoder-bias initialisation."""

import pytest
import torch

from saescope.saes import create_sae
from saescope.training.optimizers import Signum, build_optimizer


def test_signum_moves_each_weight_by_lr_along_the_momentum_sign():
    weight = torch.nn.Parameter(torch.zeros(4))
    optimizer = Signum([weight], lr=0.1, momentum=0.5)
    weight.grad = torch.tensor([1.0, -2.0, 0.0, 3.0])
    optimizer.step()
    assert weight.detach().tolist() == pytest.approx([-0.1, 0.1, 0.0, -0.1])
    weight.grad = torch.tensor([-3.0, -2.0, 1.0, -1.0])  # momentum: 0.5·m + 0.5·g
    optimizer.step()
    assert weight.detach().tolist() == pytest.approx([0.0, 0.2, -0.1, -0.2])


def test_optimizer_choice_and_bad_values():
    sae = create_sae("topk", 16, 64, k=4, optimizer="signum")
    assert sae.resolved_optimizer == "signum" and isinstance(build_optimizer("signum", sae.parameters(), 1e-3, (0.9, 0.999)), Signum)
    assert create_sae("jumprelu", 16, 64).resolved_adam_betas() == (0.0, 0.999)
    assert create_sae("jumprelu", 16, 64, adam_beta1=0.9).resolved_adam_betas() == (0.9, 0.999)
    with pytest.raises(ValueError, match="optimizer must be 'adam' or 'signum'"):
        create_sae("topk", 16, 64, k=4, optimizer="sgd")
    with pytest.raises(ValueError, match="adam_beta1 must be in"):
        create_sae("relu", 16, 64, adam_beta1=1.0)
    with pytest.raises(ValueError, match="encoder_bias_init must be"):
        create_sae("jumprelu", 16, 64, encoder_bias_init="ones")
    with pytest.raises(ValueError, match="init_firing_rate must be in"):
        create_sae("jumprelu", 16, 64, init_firing_rate=1.5)


def test_jumprelu_rate_init_sets_each_latents_firing_rate():
    sample = torch.randn(4096, 16) * 3 + 1
    sae = create_sae("jumprelu", 16, 256, target_l0=8)
    assert sae.cfg.resolved_init_firing_rate == pytest.approx(8 / 256)
    sae.init_from_data(sample)
    rates = (sae.encode(sample) > 0).float().mean(dim=0)
    assert rates.mean().item() == pytest.approx(8 / 256, rel=0.05)
    assert rates.min().item() > 0.5 * 8 / 256 and rates.max().item() < 2 * 8 / 256
    untouched = create_sae("jumprelu", 16, 256, target_l0=8, encoder_bias_init="zero")
    untouched.init_from_data(sample)
    assert torch.equal(untouched.b_enc, torch.zeros(256))
