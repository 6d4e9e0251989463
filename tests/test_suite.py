"""Suites on a tiny random model: config parsing, folder layout, suite.json, resume after a kill, eval outputs, plots, CLI errors."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from lm_helpers import save_tiny_model, tiny_suite_config, write_corpus

from saescope.cli import main
from saescope.io.suite_index import read_index
from saescope.suite import (
    SuiteConfig,
    SuiteConfigError,
    describe,
    evaluate_suite,
    format_table,
    train_suite,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "c.txt", repeat=12)


def small_config(model_dir, corpus, **overrides):
    return tiny_suite_config(model_dir, corpus, **{"architectures": ["jumprelu", "topk"], "widths": [64, "4x"], "target_l0s": [4, 8], **overrides})


@pytest.fixture(scope="module")
def trained_suite(model_dir, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("suite") / "s"
    index = train_suite(small_config(model_dir, corpus), out, progress=False, report=lambda line: None)
    return out, index


# -- config -------------------------------------------------------------------------------------------
def test_yaml_config_parses_and_rejects_bad_fields(tmp_path, corpus):
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(f"""
        model: smollm2-135m
        dataset: {corpus}
        hookpoints: ["layers.*.resid_post", layers.3.mlp_out]
        architectures: [jumprelu, topk]
        widths: [4608, 8x]
        target_l0s: [16, 32]
        tokens: 100000
        lr: {{topk: 0.004}}
        options: {{topk: {{k_anneal_fraction: 0.5}}}}
    """))
    config = SuiteConfig.from_file(path)
    sweep = config.sweep
    assert sweep.widths == [4608, "8x"] and sweep.target_l0s == [16, 32] and sweep.lr_for("topk") == 0.004 and sweep.lr_for("jumprelu") is None
    assert config.training.resolved_checkpoint_every() == 100000 // 4096 // 10
    # flat and nested files are the same plan, and the plan written next to the results reads back equal
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps(config.to_dict()))
    assert SuiteConfig.from_file(nested) == config and SuiteConfig.from_dict(config.to_dict()) == config
    bad = {
        "architectures: [jumprel]": "architectures: unknown architecture 'jumprel'",
        "widths: [eight]": "widths: 'eight' is neither a latent count",
        "widths: [0]": "widths: 0 must be positive",
        "target_l0s: [-1]": "target_l0s: -1 is not a positive number",
        "tokens: 10": "tokens: 10 is less than one batch",
        "colour: blue": "unknown field\\(s\\) \\['colour'\\]",
        "dataset: missing/folder/data.jsonl": "dataset: dataset 'missing/folder/data.jsonl': no such file",
        "hookpoints: []": "hookpoints: give at least one",
        "lr: {gated: 0.1}": "lr: 'gated' is not one of this plan's architectures",
        "batch_size: 4.5": "batch_size: 4.5 is not an integer",
        "dtype: int8": "dtype: 'int8' is not one of 'float32', 'bfloat16', 'float16' or null",
        "training: {hookpoints: [a]}": "unknown field\\(s\\) \\['training.hookpoints'\\]",
    }
    for line, message in bad.items():
        file = tmp_path / "bad.yaml"
        file.write_text(f"hookpoints: [layers.0.resid_post]\narchitectures: [jumprelu, topk]\n{line}\n")
        with pytest.raises(SuiteConfigError, match=f"{file}: {message}"):
            SuiteConfig.from_file(file).check_sources()  # the dataset is checked before training, not on reading
    (tmp_path / "broken.yaml").write_text("hookpoints: [unclosed\n")
    with pytest.raises(SuiteConfigError, match="broken.yaml: cannot parse"):
        SuiteConfig.from_file(tmp_path / "broken.yaml")
    with pytest.raises(FileNotFoundError, match="--config nowhere.yaml: no such file"):
        SuiteConfig.from_file("nowhere.yaml")


def test_example_config_in_the_repository_parses():
    example = Path(__file__).parent.parent / "examples" / "suite.yaml"
    config = SuiteConfig.from_file(example)
    assert config.model.model == "smollm2-135m" and len(config.sweep.architectures) >= 2


# -- training -----------------------------------------------------------------------------------------
def test_suite_folder_layout_and_index(trained_suite):
    out, index = trained_suite
    expected = sorted(f"layers.{layer}.resid_post/{arch}-w{width}-l0_{k}" for layer in (0, 1) for arch in ("jumprelu", "topk")
                      for width in (64, 128) for k in (4, 8))
    assert sorted(e["path"] for e in index["saes"]) == expected
    on_disk = sorted(p.parent.relative_to(out).as_posix() for p in out.rglob("sae_weights.safetensors"))
    assert on_disk == expected
    stored = read_index(out)
    assert stored["status"] == "complete" and stored == json.loads(json.dumps(index))
    for entry in stored["saes"]:
        metrics = json.loads((out / entry["path"] / "metrics.json").read_text())
        assert entry["metrics"]["fvu"] == metrics["fvu"] and entry["metrics"]["delta_lm_loss"] == metrics["delta_lm_loss"]
        cfg = json.loads((out / entry["path"] / "cfg.json").read_text())
        assert (cfg["d_sae"], cfg["hookpoint"], cfg["architecture"]) == (entry["width"], entry["hookpoint"], entry["architecture"])
        if entry["architecture"] == "topk":
            assert metrics["l0"] == pytest.approx(entry["target_l0"], abs=0.01)
    assert (out / "suite.yaml").is_file() and not (out / "checkpoint").exists()


def test_evaluate_reuses_training_metrics_and_writes_outputs(trained_suite, monkeypatch):
    out, _index = trained_suite

    def no_model(*args, **kwargs):
        raise AssertionError("complete metrics must be reused without loading the model")

    monkeypatch.setattr("saescope.lm.models.load_model", no_model)
    rows = evaluate_suite(out, progress=False)
    assert len(rows) == 16
    saved = json.loads((out / "eval.json").read_text())
    assert [r["path"] for r in saved["saes"]] == [r["path"] for r in rows]
    csv_lines = (out / "eval.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 17 and csv_lines[0].startswith("path,hookpoint,layer,site,architecture,width,target_l0,kind,l0,fvu,delta_lm_loss")
    for name in ("delta_lm_vs_l0.png", "fvu_vs_l0.png", "depth.png", "density.png"):
        data = (out / "plots" / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000
    table = format_table(rows)
    assert "ΔLM" in table and "layers.1.resid_post/topk-w128-l0_8" in table
    # the line under the table gives both windows: the training run's for dead, the evaluation's for unfired
    assert table.splitlines()[-1].startswith("dead: no firing in the training run's last ") and "evaluation tokens" in table.splitlines()[-1]


def test_evaluate_recompute_measures_again(trained_suite):
    out, _index = trained_suite
    rows = evaluate_suite(out, recompute=True, eval_tokens=512, plots=False, progress=False)
    assert all(r["eval_tokens"] >= 0.9 * 512 for r in rows)
    assert all(isinstance(r["delta_lm_loss"], float) for r in rows)


def test_select_by_mdl_on_a_suite_reuses_the_evaluation(trained_suite, monkeypatch, capsys):
    out, _index = trained_suite

    def no_model(*args, **kwargs):
        raise AssertionError("selection must read the evaluation's description-length tables, not the model")

    monkeypatch.setattr("saescope.lm.models.load_model", no_model)
    assert main(["select", str(out), "--max-fvu", "2"]) == 0
    printed = capsys.readouterr().out
    assert "layers.0.resid_post" in printed and "layers.1.resid_post" in printed
    saved = json.loads((out / "selection.json").read_text())
    rows = {r["path"]: r for r in json.loads((out / "eval.json").read_text())["saes"]}
    for hookpoint, candidates in saved["hookpoints"].items():
        ranked = [c for c in candidates if c["rank"]]
        assert len(ranked) == 8 and saved["chosen"][hookpoint] == ranked[0]["path"]
        assert [c["bits"] for c in ranked] == sorted(c["bits"] for c in ranked)
        for c in ranked:  # the bits come from the SAE's own table, at the bound asked for
            table = rows[c["path"]]["mdl"]["table"]
            best = min((q for q in table if q["fvu"] <= 2), key=lambda q: q["value_bits"])
            assert c["bits"] == pytest.approx(rows[c["path"]]["mdl"]["index_bits"] + best["value_bits"])
    assert (out / "plots" / "description_length.png").read_bytes()[:8] == PNG_MAGIC
    # a bound nothing meets: every SAE out, each with its reason
    assert main(["select", str(out), "--max-fvu", "0.0001"]) == 0
    printed = capsys.readouterr().out
    assert "no SAE at layers.0.resid_post meets FVU ≤ 0.0001" in printed and "before quantisation" in printed
    with pytest.raises(SystemExit, match="drop --data"):
        main(["select", str(out), "--data", "x.npy"])


def test_a_suite_measured_before_the_tables_gets_them_without_splicing(trained_suite, monkeypatch):
    out, index = trained_suite
    before = {}
    for entry in index["saes"][:3]:
        file = out / entry["path"] / "metrics.json"
        metrics = json.loads(file.read_text())
        before[entry["path"]] = metrics
        file.write_text(json.dumps({k: v for k, v in metrics.items() if k != "mdl"}))

    def no_splice(*args, **kwargs):
        raise AssertionError("adding description-length tables must not repeat the ΔLM evaluation")

    monkeypatch.setattr("saescope.evaluation.on_model.splice_evaluate", no_splice)
    rows = {r["path"]: r for r in evaluate_suite(out, plots=False, progress=False)}
    for path, metrics in before.items():
        again = json.loads((out / path / "metrics.json").read_text())
        assert again["mdl"]["table"] and again["delta_lm_loss"] == metrics["delta_lm_loss"]
        # the same held-out tokens as the evaluation that wrote the other columns
        assert again["mdl"]["fvu"] == pytest.approx(metrics["fvu"], rel=1e-6)
        assert rows[path]["description_length"] == pytest.approx(metrics["description_length"], rel=1e-6)


def test_info_describes_suites_and_saes(trained_suite, tmp_path):
    out, index = trained_suite
    text = describe(out)
    assert "16: architectures ['jumprelu', 'topk']" in text and "layers.0.resid_post, layers.1.resid_post" in text
    sae_text = describe(out / index["saes"][0]["path"])
    assert "architecture jumprelu" in sae_text and "metrics      l0" in sae_text
    with pytest.raises(ValueError, match="neither a suite"):
        describe(tmp_path)


def test_existing_suite_is_not_overwritten_and_resume_needs_a_checkpoint(trained_suite, model_dir, corpus):
    out, _index = trained_suite
    with pytest.raises(SuiteConfigError, match="already holds a suite; choose another folder, or pass --overwrite"):
        train_suite(small_config(model_dir, corpus), out, progress=False, report=lambda line: None)
    with pytest.raises(SuiteConfigError, match="already complete; nothing to resume"):
        train_suite(small_config(model_dir, corpus), out, resume=True, progress=False, report=lambda line: None)


def test_bad_suites_fail_before_training(model_dir, corpus, tmp_path, monkeypatch):
    def quiet(config, out):
        return train_suite(config, out, progress=False, report=lambda line: None)

    with pytest.raises(ValueError, match=r"unknown hookpoint 'layers.5.mlp_out'.*valid hookpoints"):
        quiet(small_config(model_dir, corpus, hookpoints=["layers.5.mlp_out"]), tmp_path / "a")
    with pytest.raises(SuiteConfigError, match="fewer than target L0 8"):
        quiet(small_config(model_dir, corpus, widths=[6]), tmp_path / "b")
    with pytest.raises(SuiteConfigError, match="two entries give 128 latents"):
        quiet(small_config(model_dir, corpus, widths=[128, "4x"]), tmp_path / "c")
    monkeypatch.setattr("saescope.suite.preflight.available_memory", lambda device: 1000)
    with pytest.raises(MemoryError, match="needs about .* GiB on cpu but only 0.0 GiB is available; train fewer SAEs"):
        quiet(small_config(model_dir, corpus), tmp_path / "d")
    monkeypatch.setattr("saescope.suite.preflight.available_memory", lambda device: None)
    monkeypatch.setattr("saescope.suite.preflight._free_disk", lambda path: 10)
    with pytest.raises(OSError, match="too little disk at .*e: the suite writes about"):
        quiet(small_config(model_dir, corpus), tmp_path / "e")
    assert not any((tmp_path / name).exists() for name in "abcde")  # nothing written before the checks pass


# -- resume after a real kill -------------------------------------------------------------------------
def test_resume_after_kill(model_dir, corpus, tmp_path):
    out = tmp_path / "killed"
    config = small_config(model_dir, corpus, architectures=["topk"], widths=[64], target_l0s=[4], tokens=256 * 24, checkpoint_every=4)
    (tmp_path / "config.json").write_text(json.dumps(config))
    script = textwrap.dedent(f"""
        import time
        from saescope.suite import train_suite
        from saescope.training.trainer import Trainer
        original = Trainer._save_checkpoint
        def slow_save(self, step):
            original(self, step)
            if step >= 8:
                time.sleep(60)  # the test kills the process here
        Trainer._save_checkpoint = slow_save
        train_suite({str(tmp_path / "config.json")!r}, {str(out)!r}, progress=False)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    process = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = out / "checkpoint" / "trainer_state.json"
    deadline = time.time() + 180
    while time.time() < deadline:
        if state.is_file() and json.loads(state.read_text()).get("step", 0) >= 8:
            break
        assert process.poll() is None, f"the run ended before it could be killed: {process.communicate()[1].decode()[-2000:]}"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert read_index(out)["status"] == "training"
    with pytest.raises(SuiteConfigError, match="holds an unfinished suite; pass --resume"):
        train_suite(config, out, progress=False, report=lambda line: None)
    index = train_suite(config, out, resume=True, progress=False, report=lambda line: None)
    assert index["status"] == "complete"
    cfg = json.loads((out / index["saes"][0]["path"] / "cfg.json").read_text())
    assert cfg["training"]["n_steps"] == 24 and cfg["training"]["n_tokens"] == 256 * 24
    # the text position and the shuffle buffer were checkpointed: the killed-and-resumed suite equals an uninterrupted one
    straight = train_suite(config, tmp_path / "straight", progress=False, report=lambda line: None)
    from safetensors.numpy import load_file

    resumed_weights = load_file(str(out / index["saes"][0]["path"] / "sae_weights.safetensors"))
    straight_weights = load_file(str(tmp_path / "straight" / straight["saes"][0]["path"] / "sae_weights.safetensors"))
    assert all(np.array_equal(resumed_weights[name], straight_weights[name]) for name in straight_weights)


