"""One writer per output folder; unfinished suites restart; outputs are never overwritten silently (issue 13, items 1-4)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from lm_helpers import save_tiny_model, tiny_suite_config, write_corpus

import saescope
from saescope.io.lock import LOCK_NAME, clear_output, output_lock


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(tmp_path):
    with output_lock(tmp_path / "out", "suite training") as lock:
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid() and holder["what"] == "suite training"
        with pytest.raises(FileExistsError, match=rf"another saescope run is writing here \(pid {os.getpid()} on .*suite training"):
            with output_lock(tmp_path / "out", "array training"):
                pass
    assert not (tmp_path / "out").exists()  # released, and the folder it made for nothing removed
    (tmp_path / "out").mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    import socket

    (tmp_path / "out" / LOCK_NAME).write_text(json.dumps({"pid": int(dead), "host": socket.gethostname(), "what": "x", "started": "then"}))
    with output_lock(tmp_path / "out", "cache"):  # the holder is gone: taken over
        assert json.loads((tmp_path / "out" / LOCK_NAME).read_text())["what"] == "cache"


def test_two_array_runs_into_one_folder_cannot_both_succeed(tmp_path):
    np.save(tmp_path / "acts.npy", np.random.default_rng(0).normal(size=(1024, 8)).astype(np.float32))
    plan = {"data": {"array": str(tmp_path / "acts.npy")}, "training": {"tokens": 512, "batch_size": 128},
            "sweep": {"architectures": ["topk"], "widths": [16], "target_l0s": [2]}}
    with output_lock(tmp_path / "run", "suite training"):  # another writer holds the folder
        with pytest.raises(FileExistsError, match="another saescope run is writing here"):
            saescope.train(plan, tmp_path / "run", progress=False)
    saescope.train(plan, tmp_path / "run", progress=False)
    before = (tmp_path / "run" / "topk" / "sae_weights.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match=r"--out .*run: the folder is not empty; .* --overwrite"):
        saescope.train(plan, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "topk" / "sae_weights.safetensors").read_bytes() == before
    saescope.train({**plan, "training": {"tokens": 512, "batch_size": 128, "seed": 1}}, tmp_path / "run", progress=False, overwrite=True)
    assert (tmp_path / "run" / "topk" / "sae_weights.safetensors").read_bytes() != before


def test_overwrite_never_removes_what_saescope_did_not_write(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="does not hold a saescope output, so it is left alone"):
        clear_output(tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").exists()


def test_a_suite_stopped_before_its_first_checkpoint_restarts_with_resume(tmp_path):
    config = tiny_suite_config(save_tiny_model(tmp_path / "model"), write_corpus(tmp_path / "c.txt"), hookpoints=["layers.1.resid_post"], tokens=1024)
    out = tmp_path / "suite"
    saescope.train_suite(config, out, progress=False, report=lambda line: None)
    index = json.loads((out / "suite.json").read_text())
    index["status"] = "training"  # as a run killed after writing its index and before its first checkpoint leaves it
    (out / "suite.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="holds an unfinished suite; pass --resume to continue it .* or --overwrite"):
        saescope.train_suite(config, out, progress=False, report=lambda line: None)
    lines = []
    result = saescope.train_suite(config, out, resume=True, progress=False, report=lines.append)
    assert result["status"] == "complete" and any("stopped before its first checkpoint" in line for line in lines)
    with pytest.raises(ValueError, match="already holds a suite; choose another folder, or pass --overwrite"):
        saescope.train_suite(config, out, progress=False, report=lambda line: None)
    assert saescope.train_suite(config, out, overwrite=True, progress=False, report=lambda line: None)["status"] == "complete"
    with pytest.raises(ValueError, match="--resume: the suite in .* is already complete"):
        saescope.train_suite(config, out, resume=True, progress=False, report=lambda line: None)


def test_overwrite_into_a_new_folder_just_trains(tmp_path):
    np.save(tmp_path / "acts.npy", np.random.default_rng(0).normal(size=(512, 8)).astype(np.float32))
    plan = {"data": {"array": str(tmp_path / "acts.npy")}, "training": {"tokens": 512, "batch_size": 128},
            "sweep": {"architectures": ["topk"], "widths": [16], "target_l0s": [2]}}
    saescope.train(plan, tmp_path / "fresh", progress=False, overwrite=True)
    assert (tmp_path / "fresh" / "topk" / "cfg.json").is_file()
