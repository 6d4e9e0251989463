"""A suite's needs on paper, for a model this machine need not hold: ``saescope train … --estimate-only``.

Gemma Scope trained 400+ SAEs on Gemma 2; planning such a run means knowing, before renting the GPUs,
how much memory each process needs, how many activations cross the network per step and how long it
takes. Everything here comes from the model's *config* (``saescope.lm.skeleton``: hookpoints, widths and
parameter count on the meta device, no weights) and the plan; time uses one device's matmul
throughput, measured here or given (``--device-tflops``), at the preflight's 60% efficiency.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from saescope.errors import InvalidInput
from saescope.lm.hookpoints import find_layers, resolve_hookpoints
from saescope.lm.models import resolve_dtype
from saescope.lm.skeleton import model_skeleton, parameter_count, skeleton_site_widths
from saescope.parallel import Ranks, choose_placement
from saescope.plan import RunPlan
from saescope.plan_jobs import PlannedJob, plan_jobs, read_sites
from saescope.suite.preflight import (
    GIB,
    Estimate,
    estimate,
    format_duration,
)


@dataclass
class PlanEstimate:
    estimate: Estimate
    saes: list[PlannedJob]
    model_params: int
    n_layers: int
    hookpoints: int
    device_flops: float | None

    def lines(self) -> list[str]:
        e = self.estimate
        sae_params = sum(s.n_params for s in self.saes)
        throughput = f"{self.device_flops / 1e12:g} TFLOP/s per device (given)" if self.device_flops else f"this machine's matmul peak ({e.device})"
        per = "per process" if e.processes > 1 else "in the process"
        lines = [
            f"plan: {len(self.saes)} SAEs ({_count(sae_params)} parameters) at {self.hookpoints} hookpoints of a "
            f"{_count(self.model_params)}-parameter model with {self.n_layers} layers",
            f"processes: {e.processes} (torchrun, " + ("sharded placement: each process trains a block of SAEs, grouped by hookpoint)" if e.placement == "sharded"
                                                      else "replicated placement: every SAE on every process, batches split)"),
            f"memory {per}: {e.memory_bytes / GIB:.1f} GiB ("
            + ", ".join(f"{name} {size / GIB:.1f}" for name, size in (e.memory_parts or {}).items() if size >= GIB / 20) + ")",
            f"disk: {e.disk_bytes / GIB:.1f} GiB",
        ]
        if e.processes > 1:
            what = ("every hookpoint's rows of the global batch from the other processes" if e.placement == "replicated" else
                    "its own SAEs' hookpoints' rows of the global batch from the other processes, one all-to-all")
            lines.append(f"activations exchanged per step: {e.gathered_bytes_per_step / 2**20:.1f} MiB received by the busiest process ({what})")
        if e.reduced_bytes_per_step:
            lines.append(f"gradients all-reduced per step: {e.reduced_bytes_per_step / 2**20:.1f} MiB per process")
        lines.append(f"time: about {format_duration(e.seconds)} on {e.processes} device(s) at {throughput}, 60% efficiency")
        return lines


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def estimate_plan(plan: RunPlan, out_dir: str | Path, processes: int = 1, device_flops: float | None = None) -> PlanEstimate:
    """The preflight estimate of ``plan`` from the model's config alone (no weights loaded)."""
    if plan.model.model is None:
        raise InvalidInput("--estimate-only plans a suite on a model: give --model (a hub id, a folder with config.json or a .gguf)")
    if processes < 1:
        raise InvalidInput(f"--processes must be at least 1, got {processes}")
    device = plan.model.device or "cpu"
    if device.startswith("cuda") and device_flops is None and not torch.cuda.is_available():
        raise InvalidInput("the plan's device is CUDA but this machine has none to measure: give --device-tflops "
                           "(one GPU's matmul throughput, e.g. from benchmarks/train_step.py on that GPU)")
    skeleton = model_skeleton(plan.model.model)
    requested = [p.name for p in resolve_hookpoints(skeleton, plan.sweep.hookpoints, check=False)]
    points = resolve_hookpoints(skeleton, requested + read_sites(plan.sweep, requested), check=False)
    widths = skeleton_site_widths(skeleton, points)
    planned = plan_jobs(plan.sweep, widths, requested, plan.source)
    placement = choose_placement(plan.training.placement, len(planned), Ranks(0, processes))
    n_layers = len(find_layers(skeleton)[1])
    params = parameter_count(skeleton)
    element = resolve_dtype(plan.model.dtype).itemsize
    training = plan.training
    guess = estimate(
        planned, tokens=training.tokens, batch_size=training.batch_size, shuffle_buffer_tokens=plan.data.shuffle_buffer_tokens,
        model_params=params, model_bytes=params * element, forward_fraction=(max(p.layer for p in points) + 1) / n_layers,
        eval_tokens=plan.evaluation.eval_tokens, checkpointing=training.resolved_checkpoint_every() is not None, out_dir=out_dir,
        device=device, live_model=True, processes=processes, flops_per_second=device_flops, placement=placement,
    )
    return PlanEstimate(guess, planned, params, n_layers, len(requested), device_flops)
