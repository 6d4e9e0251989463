"""Train a plan's sweep on a .npy array of vectors: no model, no hookpoints, any vectors.

Each job is saved as ``OUT/<name>/`` (``cfg.json``, ``sae_weights.safetensors``). The name is the
architecture when the sweep has one width and one target L0, else ``<arch>-w<width>-l0_<target>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saescope.errors import AlreadyExists, InvalidInput
from saescope.plan import RunPlan
from saescope.plan_jobs import plan_jobs


def load_array(path: str, key: str | None = None, metadata_columns: tuple[str, ...] | list[str] = ()) -> Any:
    """The activation source for ``--data``: any format ``saescope.data.vectors`` reads (.npy, .npz, .csv, .parquet, .h5ad, a folder)."""
    from saescope.data.vectors import load_vectors

    return load_vectors(path, key, metadata_columns).source


def train_on_array(plan: RunPlan, out: str | Path, resume: bool = False, progress: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Train every (architecture, width, target L0) of ``plan.sweep`` on ``plan.data.array``; returns {name: sae}.

    ``out`` is locked while training; an existing non-empty ``out`` needs ``resume`` or ``overwrite``.
    """
    from saescope.io.lock import clear_output, output_lock
    from saescope.parallel import barrier, current

    if resume and overwrite:
        raise InvalidInput("--resume and --overwrite: give one (continue the run, or replace it)")
    target = Path(out)
    ranks = current()
    if not ranks.main:  # under torchrun: rank 0 checks and prepares the folder; this rank saves only its own SAEs
        barrier(ranks)
        trained = _train_locked_array(plan, target, resume, progress=False)
        barrier(ranks)
        return trained
    with output_lock(target, "array training"):
        holds = [p for p in target.iterdir() if p.name != ".saescope.lock"]
        if overwrite:
            clear_output(target)
        elif holds and not resume:
            raise AlreadyExists(f"--out {out}: the folder is not empty; choose another folder, pass --overwrite to replace "
                                "what is there, or --resume to continue a checkpointed run")
        barrier(ranks)
        trained = _train_locked_array(plan, target, resume, progress)
        barrier(ranks)  # every rank's SAEs are saved before the lock is released
        return trained


def _train_locked_array(plan: RunPlan, out: Path, resume: bool, progress: bool) -> dict[str, Any]:
    import torch

    from saescope.data.preprocess import AffineSource, Log1pSource, input_statistics
    from saescope.io.checkpoint import save_sae
    from saescope.io.trainer_state import has_trainer_state
    from saescope.parallel import current
    from saescope.training import TrainConfig, Trainer
    from saescope.training.trainer import other_world_checkpoint

    assert plan.data.array is not None
    data = load_array(plan.data.array, plan.data.data_key, plan.data.metadata_columns)
    if plan.data.log1p:
        data = Log1pSource(data, plan.data.array)  # before the statistics: the mean is of log(1 + x)
    training, sweep = plan.training, plan.sweep
    checkpoint_dir = Path(out) / "checkpoint"
    reason = other_world_checkpoint(checkpoint_dir, current()) if resume else None
    if reason:
        raise InvalidInput(reason)
    if resume and not has_trainer_state(current().checkpoint_folder(checkpoint_dir)):
        raise InvalidInput(f"--resume: no checkpoint in {checkpoint_dir}; run without --resume (and with --checkpoint-every) first")
    d_in = int(data.d_in)
    torch.manual_seed(training.seed)  # SAE initialisation, so that the seed makes the run reproducible
    jobs = [planned.build() for planned in plan_jobs(sweep, {"": d_in}, source=plan.source, on_model=False)]
    checkpoint_every = training.checkpoint_every or None  # arrays checkpoint only when asked
    config = TrainConfig(
        total_tokens=training.tokens, batch_size=training.batch_size, seed=training.seed, device=plan.model.device, progress=progress,
        checkpoint_every=checkpoint_every, checkpoint_dir=str(checkpoint_dir) if checkpoint_every or resume else None,
        tf32=training.tf32, step_autocast=training.step_autocast, placement=training.placement,
        **({} if training.sparsity_proportional_gain is None else {"sparsity_proportional_gain": training.sparsity_proportional_gain}),
    )
    config.resolved_device()  # a bad --device is the flag's fault, not the array's: refuse it before the array is named
    affine = input_statistics(data, standardize=plan.data.standardize) if plan.data.center or plan.data.standardize else None
    try:
        trained = Trainer(jobs, config).fit(AffineSource(data, affine) if affine is not None else data, resume=resume)
    except InvalidInput as error:
        message = str(error)
        raise InvalidInput(message if message.startswith(f"{plan.data.array}:") else f"{plan.data.array}: {message}") from None
    for name, sae in trained.items():
        if affine is not None:
            sae.fold_input_affine(affine.mean, affine.std)
            sae.normalization = {**sae.normalization, "input_affine": affine.record()}
        if plan.data.log1p:
            sae.cfg.input_transform = "log1p"  # applied by the SAE itself from now on: it takes raw counts
            sae.normalization = {**sae.normalization, "input_transform": "log1p"}
        save_sae(sae, out / name)
    return trained
