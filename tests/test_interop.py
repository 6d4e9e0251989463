"""Gemma Scope and SAELens files written here load with outputs equal to an independent numpy
implementation of the published formulas; saescope SAEs round-trip through SAELens format."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

import saescope
from saescope import create_sae
from saescope.io.checkpoint import save_sae
from saescope.io.interop import (
    detect_format,
    export_saelens,
    load_gemma_scope,
    load_saelens,
)
from saescope.jobs import create_job


def _relu(x):
    return np.maximum(x, 0)


def numpy_encode(arch, p, x, apply_b_dec, k=None):
    """The published encoders (Gemma Scope tutorial, SAELens v6), written independently of saescope."""
    sae_in = x - p["b_dec"] if apply_b_dec else x
    if arch == "gated":
        u = sae_in @ p["W_enc"]
        gate = u + p["b_gate"]
        mag = sae_in @ (p["W_enc"] * np.exp(p["r_mag"])) + p["b_mag"]
        return (gate > 0) * _relu(mag)
    pre = sae_in @ p["W_enc"] + p["b_enc"]
    if arch == "standard":
        return _relu(pre)
    if arch == "jumprelu":
        return _relu(pre) * (pre > p["threshold"])
    if arch == "topk":
        out = np.zeros_like(pre)
        idx = np.argsort(-pre, axis=1)[:, :k]
        rows = np.arange(pre.shape[0])[:, None]
        out[rows, idx] = _relu(pre[rows, idx])
        return out
    raise ValueError(arch)


def numpy_decode(p, f):
    return f @ p["W_dec"] + p["b_dec"]


def _params(arch, d_in=12, d_sae=40, seed=0):
    rng = np.random.default_rng(seed)
    p = {"W_enc": rng.normal(size=(d_in, d_sae)).astype(np.float32), "W_dec": rng.normal(size=(d_sae, d_in)).astype(np.float32),
         "b_dec": rng.normal(size=d_in).astype(np.float32)}
    if arch == "gated":
        p.update(b_gate=rng.normal(size=d_sae).astype(np.float32), b_mag=rng.normal(size=d_sae).astype(np.float32),
                 r_mag=(0.1 * rng.normal(size=d_sae)).astype(np.float32))
    else:
        p["b_enc"] = rng.normal(size=d_sae).astype(np.float32)
    if arch == "jumprelu":
        p["threshold"] = rng.uniform(0.0, 1.5, size=d_sae).astype(np.float32)
    return p


def _check(sae, arch, p, apply_b_dec, k=None, seed=1):
    x = np.random.default_rng(seed).normal(size=(64, p["W_enc"].shape[0])).astype(np.float32) * 2
    expected = numpy_encode(arch, p, x, apply_b_dec, k)
    with torch.no_grad():
        got = sae.encode(torch.from_numpy(x)).numpy()
        decoded = sae.decode(torch.from_numpy(expected)).numpy()
    assert (expected > 0).sum() > 0
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(decoded, numpy_decode(p, expected), rtol=1e-5, atol=1e-4)


def test_gemma_scope_npz(tmp_path):
    p = _params("jumprelu")
    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_20" / "width_16k" / "average_l0_71"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **p)
    assert detect_format(folder) == "gemma_scope"
    sae = saescope.load(folder)
    assert sae.architecture == "jumprelu" and sae.cfg.hookpoint == "layers.20.resid_post" and not sae.apply_b_dec_to_input
    _check(sae, "jumprelu", p, apply_b_dec=False)
    att = tmp_path / "gemma-scope-9b-pt-att" / "layer_3" / "width_16k" / "average_l0_10"
    att.mkdir(parents=True)
    np.savez(att / "params.npz", **p)
    assert load_gemma_scope(att / "params.npz").cfg.hookpoint == "layers.3.attn_z"


@pytest.mark.parametrize("arch,apply_b_dec", [("standard", True), ("standard", False), ("jumprelu", False), ("topk", True), ("gated", True)])
def test_saelens_folders(tmp_path, arch, apply_b_dec):
    p = _params(arch)
    cfg = {"architecture": arch, "d_in": 12, "d_sae": 40, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": apply_b_dec,
           "normalize_activations": "none", "metadata": {"model_name": "gpt2", "hook_name": "blocks.3.hook_resid_post"}}
    if arch == "topk":
        cfg["k"] = 5
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    save_file(p, str(tmp_path / "sae_weights.safetensors"))
    assert detect_format(tmp_path) == "saelens"
    sae = saescope.load(tmp_path)
    assert sae.cfg.hookpoint == "layers.3.resid_post" and sae.cfg.model_id == "gpt2"  # TransformerLens names map onto saescope's sites
    _check(sae, arch, p, apply_b_dec, k=5)
    # Saved in saescope's own format and loaded back: identical behaviour, flag included.
    save_sae(sae, tmp_path / "ours")
    again = saescope.load(tmp_path / "ours")
    assert again.apply_b_dec_to_input == apply_b_dec
    _check(again, arch, p, apply_b_dec, k=5)


def test_saelens_batchtopk_with_a_global_threshold(tmp_path):
    p = _params("standard")
    tensors = dict(p, topk_threshold=np.array(0.7, dtype=np.float32))
    (tmp_path / "cfg.json").write_text(json.dumps({"architecture": "batchtopk", "d_in": 12, "d_sae": 40, "k": 4, "apply_b_dec_to_input": True}))
    save_file(tensors, str(tmp_path / "sae_weights.safetensors"))
    sae = load_saelens(tmp_path)
    jump = dict(p, threshold=np.full(40, 0.7, dtype=np.float32))
    _check(sae, "jumprelu", jump, apply_b_dec=True)


@pytest.mark.parametrize("arch", ["relu", "jumprelu", "topk", "gated", "batchtopk", "feature_choice", "mutual_choice", "matryoshka"])
def test_export_to_saelens_round_trips(tmp_path, arch):
    torch.manual_seed(0)
    sae = create_job(arch, 12, 40, target_l0=4, hookpoint="layers.2.mlp_out", model_id="tiny").sae
    with torch.no_grad():
        for name, tensor in sae.named_parameters():
            tensor.add_(torch.randn_like(tensor) * 0.3)
        for name, buffer in sae.named_buffers():
            if name == "threshold":
                buffer.copy_(torch.rand_like(buffer) * 0.5)
    folder = export_saelens(sae, tmp_path / arch)
    cfg = json.loads((folder / "cfg.json").read_text())
    assert cfg["architecture"] == {"relu": "standard", "batchtopk": "jumprelu", "feature_choice": "jumprelu", "mutual_choice": "jumprelu",
                                  "matryoshka": "jumprelu"}.get(arch, arch)
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_mlp_out" and cfg["metadata"]["saescope_hookpoint"] == "layers.2.mlp_out"
    assert cfg["metadata"]["sae_lens_version"] == "6.0.0" and cfg["metadata"]["model_name"] == "tiny" and cfg["normalize_activations"] == "none"
    assert saescope.load(folder).cfg.hookpoint == "layers.2.mlp_out"
    loaded = saescope.load(folder)
    x = torch.randn(50, 12) * 2
    with torch.no_grad():
        assert torch.allclose(loaded.encode(x), sae.encode(x), atol=1e-5)
        assert torch.allclose(loaded.decode(sae.encode(x)), sae.decode(sae.encode(x)), atol=1e-5)


def test_bad_files_give_clear_messages(tmp_path):
    np.savez(tmp_path / "params.npz", W_enc=np.zeros((4, 8), np.float32), W_dec=np.zeros((8, 4), np.float32))
    with pytest.raises(ValueError, match=r"params.npz: missing \['b_enc', 'b_dec', 'threshold'\]"):
        saescope.load(tmp_path / "params.npz")
    np.savez(tmp_path / "params.npz", W_enc=np.zeros((4, 8), np.float32), W_dec=np.zeros((8, 5), np.float32), b_enc=np.zeros(8, np.float32),
             b_dec=np.zeros(4, np.float32), threshold=np.zeros(8, np.float32))
    with pytest.raises(ValueError, match=r"W_dec has shape \[8, 5\], but W_enc \[4, 8\] implies \[8, 4\]"):
        saescope.load(tmp_path)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read a Gemma Scope params.npz"):
        load_gemma_scope(tmp_path / "bad.npz")
    lens = tmp_path / "lens"
    lens.mkdir()
    (lens / "cfg.json").write_text(json.dumps({"architecture": "transcoder", "d_in": 4, "d_sae": 8}))
    save_file({"W_enc": np.zeros((4, 8), np.float32)}, str(lens / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match="a SAELens transcoder config needs hook_name_out"):
        saescope.load(lens)
    (lens / "cfg.json").write_text(json.dumps({"architecture": "abstopk", "d_in": 4, "d_sae": 8, "k": 2}))
    with pytest.raises(ValueError, match="AbsTopK keeps the k largest .* non-negative"):
        saescope.load(lens)
    (lens / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": 4, "d_sae": 8, "normalize_activations": "expected_average_only_in"}))
    with pytest.raises(ValueError, match="normalize_activations='expected_average_only_in' needs a dataset-dependent scale"):
        saescope.load(lens)
    (lens / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": 4, "d_sae": 8}))
    with pytest.raises(ValueError, match=r"tensors do not match a relu SAE \(missing \['W_dec', 'b_dec', 'b_enc'\]"):
        saescope.load(lens)
    with pytest.raises(FileNotFoundError, match="no such SAE folder or file"):
        saescope.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not an SAE"):
        saescope.load(tmp_path / "empty")


def test_hub_ids_download_the_files_the_format_needs(tmp_path, monkeypatch):
    """The hub path on local files: hf_hub_download is pointed at a folder laid out like the hub repos."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    hub = tmp_path / "hub"
    gemma = hub / "google/gemma-scope-2b-pt-mlp/layer_5/width_16k/average_l0_40"
    gemma.mkdir(parents=True)
    p = _params("jumprelu")
    np.savez(gemma / "params.npz", **p)
    lens = hub / "someone/saes/blocks.2.hook_resid_post"
    export_saelens(create_sae("topk", 12, 40, k=3, hookpoint="blocks.2.hook_resid_post"), lens)
    requested = []

    def fake_download(repo_id, filename, **kwargs):
        requested.append(f"{repo_id}/{filename}")
        path = hub / repo_id / filename
        if not path.is_file():
            raise EntryNotFoundError(f"{filename} not found")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    sae = saescope.load("google/gemma-scope-2b-pt-mlp/layer_5/width_16k/average_l0_40")
    assert sae.cfg.hookpoint == "layers.5.mlp_out" and requested == ["google/gemma-scope-2b-pt-mlp/layer_5/width_16k/average_l0_40/params.npz"]
    _check(sae, "jumprelu", p, apply_b_dec=False)
    requested.clear()
    topk = saescope.load("someone/saes/blocks.2.hook_resid_post")
    assert topk.architecture == "topk" and topk.cfg.k == 3
    assert requested[-2:] == ["someone/saes/blocks.2.hook_resid_post/cfg.json", "someone/saes/blocks.2.hook_resid_post/sae_weights.safetensors"]
    with pytest.raises(FileNotFoundError, match="has no params.npz or cfg.json"):
        saescope.load("someone/saes/missing")


