"""Several processes on CPU (gloo): sharded placement gives each SAE exactly its single-process result.

Two processes are started with ``torch.multiprocessing`` (and once with ``torchrun``), train the same
plan into one folder, and every saved SAE is compared tensor by tensor with a one-process run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import saescope
from saescope.errors import InvalidInput

ARCHS = ["topk", "jumprelu", "batchtopk"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plan(path, checkpoint_every=None):
    plan = {"data": {"array": str(path)}, "training": {"tokens": 1024 * 12, "batch_size": 1024, "seed": 3},
            "sweep": {"architectures": ARCHS, "widths": [48], "target_l0s": [4]}}
    if checkpoint_every:
        plan["training"]["checkpoint_every"] = checkpoint_every
    return plan


def _worker(rank, world, port, plan, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    import torch.distributed as dist

    from saescope.parallel import init_from_environment

    init_from_environment("cpu")
    try:
        saescope.train(plan, out, progress=False)
    finally:
        dist.destroy_process_group()


def _same_saes(a, b):
    names = sorted(p.name for p in a.iterdir() if (p / "cfg.json").is_file())
    assert names == sorted(p.name for p in b.iterdir() if (p / "cfg.json").is_file()) and len(names) == len(ARCHS)
    for name in names:
        left, right = saescope.load(a / name), saescope.load(b / name)
        for (key, x), (_key, y) in zip(sorted(left.state_dict().items()), sorted(right.state_dict().items())):
            assert torch.equal(x, y), f"{name}.{key} differs"
        assert left.training_summary["n_steps"] == right.training_summary["n_steps"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    rng = np.random.default_rng(0)
    values = ((rng.random((4096, 40)) < 0.1) * rng.exponential(1.0, (4096, 40))) @ rng.normal(size=(40, 16))
    np.save(folder / "x.npy", values.astype(np.float32))
    return folder


def test_two_processes_train_each_sae_bit_identically(data, tmp_path):
    saescope.train(_plan(data / "x.npy"), tmp_path / "one", progress=False)
    mp.spawn(_worker, args=(2, _free_port(), _plan(data / "x.npy"), str(tmp_path / "two")), nprocs=2, join=True)
    _same_saes(tmp_path / "one", tmp_path / "two")
    summary = saescope.load(tmp_path / "two" / "topk").training_summary
    assert summary["processes"] == 2


def test_resuming_with_another_number_of_processes_is_refused(data, tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), _plan(data / "x.npy", checkpoint_every=4), str(tmp_path / "two")), nprocs=2, join=True)
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoint").iterdir()) == ["rank-0-of-2", "rank-1-of-2"]
    with pytest.raises(InvalidInput, match="checkpointed with 2 processes, and this one has 1"):
        saescope.train(_plan(data / "x.npy", checkpoint_every=4), tmp_path / "two", resume=True, progress=False)


def test_torchrun_cli_matches_one_process(data, tmp_path):
    flags = ["--data", str(data / "x.npy"), "--tokens", "12288", "--batch-size", "1024", "--seed", "3", "--arch", *ARCHS,
             "--width", "48", "--target-l0", "4"]
    one = subprocess.run([sys.executable, "-m", "saescope", "train", *flags, "--out", str(tmp_path / "one")], capture_output=True, text=True, check=False)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-port", str(_free_port()),
                          "-m", "saescope", "train", *flags, "--out", str(tmp_path / "two")], capture_output=True, text=True, check=False)
    assert two.returncode == 0, two.stderr[-3000:]
    _same_saes(tmp_path / "one", tmp_path / "two")


def _suite_worker(rank, world, port, config, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    import torch.distributed as dist

    from saescope.parallel import init_from_environment

    init_from_environment("cpu")
    try:
        saescope.train_suite(config, out, progress=False, report=lambda line: None)
    finally:
        dist.destroy_process_group()


def test_a_suite_on_a_live_model_harvests_in_parallel_and_matches_one_process(tmp_path):
    """Each process runs the model on half of every batch of contexts; the rows are gathered back in order."""
    from lm_helpers import save_tiny_model, tiny_suite_config, write_corpus

    from saescope.io.suite_index import read_index

    config = tiny_suite_config(save_tiny_model(tmp_path / "model"), write_corpus(tmp_path / "c.txt", repeat=12),
                               architectures=["topk", "jumprelu"], eval_tokens=256)
    saescope.train_suite(config, tmp_path / "one", progress=False, report=lambda line: None)
    mp.spawn(_suite_worker, args=(2, _free_port(), config, str(tmp_path / "two")), nprocs=2, join=True)
    one, two = read_index(tmp_path / "one"), read_index(tmp_path / "two")
    assert two["status"] == "complete" and two["processes"] == 2
    assert [e["path"] for e in one["saes"]] == [e["path"] for e in two["saes"]] and len(one["saes"]) == 4
    for a, b in zip(one["saes"], two["saes"]):
        left, right = saescope.load(tmp_path / "one" / a["path"]), saescope.load(tmp_path / "two" / b["path"])
        for (key, x), (_key, y) in zip(sorted(left.state_dict().items()), sorted(right.state_dict().items())):
            assert torch.equal(x, y), f"{a['path']}.{key}"
        assert a["metrics"]["fvu"] == pytest.approx(b["metrics"]["fvu"], rel=1e-4)
        assert a["metrics"]["delta_lm_loss"] == pytest.approx(b["metrics"]["delta_lm_loss"], rel=1e-3, abs=1e-5)


def test_the_estimate_knows_the_processes(monkeypatch, tmp_path):
    """Sharded placement: the busiest process holds its share of the SAEs; the harvest's rows are gathered."""
    from saescope.suite import preflight

    monkeypatch.setattr(preflight, "matmul_flops_per_second", lambda device: 1e11)
    saes = [preflight.PlannedSae(f"layers.{i}.resid_post", i, "topk", 576, 4608, 32.0) for i in range(6)]
    common = dict(tokens=10**6, batch_size=4096, shuffle_buffer_tokens=65536, model_params=10**8, model_bytes=4 * 10**8,
                  forward_fraction=1.0, eval_tokens=0, checkpointing=False, out_dir=tmp_path, device="cpu")
    one = preflight.estimate(saes, **common)
    three = preflight.estimate(saes, processes=3, **common)
    state = 4 * 4 * saes[0].n_params
    assert one.memory_bytes - three.memory_bytes == 4 * state  # 6 SAEs' state on one process, 2 on each of three
    assert three.seconds == pytest.approx(one.seconds / 3, rel=1e-9)
    assert three.gathered_bytes_per_step == 4 * 4096 * 6 * 576 * 2 // 3 and one.gathered_bytes_per_step == 0
    assert "per process (3 processes)" in three.summary() and "gathered per step" in three.summary()
