"""Interop against the real SAELens package (optional: skipped where sae_lens is not importable).

``make test-saelens`` installs SAELens 6.54.12 beside the virtual environment and runs these.
"""

import pytest
import torch

sae_lens = pytest.importorskip("sae_lens")

import saescope  # noqa: E402
from saescope.io.interop import export_saelens  # noqa: E402
from saescope.jobs import create_job  # noqa: E402


def _randomised(sae):
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in sae.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    return sae


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "relu", "matryoshka"])
def test_a_saescope_export_loads_in_saelens_with_its_hook_and_model(tmp_path, arch):
    sae = create_job(arch, 12, 40, target_l0=4, hookpoint="layers.2.mlp_out", model_id="gpt2").sae
    with torch.no_grad():
        for name, tensor in sae.named_parameters():
            tensor.add_(torch.randn_like(tensor) * 0.3)
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand_like(sae.threshold) * 0.5)
    lens = sae_lens.SAE.load_from_disk(str(export_saelens(sae, tmp_path / arch)))
    assert lens.cfg.metadata.hook_name == "blocks.2.hook_mlp_out" and lens.cfg.metadata.model_name == "gpt2"
    x = torch.randn(64, 12) * 2
    with torch.no_grad():
        torch.testing.assert_close(lens.encode(x), sae.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lens.decode(sae.encode(x)), sae.decode(sae.encode(x)), atol=1e-5, rtol=1e-5)


def test_saelens_default_topk_loads_in_saescope_with_identical_outputs(tmp_path):
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    config = TopKTrainingSAEConfig(d_in=12, d_sae=40, k=5, metadata=SAEMetadata(hook_name="blocks.8.hook_resid_pre", model_name="gpt2-small"))
    assert config.rescale_acts_by_decoder_norm  # SAELens's default
    trained = _randomised(TopKTrainingSAE(config))
    trained.save_inference_model(str(tmp_path))
    lens = sae_lens.SAE.load_from_disk(str(tmp_path))
    ours = saescope.load(tmp_path)
    assert ours.cfg.hookpoint == "layers.8.resid_pre" and ours.cfg.model_id == "gpt2-small"
    x = torch.randn(64, 12) * 2
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), lens.encode(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(x), lens(x), atol=1e-5, rtol=1e-5)


def test_saelens_matryoshka_batchtopk_loads_with_its_levels(tmp_path):
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )

    trained = _randomised(MatryoshkaBatchTopKTrainingSAE(MatryoshkaBatchTopKTrainingSAEConfig(d_in=12, d_sae=40, k=4, matryoshka_widths=[8, 20, 40])))
    with torch.no_grad():
        trained.topk_threshold.fill_(0.8)
    x = torch.randn(64, 12) * 2
    for save in ("save_inference_model", "save_model"):
        folder = tmp_path / save
        getattr(trained, save)(str(folder))
        ours = saescope.load(folder)
        assert ours.architecture == "matryoshka" and ours.cfg.prefixes == [8, 20, 40], save
        lens = sae_lens.SAE.load_from_disk(str(tmp_path / "save_inference_model"))
        with torch.no_grad():
            torch.testing.assert_close(ours.encode(x), lens.encode(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["jumprelu", "relu"])
@pytest.mark.parametrize("skip", [False, True])
def test_a_saescope_transcoder_loads_in_saelens_with_identical_outputs(tmp_path, arch, skip):
    sae = create_job(arch, 12, 40, reads=saescope.jobs.ReadSpec(("layers.2.mlp_in",), target="layers.2.mlp_out"), target_l0=4,
                     skip=skip, model_id="gpt2").sae
    with torch.no_grad():
        for _name, tensor in sae.named_parameters():
            tensor.add_(torch.randn_like(tensor) * 0.3)
        if hasattr(sae, "threshold"):
            sae.threshold.copy_(torch.rand_like(sae.threshold) * 0.5)
    lens = sae_lens.SAE.load_from_disk(str(export_saelens(sae, tmp_path / "tc")))
    expected = {("jumprelu", False): "jumprelu_transcoder", ("jumprelu", True): "jumprelu_skip_transcoder",
                ("relu", False): "transcoder", ("relu", True): "skip_transcoder"}[(arch, skip)]
    assert lens.cfg.architecture() == expected and lens.cfg.metadata.hook_name == "blocks.2.ln2.hook_normalized"
    assert lens.cfg.metadata.hook_name_out == "blocks.2.hook_mlp_out"
    x = torch.randn(64, 12) * 2
    with torch.no_grad():
        out = lens(x)
        out = out[0] if isinstance(out, tuple) else out
        torch.testing.assert_close(out, sae(x), atol=1e-5, rtol=1e-5)
        back = saescope.load(tmp_path / "tc")
        torch.testing.assert_close(back(x), sae(x), atol=1e-6, rtol=1e-6)
