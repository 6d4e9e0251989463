"""The omics simulation (Schuster 2024): the generative model as specified, the recovery measures, a small end-to-end run."""

import numpy as np
import pytest
import torch

from saescope.cli import main
from saescope.errors import InvalidInput
from saescope.evaluation.variable_recovery import (
    correlation_matrix,
    one_hot,
    variable_recovery,
)
from saescope.synthetic.omics import (
    OmicsConfig,
    simulate_omics,
    train_dense_autoencoder,
)
from saescope.synthetic.omics_bench import (
    BASELINE,
    OmicsBenchConfig,
    omics_spread,
    run_omics_benchmark,
)


def test_the_simulation_follows_the_generative_model():
    config = OmicsConfig(n_samples=6000, n_genes=50, seed=3)
    data = simulate_omics(config)
    n, p = 6000, 100
    assert data.x0.shape == data.x1.shape == data.x2.shape == (n, p) and data.y.shape == (n, 50)
    # programs: Poisson with rate 1 + 0.1 j (mean and variance both the rate)
    rates = 1 + 0.1 * torch.arange(p)
    assert torch.allclose(data.x0.mean(dim=0), rates, rtol=0.08)
    assert torch.equal(data.x0, data.x0.round()) and (data.x0 >= 0).all()
    # the covariate shifts every program by its index, with noise of std 0.1
    shift = data.x1 - data.x0
    for c in range(3):
        rows = data.covariate == c
        assert abs(shift[rows].mean().item() - c) < 0.01 and abs(shift[rows].std().item() - 0.1) < 0.01
    # each cell type keeps a fixed ~30% of programs, and zeroes the rest
    assert torch.equal(data.x2, data.x1 * data.masks[data.cell_type])
    assert abs(data.masks.mean().item() - 0.3) < 0.05 and data.masks.shape == (40, p)
    assert torch.allclose(data.y, data.x2 @ data.adjacency, rtol=1e-5, atol=1e-3)
    assert abs(data.adjacency.mean().item() - 0.1) < 0.02
    again = simulate_omics(config)
    assert torch.equal(again.y, data.y) and not torch.equal(simulate_omics(OmicsConfig(n_samples=6000, n_genes=50, seed=4)).y, data.y)
    with pytest.raises(InvalidInput, match="mask_probability"):
        OmicsConfig(mask_probability=0)


def test_recovery_measures_on_planted_latents():
    torch.manual_seed(0)
    hidden = torch.randn(500, 3)
    labels = torch.randint(0, 4, (500,))
    latents = torch.stack([hidden[:, 0], -2 * hidden[:, 1] + 1, (labels == 2).float() * 3, torch.zeros(500),
                           hidden[:, 0] * 0.5 + 0.01 * torch.randn(500), torch.rand(500)], dim=1)
    result = variable_recovery(latents, {"hidden": hidden, "label": one_hot(labels, 4)})
    assert result["n_latents"] == 6 and result["n_active"] == 5  # the all-zero latent is not active
    # variables 0 and 1 are found exactly (|r| = 1, sign ignored), variable 2 only by chance
    best = correlation_matrix(latents[:, [0, 1, 2, 4, 5]], hidden).abs().max(dim=0).values
    assert best[0] == pytest.approx(1) and best[1] == pytest.approx(1) and best[2] < 0.2
    assert result["hidden"]["highest_corr"] == pytest.approx(best.mean().item())
    assert result["hidden"]["n_above"] == 3  # latents 0, 1 and the noisy copy of 0
    assert result["label"]["n_above"] == 1 and result["label"]["n_variables"] == 4
    assert result["n_redundant"] == 2  # latent 0 and its noisy copy
    assert correlation_matrix(torch.ones(10, 1), torch.randn(10, 2)).abs().max() == 0  # constant: no correlation


def test_the_autoencoder_fits_and_the_benchmark_runs_small(capsys):
    data = simulate_omics(OmicsConfig(n_samples=800, n_genes=60, n_cell_types=5, seed=1))
    _model, latents, fvu = train_dense_autoencoder(data.y, latent=16, hidden=32, epochs=20)
    assert latents.shape == (800, 16) and fvu < 0.5
    config = OmicsBenchConfig(simulation=OmicsConfig(n_samples=800, n_genes=60, n_cell_types=5), architectures=("topk", "relu"),
                              ae_latent=16, ae_hidden=32, ae_epochs=20, expansion=8, target_l0=4, steps=150, batch_size=128, progress=False)
    rows = run_omics_benchmark(config, seeds=[0, 1])
    assert [r["arch"] for r in rows] == [BASELINE, "topk", "relu"] * 2
    topk = [r for r in rows if r["arch"] == "topk"]
    assert all(r["l0"] == pytest.approx(4, abs=0.05) and r["fvu"] < 0.6 for r in topk)
    # five cell types in 800 cells: some SAE latent tracks each type far better than chance
    assert min(r["cell_type"]["highest_corr"] for r in topk) > 0.6
    spread = omics_spread(rows)
    assert [s["arch"] for s in spread] == [BASELINE, "topk", "relu"] and spread[1]["seeds"] == 2
    assert np.isclose(spread[1]["cell_type"]["highest_corr"]["mean"], np.mean([r["cell_type"]["highest_corr"] for r in topk]))
    with pytest.raises(InvalidInput, match="--seeds"):
        run_omics_benchmark(config, seeds=[0, 0])
    with pytest.raises(SystemExit, match="runs on its own"):
        main(["bench", "synthetic", "--variants", "omics", "uniform"])
    with pytest.raises(InvalidInput, match="unknown architecture"):
        OmicsBenchConfig(architectures=("nope",))
