"""The trainer: target-L0 control, exact resume, one pass for many SAEs, normalisation, bad input."""

import numpy as np
import pytest
import torch

from saescope.evaluation.metrics import evaluate_sae
from saescope.jobs import create_job
from saescope.saes import create_sae
from saescope.synthetic.synthetic import SyntheticActivations, SyntheticConfig
from saescope.training import SaeTrainer, TrainConfig, Trainer, train_saes


def _quiet(**overrides):
    return TrainConfig(**{"progress": False, "log_every": 10, **overrides})


def test_target_l0_lands_within_ten_percent():
    data = SyntheticActivations(SyntheticConfig(d_in=32, n_features=96, mean_l0=4, seed=0))
    saes = {arch: create_job(arch, 32, 192, target_l0=6) for arch in ("jumprelu", "relu", "gated")}
    saes["jumprelu-tanh"] = create_job("jumprelu", 32, 192, target_l0=6, objective="jumprelu_tanh")
    trained = Trainer(saes, _quiet(total_tokens=512 * 1500, batch_size=512, log_every=100)).fit(lambda: data.stream(512, seed=1))
    held_out = data.sample(32768, seed=99)
    for name, sae in trained.items():
        measured = evaluate_sae(sae, held_out, description_length=False).l0
        assert abs(measured - 6) <= 0.6, f"{name}: L0 {measured:.2f} is not within 10% of 6"


def _resume_setup(tmp_path):
    torch.manual_seed(3)
    acts = torch.randn(3000, 16) * 2 + 0.5
    def saes():
        torch.manual_seed(0)
        return {
            "jumprelu": create_job("jumprelu", 16, 64, target_l0=5),
            "topk": create_job("topk", 16, 64, k=4),
            "batchtopk": create_job("batchtopk", 16, 64, k=4),
            "gated": create_job("gated", 16, 64, sparsity_coefficient=0.1),
        }
    config = _quiet(total_tokens=128 * 60, batch_size=128, checkpoint_every=20, checkpoint_dir=str(tmp_path / "ckpt"),
                    dead_window_tokens=256, log_every=5)
    return acts, saes, config


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path):
    acts, saes, config = _resume_setup(tmp_path)
    reference = Trainer(saes(), _quiet(**{**config.to_dict(), "checkpoint_every": None, "checkpoint_dir": None})).fit(acts)

    class Interrupt(Exception):
        pass

    def stop_at_40(step, metrics):
        if step == 40:
            raise Interrupt

    interrupted = Trainer(saes(), config)
    interrupted.add_callback(stop_at_40)
    with pytest.raises(Interrupt):
        interrupted.fit(acts)
    resumed = Trainer(saes(), config).fit(acts, resume=True)
    for name, sae in reference.items():
        for tensor_name, tensor in sae.export_tensors().items():
            assert torch.equal(resumed[name].export_tensors()[tensor_name], tensor), f"{name}.{tensor_name} differs after resume"


def test_resume_with_other_settings_is_refused(tmp_path):
    acts, saes, config = _resume_setup(tmp_path)
    Trainer(saes(), config).fit(acts)
    other = _quiet(**{**config.to_dict(), "batch_size": 64})
    with pytest.raises(ValueError, match="checkpoint has batch_size=128 but this run has 64"):
        Trainer(saes(), other).fit(acts, resume=True)


def test_many_saes_share_one_pass_over_the_data():
    reads = []

    def stream():
        for i in range(10):
            reads.append(i)
            yield torch.randn(256, 8)

    saes = [create_sae("jumprelu", 8, 32), create_sae("topk", 8, 32, k=2), create_sae("jumprelu", 8, 32)]  # bare SAEs: default objectives
    trainer = Trainer(saes, _quiet(total_tokens=256 * 5, batch_size=256, normalization_tokens=256))
    trained = trainer.fit(stream)
    assert sorted(trained) == ["jumprelu-0", "jumprelu-1", "topk"]
    # one read for the normalisation estimate, then five batches for all three SAEs together
    assert len(reads) == 1 + 5
    with pytest.raises(RuntimeError, match="already fitted"):
        trainer.fit(stream)


def test_trained_saes_take_raw_activations(tmp_path):
    data = SyntheticActivations(SyntheticConfig(d_in=16, n_features=48, mean_l0=3))
    raw = data.sample(40_000, seed=0) * 1000.0 + 5.0  # far from unit scale
    trained = train_saes(raw, [create_sae("topk", 16, 96, k=3)], _quiet(total_tokens=40_000 * 4, batch_size=500), out_dir=str(tmp_path))
    sae = trained["topk"]
    assert sae.normalization["folded"] and sae.normalization["input_scale"] == pytest.approx(1 / 1000, rel=0.5)
    metrics = evaluate_sae(sae, raw[:5000], description_length=False)
    assert metrics.fvu < 0.5
    assert (tmp_path / "topk" / "cfg.json").is_file()
    assert sae.training_summary["n_tokens"] == 160_000


def test_trains_from_a_numpy_memmap(tmp_path):
    path = tmp_path / "acts.npy"
    np.save(path, np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float16))
    memmap = np.load(path, mmap_mode="r")
    trained = Trainer([create_sae("relu", 8, 32)], _quiet(total_tokens=4000, batch_size=200)).fit(memmap)
    assert trained["relu"].training_summary["n_steps"] == 20


