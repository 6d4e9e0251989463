"""Feature Choice, Mutual Choice and aux_zipf (Ayonrinde 2024): selection rules against brute force, budgets,
inference thresholds, the Zipf shortfall on hand-made curves, and round trips."""

import pytest
import torch

import saescope
from saescope.io.interop import export_saelens, load_sae
from saescope.jobs import create_job
from saescope.objectives import StepContext
from saescope.objectives.batchtopk import batch_top_k
from saescope.objectives.feature_choice import (
    feature_choice,
    uniform_capacities,
    zipf_capacities,
)
from saescope.objectives.topk import zipf_shortfall
from saescope.synthetic.synthetic import SyntheticActivations, SyntheticConfig
from saescope.training import TrainConfig, Trainer


def test_capacities_spend_the_budget_exactly():
    assert uniform_capacities(10, 4).tolist() == [3, 3, 2, 2]
    rates = torch.tensor([0.1, 0.5, 0.0, 0.3, 0.2])
    capacities = zipf_capacities(rates, budget=40, cap=16, exponent=1.0, offset=1.0)
    assert int(capacities.sum()) == 40 and int(capacities.max()) <= 16
    # the most frequent latent (index 1) gets the most, the least frequent (index 2) the least
    assert int(capacities.argmax()) == 1 and int(capacities.argmin()) == 2
    # without the cap the split follows 1/(rank + 1): 1, 1/2, 1/3, 1/4, 1/5 by rank
    free = zipf_capacities(rates, budget=137, cap=1000)
    expected = torch.tensor([1 / 4, 1.0, 1 / 5, 1 / 2, 1 / 3]) / sum([1, 1 / 2, 1 / 3, 1 / 4, 1 / 5]) * 137  # ranks 3, 0, 4, 1, 2
    assert int(free.sum()) == 137 and (free - expected).abs().max() < 1.0
    with pytest.raises(ValueError, match="cannot fit 5 latents of at most 2 tokens"):
        zipf_capacities(rates, budget=11, cap=2)


def test_feature_choice_keeps_each_columns_top_m_like_brute_force():
    torch.manual_seed(0)
    acts = torch.relu(torch.randn(12, 5))
    capacities = torch.tensor([0, 1, 3, 12, 2])
    kept, last = feature_choice(acts, capacities)
    for column, m in enumerate(capacities.tolist()):
        order = acts[:, column].argsort(descending=True)
        expected = torch.zeros(12)
        expected[order[:m]] = acts[order[:m], column]
        assert torch.equal(kept[:, column], expected), column
        assert last[column] == (acts[order[m - 1], column] if m else 0.0)
    # gradient reaches exactly the chosen entries (a chosen entry may be a ReLU zero)
    leaf = acts.clone().requires_grad_(True)
    feature_choice(leaf, capacities)[0].sum().backward()
    assert torch.equal(leaf.grad.sum(dim=0), capacities.float()) and ((leaf.grad != 0) | (kept == 0)).all()


def test_mutual_choice_is_batchtopk_selection_with_an_exact_budget():
    torch.manual_seed(1)
    acts = torch.relu(torch.randn(50, 40))
    kept, cutoff = batch_top_k(acts, 3 * 50, torch.tensor(0.0))
    assert int((kept > 0).sum()) == 150 and cutoff == acts.flatten().topk(150).values.min()
    job = create_job("mutual_choice", 8, 40, target_l0=3)
    assert job.objective.name == "mutual_choice" and job.sae.cfg.k == 3
    out = job.objective.loss(job.sae.train(), torch.randn(50, 8), StepContext(0, 0.0, 0.0))
    assert int(out.code.l0_per_token().sum()) == 150


def test_zipf_shortfall_on_hand_made_curves():
    ranks = torch.arange(1, 101, dtype=torch.float32)
    perfect = 0.3 / ranks  # an exact Zipf law: nothing falls short
    assert zipf_shortfall(perfect[torch.randperm(100)]).max() < 1e-4
    dying = perfect.clone()
    dying[80:] *= 0.25  # the tail fires at a quarter of what the law predicts for its rank
    dying[95:] = 0.0  # and five never fire
    shortfall = zipf_shortfall(dying)
    assert (shortfall[:80] < 1e-4).all()
    assert torch.allclose(shortfall[80:95], torch.full((15,), 0.75), atol=0.02)
    assert torch.equal(shortfall[95:], torch.ones(5))


def _train(jobs, steps=150):
    data = SyntheticActivations(SyntheticConfig(d_in=16, n_features=64, mean_l0=3, seed=0))
    config = TrainConfig(total_tokens=256 * steps, batch_size=256, progress=False, log_every=25, dead_window_tokens=256 * 20)
    trainer = Trainer(jobs, config)
    trained = trainer.fit(lambda: data.stream(256, seed=1))
    return trained, data.sample(8192, seed=2), trainer


