"""The training loop: one pass over the data feeds every SAE.

Each batch is read once, moved to the device once and handed to every ``SaeTrainer`` in turn, so a λ
or L0 sweep, or jumprelu against topk, costs one read of the data. Host synchronisation happens only
every ``log_every`` steps. Checkpoints are resumable bit for bit: data order is a pure function of
(seed, step), and every piece of mutable state is saved.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from saescope.data import as_source
from saescope.errors import Interrupted, InvalidInput
from saescope.io.trainer_state import (
    has_trainer_state,
    load_trainer_state,
    save_trainer_state,
)
from saescope.jobs import ReadSpec, SaeJob, default_objective
from saescope.parallel import (
    Ranks,
    agree,
    assign_owners,
    choose_placement,
    gather_objects,
)
from saescope.parallel import current as current_ranks
from saescope.saes import SparseAutoencoder
from saescope.saes.stacked import stacked_normalization
from saescope.training.config import TrainConfig
from saescope.training.interrupt import stop_at_step_boundary
from saescope.training.precision import matmul_precision
from saescope.training.prefetch import to_device_ahead
from saescope.training.progress import ProgressReporter
from saescope.training.replicas import my_rows
from saescope.training.sae_trainer import SaeTrainer

logger = logging.getLogger("saescope")
NORMALIZATION_SAMPLE_BYTES = 2**30
"""Most memory the normalisation sample (every hookpoint's vectors, float32) may take."""
MIN_NORMALIZATION_TOKENS = 4096
Callback = Callable[[int, dict[str, dict[str, float]]], None]


def as_jobs(items: Sequence[SaeJob | SparseAutoencoder] | Mapping[str, SaeJob | SparseAutoencoder]) -> list[SaeJob]:
    """Jobs from jobs or bare SAEs (a bare SAE is trained by its architecture's default objective).

    Names come from the mapping's keys, else the jobs' own names; bare SAEs in a list are named by
    architecture (``topk``, or ``topk-0``, ``topk-1`` when several share one).
    """
    pairs = list(items.items()) if isinstance(items, Mapping) else [(None, item) for item in items]
    for _key, item in pairs:
        if not isinstance(item, (SaeJob, SparseAutoencoder)):
            raise TypeError(f"expected a saescope SaeJob or SparseAutoencoder, got {type(item).__name__}; build one with saescope.create_job")
    architectures = [item.sae.architecture if isinstance(item, SaeJob) else item.architecture for _key, item in pairs]
    seen: dict[str, int] = {}
    jobs = []
    for (key, item), arch in zip(pairs, architectures):
        if key is None and isinstance(item, SaeJob):
            key = item.name
        if key is None:
            key = arch if architectures.count(arch) == 1 else f"{arch}-{seen.get(arch, 0)}"
            seen[arch] = seen.get(arch, 0) + 1
        if isinstance(item, SaeJob):
            jobs.append(item if item.name == key else SaeJob(key, item.sae, item.objective, item.reads))
        else:
            hookpoint = item.cfg.hookpoint
            jobs.append(SaeJob(key, item, default_objective(item), ReadSpec((hookpoint,) if hookpoint else ())))
    if not jobs:
        raise InvalidInput("Trainer needs at least one SAE")
    names = [job.name for job in jobs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidInput(f"two SAE jobs share the name(s) {duplicates}; give each job its own name")
    return jobs


class Routed(NamedTuple):
    """One SAE's share of a batch."""

    trainer: SaeTrainer
    x: Tensor
    layer_index: Tensor | None
    """For stacked reads, the hookpoint each row came from."""
    target: Tensor | None
    """For transcoders, the target site's rows (raw)."""


SOURCE_PREFIX = "source::"
"""Checkpoint tensors of the activation source (a live model's shuffle buffer), apart from the SAEs'."""


class Trainer:
    """Train several SAE jobs on the same activation batches.

    Example:
        >>> import torch
        >>> from saescope import create_job
        >>> jobs = [create_job("jumprelu", 16, 64, target_l0=4), create_job("topk", 16, 64, target_l0=4)]
        >>> trained = Trainer(jobs, TrainConfig(total_tokens=8192, batch_size=1024, progress=False)).fit(torch.randn(4096, 16))
        >>> sorted(trained), trained["topk"].training_summary["n_steps"]
        (['jumprelu', 'topk'], 8)
    """

    def __init__(
        self,
        jobs: Sequence[SaeJob | SparseAutoencoder] | Mapping[str, SaeJob | SparseAutoencoder],
        config: TrainConfig | None = None,
    ) -> None:
        self.config = config or TrainConfig()
        self.device = torch.device(self.config.resolved_device())
        self.jobs = as_jobs(jobs)
        self.saes = {job.name: job.sae for job in self.jobs}
        self.trainers = [SaeTrainer(job, self.config, self.device) for job in self.jobs]
        self.ranks = current_ranks()
        self.placement = choose_placement(self.config.placement, len(self.jobs), self.ranks)
        if self.ranks.distributed:
            agree([[job.name for job in self.jobs], self.placement], self.ranks, "the SAE jobs and their placement")
        if self.placement == "replicated":  # every rank trains every job on its share of each batch (training/replicas.py)
            if self.config.batch_size % self.ranks.world:
                raise InvalidInput(f"batch_size {self.config.batch_size} must be a multiple of the {self.ranks.world} processes "
                                   "under replicated placement (each process takes an equal share of every batch)")
            self.owned = list(self.trainers)
            for trainer in self.owned:
                trainer.replicas = self.ranks
        else:  # sharded (saescope.parallel): this rank trains its block of the jobs, ordered by hookpoint
            self.owners = assign_owners([job.reads.hookpoints for job in self.jobs], self.ranks.world)
            self.owned = [trainer for trainer, owner in zip(self.trainers, self.owners) if owner == self.ranks.rank]
        self.callbacks: list[Callback] = []
        self._fitted = False

    def add_callback(self, callback: Callback) -> None:
        """``callback(step, metrics_by_sae)`` runs at every log step, after any checkpoint."""
        self.callbacks.append(callback)

    def fit(self, data: Any, resume: bool = False) -> dict[str, SparseAutoencoder]:
        """Train on ``data`` (tensor, numpy array/memmap, iterable of batches) and return the SAEs.

        The returned SAEs take raw activations: the input scale used in training is folded into
        their biases and thresholds. With ``resume=True`` and a state in ``config.checkpoint_dir``,
        training continues from the last checkpoint.
        """
        if self._fitted:
            raise RuntimeError("this Trainer has already fitted its SAEs (their input scale is folded in); create a new Trainer")
        config = self.config
        source = as_source(data)
        self._source = source
        if self.placement == "sharded" and hasattr(source, "restrict_to_ranks"):
            # each rank reads (a cache) or receives and buffers (a live model, one all-to-all) only its own jobs' hookpoints
            source.restrict_to_ranks(self._hookpoints_by_rank())
        start_step = 0
        if resume and has_trainer_state(self._checkpoint_dir()):
            start_step = self._load_checkpoint()
        else:
            if resume:
                self._refuse_other_world()
            self._estimate_normalization(source)
        total_steps = config.total_steps
        main = self.ranks.main
        reporter = ProgressReporter(total_steps, start_step, config.progress and main, config.logger if main else "none",
                                    config.log_dir if main else None, config.to_dict())
        batches = source.iter_batches(config.batch_size, shuffle=config.shuffle, seed=config.seed, start_batch=start_step, loop=True)
        # a source that checkpoints its own read position (a live model) is read on this thread, in step with the trainer
        batches = to_device_ahead(batches, self.device, background=not hasattr(source, "resume_state"))
        started = last_log_time = time.perf_counter()
        last_log_step = step = start_step
        try:
            with stop_at_step_boundary() as stop, matmul_precision(self.device, config.tf32):
                for step in range(start_step, total_steps):
                    batch = next(batches, None)
                    if batch is None:
                        logger.warning("the data ran out after %d of %d steps; stopping early", step, total_steps)
                        break
                    for trainer, x, layer_index, target in self._route(batch, step):
                        if self.placement == "replicated":
                            x, layer_index = my_rows(x, layer_index, self.ranks)
                            target = None if target is None else my_rows(target, None, self.ranks)[0]
                        trainer.train_step(x, step, layer_index, target)
                    done = step + 1
                    is_last = done == total_steps
                    if done % config.log_every == 0 or is_last:
                        metrics = self._gather_metrics({t.name: t.read_metrics() for t in self.owned})
                        now = time.perf_counter()
                        speed = (done - last_log_step) * config.batch_size / max(now - last_log_time, 1e-9)
                        reporter.report(done, done - last_log_step, done * config.batch_size, speed, metrics)
                        last_log_time, last_log_step = now, done
                        self._last_metrics = metrics
                    if config.checkpoint_every and (done % config.checkpoint_every == 0 or is_last):
                        self._save_checkpoint(done)
                    if (done % config.log_every == 0 or is_last) and main:
                        for callback in self.callbacks:
                            callback(done, metrics)
                    if stop.requested and not is_last:
                        self._stop_after(done, total_steps)
                else:
                    step = total_steps
        finally:
            reporter.close()
            batches.close()  # stops a read-ahead thread
        steps_done = min(total_steps, step)
        if steps_done == 0:
            raise InvalidInput("no training steps ran: the activation source produced no batches")
        self._fitted = True
        return self._finish(steps_done, start_step, time.perf_counter() - started)

    def _hookpoints_by_rank(self) -> list[list[str]]:
        """Under sharded placement, the hookpoints each rank's own jobs read, sorted."""
        needs: list[set[str]] = [set() for _ in range(self.ranks.world)]
        for job, owner in zip(self.jobs, self.owners):
            needs[owner].update(job.reads.hookpoints)
        return [sorted(names) for names in needs]

    def _gather_metrics(self, mine: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        """Every SAE's metrics, in job order, from whichever rank trains it."""
        if not self.ranks.distributed:
            return mine
        merged = {name: values for part in gather_objects(mine, self.ranks) for name, values in part.items()}
        return {job.name: merged[job.name] for job in self.jobs if job.name in merged}

    def _checkpoint_dir(self) -> str | None:
        folder = self.config.checkpoint_dir
        return None if folder is None else self.ranks.checkpoint_folder(folder)

    def _refuse_other_world(self) -> None:
        """--resume of a run checkpointed with another number of processes: say so rather than start afresh silently."""
        reason = other_world_checkpoint(self.config.checkpoint_dir, self.ranks)
        if reason:
            raise InvalidInput(reason)

    def _stop_after(self, done: int, total_steps: int) -> None:
        """Ctrl-C arrived during step ``done``: save a checkpoint at this step boundary and stop with one line."""
        if self.config.checkpoint_dir:
            self._save_checkpoint(done)
            raise Interrupted(f"stopped by Ctrl-C after step {done:,} of {total_steps:,}; a checkpoint is saved in "
                              f"{self.config.checkpoint_dir}: run the same command with --resume to continue")
        raise Interrupted(f"stopped by Ctrl-C after step {done:,} of {total_steps:,}; nothing was saved "
                          "(this run keeps no checkpoint: give --checkpoint-every N to make runs resumable)")

    # -- routing ------------------------------------------------------------------------------------
    def _route(self, batch: Tensor | Mapping[str, Tensor], where: int | str) -> list[Routed]:
        """Pair each SAE with its input, for stacked reads each row's layer index, and for transcoders the target.

        A plain batch goes to every SAE as it is; a dict batch gives each SAE the entry of its
        hookpoint, or for a stacked read every one of its hookpoints' entries one after another, and a
        transcoder the entry of its target site beside its input. Each distinct tensor is moved to the
        device once, whatever the number of SAEs reading it.
        """
        moved: dict[int, Tensor] = {}

        def on_device(tensor: Tensor) -> Tensor:
            if id(tensor) not in moved:
                moved[id(tensor)] = tensor.to(self.device, non_blocking=True)
            return moved[id(tensor)]

        pairs = []
        for trainer in self.owned:
            hookpoints = trainer.job.reads.hookpoints
            if not isinstance(batch, Mapping):
                if hookpoints:
                    raise InvalidInput(
                        f"SAE {trainer.name!r} reads hookpoint(s) {list(hookpoints)}, but the data is a plain array; "
                        "train it on a model or a cache, or build the job without reads="
                    )
                self._check_width(trainer, batch, None, where)
                pairs.append(Routed(trainer, on_device(batch), None, None))
                continue
            if not hookpoints:
                raise InvalidInput(
                    f"SAE {trainer.name!r} reads plain arrays, but the data is a dict by hookpoint ({sorted(batch)}); "
                    "give the job reads=ReadSpec(('<hookpoint>',)) or create it with hookpoint=..."
                )
            target_site = trainer.job.reads.target
            missing = [h for h in (*hookpoints, *([target_site] if target_site else [])) if h not in batch]
            if missing:
                raise InvalidInput(
                    f"SAE {trainer.name!r} reads hookpoint(s) {missing} but the data provides {sorted(batch)}; "
                    "set the job's reads to hookpoints the data holds"
                )
            for hookpoint in hookpoints:
                self._check_width(trainer, batch[hookpoint], hookpoint, where)
            target = None
            if target_site:
                self._check_width(trainer, batch[target_site], target_site, where, output=True)
                target = on_device(batch[target_site])
            if len(hookpoints) == 1:
                pairs.append(Routed(trainer, on_device(batch[hookpoints[0]]), None, target))
                continue
            parts = [on_device(batch[h]) for h in hookpoints]
            layer_index = torch.cat([torch.full((len(part),), i, dtype=torch.long, device=self.device) for i, part in enumerate(parts)])
            pairs.append(Routed(trainer, torch.cat(parts), layer_index, None))
        return pairs

    @staticmethod
    def _check_width(trainer: SaeTrainer, tensor: Tensor, hookpoint: str | None, where: int | str, output: bool = False) -> None:
        expected, side = (trainer.sae.d_out, "its decoder writes d_out") if output else (trainer.sae.d_in, "expects d_in")
        if tensor.shape[-1] != expected:
            label = f" at {hookpoint!r}" if hookpoint else ""
            where_text = f" (batch {where})" if isinstance(where, int) else f" ({where})"
            what = "target activations" if output else "activations"
            raise InvalidInput(f"{what}{label} have width {tensor.shape[-1]}{where_text}, but SAE {trainer.name!r} {side}={expected}")

    # -- before and after --------------------------------------------------------------------------
    def normalization_tokens(self) -> int:
        """Tokens of the normalisation sample: the configured count, fewer when many hookpoints would not fit in memory.

        The sample holds every hookpoint's vectors at once (a 30-layer read of d 576 at 65,536 tokens is 4.5 GB),
        so it is capped at ``NORMALIZATION_SAMPLE_BYTES`` and never below ``MIN_NORMALIZATION_TOKENS``.
        """
        widths = {h: t.sae.d_in for t in self.trainers for h in t.job.reads.hookpoints} or {None: max(t.sae.d_in for t in self.trainers)}
        fitting = NORMALIZATION_SAMPLE_BYTES // (4 * sum(widths.values()))
        return min(self.config.normalization_tokens, max(MIN_NORMALIZATION_TOKENS, fitting))

    def _estimate_normalization(self, source: Any) -> None:
        head = source.head(self.normalization_tokens())
        for trainer, sample, layer_index, target in self._route(head, "used for normalisation"):
            if sample.shape[0] == 0:
                raise InvalidInput("no activations: the data source is empty")
            if not torch.isfinite(sample).all():
                raise InvalidInput("the activations contain NaN or inf (found in the normalisation sample); clean the data")
            squared_norms = sample.pow(2).sum(dim=1).double()
            if layer_index is None:
                mean_squared_norms = [squared_norms.mean().item()]
            else:
                n_layers = len(trainer.job.reads.hookpoints)
                sums = torch.zeros(n_layers, dtype=torch.float64, device=sample.device).index_add_(0, layer_index, squared_norms)
                mean_squared_norms = (sums / torch.bincount(layer_index, minlength=n_layers).clamp_min(1)).tolist()
            for hookpoint, value in zip(trainer.job.reads.hookpoints or (None,), mean_squared_norms):
                if value <= 0:
                    where = f" at {hookpoint}" if hookpoint else ""
                    raise InvalidInput(f"the activations{where} are all zero; there is nothing to train on")
            if target is not None and not target.pow(2).sum(dim=1).double().mean().item() > 0:
                raise InvalidInput(f"the target activations at {trainer.job.reads.target} are all zero; there is nothing to predict")
            trainer.set_input_scale(mean_squared_norms, sample.float(), layer_index, None if target is None else target.float())

    def _finish(self, steps_done: int, start_step: int, seconds: float) -> dict[str, SparseAutoencoder]:
        config = self.config
        tokens_this_run = (steps_done - start_step) * config.batch_size
        for trainer in self.owned:
            sae = trainer.sae
            trainer.finalize()
            output_scale = trainer.output_scale or trainer.input_scale
            if trainer.input_offset is not None:
                sae.fold_input_offset(trainer.input_offset)  # in training units, before the scales
            sae.fold_scales(trainer.input_scale, output_scale)
            sae.normalization = {
                "method": trainer.objective.input_norm,
                "input_scale": trainer.input_scale,
                "folded": True,
                "note": "training used c*x with this c; weights are folded so the SAE takes raw activations",
            }
            if trainer.output_scale is not None:
                sae.normalization.update(output_scale=output_scale, note="training mapped c_in*x to c_out*y (input_scale, output_scale); "
                                         "weights are folded so the transcoder maps raw activations to raw activations")
            if trainer.job.reads.stacked:
                sae.normalization.update(stacked_normalization(trainer.job.reads.hookpoints, trainer.layer_scales.tolist(), trainer.input_scale))
            sae.training_summary = {
                "n_tokens": steps_done * config.batch_size,
                "n_steps": steps_done,
                "batch_size": config.batch_size,
                "lr": trainer.base_lr,
                "objective": trainer.objective.to_dict(),
                "final_sparsity_coefficient": trainer.controller.value(),
                "target_l0": trainer.objective.target_l0,
                "dead_window_tokens": trainer.dead_window,
                "dead_fraction": trainer.dead_fraction(),
                "seed": config.seed,
                "seconds": round(seconds, 3),
                "tokens_per_second": round(tokens_this_run / max(seconds, 1e-9), 1),
                "final_train_metrics": getattr(self, "_last_metrics", {}).get(trainer.name, {}),
            }
            if self.ranks.distributed:
                sae.training_summary["processes"] = self.ranks.world
                sae.training_summary["placement"] = self.placement
        if self.placement == "replicated" and not self.ranks.main:
            return {}  # identical replicas: rank 0 returns (and the suite saves and evaluates) them
        return {trainer.name: trainer.sae for trainer in self.owned}

    # -- checkpoints ---------------------------------------------------------------------------------
    def _save_checkpoint(self, step: int) -> None:
        tensors, infos = {}, []
        for trainer in self.owned:
            tensors.update({f"{trainer.name}::{k}": v for k, v in trainer.state_tensors().items()})
            infos.append(trainer.state_info())
        info = {"step": step, "train_config": self.config.to_dict(), "saes": infos, "data": self._data_fingerprint(),
                "processes": {"rank": self.ranks.rank, "world": self.ranks.world}}
        if hasattr(self._source, "resume_state"):
            info["source"] = self._source.resume_state()
        if hasattr(self._source, "resume_tensors"):
            tensors.update({f"{SOURCE_PREFIX}{k}": v for k, v in self._source.resume_tensors().items()})
        save_trainer_state(self._checkpoint_dir(), info, tensors)

    def _data_fingerprint(self) -> dict[str, Any] | None:
        """The source's identity (hashing a sample of rows for arrays): computed once per fit, not at every checkpoint."""
        if not hasattr(self, "_fingerprint"):
            fingerprint = getattr(self._source, "fingerprint", None)
            self._fingerprint = fingerprint() if callable(fingerprint) else None
        return self._fingerprint

    def _load_checkpoint(self) -> int:
        folder = Path(self._checkpoint_dir())
        info, tensors = load_trainer_state(folder)
        saved = info["train_config"]
        for key in ("total_tokens", "batch_size", "seed", "shuffle"):
            if saved[key] != getattr(self.config, key):
                raise InvalidInput(f"{folder}: checkpoint has {key}={saved[key]!r} but this run has {getattr(self.config, key)!r}; use the same settings to resume")
        saved_data, data = info.get("data"), self._data_fingerprint()
        if saved_data and data and saved_data != data:
            changed = sorted(k for k in set(saved_data) | set(data) if saved_data.get(k) != data.get(k))
            raise InvalidInput(f"{folder}: the checkpoint was written on other data ({', '.join(f'{k}: {saved_data.get(k)!r} → {data.get(k)!r}' for k in changed)}); "
                               "resume with the data it started on, or start afresh without --resume")
        if [s["name"] for s in info["saes"]] != [t.name for t in self.owned]:
            raise InvalidInput(f"{folder}: checkpoint holds SAEs {[s['name'] for s in info['saes']]}, this run has {[t.name for t in self.owned]}")
        for trainer, sae_info in zip(self.owned, info["saes"]):
            prefix = f"{trainer.name}::"
            trainer.load_state(sae_info, {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        if "source" in info and hasattr(self._source, "restore"):
            source_tensors = {k[len(SOURCE_PREFIX):]: v for k, v in tensors.items() if k.startswith(SOURCE_PREFIX)}
            if source_tensors:
                self._source.restore(info["source"], source_tensors)
            else:
                self._source.restore(info["source"])
        logger.info("resumed from %s at step %d", folder, info["step"])
        return int(info["step"])


def other_world_checkpoint(folder: str | os.PathLike | None, ranks: Ranks) -> str | None:
    """Why ``folder`` cannot be resumed by this many processes (it was checkpointed with another number), or None."""
    if folder is None or not Path(folder).is_dir() or has_trainer_state(ranks.checkpoint_folder(folder)):
        return None
    found = sorted(p.name for p in Path(folder).glob("rank-*-of-*") if has_trainer_state(p))
    if not found and not has_trainer_state(folder):
        return None
    started = f"{found[0].split('-of-')[1]} processes" if found else "one process"
    return (f"{folder}: the run was checkpointed with {started}, and this one has {ranks.world}; resume with the same "
            "number of processes (each process holds its own SAE jobs' state)")


def train_saes(
    data: Any,
    jobs: Sequence[SaeJob | SparseAutoencoder] | Mapping[str, SaeJob | SparseAutoencoder],
    config: TrainConfig | None = None,
    out_dir: str | None = None,
    resume: bool = False,
) -> dict[str, SparseAutoencoder]:
    """Train ``jobs`` (or bare SAEs) on ``data`` and, if ``out_dir`` is given, save each to ``out_dir/<name>``."""
    from saescope.io.checkpoint import save_sae

    trained = Trainer(jobs, config).fit(data, resume=resume)
    if out_dir is not None:
        for name, sae in trained.items():
            save_sae(sae, Path(out_dir) / name)
    return trained
