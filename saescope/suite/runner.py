"""Train a whole suite from one pass over the model: every hookpoint × architecture × width × target L0.

Order of work, so that a bad suite fails before compute is spent: the config is checked (no model
needed), the output folder is checked, the model is loaded and the hookpoints resolved (unknown
names list the valid ones), widths are checked against target L0s, memory, disk and time are
estimated (a suite that cannot fit is refused), and only then does training start.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from saescope.io.suite_index import (
    FORMAT,
    is_suite,
    read_index,
    write_index,
)
from saescope.plan import (
    LM_PROPORTIONAL_GAIN,
    PlanError,
    RunPlan,
)
from saescope.plan_jobs import PlannedJob, plan_jobs, read_sites
from saescope.suite.preflight import check, estimate

logger = logging.getLogger("saescope")
CONFIG_COPY = "suite.yaml"


def as_plan(plan: RunPlan | dict[str, Any] | str | Path) -> RunPlan:
    """A ``RunPlan`` from a plan, a dict (nested or flat) or a YAML/JSON file; its dataset or cache must exist."""
    if isinstance(plan, dict):
        plan = RunPlan.from_dict(plan)
    elif not isinstance(plan, RunPlan):
        plan = RunPlan.from_file(plan)
    plan.check_sources()
    return plan


def train(
    plan: RunPlan | dict[str, Any] | str | Path,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    report: Callable[[str], None] = print,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train any plan: on an array (returns {name: sae}) or on a model or a cache (returns the suite index).

    Example:
        >>> saescope.train({"data": {"array": "acts.npy"}, "sweep": {"architectures": ["topk"], "widths": [4608], "target_l0s": [32]}}, "runs/a")  # doctest: +SKIP
    """
    plan = as_plan(plan)
    if plan.data.array is not None:
        from saescope.suite.arrays import train_on_array

        return train_on_array(plan, out, resume=resume, progress=progress, overwrite=overwrite)
    return _train_checked_suite(plan, out, resume, progress, report, overwrite)


