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


def test_model_errors_are_one_clear_message(model_dir, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c.txt")
    with pytest.raises(SystemExit, match=r"unknown hookpoint 'layers.9.resid_post'.*valid hookpoints: layers.0-1"):
        main(["train", "--model", model_dir, "--dataset", corpus, "--hookpoints", "layers.9.resid_post", "--target-l0", "4", "--tokens", "1024", "--batch-size", "256", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="dataset 'missing.jsonl': no such file"):
        main(["train", "--model", model_dir, "--dataset", "missing.jsonl", "--hookpoints", "layers.0.resid_post", "--tokens", "1024", "--batch-size", "256", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match=r"hookpoints: give at least one \(--hookpoints layers.10.resid_post"):
        main(["train", "--model", model_dir, "--tokens", "1024", "--batch-size", "256", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="not a model folder"):
        main(["train", "--model", str(tmp_path), "--hookpoints", "layers.0.resid_post", "--tokens", "1024", "--batch-size", "256", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="gives 16 latents at layers.0.resid_post, fewer than target L0 32"):
        main(["train", "--model", model_dir, "--dataset", corpus, "--arch", "topk", "--width", "16", "--hookpoints", "layers.0.resid_post",
              "--tokens", "1024", "--batch-size", "256", "--out", str(tmp_path / "o2")])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # typed flags: argparse refuses a bad value before anything loads
        main(["train", "--model", model_dir, "--hookpoints", "layers.0.resid_post", "--tokens", "lots", "--out", str(tmp_path / "o3")])
    assert exit_info.value.code == 2 and "argument --tokens: invalid int value: 'lots'" in capsys.readouterr().err


def test_train_flags_build_the_same_plan_as_a_file(model_dir, tmp_path):
    from saescope.cli import _train_extras, build_parser
    from saescope.cli_plan import plan_from_args
    from saescope.plan import RunPlan

    argv = ["train", "--model", model_dir, "--hookpoints", "layers.0.resid_post", "--arch", "topk", "jumprelu", "--width", "64", "4x",
            "--target-l0", "4", "8", "--tokens", "2048", "--batch-size", "256", "--k", "3", "--sparsity-coefficient", "0.1", "--lr", '{"topk": 0.004}',
            "--no-exclude-special", "--out", str(tmp_path / "o")]
    args = build_parser().parse_args(argv)
    plan = plan_from_args(args, _train_extras(args))
    expected = RunPlan.from_dict({
        "model": {"model": model_dir}, "data": {"exclude_special": False}, "training": {"tokens": 2048, "batch_size": 256},
        "sweep": {"hookpoints": ["layers.0.resid_post"], "architectures": ["topk", "jumprelu"], "widths": [64, "4x"], "target_l0s": [4.0, 8.0],
                  "lr": {"topk": 0.004}, "options": {"topk": {"k": 3}, "jumprelu": {"sparsity_coefficient": 0.1}}},
    })
    assert plan.to_dict() == expected.to_dict()
    config = tmp_path / "plan.yaml"
    config.write_text("training:\n  tokens: 4096\nsweep:\n  hookpoints: [layers.1.resid_post]\n  widths: [32]\n")
    over = plan_from_args(build_parser().parse_args(["train", "--config", str(config), "--tokens", "8192", "--out", "o"]))
    assert over.training.tokens == 8192 and over.sweep.widths == [32] and over.sweep.hookpoints == ["layers.1.resid_post"]
