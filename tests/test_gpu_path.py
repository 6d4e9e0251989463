"""The accelerator path: read-ahead and side-stream copies, TF32 and bf16 autocast of the SAE step, autocast harvesting.

The CPU tests run everywhere; the CUDA tests run where a GPU is present (CI has none; they ran on a
lent H100/H200, see benchmarks/RESULTS.md "GPU").
"""

from __future__ import annotations

import threading

import pytest
import torch

from saescope import create_job
from saescope.errors import InvalidInput
from saescope.training import TrainConfig, Trainer
from saescope.training.precision import matmul_precision, step_autocast
from saescope.training.prefetch import read_ahead, to_device_ahead

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
SPARSE_ARCHITECTURES = ["topk", "batchtopk", "matryoshka", "feature_choice", "jumprelu"]


def test_read_ahead_keeps_order_and_stops_its_thread_when_the_consumer_stops() -> None:
    produced = []

    def source():
        for index in range(1000):
            produced.append(index)
            yield torch.full((2, 3), float(index))

    batches = read_ahead(source(), depth=2)
    taken = [int(next(batches)[0, 0]) for _ in range(5)]
    batches.close()
    assert taken == [0, 1, 2, 3, 4]
    assert len(produced) <= 5 + 2 + 2  # at most the queue's depth and one batch in hand beyond what was taken
    assert not any(t.name == "saescope-read-ahead" for t in threading.enumerate())


def test_read_ahead_raises_the_sources_error_at_the_batch_where_it_happened() -> None:
    def source():
        yield torch.zeros(1)
        raise ValueError("shard 3 is damaged")

    batches = read_ahead(source())
    assert torch.equal(next(batches), torch.zeros(1))
    with pytest.raises(ValueError, match="shard 3 is damaged"):
        next(batches)


def test_batches_pass_through_unchanged_off_cuda() -> None:
    batches = [torch.randn(4, 3), {"a": torch.randn(4, 3)}]
    assert list(to_device_ahead(iter(batches), torch.device("cpu"))) == batches


def test_step_autocast_accepts_bfloat16_only() -> None:
    with pytest.raises(InvalidInput, match="step_autocast must be None or 'bfloat16'"):
        TrainConfig(step_autocast="float16")
    with step_autocast(torch.device("cpu"), "bfloat16"):
        assert (torch.randn(4, 4) @ torch.randn(4, 4)).dtype == torch.bfloat16
    with step_autocast(torch.device("cpu"), None):
        assert (torch.randn(4, 4) @ torch.randn(4, 4)).dtype == torch.float32


@pytest.mark.parametrize("architecture", SPARSE_ARCHITECTURES + ["gated", "relu"])
def test_bf16_autocast_trains_every_architecture_close_to_float32(architecture: str) -> None:
    """The sparse step's encoder matmul runs in bf16, selection, backward and decode in float32: the run lands near float32's."""
    data = torch.randn(4096, 32) @ torch.randn(32, 32)
    results = {}
    for autocast in (None, "bfloat16"):
        torch.manual_seed(0)
        job = create_job(architecture, 32, 128, target_l0=8, name="sae")
        config = TrainConfig(total_tokens=8192, batch_size=512, progress=False, logger="none", step_autocast=autocast)
        sae = Trainer([job], config).fit(data)["sae"]
        results[autocast] = sae.training_summary["final_train_metrics"]
        assert all(torch.isfinite(p).all() for p in sae.parameters())
    assert results["bfloat16"]["fvu"] == pytest.approx(results[None]["fvu"], rel=0.05)
    assert results["bfloat16"]["l0"] == pytest.approx(results[None]["l0"], rel=0.1)


def test_matmul_precision_leaves_the_process_setting_as_it_found_it() -> None:
    before = torch.backends.cuda.matmul.allow_tf32
    with matmul_precision(torch.device("cpu"), True):
        assert torch.backends.cuda.matmul.allow_tf32 == before  # no effect off CUDA
    with matmul_precision(torch.device("cuda"), not before):
        assert torch.backends.cuda.matmul.allow_tf32 == (not before)
    assert torch.backends.cuda.matmul.allow_tf32 == before


