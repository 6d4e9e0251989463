"""`saescope train --model` and `saescope cache` on a tiny model saved to a folder."""

import json

import pytest
from lm_helpers import tiny_loaded, write_corpus

from saescope.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    loaded = tiny_loaded("gpt2", n_layers=2)
    loaded.model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return str(folder)


def test_train_from_model_writes_metrics(model_dir, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c.txt", repeat=12)
    out = tmp_path / "run"
    code = main(["train", "--model", model_dir, "--dataset", corpus, "--hookpoints", "blocks.1.hook_resid_post", "--arch", "jumprelu", "topk",
                 "--width", "64", "--target-l0", "4", "8", "--tokens", "3072", "--batch-size", "256", "--context-size", "32",
                 "--eval-tokens", "256", "--device", "cpu", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "ΔLM loss" in printed and "FVU" in printed
    folders = sorted(p.parent.relative_to(out).as_posix() for p in out.rglob("metrics.json"))
    assert folders == [f"layers.1.resid_post/{a}-w64-l0_{k}" for a in ("jumprelu", "topk") for k in (4, 8)]
    metrics = json.loads((out / folders[0] / "metrics.json").read_text())
    assert {"l0", "fvu", "delta_lm_loss", "loss_recovered", "kl", "dead_fraction", "dense_fraction"} <= set(metrics)


def test_cache_then_train_from_cache(model_dir, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c.txt", repeat=12)
    assert main(["cache", "--model", model_dir, "--dataset", corpus, "--hookpoints", "layers.0.mlp_out", "--tokens", "2000",
                 "--context-size", "32", "--storage-dtype", "fp16", "--device", "cpu", "--out", str(tmp_path / "cache")]) == 0
    assert "layers.0.mlp_out" in capsys.readouterr().out
    assert main(["train", "--cache", str(tmp_path / "cache"), "--arch", "topk", "--width", "64", "--target-l0", "4", "--tokens", "1024",
                 "--batch-size", "256", "--eval-tokens", "0", "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "layers.0.mlp_out" / "topk-w64-l0_4" / "sae_weights.safetensors").is_file()
    with pytest.raises(SystemExit, match="a cache already exists here; pass --resume"):
        main(["cache", "--model", model_dir, "--dataset", corpus, "--hookpoints", "layers.0.mlp_out", "--tokens", "2000", "--out", str(tmp_path / "cache")])


def test_model_errors_are_one_clear_message(model_dir, tmp_path):
    corpus = write_corpus(tmp_path / "c.txt")
    with pytest.raises(SystemExit, match=r"unknown hookpoint 'layers.9.resid_post'.*valid hookpoints: layers.0-1"):
        main(["train", "--model", model_dir, "--dataset", corpus, "--hookpoints", "layers.9.resid_post", "--target-l0", "4", "--tokens", "1024", "--batch-size", "256", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="dataset 'missing.jsonl': no such file"):
        main(["train", "--model", model_dir, "--dataset", "missing.jsonl", "--hookpoints", "layers.0.resid_post", "--tokens", "1024", "--batch-size", "256", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="--hookpoints is required"):
        main(["train", "--model", model_dir, "--tokens", "1024", "--batch-size", "256", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="not a model folder"):
        main(["train", "--model", str(tmp_path), "--hookpoints", "layers.0.resid_post", "--tokens", "1024", "--batch-size", "256", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="gives 16 latents at layers.0.resid_post, fewer than target L0 32"):
        main(["train", "--model", model_dir, "--dataset", corpus, "--arch", "topk", "--width", "16", "--hookpoints", "layers.0.resid_post",
              "--tokens", "1024", "--batch-size", "256", "--out", str(tmp_path / "o2")])
    with pytest.raises(SystemExit, match="--k and --sparsity-coefficient apply to --data"):
        main(["train", "--model", model_dir, "--hookpoints", "layers.0.resid_post", "--k", "4", "--out", str(tmp_path / "o3")])