def test_convert_command(tmp_path, capsys):
    from saescope.cli import main

    p = _params("jumprelu")
    folder = tmp_path / "gemma-scope-2b-pt-res/layer_7/width_16k/average_l0_30"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **p)
    assert main(["convert", str(folder), str(tmp_path / "lens"), "--to", "saelens"]) == 0
    assert "jumprelu, d_in 12, 40 latents" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "lens" / "cfg.json").read_text())
    assert cfg["apply_b_dec_to_input"] is False and cfg["metadata"]["hook_name"] == "blocks.7.hook_resid_post"
    _check(saescope.load(tmp_path / "lens"), "jumprelu", p, apply_b_dec=False)
    assert main(["convert", str(tmp_path / "lens"), str(tmp_path / "ours")]) == 0
    _check(saescope.load(tmp_path / "ours"), "jumprelu", p, apply_b_dec=False)
    with pytest.raises(SystemExit, match="no such SAE folder or file"):
        main(["convert", str(tmp_path / "missing"), str(tmp_path / "x")])


def _rescaled_numpy_encode(p, x, k, apply_b_dec=True, threshold=None):
    """SAELens v6 TopK/BatchTopK with rescale_acts_by_decoder_norm (written from its formulas, not from saescope)."""
    norms = np.linalg.norm(p["W_dec"], axis=1)
    pre = ((x - p["b_dec"]) if apply_b_dec else x) @ p["W_enc"] + p["b_enc"]
    pre = pre * norms
    if threshold is not None:
        return _relu(pre) * (pre > threshold)
    out = np.zeros_like(pre)
    idx = np.argsort(-pre, axis=1)[:, :k]
    rows = np.arange(pre.shape[0])[:, None]
    out[rows, idx] = _relu(pre[rows, idx])
    return out


