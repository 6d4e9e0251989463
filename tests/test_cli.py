"""The command line, end to end on small inputs, and the promise that `import saescope` stays light."""

import json
import subprocess
import sys

import numpy as np
import pytest

from saescope.cli import main


def test_bench_synthetic_quick_json(capsys):
    assert main(["bench", "synthetic", "--quick", "--json", "--steps", "150", "--variants", "uniform", "--archs", "jumprelu", "topk"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["arch"] for row in rows] == ["jumprelu", "topk"]
    for row in rows:
        assert {"arch", "variant", "l0", "fvu", "mmcs", "recovered", "dead_fraction"} <= set(row)
        assert row["variant"] == "uniform" and 0 <= row["recovered"] <= 1 and 0 < row["mmcs"] <= 1


def test_bench_synthetic_over_seeds_reports_each_seed_and_the_spread(capsys):
    assert main(["bench", "synthetic", "--quick", "--json", "--steps", "60", "--variants", "uniform", "--archs", "topk", "--seeds", "0", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(row["seed"], row["arch"]) for row in report["rows"]] == [(0, "topk"), (1, "topk")]
    (spread,) = report["spread"]
    values = [row["mcc"] for row in report["rows"]]
    assert spread["seeds"] == 2 and spread["mcc"] == {"mean": pytest.approx(sum(values) / 2), "min": min(values), "max": max(values)}
    assert values[0] != values[1]  # a different seed is a different draw
    from saescope.synthetic.recovery import format_spread

    assert f"{spread['mcc']['mean']:6.3f} [{min(values):.3f}–{max(values):.3f}]" in format_spread(report["spread"])
    with pytest.raises(SystemExit, match="--seeds: give distinct seeds"):
        main(["bench", "synthetic", "--quick", "--seeds", "1", "1"])


def test_bench_rejects_unknown_variant(capsys):
    with pytest.raises(SystemExit, match="unknown variant\\(s\\) \\['zip'\\]"):
        main(["bench", "synthetic", "--variants", "zip"])


def test_train_then_eval_from_npy(tmp_path, capsys):
    data = np.abs(np.random.default_rng(0).normal(size=(4000, 8))).astype(np.float32)
    np.save(tmp_path / "acts.npy", data)
    out = tmp_path / "run"
    code = main(["train", "--data", str(tmp_path / "acts.npy"), "--arch", "jumprelu", "topk", "--width", "32",
                 "--target-l0", "4", "--tokens", "8000", "--batch-size", "400", "--out", str(out)])
    assert code == 0
    assert (out / "jumprelu" / "sae_weights.safetensors").is_file() and (out / "topk" / "cfg.json").is_file()
    capsys.readouterr()
    assert main(["eval", str(out / "topk"), "--data", str(tmp_path / "acts.npy"), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_tokens"] == 4000 and 3.0 < metrics["l0"] <= 4.0  # k=4, minus top-k values ReLU zeroes


def test_cli_errors_name_the_argument(tmp_path):
    with pytest.raises(SystemExit, match="--data missing.npy: no such file"):
        main(["train", "--data", "missing.npy", "--out", str(tmp_path)])
    (tmp_path / "acts.txt").write_text("1,2\n")
    with pytest.raises(SystemExit, match=r"unknown format '.txt'; saescope reads .npy, .npz, .csv"):
        main(["train", "--data", str(tmp_path / "acts.txt"), "--out", str(tmp_path / "o0")])
    (tmp_path / "words.csv").write_text("name,kind\nx,y\n")
    with pytest.raises(SystemExit, match="words.csv: no numeric columns to train on"):
        main(["train", "--data", str(tmp_path / "words.csv"), "--out", str(tmp_path / "o1")])
    np.save(tmp_path / "bad.npy", np.full((500, 4), np.nan, dtype=np.float32))
    with pytest.raises(SystemExit, match="bad.npy: the activations contain NaN or inf"):
        main(["train", "--data", str(tmp_path / "bad.npy"), "--tokens", "400", "--batch-size", "100", "--out", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="--resume: no checkpoint in"):
        main(["train", "--data", str(tmp_path / "bad.npy"), "--resume", "--out", str(tmp_path / "o2")])
    with pytest.raises(SystemExit, match="no such SAE folder"):
        np.save(tmp_path / "a.npy", np.zeros((4, 2), dtype=np.float32))
        main(["eval", str(tmp_path / "nope"), "--data", str(tmp_path / "a.npy")])


def test_python_dash_m_and_light_import():
    result = subprocess.run([sys.executable, "-m", "saescope", "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("saescope ")
    probe = "import sys, saescope; heavy = [m for m in ('transformers', 'datasets', 'matplotlib', 'http.server') if m in sys.modules]; print(heavy)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_user_mistakes_are_one_line_but_bugs_keep_their_traceback(tmp_path, monkeypatch):
    import saescope.suite.info as info
    from saescope.errors import InvalidInput, SaescopeError

    assert issubclass(InvalidInput, ValueError) and issubclass(InvalidInput, SaescopeError)
    with pytest.raises(SystemExit, match="^error: .*nope"):
        main(["info", str(tmp_path / "nope")])

    def broken(path):
        raise ValueError("an internal bug, not the user's mistake")

    monkeypatch.setattr(info, "describe", broken)
    import saescope.suite as suite

    monkeypatch.setattr(suite, "describe", broken)
    with pytest.raises(ValueError, match="an internal bug"):  # not turned into an `error:` line
        main(["info", str(tmp_path)])