def train_suite(
    config: RunPlan | dict[str, Any] | str | Path,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    report: Callable[[str], None] = print,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train every SAE of ``config`` into ``out`` and return the suite index (``suite.json``).

    With ``resume=True`` a run killed after a checkpoint continues from it (same config); one stopped
    before its first checkpoint starts again in the same folder. ``overwrite=True`` replaces an
    earlier saescope output in ``out``. The folder is locked while the suite trains.
    """
    return _train_checked_suite(as_plan(config), out, resume, progress, report, overwrite)


def _train_checked_suite(plan: RunPlan, out: str | Path, resume: bool, progress: bool, report: Callable[[str], None],
                         overwrite: bool = False) -> dict[str, Any]:
    """``train_suite`` once the plan is read: holds the folder's lock for the whole run."""
    from saescope.io.lock import clear_output, output_lock

    if plan.data.array is not None:
        raise PlanError(f"{plan.source}: a suite trains on a model or a cache; train an array with saescope.train")
    from saescope.parallel import barrier, current

    if resume and overwrite:
        raise PlanError("--resume and --overwrite: give one (continue the run, or replace it)")
    ranks = current()
    if not ranks.main:  # under torchrun: rank 0 checks, locks and writes the suite files; this rank trains its share
        barrier(ranks)
        index = _train_locked_suite(plan, Path(out), resume, False, lambda line: None)
        barrier(ranks)
        return index
    with output_lock(out, "suite training"):
        if overwrite:
            clear_output(out)
        barrier(ranks)
        index = _train_locked_suite(plan, Path(out), resume, progress, report)
        barrier(ranks)
        return index


def _train_locked_suite(plan: RunPlan, out: Path, resume: bool, progress: bool, report: Callable[[str], None]) -> dict[str, Any]:
    """The suite's training, with ``out`` locked."""
    from saescope._version import __version__
    from saescope.evaluation.on_model import index_metrics
    from saescope.io.trainer_state import has_trainer_state
    from saescope.parallel import current, gather_objects
    from saescope.training import TrainConfig
    from saescope.training.end_to_end import EndToEndConfig
    from saescope.training.on_model import train_on_model

    ranks = current()
    plan, given = plan.with_absolute_paths()  # so the suite works from any folder later
    model, data, training, sweep = plan.model, plan.data, plan.training, plan.sweep
    checkpoint_dir = out / "checkpoint"
    if ranks.main:
        _check_output_folder(out, plan, resume, checkpoint_dir, report)
    resume = resume and has_trainer_state(ranks.checkpoint_folder(checkpoint_dir))  # stopped before its first checkpoint: start again here

    loaded, widths, requested, model_id, forward_fraction = _load_and_resolve(plan)
    planned = plan_jobs(sweep, widths, requested, plan.source)
    report(f"suite: {_count(planned)} at {len(requested)} hookpoint(s) of {model_id}, {training.tokens:,} tokens each")

    checkpoint_every = training.resolved_checkpoint_every()
    eval_tokens = plan.evaluation.eval_tokens if loaded is not None else 0
    device = str(loaded.device) if loaded is not None else (model.device or "cpu")
    guess = estimate(
        planned, tokens=training.tokens, batch_size=training.batch_size, shuffle_buffer_tokens=data.shuffle_buffer_tokens,
        model_params=_parameter_count(loaded), model_bytes=_parameter_bytes(loaded), forward_fraction=forward_fraction,
        eval_tokens=eval_tokens, checkpointing=checkpoint_every is not None, out_dir=out, device=device, live_model=data.cache is None,
        processes=ranks.world,
    )
    report(guess.summary())
    if ranks.main:
        check(guess, out)
        out.mkdir(parents=True, exist_ok=True)
        _write_config_copy(out, plan)
    index = {
        "format": FORMAT, "version": 1, "status": "training", "saescope_version": __version__,
        "model": model_id, "dataset": data.dataset, "given": given, "config": plan.to_dict(),
        "estimate": {"memory_bytes": guess.memory_bytes, "seconds": round(guess.seconds, 1)},
        "saes": [p.index_entry() for p in planned],
    }
    if ranks.main:
        write_index(out, index)

    train = TrainConfig(
        total_tokens=training.tokens, batch_size=training.batch_size, seed=training.seed, device=model.device,
        normalization_tokens=min(TrainConfig.normalization_tokens, training.tokens), progress=progress,
        log_every=max(1, min(TrainConfig.log_every, training.tokens // training.batch_size // 40)),  # a progress bar that moves
        sparsity_proportional_gain=LM_PROPORTIONAL_GAIN if training.sparsity_proportional_gain is None else training.sparsity_proportional_gain,
        checkpoint_every=checkpoint_every, checkpoint_dir=str(checkpoint_dir) if checkpoint_every else None,
        tf32=training.tf32, step_autocast=training.step_autocast, placement=training.placement,
    )
    started = time.perf_counter()
    results = train_on_model(
        loaded if loaded is not None else model_id, list(widths), planned, train, plan.lm_data(), out_dir=str(out), resume=resume,
        dtype=model.dtype, cache=data.cache, eval_tokens=eval_tokens,
        end_to_end=EndToEndConfig(tokens=training.end_to_end_tokens) if training.end_to_end_tokens else None,
    )
    seconds = time.perf_counter() - started

    # under torchrun each process trained and evaluated its own SAEs: rank 0 collects every one's metrics
    metrics_by_path = {path: metrics for part in gather_objects({path: m for path, (_sae, m) in results.items()}, ranks)
                       for path, metrics in part.items()}
    for entry in index["saes"]:
        entry["metrics"] = index_metrics(metrics_by_path[entry["path"]])
    index["status"] = "complete"
    index["train_seconds"] = round(seconds, 1)
    if ranks.distributed:
        index["processes"] = ranks.world
    if ranks.main:
        write_index(out, index)
        if not training.keep_checkpoint and checkpoint_dir.exists():
            shutil.rmtree(checkpoint_dir)
    if ranks.main and not ranks.distributed and loaded is not None and eval_tokens > 0:
        # transcoder sets at two or more layers: the model with all their MLPs replaced at once
        from dataclasses import replace as replaced

        from saescope.suite.replacement import REPLACEMENT_KEY, measure_replacements

        data_config = replaced(plan.lm_data(), dataset=index.get("dataset") or data.dataset)
        figures = measure_replacements(out, loaded, data_config, eval_tokens, saes={path: sae for path, (sae, _m) in results.items()},
                                       progress=progress)
        if figures:
            index[REPLACEMENT_KEY] = figures
    return index


# -- steps ---------------------------------------------------------------------------------------------
def _check_output_folder(out: Path, plan: RunPlan, resume: bool, checkpoint_dir: Path, report: Callable[[str], None] = print) -> None:
    from saescope.io.trainer_state import has_trainer_state

    unfinished = is_suite(out) and read_index(out).get("status") != "complete"
    if resume:
        saved = out / CONFIG_COPY
        if saved.is_file() and RunPlan.from_file(saved).to_dict() != plan.to_dict():
            raise PlanError(f"--resume: the config differs from the one this run started with ({saved}); resume with that config")
        if has_trainer_state(checkpoint_dir):
            return
        if is_suite(out) and not unfinished:
            raise PlanError(f"--resume: the suite in {out} is already complete; nothing to resume")
        if unfinished:
            report(f"{out}: the run stopped before its first checkpoint; starting it again from step 0 in the same folder")
            return
        raise PlanError(f"--resume: no run to continue in {out} (no suite.json, no checkpoint); start the run without --resume")
    if unfinished or has_trainer_state(checkpoint_dir):
        raise PlanError(f"--out {out}: holds an unfinished suite; pass --resume to continue it (from its last checkpoint, or from the "
                        "start if it stopped before one), or --overwrite to start over")
    if is_suite(out):
        raise PlanError(f"--out {out}: already holds a suite; choose another folder, or pass --overwrite to replace it")


def _load_and_resolve(plan: RunPlan) -> tuple[Any, dict[str, int], list[str], str, float]:
    """The loaded model (None when a cache is used and nothing is evaluated), {site: width} of every site the run
    harvests (the hookpoints and what their transcoders read), the hookpoints asked for, the model id, the depth fraction."""
    from saescope.lm.capture import site_widths
    from saescope.lm.hookpoints import resolve_hookpoints
    from saescope.lm.models import load_model

    model, sweep = plan.model, plan.sweep
    if plan.data.cache is not None:
        from saescope.lm.cache_source import cache_source

        _source, requested_widths, manifest = cache_source(plan.data.cache, sweep.hookpoints)
        requested = list(requested_widths)
        extra = read_sites(sweep, requested)
        widths = cache_source(plan.data.cache, requested + extra)[1] if extra else requested_widths
        model_id = manifest.get("model", "unknown")
        loaded = None
        if plan.evaluation.eval_tokens > 0:
            loaded = load_model(model.model or model_id, device=model.device, dtype=model.dtype)
            model_id = loaded.model_id
        return loaded, widths, requested, model_id, 0.0
    assert model.model is not None
    loaded = load_model(model.model, device=model.device, dtype=model.dtype)
    requested = [p.name for p in resolve_hookpoints(loaded.model, sweep.hookpoints)]
    points = resolve_hookpoints(loaded.model, requested + read_sites(sweep, requested))
    widths = site_widths(loaded.model, points)
    deepest = max(p.layer for p in points)
    return loaded, widths, requested, loaded.model_id, (deepest + 1) / max(loaded.n_layers, 1)


def _count(planned: list[PlannedJob]) -> str:
    """``12 SAEs`` or ``4 SAEs and 4 transcoders``."""
    transcoders = sum(p.kind != "sae" for p in planned)
    saes = len(planned) - transcoders
    parts = [f"{saes} SAEs"] if saes else []
    return " and ".join(parts + ([f"{transcoders} transcoders"] if transcoders else []))


def _write_config_copy(out: Path, plan: RunPlan) -> None:
    import yaml

    from saescope.io.atomic import atomic_write_text

    atomic_write_text(out / CONFIG_COPY, yaml.safe_dump(plan.to_dict(), sort_keys=False))


def _parameter_count(loaded: Any) -> int:
    return 0 if loaded is None else sum(p.numel() for p in loaded.model.parameters())


def _parameter_bytes(loaded: Any) -> int:
    return 0 if loaded is None else sum(p.numel() * p.element_size() for p in loaded.model.parameters())