# -- on a GPU ----------------------------------------------------------------------------------------------
@cuda
def test_to_device_ahead_delivers_every_batch_on_the_device_in_order() -> None:
    device = torch.device("cuda")
    batches = [torch.randn(256, 8) for _ in range(20)] + [{"a": torch.randn(256, 8), "b": torch.randn(256, 4)}]
    moved = list(to_device_ahead(iter(batches), device))
    assert len(moved) == len(batches)
    for original, on_device in zip(batches[:-1], moved[:-1]):
        assert on_device.device.type == "cuda" and torch.equal(on_device.cpu(), original)
    assert set(moved[-1]) == {"a", "b"} and torch.equal(moved[-1]["b"].cpu(), batches[-1]["b"])


@cuda
@pytest.mark.parametrize("architecture", SPARSE_ARCHITECTURES)
def test_cuda_training_matches_cpu_in_exact_float32(architecture: str) -> None:
    """Same data, same initialisation, TF32 off: CUDA and CPU runs agree to float32 rounding over a short run."""
    data = torch.randn(4096, 32) @ torch.randn(32, 32)
    saes = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        job = create_job(architecture, 32, 128, target_l0=8, name="sae")
        config = TrainConfig(total_tokens=4096, batch_size=512, shuffle=False, progress=False, logger="none", device=device, tf32=False)
        saes[device] = Trainer([job], config).fit(data)["sae"].cpu()
    for (name, on_cpu), on_cuda in zip(saes["cpu"].named_parameters(), saes["cuda"].parameters()):
        assert torch.allclose(on_cpu, on_cuda, rtol=1e-3, atol=1e-4), name


@cuda
def test_cuda_sparse_step_equals_the_dense_step_in_float64() -> None:
    from saescope.objectives import StepContext

    torch.manual_seed(0)
    job = create_job("topk", 16, 64, target_l0=4, name="sae")
    sae = job.sae.double().cuda()
    x = torch.randn(256, 16, dtype=torch.float64, device="cuda")
    gradients = {}
    for sparse in (True, False):
        job.objective.sparse_step = sparse
        sae.zero_grad()
        job.objective.loss(sae, x, StepContext(step=0, progress=0.0, sparsity_coefficient=0.0)).loss.backward()
        gradients[sparse] = [p.grad.clone() for p in sae.parameters()]
    for sparse_grad, dense_grad in zip(gradients[True], gradients[False]):
        assert torch.allclose(sparse_grad, dense_grad, atol=1e-10)


@cuda
def test_training_from_a_cpu_array_on_cuda_reads_ahead_and_restores_tf32() -> None:
    before = torch.backends.cuda.matmul.allow_tf32
    data = torch.randn(8192, 32)
    torch.manual_seed(0)
    job = create_job("topk", 32, 128, target_l0=8, name="sae")
    sae = Trainer([job], TrainConfig(total_tokens=16384, batch_size=1024, progress=False, logger="none", device="cuda")).fit(data)["sae"]
    assert sae.W_enc.device.type == "cuda" and sae.training_summary["n_steps"] == 16
    assert torch.backends.cuda.matmul.allow_tf32 == before
    assert not any(t.name == "saescope-read-ahead" for t in threading.enumerate())


def test_the_sparse_path_pays_for_narrower_selections_on_a_gpu_than_on_a_cpu() -> None:
    from saescope.saes.sparse_ops import sparse_pays

    assert sparse_pays(2048, 16384, "cpu") and not sparse_pays(2049, 16384, "cpu")
    assert sparse_pays(16, 16384, "cuda") and not sparse_pays(17, 16384, "cuda")
    assert sparse_pays(2048, 16384, "mps")  # other devices: the CPU's crossover


def test_topk_counts_the_auxk_selection_among_the_kept_entries_when_auxk_runs_on_a_gpu() -> None:
    from saescope.objectives import StepContext

    job = create_job("topk", 64, 1024, target_l0=8)
    objective, sae = job.objective, job.sae
    quiet = StepContext(step=1, progress=0.1, sparsity_coefficient=0.0)
    dead = StepContext(step=1, progress=0.1, sparsity_coefficient=0.0, dead_mask=torch.zeros(1024, dtype=torch.bool))
    assert objective.kept_per_token(sae, 8, quiet, "cuda") == 8
    assert objective.kept_per_token(sae, 8, dead, "cuda") == 8 + 32  # aux_k defaults to d_in // 2
    assert objective.kept_per_token(sae, 8, dead, "cpu") == 8  # a CPU selects among the dead columns only
    objective.aux_coefficient = 0.0
    assert objective.kept_per_token(sae, 8, dead, "cuda") == 8 and objective.aux_terms(sae, torch.zeros(4, 1024), torch.zeros(4, 64), torch.zeros(4, 64), dead) == {}
