"""Ctrl-C stops training at a step boundary with a checkpoint and one line; --resume then ends bit-identical (issue 13, item 3)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def _command(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "saescope", "train", "--data", str(data), "--arch", "topk", "--width", "64", "--target-l0", "4",
            "--tokens", str(4096 * 400), "--batch-size", "4096", "--checkpoint-every", "20", "--out", str(out), *extra]


def test_ctrl_c_checkpoints_at_a_step_boundary_and_resume_is_exact(tmp_path):
    data = tmp_path / "acts.npy"
    np.save(data, np.random.default_rng(0).normal(size=(20_000, 32)).astype(np.float32))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = subprocess.Popen(_command(data, tmp_path / "stopped"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "stopped" / "checkpoint").glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    _out, err = run.communicate(timeout=120)
    assert run.returncode == 130, err
    assert "Traceback" not in err and "stopped by Ctrl-C after step" in err and "--resume to continue" in err, err
    resumed = subprocess.run(_command(data, tmp_path / "stopped", "--resume"), capture_output=True, text=True, env=env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    straight = subprocess.run(_command(data, tmp_path / "straight"), capture_output=True, text=True, env=env, timeout=600)
    assert straight.returncode == 0, straight.stderr
    a = load_file(str(tmp_path / "stopped" / "topk" / "sae_weights.safetensors"))
    b = load_file(str(tmp_path / "straight" / "topk" / "sae_weights.safetensors"))
    assert all(np.array_equal(a[name], b[name]) for name in b)
