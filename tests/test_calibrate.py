"""Post-hoc calibration of inference thresholds to a target L0 (issue 14: comparing batch-selection SAEs at equal L0)."""

import pytest
import torch

from saescope.evaluation.calibrate import calibrate_threshold
from saescope.evaluation.metrics import evaluate_sae
from saescope.jobs import create_job


def _data(n=4096, d=16, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka", "mutual_choice"])
def test_a_global_threshold_lands_exactly_on_the_target(arch):
    torch.manual_seed(0)
    sae = create_job(arch, 16, 64, target_l0=4).sae
    with torch.no_grad():
        sae.threshold.fill_(0.05)  # far too low: most positive pre-activations pass
    x = _data()
    result = calibrate_threshold(sae, x, target_l0=4)
    assert result.l0_before > 10 and result.l0_after == pytest.approx(4.0, abs=1 / 4096)
    assert evaluate_sae(sae, x, description_length=False).l0 == pytest.approx(4.0, abs=1 / 4096)
    assert bool((sae.threshold == sae.threshold[0]).all())  # still one global value


@pytest.mark.parametrize("arch", ["jumprelu", "feature_choice"])
def test_per_latent_thresholds_keep_their_ratios(arch):
    torch.manual_seed(0)
    sae = create_job(arch, 16, 64, target_l0=4).sae
    with torch.no_grad():
        sae.threshold.copy_(torch.rand(64) * 0.5 + 0.01)
    before = sae.threshold.clone()
    x = _data()
    result = calibrate_threshold(sae, x, target_l0=6)
    assert result.l0_after == pytest.approx(6.0, rel=0.02)
    torch.testing.assert_close(sae.threshold, before * result.scale)
    held_out = evaluate_sae(sae, _data(seed=1), description_length=False).l0
    assert held_out == pytest.approx(6.0, rel=0.1)  # on other draws of the same distribution it stays close


def test_calibration_refuses_what_it_cannot_do():
    topk = create_job("topk", 16, 64, target_l0=4).sae
    with pytest.raises(ValueError, match="topk SAEs have no inference threshold to calibrate"):
        calibrate_threshold(topk, _data(), target_l0=4)
    sae = create_job("batchtopk", 16, 64, target_l0=4).sae
    with pytest.raises(ValueError, match=r"target_l0 must be in \(0, 64\)"):
        calibrate_threshold(sae, _data(), target_l0=0)


def test_an_untrained_global_threshold_of_zero_is_set_from_the_data():
    sae = create_job("batchtopk", 16, 64, target_l0=4).sae
    assert float(sae.threshold.abs().max()) == 0.0
    result = calibrate_threshold(sae, _data(), target_l0=3)
    assert result.l0_after == pytest.approx(3.0, abs=1 / 4096) and float(sae.threshold[0]) > 0
