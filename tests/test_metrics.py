"""Metric values on hand-computed examples, streaming equals one-shot, FVU is about the mean."""

import math

import numpy as np
import pytest
import torch

from saescope.evaluation.metrics import (
    ReconstructionStats,
    density_histogram,
    evaluate_sae,
    fvu,
    l0,
    mmcs,
    shrinkage,
)
from saescope.saes import create_sae


def test_fvu_is_measured_about_the_mean():
    x = torch.tensor([[10.0, 0.0], [12.0, 0.0], [14.0, 0.0]])  # mean (12, 0); Σ‖x-x̄‖² = 8
    recon = torch.tensor([[11.0, 0.0], [12.0, 0.0], [13.0, 0.0]])  # Σ‖x-x̂‖² = 2
    assert fvu(x, recon) == pytest.approx(2 / 8)
    # about zero it would be 2 / (100+144+196) ≈ 0.0045: the bug this definition avoids
    assert fvu(x, recon) > 0.1


def test_l0_and_shrinkage_by_hand():
    acts = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.0, 0.5]])
    assert l0(acts) == pytest.approx(1.5)
    x = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    assert shrinkage(x, 0.5 * x) == pytest.approx(0.5)


def test_streaming_stats_equal_one_shot_and_resist_a_large_mean():
    torch.manual_seed(0)
    x = torch.randn(1000, 4) * 0.01 + 1e4  # tiny variance on a huge mean
    recon = x + torch.randn(1000, 4) * 0.005
    acts = torch.relu(torch.randn(1000, 6))
    stats = ReconstructionStats(4, 6)
    for chunk in range(0, 1000, 137):
        stats.update(x[chunk:chunk + 137], recon[chunk:chunk + 137], acts[chunk:chunk + 137])
    summary = stats.summary()
    x64, r64 = x.double(), recon.double()
    reference = ((x64 - r64) ** 2).sum() / ((x64 - x64.mean(0)) ** 2).sum()
    assert summary["fvu"] == pytest.approx(reference.item(), rel=1e-6)
    assert summary["l0"] == pytest.approx(l0(acts))
    assert summary["n_tokens"] == 1000


def test_dead_and_dense_fractions():
    stats = ReconstructionStats(2, 4)
    acts = torch.zeros(100, 4)
    acts[:, 0] = 1.0  # fires on 100%: dense
    acts[:5, 1] = 1.0  # 5%: neither
    acts[:20, 2] = 1.0  # 20%: dense
    stats.update(torch.randn(100, 2), torch.randn(100, 2), acts)
    summary = stats.summary()
    assert summary["unfired_fraction"] == pytest.approx(0.25)
    assert summary["dense_fraction"] == pytest.approx(0.5)


def test_density_histogram_counts_dead_apart():
    hist = density_histogram(torch.tensor([0.0, 0.0, 1e-3, 1e-2, 0.5]), n_bins=8)
    assert hist["dead"] == 2 and sum(hist["counts"]) == 3


def test_mmcs_finds_permuted_directions():
    truth = torch.eye(4)
    decoder = torch.eye(4)[[2, 0, 3, 1]] * 5.0
    assert torch.allclose(mmcs(truth, decoder), torch.ones(4, dtype=torch.float64))
    rotated = torch.tensor([[1.0, 1.0, 0, 0]])
    assert mmcs(truth[:1], rotated).item() == pytest.approx(1 / math.sqrt(2))


def _perfect_sae():
    """A ReLU SAE that reconstructs non-negative one-hot-ish data exactly."""
    sae = create_sae("relu", 4, 4)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(4))
        sae.W_dec.copy_(torch.eye(4))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_evaluate_sae_on_a_perfect_sae_and_description_length():
    torch.manual_seed(0)
    # each token has exactly one active coordinate with a value from {1, 2}: H_bool and H_q are known
    n = 4000
    idx = torch.randint(0, 4, (n,))
    values = torch.randint(1, 3, (n,)).float()
    x = torch.zeros(n, 4)
    x[torch.arange(n), idx] = values
    metrics = evaluate_sae(_perfect_sae(), x, batch_size=512)
    assert metrics.fvu == pytest.approx(0.0, abs=1e-12)
    assert metrics.l0 == pytest.approx(1.0)
    assert metrics.shrinkage == pytest.approx(1.0)
    assert metrics.unfired_fraction == 0.0
    assert metrics.dead_fraction is None and metrics.dead_window_tokens is None  # no training run recorded
    density = torch.bincount(idx, minlength=4).double() / n
    h_bool = -(density * density.log2() + (1 - density) * (1 - density).log2()).sum()
    # values 1 and 2 on (0, max=2] always fall in two distinct bins: ~1 bit when active
    expected = h_bool.item() + density.sum().item() * 1.0
    assert metrics.description_length == pytest.approx(expected, abs=0.01)