def test_dead_latents_are_tracked_over_a_token_window():
    job = create_job("relu", 8, 32, lr=1e-12)
    with torch.no_grad():
        job.sae.b_enc[:8] = -1e4  # these eight can never fire
    trainer = SaeTrainer(job, _quiet(total_tokens=10_000, batch_size=100, dead_window_tokens=300), torch.device("cpu"))
    x = torch.randn(100, 8)
    for step in range(2):
        trainer.train_step(x, step)
    assert trainer.read_metrics()["dead_fraction"] == 0.0  # 200 tokens < window
    for step in range(2, 4):
        trainer.train_step(x, step)
    assert trainer.read_metrics()["dead_fraction"] >= 8 / 32


def test_nan_activations_give_a_clear_error():
    acts = torch.randn(2000, 8)
    acts[1500, 3] = float("nan")
    config = _quiet(total_tokens=2000, batch_size=100, normalization_tokens=100, shuffle=False)
    with pytest.raises(ValueError, match="contain NaN or inf"):
        Trainer([create_sae("jumprelu", 8, 32)], config).fit(acts)
    with pytest.raises(ValueError, match="NaN or inf"):
        Trainer([create_sae("jumprelu", 8, 32)], _quiet(total_tokens=2000, batch_size=100)).fit(torch.full((500, 8), float("inf")))


def test_wrong_width_and_empty_data():
    with pytest.raises(ValueError, match="activations have width 7.*but SAE 'jumprelu' expects d_in=8"):
        Trainer([create_sae("jumprelu", 8, 32)], _quiet(total_tokens=1000, batch_size=100)).fit(torch.randn(500, 7))
    with pytest.raises(ValueError, match="no activations"):
        Trainer([create_sae("jumprelu", 8, 32)], _quiet(total_tokens=1000, batch_size=100)).fit(lambda: iter([]))
    with pytest.raises(ValueError, match="fewer than one batch"):
        Trainer([create_sae("jumprelu", 8, 32)], _quiet(total_tokens=1000, batch_size=100)).fit(torch.randn(50, 8))


def test_a_one_shot_generator_ends_the_run_when_dry():
    batches = (torch.randn(100, 8) for _ in range(6))
    trained = Trainer([create_sae("topk", 8, 32, k=2)], _quiet(total_tokens=10_000, batch_size=100, normalization_tokens=150)).fit(batches)
    assert trained["topk"].training_summary["n_steps"] == 6


def test_bad_train_configs():
    with pytest.raises(ValueError, match="total_tokens=10 is less than one batch"):
        TrainConfig(total_tokens=10, batch_size=100)
    with pytest.raises(ValueError, match="checkpoint_every needs"):
        TrainConfig(checkpoint_every=10)
    with pytest.raises(TypeError, match="expected a saescope SaeJob or SparseAutoencoder"):
        Trainer([torch.nn.Linear(2, 2)])
    with pytest.raises(ValueError, match=r"two SAE jobs share the name\(s\) \['topk'\]"):
        Trainer([create_job("topk", 8, 32), create_job("topk", 8, 32, k=4)])


def test_firing_rate_reaches_an_objective_that_asks_for_it():
    from dataclasses import dataclass

    from saescope.jobs import SaeJob
    from saescope.objectives.topk import TopKObjective

    seen = []

    @dataclass
    class CountingTopK(TopKObjective):  # an objective that reads the running firing rate
        uses_firing_rate = True

        def loss(self, sae, x, ctx):
            seen.append(ctx.firing_rate.clone())
            return super().loss(sae, x, ctx)

    torch.manual_seed(0)
    plain = create_job("topk", 8, 32, k=4, lr=1e-9)  # weights stay put, so every step fires the same latents
    job = SaeJob("counting", plain.sae, CountingTopK(lr=1e-9))
    trainer = SaeTrainer(job, _quiet(total_tokens=100_000, batch_size=500), torch.device("cpu"))
    x = torch.randn(500, 8)
    for step in range(3):
        trainer.train_step(x, step)
    assert torch.equal(seen[0], torch.zeros(32))  # nothing measured before the first step
    counts = (job.sae.encode(x) > 0).float().mean(dim=0)
    assert trainer.firing_rate.sum().item() == pytest.approx(4.0, rel=1e-4)  # k=4 per token, bias-corrected from step 1
    assert torch.allclose(seen[1], counts, atol=1e-5) and torch.allclose(trainer.firing_rate, counts, atol=1e-5)
    # objectives that do not ask get None, and the trainer skips the per-latent count
    other = SaeTrainer(create_job("topk", 8, 32, k=4), _quiet(total_tokens=100_000, batch_size=500), torch.device("cpu"))
    other.train_step(x, 0)
    assert torch.equal(other.firing_rate_weight, torch.zeros(()))


def test_a_checkpoint_is_one_atomic_step_and_a_changed_tensor_file_is_refused(tmp_path):
    from saescope.io.trainer_state import (
        STATE_JSON,
        load_trainer_state,
        save_trainer_state,
    )

    folder = tmp_path / "ckpt"
    save_trainer_state(folder, {"step": 10}, {"w": torch.zeros(3)})
    save_trainer_state(folder, {"step": 20}, {"w": torch.ones(3)})
    assert sorted(p.name for p in folder.iterdir()) == sorted([STATE_JSON, "trainer_state.000000020.safetensors"])
    info, tensors = load_trainer_state(folder)
    assert info["step"] == 20 and torch.equal(tensors["w"], torch.ones(3))
    # A kill after the new tensors were renamed but before the JSON was: the old JSON still names a whole file.
    stale_json = (folder / STATE_JSON).read_text()
    save_trainer_state(folder, {"step": 30}, {"w": torch.full((3,), 3.0)})
    (folder / "trainer_state.000000020.safetensors").write_bytes((folder / "trainer_state.000000030.safetensors").read_bytes())
    (folder / STATE_JSON).write_text(stale_json)
    with pytest.raises(ValueError, match="checksum does not match"):
        load_trainer_state(folder)
