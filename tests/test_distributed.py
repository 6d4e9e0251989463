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


class _Crash(Exception):
    pass


class _CrashingSource:
    """An array source whose batch ``crash_at`` raises (a process killed mid-run), after checkpoints were written."""

    def __init__(self, values, crash_at):
        from saescope.data.activations import ArraySource

        self.inner, self.crash_at = ArraySource(values), crash_at
        self.d_in, self.n_tokens, self.reiterable = self.inner.d_in, self.inner.n_tokens, True

    def head(self, n):
        return self.inner.head(n)

    def iter_batches(self, batch_size, **options):
        self.started_at = options.get("start_batch", 0)
        for index, batch in enumerate(self.inner.iter_batches(batch_size, **options)):
            if self.crash_at is not None and options.get("start_batch", 0) + index == self.crash_at:
                raise _Crash(f"killed at batch {self.crash_at}")
            yield batch


def _jobs_and_config(checkpoint_dir):
    from saescope.jobs import create_job
    from saescope.training import TrainConfig

    torch.manual_seed(5)
    jobs = [create_job(arch, 16, 48, target_l0=4, name=arch) for arch in ARCHS]
    checkpoints = {"checkpoint_every": 2, "checkpoint_dir": checkpoint_dir} if checkpoint_dir else {}
    return jobs, TrainConfig(total_tokens=1024 * 10, batch_size=1024, seed=3, progress=False, **checkpoints)


def _resume_worker(rank, world, port, values, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    import torch.distributed as dist

    from saescope.io.checkpoint import save_sae
    from saescope.parallel import init_from_environment
    from saescope.training import Trainer

    init_from_environment("cpu")
    try:
        jobs, config = _jobs_and_config(os.path.join(folder, "checkpoint"))
        try:
            Trainer(jobs, config).fit(_CrashingSource(values, crash_at=5))
        except _Crash:
            pass
        from saescope.io.trainer_state import load_trainer_state
        from saescope.parallel import current

        info, _tensors = load_trainer_state(current().checkpoint_folder(os.path.join(folder, "checkpoint")))
        assert info["step"] == 4 and info["processes"] == {"rank": rank, "world": 2}, info["step"]
        jobs, config = _jobs_and_config(os.path.join(folder, "checkpoint"))
        source = _CrashingSource(values, crash_at=None)
        for name, sae in Trainer(jobs, config).fit(source, resume=True).items():
            save_sae(sae, os.path.join(folder, name))
        assert source.started_at == 4  # it resumed, it did not start again
    finally:
        dist.destroy_process_group()


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_one_process_result(data, tmp_path):
    from saescope.training import Trainer

    values = np.load(data / "x.npy")
    jobs, config = _jobs_and_config(None)
    straight = Trainer(jobs, config).fit(values)
    mp.spawn(_resume_worker, args=(2, _free_port(), values, str(tmp_path)), nprocs=2, join=True)
    for name, sae in straight.items():
        resumed = saescope.load(tmp_path / name)
        for key, tensor in sae.state_dict().items():
            assert torch.equal(tensor, resumed.state_dict()[key]), f"{name}.{key}"
