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
from saescope.jobs import ReadSpec
from saescope.plan_jobs import PlannedJob

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
    """Sharded placement: the busiest process holds its share of the SAEs and only their hookpoints' rows."""
    from saescope.suite import preflight

    monkeypatch.setattr(preflight, "matmul_flops_per_second", lambda device: 1e11)
    saes = [PlannedJob(f"layers.{i}.resid_post/topk", f"layers.{i}.resid_post", i, "sae", "topk", 576, 4608, 32.0, ReadSpec((f"layers.{i}.resid_post",))) for i in range(6)]
    common = dict(tokens=10**6, batch_size=4096, shuffle_buffer_tokens=65536, model_params=10**8, model_bytes=4 * 10**8,
                  forward_fraction=1.0, eval_tokens=0, checkpointing=False, out_dir=tmp_path, device="cpu")
    one = preflight.estimate(saes, **common)
    three = preflight.estimate(saes, processes=3, **common)
    state = 4 * 4 * saes[0].n_params
    buffer_per_hookpoint = 2 * 4 * 65536 * 576
    # 6 SAEs' state and 6 hookpoints' buffer on one process; 2 SAEs at 2 hookpoints on each of three (the all-to-all)
    assert one.memory_bytes - three.memory_bytes == 4 * state + 4 * buffer_per_hookpoint
    assert three.seconds == pytest.approx(one.seconds / 3, rel=1e-9)
    assert three.gathered_bytes_per_step == 4 * 4096 * 2 * 576 * 2 // 3 and one.gathered_bytes_per_step == 0
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


# -- replicated placement ------------------------------------------------------------------------------------
def _replicated_jobs(aux: bool):
    from saescope.jobs import create_job

    torch.manual_seed(5)
    topk_options = {} if aux else {"aux_coefficient": 0.0}
    return [create_job("topk", 16, 48, target_l0=4, name="topk", **topk_options), create_job("jumprelu", 16, 48, target_l0=4, name="jumprelu"),
            create_job("batchtopk", 16, 48, target_l0=4, name="batchtopk")]


def _replicated_config(placement):
    from saescope.training import TrainConfig

    return TrainConfig(total_tokens=1024 * 8, batch_size=1024, seed=3, progress=False, logger="none", placement=placement)


