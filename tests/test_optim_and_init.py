"""Optimisers (Signum, schedule-free Adam), per-SAE optimiser settings, k annealing, the λ controller's proportional term, and JumpReLU's data-based encoder-bias init."""

import pytest
import torch

from saescope.saes import create_sae
from saescope.saes.base import unit_norm_rows
from saescope.training import TrainConfig, Trainer
from saescope.training.optimizers import ScheduleFreeAdam, Signum, build_optimizer
from saescope.training.sparsity_control import SparsityController


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
    with pytest.raises(ValueError, match="optimizer must be one of"):
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


def test_schedule_free_adam_averages_and_minimises_a_quadratic():
    torch.manual_seed(0)
    target = torch.randn(8)
    weight = torch.nn.Parameter(torch.zeros(8))
    optimizer = ScheduleFreeAdam([weight], lr=0.05)
    for _ in range(400):
        optimizer.zero_grad()
        (weight - target).pow(2).sum().backward()
        optimizer.step()
    state = optimizer.state[weight]
    # The parameter holds y, between z and x; after use_average it holds the averaged iterate x.
    expected_y = torch.lerp(state["z"], state["x"], 0.9)
    assert torch.allclose(weight.detach(), expected_y, atol=1e-6)
    optimizer.use_average()
    assert torch.equal(weight.detach(), state["x"])
    assert (weight.detach() - target).abs().max() < 0.05


def test_schedule_free_constraint_reaches_both_iterates():
    sae = create_sae("topk", 16, 64, k=4, optimizer="schedule_free_adam")
    optimizer = build_optimizer("schedule_free_adam", sae.parameters(), 1e-2, (0.9, 0.999))
    sae(torch.randn(32, 16)).loss.backward()
    optimizer.step()
    optimizer.state[sae.W_dec]["z"].mul_(3.0)
    optimizer.constrain(sae.W_dec, unit_norm_rows)
    for name in ("z", "x"):
        assert torch.allclose(optimizer.state[sae.W_dec][name].norm(dim=1), torch.ones(64), atol=1e-5)


def test_schedule_free_training_runs_without_lr_decay_and_ends_on_the_average():
    torch.manual_seed(0)
    data = torch.randn(4096, 16)
    sae = create_sae("topk", 16, 64, k=4, optimizer="schedule_free_adam")
    trainer = Trainer([sae], TrainConfig(total_tokens=2048, batch_size=256, progress=False, normalization_tokens=1024))
    assert trainer.trainers[0].lr_decay_fraction == 0.0
    trained = trainer.fit(data)["topk"]
    assert torch.allclose(trained.W_dec.norm(dim=1), torch.ones(64), atol=1e-5)
    assert not trained.training


def test_k_annealing_schedule():
    sae = create_sae("topk", 16, 64, k=4, k_anneal_fraction=0.5)
    assert sae.cfg.k_anneal_start == 16
    sae.train()
    sae.set_training_progress(0.0)
    assert sae.training_k == 16
    sae.set_training_progress(0.25)
    assert sae.training_k == 10
    sae.set_training_progress(0.5)
    assert sae.training_k == 4
    sae.set_training_progress(0.1)
    sae.eval()
    assert sae.training_k == 4  # inference always uses k
    assert (sae.encode(torch.randn(8, 16)) > 0).sum(dim=1).max() <= 4
    sae.train()
    out = sae(torch.randn(8, 16))
    assert ((out.feature_acts > 0).sum(dim=1) <= 14).all() and ((out.feature_acts > 0).sum(dim=1) > 4).any()
    with pytest.raises(ValueError, match="k_anneal_start"):
        create_sae("topk", 16, 64, k=4, k_anneal_start=2)
    with pytest.raises(ValueError, match="k_anneal_fraction"):
        create_sae("topk", 16, 64, k=4, k_anneal_fraction=1.5)


def test_proportional_term_lowers_lambda_when_sparser_than_target():
    integral = SparsityController(1.0, target_l0=10, total_steps=100, warmup_fraction=0.0, device="cpu")
    both = SparsityController(1.0, target_l0=10, total_steps=100, warmup_fraction=0.0, device="cpu", proportional_gain=2.0)
    for step in range(5):
        integral.update(torch.tensor(5.0), step)
        both.update(torch.tensor(5.0), step)
    assert float(both.coefficient(10)) < float(integral.coefficient(10)) < 1.0