def test_resume_refuses_a_changed_config(model_dir, corpus, tmp_path):
    config = small_config(model_dir, corpus, architectures=["topk"], widths=[64], target_l0s=[4], keep_checkpoint=True, eval_tokens=0)
    train_suite(config, tmp_path / "kept", progress=False, report=lambda line: None)
    assert (tmp_path / "kept" / "checkpoint" / "trainer_state.json").is_file()
    with pytest.raises(SuiteConfigError, match="config differs from the one this run started with"):
        train_suite({**config, "seed": 1}, tmp_path / "kept", resume=True, progress=False, report=lambda line: None)


# -- CLI ------------------------------------------------------------------------------------------------
def test_cli_config_with_flag_overrides_then_eval_and_info(model_dir, corpus, tmp_path, capsys):
    path = tmp_path / "suite.yaml"
    path.write_text(json.dumps(small_config(model_dir, corpus, widths=[64], target_l0s=[4], architectures=["topk"], tokens=8192)))
    out = tmp_path / "cli"
    assert main(["train", "--config", str(path), "--tokens", "1024", "--target-l0", "4", "8", "--out", str(out), "--interpret", "2048"]) == 0
    printed = capsys.readouterr().out
    assert "4 SAEs in" in printed and f"next: saescope eval {out}" in printed and "interpreted every feature" in printed
    assert (out / "layers.1.resid_post/topk-w64-l0_8/interpret/summary.json").is_file()
    index = read_index(out)
    assert index["config"]["training"]["tokens"] == 1024 and index["config"]["sweep"]["target_l0s"] == [4, 8]
    assert main(["eval", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "topk-w64-l0_8" in printed and "eval.csv" in printed and "depth.png" in printed
    assert main(["info", str(out)]) == 0
    assert "4: architectures ['topk']" in capsys.readouterr().out


def test_cli_errors(model_dir, corpus, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("hookpoints: [layers.0.resid_post]\narchitectures: [sparse]\n")
    with pytest.raises(SystemExit, match=f"error: {bad}: architectures: unknown architecture 'sparse'"):
        main(["train", "--config", str(bad), "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match=r"command line: hookpoints: give at least one \(--hookpoints"):
        main(["train", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="--resume: no run to continue in"):
        main(["train", "--model", model_dir, "--dataset", corpus, "--hookpoints", "layers.0.resid_post", "--resume", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="not a suite folder"):
        main(["eval", str(tmp_path)])
    with pytest.raises(SystemExit, match="no such file or folder"):
        main(["info", str(tmp_path / "nothing")])


def test_demo_runs_trains_evaluates_and_reuses(model_dir, corpus, tmp_path, monkeypatch, capsys):
    from saescope import demo

    monkeypatch.setattr(demo, "DEMO_CONFIG", small_config(model_dir, corpus, widths=[64], target_l0s=[4]))
    messages = []
    assert demo.run_demo(tmp_path / "d", report=messages.append) == 0
    printed = capsys.readouterr().out
    assert "Demo finished in" in printed and "delta_lm_vs_l0.png" in printed and f"saescope info {tmp_path / 'd'}" in printed
    assert any("training the demo suite" in m for m in messages)
    assert demo.run_demo(tmp_path / "d", report=messages.append) == 0
    assert "already holds the finished demo suite" in messages[-1]


def test_suites_give_jumprelu_the_lm_learning_rate_unless_told(trained_suite, model_dir, corpus, tmp_path):
    out, _index = trained_suite
    cfg = json.loads((out / "layers.0.resid_post/jumprelu-w64-l0_4" / "cfg.json").read_text())
    objective = cfg["training"]["objective"]
    assert objective["name"] == "jumprelu" and objective["lr_base"] == 2e-3
    assert cfg["training"]["lr"] == pytest.approx(2e-3 * (2**14 / 64) ** 0.5)
    topk = json.loads((out / "layers.0.resid_post/topk-w64-l0_4" / "cfg.json").read_text())
    assert topk["training"]["objective"]["lr_base"] is None  # TopK's own default already is the LM-tuned one
    explicit = train_suite(small_config(model_dir, corpus, architectures=["jumprelu"], widths=[64], target_l0s=[4], lr={"jumprelu": 1e-3},
                                        eval_tokens=0), tmp_path / "lr", progress=False, report=lambda line: None)
    cfg = json.loads((tmp_path / "lr" / explicit["saes"][0]["path"] / "cfg.json").read_text())
    assert cfg["training"]["objective"]["lr"] == 1e-3 and cfg["training"]["objective"]["lr_base"] is None
    assert cfg["training"]["lr"] == 1e-3