def _rescaled_numpy_decode(p, f):
    return (f / np.linalg.norm(p["W_dec"], axis=1)) @ p["W_dec"] + p["b_dec"]


def test_saelens_topk_trained_with_rescale_acts_by_decoder_norm_loads_exactly(tmp_path):
    """SAELens's TopK training default: the decoder norms are folded in on load, with the same outputs."""
    p = _params("standard")
    p["W_dec"] *= np.random.default_rng(3).uniform(0.05, 3.0, size=(40, 1)).astype(np.float32)  # far from unit rows
    cfg = {"architecture": "topk", "d_in": 12, "d_sae": 40, "k": 5, "apply_b_dec_to_input": True, "rescale_acts_by_decoder_norm": True,
           "metadata": {"sae_lens_version": "6.54.12", "hook_name": "blocks.8.hook_resid_pre", "model_name": "gpt2-small"}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    save_file(p, str(tmp_path / "sae_weights.safetensors"))
    sae = saescope.load(tmp_path)
    assert sae.cfg.hookpoint == "layers.8.resid_pre"  # gpt2-small-res-jb's site, now a saescope site
    x = np.random.default_rng(4).normal(size=(64, 12)).astype(np.float32) * 2
    expected = _rescaled_numpy_encode(p, x, 5)
    with torch.no_grad():
        got = sae.encode(torch.from_numpy(x)).numpy()
        reconstruction = sae(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(reconstruction, _rescaled_numpy_decode(p, expected), rtol=1e-5, atol=1e-4)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(40), atol=1e-5)


def test_saelens_matryoshka_batchtopk_loads_as_a_matryoshka_with_its_levels(tmp_path):
    p = _params("standard")
    tensors = dict(p, topk_threshold=np.array(0.6, dtype=np.float32))
    cfg = {"architecture": "matryoshka_batchtopk", "d_in": 12, "d_sae": 40, "k": 4.0, "matryoshka_widths": [8, 20],
           "apply_b_dec_to_input": False, "rescale_acts_by_decoder_norm": True, "metadata": {"sae_lens_version": "6.54.12"}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    save_file(tensors, str(tmp_path / "sae_weights.safetensors"))
    sae = saescope.load(tmp_path)
    assert sae.architecture == "matryoshka" and sae.cfg.prefixes == [8, 20, 40]
    x = np.random.default_rng(5).normal(size=(64, 12)).astype(np.float32)
    with torch.no_grad():
        got = sae.encode(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, _rescaled_numpy_encode(p, x, 4, apply_b_dec=False, threshold=0.6), rtol=1e-5, atol=1e-4)


def test_attn_z_exports_with_the_hook_z_reshape():
    import tempfile

    sae = create_sae("jumprelu", 16, 32, hookpoint="layers.4.attn_z", model_id="google/gemma-2-2b")
    with tempfile.TemporaryDirectory() as folder:
        cfg = json.loads((export_saelens(sae, folder) / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == "blocks.4.attn.hook_z" and cfg["reshape_activations"] == "hook_z"
