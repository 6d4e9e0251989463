"""User mistakes get one message naming the argument and what to do, never a raw traceback (issue 12, item 5)."""

import json
import os

import numpy as np
import pytest
import torch
from lm_helpers import save_tiny_model, tiny_suite_config, write_corpus

import saescope
from saescope.cli import main
from saescope.errors import SaescopeError


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"), "llama", n_layers=2)


def test_integer_activations_are_refused_by_name(tmp_path):
    path = tmp_path / "ints.npy"
    np.save(path, np.arange(64 * 8).reshape(64, 8))
    with pytest.raises(SystemExit, match=rf"{path}: vectors must be floating point, found int64; save them as float32"):
        main(["train", "--data", str(path), "--arch", "topk", "--width", "16", "--target-l0", "2", "--out", str(tmp_path / "o")])
    with pytest.raises(SaescopeError, match="must be floating point, got torch.int64; convert them with .float()"):
        saescope.evaluate_sae(saescope.create_sae("topk", 8, 16, k=2), torch.arange(64).reshape(8, 8))


def test_encode_on_batch_sequence_input_says_how_to_flatten():
    sae = saescope.create_sae("jumprelu", 8, 16, hookpoint="layers.3.resid_post")
    with pytest.raises(SaescopeError, match=r"takes \[n_tokens, d_in=8\] activations, got \(2, 5, 8\): flatten the leading dimensions with x.reshape\(-1, 8\)"):
        sae.encode(torch.randn(2, 5, 8))
    with pytest.raises(SaescopeError, match=r"\(trained on layers.3.resid_post\) expects activations of width d_in=8, got shape \(4, 6\)"):
        sae(torch.randn(4, 6))
    gated = saescope.create_sae("gated", 8, 16)
    with pytest.raises(SaescopeError, match="d_in=8"):
        gated.encode(torch.randn(4, 6))


def test_steer_with_an_sae_of_another_width_is_refused_before_generating(model_dir, tmp_path):
    sae = saescope.create_sae("topk", 48, 64, k=4, hookpoint="layers.1.resid_post")
    from saescope.io.checkpoint import save_sae

    save_sae(sae, tmp_path / "sae48")
    with pytest.raises(SystemExit, match=r"feature 1 at layers.1.resid_post: the SAE expects d_in=48, but layers.1.resid_post of LlamaForCausalLM has width 32"):
        main(["steer", "--sae", str(tmp_path / "sae48"), "--feature", "1", "--value", "1", "--prompt", "hello", "--model", model_dir, "--device", "cpu"])


def test_relative_paths_are_stored_absolute_and_work_from_another_folder(model_dir, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    os.symlink(model_dir, work / "model")
    write_corpus(work / "c.txt")
    monkeypatch.chdir(work)
    config = tiny_suite_config("model", "c.txt", hookpoints=["layers.1.resid_post"], tokens=1024)
    saescope.train_suite(config, "suite", progress=False, report=lambda line: None)
    index = json.loads((work / "suite" / "suite.json").read_text())
    assert index["model"] == str((work / "model").resolve()) == index["config"]["model"]["model"]
    assert index["dataset"] == str(work / "c.txt") and index["given"] == {"model": "model", "dataset": "c.txt"}
    cfg = json.loads((work / "suite" / "layers.1.resid_post" / "topk-w64-l0_4" / "cfg.json").read_text())
    assert cfg["model_id"] == index["model"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    rows = saescope.evaluate_suite(work / "suite", recompute=True, plots=False, progress=False)
    assert rows and rows[0]["fvu"] > 0
    assert main(["steer", "--sae", str(work / "suite" / "layers.1.resid_post" / "topk-w64-l0_4"), "--feature", "0", "--value", "1",
                 "--prompt", "hello", "--max-new-tokens", "3", "--device", "cpu"]) == 0


def test_an_unreachable_hub_is_named_as_such(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SaescopeError, match="could not reach the Hugging Face hub .* not in the local hub cache"):
        saescope.load("someone/no-such-saes/layer_3/width_16k")
    from saescope.lm.models import load_model

    with pytest.raises(SaescopeError, match="someone/no-such-model: could not reach the Hugging Face hub"):
        load_model("someone/no-such-model", device="cpu")
