"""Training-step throughput per architecture, as a fraction of this machine's fp32 matmul peak.

    python benchmarks/train_step.py [--d-in 576] [--d-sae 4608] [--batch 4096] [--steps 5] [--json]

The peak is measured in the same run (best of several large square sgemms). A dense SAE step costs
about 10·d_in·d_sae FLOPs per token (encoder forward, decoder forward, two decoder gradients, the
encoder weight gradient; no input gradient); gated does ~14 because of its frozen-decoder auxiliary
reconstruction. The sparse step (the default for TopK, BatchTopK and JumpReLU when at most 1/8 of the
code is active) keeps only the dense encoder forward, 2·d_in·d_sae FLOPs per token, and does the rest
through the kept entries (a few percent of the dense FLOPs, not counted): its "of peak" is the
fraction of the matmul peak that the FLOPs it really performs reach. Cases ending in ``-dense`` force
the dense reference path (``sparse_step=False``) on the same SAE. The timed step is the trainer's real
hot path (``SaeTrainer.train_step``: forward, backward, decoder-gradient projection, clipping, Adam,
renormalisation, on-device metrics), so the figure is what a user gets. JumpReLU starts from its
recipe's data initialisation at a firing rate of 64/4608, so its code has a realistic size.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from saescope.jobs import create_job
from saescope.training import SaeTrainer, TrainConfig


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, size: int = 2048, repeats: int = 8) -> float:
    """Best fp32 GFLOP/s over a few size×size×size matmuls."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    out = torch.empty(size, size, device=device)
    best = 0.0
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        _sync(device)
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


CASES = {
    "jumprelu": ("jumprelu", {"sparsity_coefficient": 1e-3, "init_firing_rate": 64 / 4608}, 2),
    "jumprelu-dense": ("jumprelu", {"sparsity_coefficient": 1e-3, "init_firing_rate": 64 / 4608, "sparse_step": False}, 10),
    "jumprelu-tanh": ("jumprelu", {"objective": "jumprelu_tanh"}, 10),
    "relu": ("relu", {}, 10),
    "gated": ("gated", {"sparsity_coefficient": 0.1}, 14),
    "topk32": ("topk", {"k": 32}, 2),
    "topk32-dense": ("topk", {"k": 32, "sparse_step": False, "sparse_decode": False}, 10),
    "topk64": ("topk", {"k": 64}, 2),
    "batchtopk": ("batchtopk", {"k": 64}, 2),
    "batchtopk-dense": ("batchtopk", {"k": 64, "sparse_step": False}, 10),
}


def time_case(name: str, d_in: int, d_sae: int, batch: int, steps: int, device: torch.device) -> dict:
    architecture, options, flops_factor = CASES[name]
    job = create_job(architecture, d_in, d_sae, name=name, **options)
    config = TrainConfig(total_tokens=batch * 1000, batch_size=batch, progress=False, device=str(device))
    trainer = SaeTrainer(job, config, device)
    x = torch.randn(batch, d_in, device=device)
    trainer.set_input_scale([float(x.pow(2).sum(1).mean())], x.mean(0))
    # the recipe's data-dependent initialisation (JumpReLU: b_enc for a firing rate), so a step sees a realistic code
    job.objective.init_from_data(job.sae, x / x.pow(2).sum(1).mean().sqrt())
    for step in range(2):  # warm-up: allocator, Adam state
        trainer.train_step(x, step)
    times = []
    for step in range(2, 2 + steps):
        _sync(device)
        start = time.perf_counter()
        trainer.train_step(x, step)
        _sync(device)
        times.append(time.perf_counter() - start)
    trainer.read_metrics()
    seconds = sorted(times)[len(times) // 2]  # the median step: robust to a noisy, shared machine
    dense_flops = 10 * d_in * d_sae * batch
    return {
        "case": name,
        "ms_per_step": seconds * 1e3,
        "tokens_per_second": batch / seconds,
        "gflops_dense_equivalent": dense_flops / seconds / 1e9,
        "gflops_performed": flops_factor * d_in * d_sae * batch / seconds / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-in", type=int, default=576)
    parser.add_argument("--d-sae", type=int, default=4608)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=9)
    parser.add_argument("--cases", nargs="+", default=list(CASES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    peak = matmul_peak(device)
    rows = [time_case(name, args.d_in, args.d_sae, args.batch, args.steps, device) for name in args.cases]
    peak_after = matmul_peak(device)  # a second reading shows how noisy the machine was
    peak = max(peak, peak_after)  # the higher reading: fractions are conservative
    for row in rows:
        row["fraction_of_peak"] = row["gflops_performed"] / peak
    if args.json:
        print(json.dumps({"peak_gflops": peak, "peak_gflops_after": peak_after, "rows": rows}, indent=2))
        return
    print(f"device {device}, threads {torch.get_num_threads()}, d_in={args.d_in} d_sae={args.d_sae} batch={args.batch}")
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s (best of readings before and after the cases)")
    print(f"{'case':<14} {'ms/step':>9} {'tokens/s':>10} {'GFLOP/s':>9} {'of peak':>8} {'vs jumprelu':>12}")
    base = next((r["tokens_per_second"] for r in rows if r["case"] == "jumprelu"), rows[0]["tokens_per_second"])
    for row in rows:
        print(
            f"{row['case']:<14} {row['ms_per_step']:>9.1f} {row['tokens_per_second']:>10.0f} {row['gflops_performed']:>9.1f} "
            f"{row['fraction_of_peak']:>8.1%} {row['tokens_per_second'] / base:>11.2f}x"
        )
    print("GFLOP/s counts the FLOPs each step performs at matmul size (10·d·m per token dense, 14 gated, 2 for the sparse step's encoder forward).")


if __name__ == "__main__":
    main()