def test_evaluate_accepts_memmap_and_rejects_bad_input(tmp_path):
    sae = _perfect_sae()
    array = np.abs(np.random.default_rng(0).normal(size=(300, 4))).astype(np.float32)
    path = tmp_path / "acts.npy"
    np.save(path, array)
    metrics = evaluate_sae(sae, np.load(path, mmap_mode="r"), batch_size=64)
    assert metrics.n_tokens == 300
    with pytest.raises(ValueError, match="the SAE expects d_in=4"):
        evaluate_sae(sae, torch.randn(10, 5))
    bad = torch.ones(10, 4)
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or inf"):
        evaluate_sae(sae, bad)
    with pytest.raises(ValueError, match="no activations"):
        evaluate_sae(sae, torch.zeros(0, 4))


def test_ground_truth_measures_on_a_planted_dictionary():
    from saescope.evaluation.ground_truth import (
        ground_truth_metrics,
        mean_correlation_coefficient,
    )
    from saescope.saes import create_sae

    truth = torch.eye(4)
    # decoder: rows 0-2 are true directions 2, 0, 1 (shuffled); row 3 duplicates direction 0 at 60°; 4 is junk
    decoder = torch.stack([truth[2], truth[0], truth[1], 0.5 * truth[0] + (3**0.5 / 2) * truth[3], torch.tensor([0.5, 0.5, 0.5, 0.5])])
    # the best one-to-one matching: rows 0-2 exactly (3 × 1.0), row 3 to direction 3 (cos √3/2)
    assert mean_correlation_coefficient(decoder, truth) == pytest.approx((3 + 3**0.5 / 2) / 4)
    sae = create_sae("relu", 4, 5)
    with torch.no_grad():
        sae.W_dec.copy_(decoder)
        sae.W_enc.copy_(decoder.T)
        sae.b_enc.copy_(torch.tensor([-0.5, -0.5, -0.5, -0.5, -10.0]))  # latent 4 never fires
    true_active = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0]]).bool()
    x = true_active.float()
    metrics = ground_truth_metrics(sae, truth, x, true_active)
    # best |cos| per true direction: 1, 1, 1 and √3/2 (direction 3, from row 3): only three exceed 0.9
    assert metrics.mmcs == pytest.approx((3 + 3**0.5 / 2) / 4) and metrics.recovered == pytest.approx(0.75)
    assert metrics.mcc == pytest.approx((3 + 3**0.5 / 2) / 4)
    # best match per latent: 2, 0, 1, 3 and (a four-way tie, the first) 0 again: four distinct of five latents
    assert metrics.uniqueness == pytest.approx(4 / 5)
    # latents 0-2 fire exactly on their feature's tokens; latent 3 fires only on e3 (√3/2 − 0.5 > 0, while
    # e0 gives 0.5 − 0.5 = 0); latent 4 never fires and scores 0: every mean is (1 + 1 + 1 + 1 + 0) / 5
    assert metrics.f1 == pytest.approx(4 / 5) and metrics.precision == pytest.approx(4 / 5) and metrics.recall == pytest.approx(4 / 5)


def test_dead_comes_from_the_training_record_and_unfired_from_the_evaluation():
    from saescope.evaluation.metrics import training_dead
    from saescope.suite.evaluate import format_table

    sae = _perfect_sae()
    sae.training_summary = {"n_tokens": 5_000_000, "dead_window_tokens": 1_000_000, "dead_fraction": 0.25}
    x = torch.zeros(100, 4)
    x[:, 0] = 1.0  # only latent 0 fires in this short window
    metrics = evaluate_sae(sae, x, description_length=False)
    assert (metrics.dead_fraction, metrics.dead_window_tokens, metrics.unfired_fraction) == (0.25, 1_000_000, 0.75)
    # an SAE saved before the split: the tracker's last reading; a window longer than the run is capped
    sae.training_summary = {"n_tokens": 2000, "dead_window_tokens": 10_000_000, "final_train_metrics": {"dead_fraction": 0.5}}
    assert training_dead(sae) == {"dead_fraction": 0.5, "dead_window_tokens": 2000}
    table = format_table([{"path": "a", **metrics.to_dict()}])
    assert "25.0%" in table and "75.0%" in table
    assert table.splitlines()[-1] == ("dead: no firing in the training run's last 1,000,000 tokens; "
                                      "unfired: no firing in the 100 evaluation tokens (rare latents included)")