def _replicated_worker(rank, world, port, values, folder, placement, aux):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    import torch.distributed as dist

    from saescope.parallel import init_from_environment
    from saescope.training import Trainer

    init_from_environment("cpu")
    try:
        jobs = _replicated_jobs(aux)[:1] if placement == "auto" else _replicated_jobs(aux)
        trained = Trainer(jobs, _replicated_config(placement)).fit(torch.from_numpy(values))
        # every replica's weights, to check that they stay identical; rank 0 alone returns the SAEs
        torch.save({name: {k: v.clone() for k, v in sae.state_dict().items()} for name, sae in
                    {j.name: j.sae for j in jobs}.items()}, os.path.join(folder, f"rank{rank}.pt"))
        torch.save({"returned": sorted(trained), "summary": {n: s.training_summary for n, s in trained.items()}},
                   os.path.join(folder, f"returned{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_replicated_placement_matches_one_process_and_keeps_the_replicas_identical(data, tmp_path):
    """Each of 2 processes trains every SAE on half of each batch, gradients averaged: one process's SAEs, up to float rounding.

    TopK (AuxK off) and JumpReLU have per-token losses: equal within 1e-5. BatchTopK selects over each rank's
    half of the batch: the replicas agree exactly with each other, and stay close to one process.
    """
    from saescope.training import Trainer

    values = np.load(data / "x.npy")
    single = Trainer(_replicated_jobs(aux=False), _replicated_config("replicated")).fit(torch.from_numpy(values))
    mp.spawn(_replicated_worker, args=(2, _free_port(), values, str(tmp_path), "replicated", False), nprocs=2, join=True)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    for name in ("topk", "jumprelu", "batchtopk"):
        for key in rank0[name]:
            assert torch.equal(rank0[name][key], rank1[name][key]), f"replicas of {name}.{key} differ"
    folded = {name: sae.state_dict() for name, sae in single.items()}
    for name in ("topk", "jumprelu"):
        for key, value in folded[name].items():
            assert torch.allclose(value, rank0[name][key], rtol=1e-4, atol=1e-5), f"{name}.{key}"
    relative = (folded["batchtopk"]["W_dec"] - rank0["batchtopk"]["W_dec"]).norm() / folded["batchtopk"]["W_dec"].norm()
    assert relative < 0.05
    returned0, returned1 = torch.load(tmp_path / "returned0.pt"), torch.load(tmp_path / "returned1.pt")
    assert returned0["returned"] == ["batchtopk", "jumprelu", "topk"] and returned1["returned"] == []
    assert returned0["summary"]["topk"]["placement"] == "replicated" and returned0["summary"]["topk"]["processes"] == 2


def test_auto_placement_replicates_when_there_are_fewer_jobs_than_processes(data, tmp_path):
    from saescope.parallel import Ranks, choose_placement

    assert choose_placement("auto", 3, Ranks(0, 2)) == "sharded" and choose_placement("auto", 1, Ranks(0, 2)) == "replicated"
    assert choose_placement("auto", 1, Ranks()) == "single"
    with pytest.raises(InvalidInput, match="at most 1 processes, or use placement replicated"):
        choose_placement("sharded", 1, Ranks(1, 2))
    values = np.load(data / "x.npy")
    mp.spawn(_replicated_worker, args=(2, _free_port(), values, str(tmp_path), "auto", True), nprocs=2, join=True)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(rank0["topk"][k], rank1["topk"][k]) for k in rank0["topk"])  # AuxK on: the replicas still agree
    assert torch.load(tmp_path / "returned0.pt")["summary"]["topk"]["placement"] == "replicated"


# -- the all-to-all exchange of harvested rows -------------------------------------------------------------------
def _exchange_worker(rank, world, port, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    import torch.distributed as dist

    from saescope.parallel import (
        current,
        exchange_rows,
        gather_rows,
        init_from_environment,
    )

    init_from_environment("cpu")
    try:
        ranks = current()
        n = 3 + 2 * rank  # ranks hold different numbers of rows (masked special tokens)
        generator = torch.Generator().manual_seed(rank)
        rows = {"a": torch.randn(n, 4, generator=generator), "b": torch.randn(n, 2, generator=generator),
                "c": torch.randn(n, 3, generator=generator)}
        needs = [["a", "c"], ["b"]]
        torch.save({"exchanged": exchange_rows(rows, needs, ranks), "gathered": gather_rows(rows, ranks)},
                   os.path.join(folder, f"exchange{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_the_all_to_all_gives_each_rank_exactly_the_gathered_rows_of_its_hookpoints(tmp_path):
    mp.spawn(_exchange_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank, wanted in ((0, ["a", "c"]), (1, ["b"])):
        result = torch.load(tmp_path / f"exchange{rank}.pt")
        assert sorted(result["exchanged"]) == wanted
        for name in wanted:
            assert torch.equal(result["exchanged"][name], result["gathered"][name]) and result["gathered"][name].shape[0] == 3 + 5


def test_jobs_are_owned_in_blocks_grouped_by_hookpoint():
    from saescope.parallel import assign_owners

    jobs = [("h0",), ("h1",), ("h2",), ("h0",), ("h1",), ("h2",)]  # a suite's spec-major order: architecture, then hookpoint
    owners = assign_owners(jobs, 3)
    assert owners == [0, 1, 2, 0, 1, 2]  # each rank trains both SAEs of one hookpoint
    assert assign_owners(jobs, 4) == [0, 1, 2, 0, 2, 3] and assign_owners([(), ()], 2) == [0, 1]


def _cache_jobs():
    from saescope.jobs import create_job

    torch.manual_seed(7)
    return [create_job("topk", 32, 64, target_l0=4, name=f"topk-{h}", reads=h) for h in ("layers.0.resid_post", "layers.1.mlp_out")]


def _cache_worker(rank, world, port, cache, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    import torch.distributed as dist

    from saescope.data.cache import CachedActivations
    from saescope.parallel import init_from_environment
    from saescope.training import TrainConfig, Trainer

    init_from_environment("cpu")
    try:
        reader = CachedActivations(cache)
        trained = Trainer(_cache_jobs(), TrainConfig(total_tokens=512 * 6, batch_size=512, progress=False, logger="none")).fit(reader)
        torch.save({"held": reader.hookpoints, "saes": {n: s.state_dict() for n, s in trained.items()}}, os.path.join(folder, f"cache{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_from_a_cache_each_process_reads_only_its_hookpoints_and_matches_one_process(tmp_path):
    from lm_helpers import tiny_loaded, write_corpus

    from saescope.data.cache import CachedActivations
    from saescope.data.tokens import TextContexts
    from saescope.lm.harvest import write_cache
    from saescope.lm.stream import ModelActivationSource
    from saescope.training import TrainConfig, Trainer

    loaded = tiny_loaded("llama", n_layers=2)
    source = ModelActivationSource(loaded, TextContexts(write_corpus(tmp_path / "c.txt"), loaded.tokenizer, 32, part="all"),
                                   ["layers.0.resid_post", "layers.1.mlp_out"], batch_contexts=4)
    write_cache(source, tmp_path / "cache", 2048, shard_tokens=512, progress=False)
    single = Trainer(_cache_jobs(), TrainConfig(total_tokens=512 * 6, batch_size=512, progress=False, logger="none")).fit(
        CachedActivations(tmp_path / "cache"))
    mp.spawn(_cache_worker, args=(2, _free_port(), str(tmp_path / "cache"), str(tmp_path)), nprocs=2, join=True)
    for rank, hookpoint in enumerate(("layers.0.resid_post", "layers.1.mlp_out")):
        result = torch.load(tmp_path / f"cache{rank}.pt")
        assert result["held"] == [hookpoint] and list(result["saes"]) == [f"topk-{hookpoint}"]
        for key, value in single[f"topk-{hookpoint}"].state_dict().items():
            assert torch.equal(value, result["saes"][f"topk-{hookpoint}"][key]), f"{hookpoint}.{key}"


def _replicated_resume_worker(rank, world, port, values, folder):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    from dataclasses import replace

    import torch.distributed as dist

    from saescope.parallel import init_from_environment
    from saescope.training import Trainer

    init_from_environment("cpu")

    def states(jobs):
        return {job.name: {k: v.clone() for k, v in job.sae.state_dict().items()} for job in jobs}

    try:
        straight = _replicated_jobs(aux=True)
        Trainer(straight, _replicated_config("replicated")).fit(values)  # a numpy array, as the crashing source reads
        config = replace(_replicated_config("replicated"), checkpoint_every=2, checkpoint_dir=os.path.join(folder, "checkpoint"))
        try:
            Trainer(_replicated_jobs(aux=True), config).fit(_CrashingSource(values, crash_at=5))
        except _Crash:
            pass
        resumed, source = _replicated_jobs(aux=True), _CrashingSource(values, crash_at=None)
        Trainer(resumed, config).fit(source, resume=True)
        torch.save({"straight": states(straight), "resumed": states(resumed), "started_at": source.started_at},
                   os.path.join(folder, f"resumed{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_a_killed_replicated_run_resumes_to_the_uninterrupted_replicated_result(data, tmp_path):
    mp.spawn(_replicated_resume_worker, args=(2, _free_port(), np.load(data / "x.npy"), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        result = torch.load(tmp_path / f"resumed{rank}.pt")
        assert result["started_at"] == 4  # it resumed from the step-4 checkpoint
        for name, state in result["straight"].items():
            for key, tensor in state.items():
                assert torch.equal(tensor, result["resumed"][name][key]), f"rank {rank}: {name}.{key}"
