"""Optimisers (Signum, schedule-free Adam), per-SAE optimiser settings, k annealing, the λ controller's proportional term, and JumpReLU's data-based encoder-bias init."""

import pytest
import torch

from saescope.jobs import create_job
from saescope.objectives import StepContext
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
    job = create_job("topk", 16, 64, k=4, optimizer="signum")
    assert job.objective.optimizer_name() == "signum"
    assert isinstance(build_optimizer("signum", job.sae.parameters(), 1e-3, (0.9, 0.999)), Signum)
    assert create_job("jumprelu", 16, 64).objective.betas() == (0.0, 0.999)
    assert create_job("jumprelu", 16, 64, adam_beta1=0.9).objective.betas() == (0.9, 0.999)
    assert create_job("topk", 16, 64).objective.betas() == (0.9, 0.999)
    # lr: the objective's base at 2**14 latents, scaled by sqrt(2**14 / d_sae); lr_base and lr override
    assert create_job("topk", 16, 4096).objective.learning_rate(create_job("topk", 16, 4096).sae) == pytest.approx(2e-3 * 2)
    assert create_job("relu", 16, 4096, lr_base=1e-3).objective.learning_rate(create_job("relu", 16, 4096).sae) == pytest.approx(2e-3)
    assert create_job("relu", 16, 4096, lr=5e-4).objective.learning_rate(create_job("relu", 16, 4096).sae) == 5e-4
    with pytest.raises(ValueError, match="TopKObjective.optimizer must be one of"):
        create_job("topk", 16, 64, k=4, optimizer="sgd")
    with pytest.raises(ValueError, match="ReLUObjective.adam_beta1 must be in"):
        create_job("relu", 16, 64, adam_beta1=1.0)
    with pytest.raises(ValueError, match="encoder_bias_init must be"):
        create_job("jumprelu", 16, 64, encoder_bias_init="ones")
    with pytest.raises(ValueError, match="init_firing_rate must be in"):
        create_job("jumprelu", 16, 64, init_firing_rate=1.5)


def test_jumprelu_rate_init_sets_each_latents_firing_rate():
    sample = torch.randn(4096, 16) * 3 + 1
    job = create_job("jumprelu", 16, 256, target_l0=8)
    job.objective.init_from_data(job.sae, sample)
    rates = (job.sae.encode(sample) > 0).float().mean(dim=0)
    assert rates.mean().item() == pytest.approx(8 / 256, rel=0.05)
    assert rates.min().item() > 0.5 * 8 / 256 and rates.max().item() < 2 * 8 / 256
    untouched = create_job("jumprelu", 16, 256, target_l0=8, encoder_bias_init="zero")
    untouched.objective.init_from_data(untouched.sae, sample)
    assert torch.equal(untouched.sae.b_enc, torch.zeros(256))


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
    job = create_job("topk", 16, 64, k=4, optimizer="schedule_free_adam")
    sae = job.sae
    optimizer = build_optimizer("schedule_free_adam", sae.parameters(), 1e-2, (0.9, 0.999))
    job.objective.loss(sae, torch.randn(32, 16), StepContext(0, 0.0, 0.0)).loss.backward()
    optimizer.step()
    optimizer.state[sae.W_dec]["z"].mul_(3.0)
    optimizer.constrain(sae.W_dec, unit_norm_rows)
    for name in ("z", "x"):
        assert torch.allclose(optimizer.state[sae.W_dec][name].norm(dim=1), torch.ones(64), atol=1e-5)


def test_schedule_free_training_runs_without_lr_decay_and_ends_on_the_average():
    torch.manual_seed(0)
    data = torch.randn(4096, 16)
    job = create_job("topk", 16, 64, k=4, optimizer="schedule_free_adam")
    trainer = Trainer([job], TrainConfig(total_tokens=2048, batch_size=256, progress=False, normalization_tokens=1024))
    assert trainer.trainers[0].lr_decay_fraction == 0.0
    optimizer = trainer.trainers[0].optimizer
    trained = trainer.fit(data)["topk"]
    scale = trainer.trainers[0].input_scale
    # The returned weights are the averaged iterate x (not the y the parameters held while training):
    # W_enc is not renormalised, so it equals x exactly; b_enc is x divided by the folded input scale;
    # decoder rows are x projected onto the unit sphere.
    average = {name: optimizer.state[p]["x"] for name, p in (("W_enc", trained.W_enc), ("b_enc", trained.b_enc), ("W_dec", trained.W_dec))}
    assert torch.equal(trained.W_enc.detach(), average["W_enc"])
    assert torch.allclose(trained.b_enc.detach(), average["b_enc"] / scale)
    assert torch.allclose(trained.W_dec.detach(), average["W_dec"] / average["W_dec"].norm(dim=1, keepdim=True), atol=1e-6)
    assert not torch.allclose(average["W_enc"], optimizer.state[trained.W_enc]["z"])  # x and z differ: the check can fail
    assert not trained.training


def test_k_annealing_schedule():
    job = create_job("topk", 16, 64, k=4, k_anneal_fraction=0.5)
    sae, objective = job.sae, job.objective
    assert objective.training_k(sae, 0.0) == 16  # starts at 4k
    assert objective.training_k(sae, 0.25) == 10
    assert objective.training_k(sae, 0.5) == 4
    assert objective.training_k(sae, 0.9) == 4
    assert (sae.encode(torch.randn(8, 16)) > 0).sum(dim=1).max() <= 4  # inference always uses k
    out = objective.loss(sae, torch.randn(8, 16), StepContext(step=1, progress=0.1, sparsity_coefficient=0.0))
    l0 = out.code.l0_per_token()
    assert (l0 <= 14).all() and (l0 > 4).any()
    with pytest.raises(ValueError, match="k_anneal_start"):
        create_job("topk", 16, 64, k=4, k_anneal_start=2)
    with pytest.raises(ValueError, match="k_anneal_fraction"):
        create_job("topk", 16, 64, k=4, k_anneal_fraction=1.5)


def test_proportional_term_lowers_lambda_when_sparser_than_target():
    integral = SparsityController(1.0, target_l0=10, total_steps=100, warmup_fraction=0.0, device="cpu")
    both = SparsityController(1.0, target_l0=10, total_steps=100, warmup_fraction=0.0, device="cpu", proportional_gain=2.0)
    for step in range(5):
        integral.update(torch.tensor(5.0), step)
        both.update(torch.tensor(5.0), step)
    assert float(both.coefficient(10)) < float(integral.coefficient(10)) < 1.0
