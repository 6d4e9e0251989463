"""Save/load round trips and every way a checkpoint can be broken."""

import json

import pytest
import torch

import saescope
from saescope.io.checkpoint import save_sae
from saescope.jobs import create_job
from saescope.saes import ARCHITECTURES, create_sae


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_round_trip(tmp_path, arch):
    sae = create_job(arch, 8, 32, target_l0=4, hookpoint="layers.3.resid_post", model_id="tiny").sae
    with torch.no_grad():
        for p in sae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    sae.normalization = {"input_scale": 0.5, "folded": True}
    save_sae(sae, tmp_path / "sae")
    loaded = saescope.load(tmp_path / "sae")
    assert type(loaded) is type(sae) and loaded.cfg == sae.cfg
    for name, tensor in sae.export_tensors().items():
        assert torch.equal(loaded.export_tensors()[name], tensor), name
    x = torch.randn(20, 8)
    assert torch.equal(loaded.encode(x), sae.eval().encode(x))
    cfg = json.loads((tmp_path / "sae" / "cfg.json").read_text())
    assert cfg["architecture"] == arch and cfg["hookpoint"] == "layers.3.resid_post" and cfg["model_id"] == "tiny"
    assert cfg["normalization"]["input_scale"] == 0.5 and "saescope_version" in cfg
    assert not list((tmp_path / "sae").glob("*.pt")) and not list((tmp_path / "sae").glob("*.pkl"))


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "sae"
    save_sae(create_sae("jumprelu", 8, 32), path)
    return path


def test_missing_folder_and_files(tmp_path, saved):
    with pytest.raises(FileNotFoundError, match="no such SAE folder"):
        saescope.load(tmp_path / "nowhere")
    (saved / "sae_weights.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="sae_weights.safetensors: missing"):
        saescope.load(saved)


def test_truncated_weights(saved):
    weights = saved / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])
    with pytest.raises(ValueError, match="its SHA-256 does not match the one in .*cfg.json"):
        saescope.load(saved)
    cfg = json.loads((saved / "cfg.json").read_text())
    del cfg["weights_sha256"]  # a folder from before checksums: still caught by the reader
    (saved / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="truncated or corrupt"):
        saescope.load(saved)


def test_a_flipped_byte_in_the_weights_is_caught(saved):
    weights = saved / "sae_weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x40  # inside a tensor's data: the file still parses, the values are wrong
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="its SHA-256 does not match"):
        saescope.load(saved)


def test_corrupt_config(saved):
    (saved / "cfg.json").write_text("{not json")
    with pytest.raises(ValueError, match="cfg.json: not valid JSON"):
        saescope.load(saved)


def test_unknown_architecture(saved):
    cfg = json.loads((saved / "cfg.json").read_text())
    cfg["architecture"] = "mystery"
    (saved / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unknown SAE architecture 'mystery'"):
        saescope.load(saved)


def test_wrong_shapes(saved):
    cfg = json.loads((saved / "cfg.json").read_text())
    cfg["d_sae"] = 64
    (saved / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"W_enc has shape \[8, 32\], but cfg.json \(d_in=8, d_sae=64\) implies \[8, 64\]"):
        saescope.load(saved)


def test_non_finite_weights(tmp_path):
    sae = create_sae("topk", 8, 32, k=4)
    with torch.no_grad():
        sae.W_dec[0, 0] = float("nan")
    save_sae(sae, tmp_path / "sae")
    with pytest.raises(ValueError, match="W_dec contains NaN or inf"):
        saescope.load(tmp_path / "sae")


def test_folders_from_saescope_0_1_load_with_their_training_settings_as_provenance(saved):
    cfg = json.loads((saved / "cfg.json").read_text())
    # 0.1 wrote the recipe beside the SAE fields; those keys are training provenance now
    cfg.update(target_l0=8.0, lr=None, optimizer=None, sparsity_loss="step", bandwidth=None, encoder_bias_init="rate")
    (saved / "cfg.json").write_text(json.dumps(cfg))
    assert saescope.load(saved).cfg.d_sae == 32
    cfg["tresholdd"] = 1
    (saved / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"cfg.json: invalid config: unknown JumpReLUConfig fields \['tresholdd'\]"):
        saescope.load(saved)


def test_a_checkpoint_with_nan_is_refused_on_resume(tmp_path):
    import numpy as np
    from safetensors.torch import load_file, save_file

    from saescope.io.atomic import file_sha256
    from saescope.io.trainer_state import STATE_JSON

    np.save(tmp_path / "acts.npy", np.random.default_rng(0).normal(size=(2048, 8)).astype(np.float32))
    plan = {"data": {"array": str(tmp_path / "acts.npy")}, "training": {"tokens": 2048, "batch_size": 256, "checkpoint_every": 4},
            "sweep": {"architectures": ["topk"], "widths": [16], "target_l0s": [2]}}
    saescope.train(plan, tmp_path / "run", progress=False)
    state = tmp_path / "run" / "checkpoint"
    info = json.loads((state / STATE_JSON).read_text())
    tensors = load_file(str(state / info["tensors_file"]))
    name = next(n for n in tensors if n.endswith("W_dec"))
    tensors[name][0, 0] = float("nan")
    save_file(tensors, str(state / info["tensors_file"]))
    info["tensors_sha256"] = file_sha256(state / info["tensors_file"])  # a consistent file that holds a NaN
    (state / STATE_JSON).write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"holds NaN or inf in .*W_dec.*start again without --resume"):
        saescope.train(plan, tmp_path / "run", resume=True, progress=False)


def test_resuming_on_other_data_is_refused_with_the_difference(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    np.save(tmp_path / "acts.npy", rng.normal(size=(2048, 8)).astype(np.float32))
    plan = {"data": {"array": str(tmp_path / "acts.npy")}, "training": {"tokens": 2048, "batch_size": 256, "checkpoint_every": 4},
            "sweep": {"architectures": ["topk"], "widths": [16], "target_l0s": [2]}}
    saescope.train(plan, tmp_path / "run", progress=False)
    np.save(tmp_path / "acts.npy", (3 + 5 * rng.normal(size=(2048, 8))).astype(np.float32))  # same shape, other data
    with pytest.raises(ValueError, match=r"the checkpoint was written on other data \(sample_sha256: .* → .*\); resume with the data it started on"):
        saescope.train(plan, tmp_path / "run", resume=True, progress=False)
