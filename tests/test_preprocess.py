"""Centring and standardisation of vectors, folded exactly into the saved SAE (issue 16, item 2)."""

import json

import numpy as np
import pytest
import torch

import saescope
from saescope.data.activations import ArraySource
from saescope.data.preprocess import AffineSource, input_statistics
from saescope.jobs import create_job


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "topk", "batchtopk", "gated", "matryoshka", "feature_choice"])
def test_folding_gives_the_trained_codes_and_raw_reconstructions(arch):
    torch.manual_seed(0)
    sae = create_job(arch, 8, 32, target_l0=3).sae
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand_like(sae.threshold) * 0.3)
    mean, std = torch.randn(8) * 20, torch.rand(8) * 3 + 0.2
    raw = torch.randn(64, 8) * std + mean
    normalised = (raw - mean) / std
    with torch.no_grad():
        codes, reconstruction = sae.encode(normalised), sae(normalised)
        folded = sae.copy()
        folded.fold_input_affine(mean, std)
        torch.testing.assert_close(folded.encode(raw), codes, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(folded(raw), reconstruction * std + mean, atol=1e-3, rtol=1e-4)


def test_statistics_and_the_shifted_source():
    values = np.random.default_rng(0).normal(loc=5.0, scale=3.0, size=(1000, 4)).astype(np.float32)
    source = ArraySource(values)
    affine = input_statistics(source, standardize=True)
    np.testing.assert_allclose(affine.mean.numpy(), values.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(affine.std.numpy(), values.std(axis=0), rtol=1e-4)
    shifted = torch.cat(list(AffineSource(source, affine).iter_batches(100)))
    assert shifted.mean(dim=0).abs().max() < 1e-4 and (shifted.std(dim=0, unbiased=False) - 1).abs().max() < 1e-3


def test_far_from_the_origin_data_train_with_centring_by_default(tmp_path):
    """Sparse signals on a large offset: centring (the default) keeps latents alive; the saved SAE takes raw vectors."""
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(32, 16))
    codes = (rng.random((8192, 32)) < 0.1) * rng.exponential(1.0, size=(8192, 32))
    values = (codes @ directions + 40.0).astype(np.float32)  # every vector sits near 40·(1, …, 1)
    np.save(tmp_path / "x.npy", values)
    plan = {"data": {"array": str(tmp_path / "x.npy")}, "training": {"tokens": 8192 * 8, "batch_size": 512},
            "sweep": {"architectures": ["topk"], "widths": [64], "target_l0s": [4]}}
    saescope.train(plan, tmp_path / "centred", progress=False)
    saescope.train({**plan, "data": {"array": str(tmp_path / "x.npy"), "center": False}}, tmp_path / "raw", progress=False)
    centred, raw = saescope.load(tmp_path / "centred" / "topk"), saescope.load(tmp_path / "raw" / "topk")
    assert centred.normalization["input_affine"]["centered"] is True and "input_affine" not in raw.normalization
    data = torch.from_numpy(values)
    fvu_centred = saescope.evaluate_sae(centred, data, description_length=False).fvu
    fvu_raw = saescope.evaluate_sae(raw, data, description_length=False).fvu
    assert fvu_centred < fvu_raw, (fvu_centred, fvu_raw)
    cfg = json.loads((tmp_path / "centred" / "topk" / "cfg.json").read_text())
    assert cfg["normalization"]["input_affine"]["statistics_rows"] == 8192


def test_log1p_counts_become_the_saes_own_input_transform(tmp_path, capsys):
    """Counts: --log1p trains on log(1 + x), centred; the saved SAE takes the raw counts and reconstructs log(1 + x)."""
    from saescope.cli import main
    from saescope.errors import InvalidInput

    rng = np.random.default_rng(1)
    programs = rng.gamma(0.3, 4.0, size=(4096, 12))
    counts = rng.poisson(programs @ rng.random((12, 24)) * 2.0).astype(np.float32)
    np.save(tmp_path / "counts.npy", counts)
    plan = {"data": {"array": str(tmp_path / "counts.npy"), "log1p": True}, "training": {"tokens": 4096 * 6, "batch_size": 512},
            "sweep": {"architectures": ["topk"], "widths": [48], "target_l0s": [4]}}
    saescope.train(plan, tmp_path / "log", progress=False)
    sae = saescope.load(tmp_path / "log" / "topk")
    assert sae.cfg.input_transform == "log1p" and sae.normalization["input_transform"] == "log1p"
    raw = torch.from_numpy(counts)
    logged = torch.log1p(raw)
    # the same SAE without the transform, fed log(1 + x) by hand, gives the same codes and reconstructions
    plain = sae.copy()
    plain.cfg.input_transform = None
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(raw), plain.encode(logged))
        torch.testing.assert_close(sae(raw), plain(logged))
    # the evaluation measures FVU in the space the SAE reconstructs (log(1 + x)), from the raw counts
    metrics = saescope.evaluate_sae(sae, raw, description_length=False)
    assert metrics.fvu == pytest.approx(saescope.evaluate_sae(plain, logged, description_length=False).fvu, rel=1e-5)
    assert metrics.fvu < 0.5
    with pytest.raises(InvalidInput, match="reads log\\(1 \\+ x\\) of counts .* got a negative value"):
        sae.encode(logged - 1.0)
    with pytest.raises(InvalidInput, match="SAELens cannot represent"):
        saescope.export_saelens(sae, tmp_path / "export")
    # the CLI flag, and a clear refusal of data that are not counts
    np.save(tmp_path / "centred.npy", counts - counts.mean(axis=0))
    with pytest.raises(SystemExit, match=r"centred.npy: --log1p needs non-negative counts, found -"):
        main(["train", "--data", str(tmp_path / "centred.npy"), "--log1p", "--out", str(tmp_path / "bad"), "--tokens", "4096",
              "--arch", "topk", "--width", "16", "--target-l0", "2"])
    # it survives a save/load round trip through cfg.json
    assert json.loads((tmp_path / "log" / "topk" / "cfg.json").read_text())["input_transform"] == "log1p"