def test_feature_choice_trains_without_dead_latents_and_its_threshold_rule_encodes_alone():
    torch.manual_seed(0)
    jobs = [create_job("feature_choice", 16, 64, target_l0=4, name="uniform"),
            create_job("feature_choice", 16, 64, target_l0=4, capacity="zipf", name="zipf"),
            create_job("topk", 16, 64, target_l0=4, name="topk")]
    trained, held_out, trainer = _train(jobs)
    for name in ("uniform", "zipf"):
        sae = trained[name]
        metrics = saescope.evaluate_sae(sae, held_out, description_length=False)
        # every latent chose tokens in every training batch; under the threshold rule on held-out data no
        # uniform latent is silent, and the Zipf tail (about 3 tokens a batch each) almost never is
        assert metrics.unfired_fraction == 0.0 if name == "uniform" else metrics.unfired_fraction < 0.05, (name, metrics.unfired_fraction)
        assert (sae.threshold > 0).all(), name
        # the inference rule (per-latent threshold, one token at a time) keeps about the training budget
        assert 2.0 < metrics.l0 < 8.0 and metrics.fvu < 0.6, (name, metrics.l0, metrics.fvu)
        one_by_one = torch.cat([sae.encode(held_out[i : i + 1]) for i in range(16)])
        assert torch.allclose(one_by_one, sae.encode(held_out[:16]), atol=1e-5)  # no dependence on the batch
    zipf_capacity = trainer.trainers[1].objective.capacities(trained["zipf"], 256, StepContext(10, 0.5, 0.0, firing_rate=trainer.trainers[1].firing_rate))
    assert int(zipf_capacity.sum()) == 4 * 256 and int(zipf_capacity.max()) > int(zipf_capacity.min()) > 0


def test_aux_zipf_revives_under_used_latents_through_the_shared_routine():
    torch.manual_seed(0)
    job = create_job("topk", 16, 64, target_l0=2, aux_target="zipf", aux_coefficient=0.5)
    assert job.objective.uses_firing_rate
    x = torch.randn(128, 16)
    rates = torch.cat([torch.full((32,), 0.05), torch.zeros(32)])  # half the latents never fire
    out = job.objective.loss(job.sae, x, StepContext(5, 0.1, 0.0, firing_rate=rates))
    out.terms["aux"].backward()
    assert out.terms["aux"] > 0
    assert job.sae.W_dec.grad[32:].abs().sum() > 0  # the silent half receives gradient through the aux term
    with pytest.raises(ValueError, match="aux_target must be 'dead' or 'zipf'"):
        create_job("topk", 16, 64, aux_target="rare")


@pytest.mark.parametrize("arch", ["feature_choice", "mutual_choice"])
def test_choice_saes_save_load_and_export_as_jumprelu(tmp_path, arch):
    torch.manual_seed(0)
    sae = create_job(arch, 8, 32, target_l0=4).sae
    with torch.no_grad():
        for tensor in sae.parameters():
            tensor.add_(torch.randn_like(tensor) * 0.3)
        sae.threshold.copy_(torch.rand(32) * 0.5)
    x = torch.randn(40, 8)
    saescope.save(sae, tmp_path / "ours")
    assert torch.equal(saescope.load(tmp_path / "ours").encode(x), sae.encode(x))
    export_saelens(sae, tmp_path / "saelens")
    as_saelens = load_sae(tmp_path / "saelens")
    assert as_saelens.architecture == "jumprelu"
    assert torch.allclose(as_saelens.encode(x), sae.encode(x), atol=1e-6)


def test_the_new_architectures_run_in_a_suite_through_eval_interpret_and_steer(tmp_path):
    from lm_helpers import save_tiny_model, tiny_loaded, tiny_suite_config, write_corpus

    from saescope.cli import main
    from saescope.steer import Intervention, Steering, generate

    corpus = write_corpus(tmp_path / "c.txt", repeat=12)
    model = save_tiny_model(tmp_path / "model")
    config = tmp_path / "plan.json"
    import json

    config.write_text(json.dumps(tiny_suite_config(model, corpus, hookpoints=["layers.1.resid_post"])))
    out = tmp_path / "suite"
    assert main(["train", "--config", str(config), "--arch", "feature_choice", "mutual_choice", "matryoshka",
                 "--out", str(out), "--interpret", "2048"]) == 0
    assert main(["eval", str(out), "--recompute", "--no-plots"]) == 0
    index = json.loads((out / "suite.json").read_text())
    assert [e["architecture"] for e in index["saes"]] == ["feature_choice", "mutual_choice", "matryoshka"]
    for entry in index["saes"]:
        assert entry["metrics"]["l0"] > 0 and entry["metrics"]["delta_lm_loss"] == entry["metrics"]["delta_lm_loss"]
        assert (out / entry["path"] / "interpret" / "summary.json").is_file()
        sae = saescope.load(out / entry["path"])
        loaded = tiny_loaded("llama", n_layers=2)
        steered = generate(loaded, "A list is", max_new_tokens=3, temperature=0,
                           steering=Steering(loaded.model, [Intervention(sae, 0, 5.0, kind="add")]))
        assert len(steered) == 3
