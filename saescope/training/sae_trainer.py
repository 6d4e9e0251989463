"""Everything needed to train one SAE on a stream of raw activation batches.

The run-level ``Trainer`` owns the data and the loop; a ``SaeTrainer`` owns one SAE's optimiser,
sparsity controller, input scale, dead-latent counters and running metrics, and exposes
``train_step(x_raw, step)``. A model-streaming trainer can call the same method from inside a
forward hook. Nothing here synchronises with the host except ``read_metrics`` (log cadence).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from saescope.saes import SparseAutoencoder
from saescope.saes.base import unit_norm_rows
from saescope.training.config import TrainConfig
from saescope.training.cpu_allocator import retain_freed_memory
from saescope.training.optimizers import ScheduleFreeAdam, build_optimizer
from saescope.training.schedules import lr_multiplier
from saescope.training.sparsity_control import SparsityController

TARGET_WARMUP_LIMIT = 0.2
"""Longest default λ warm-up (fraction of the run) in target-L0 mode."""


class SaeTrainer:
    def __init__(self, sae: SparseAutoencoder, config: TrainConfig, device: torch.device, name: str) -> None:
        if device.type == "cpu" and config.retain_cpu_memory:
            retain_freed_memory()
        self.sae = sae.to(device).train()
        self.config = config
        self.name = name
        self.hookpoint = sae.cfg.hookpoint
        self.device = device
        self.base_lr = sae.default_lr()
        self.optimizer = build_optimizer(sae.resolved_optimizer, sae.parameters(), self.base_lr, sae.resolved_adam_betas())
        self.schedule_free = isinstance(self.optimizer, ScheduleFreeAdam)
        # Schedule-free Adam replaces the lr decay by its averaged iterate.
        self.lr_decay_fraction = 0.0 if self.schedule_free else config.lr_decay_fraction
        target = sae.cfg.target_l0 if sae.controls_l0_by_coefficient else None
        warmup = config.sparsity_warmup_fraction
        if warmup is None:
            # The target-L0 controller only acts after the warm-up, so it must end well before the run does.
            warmup = sae.sparsity_warmup_default if target is None else min(sae.sparsity_warmup_default, TARGET_WARMUP_LIMIT)
        self.controller = SparsityController(
            initial=sae.initial_sparsity_coefficient(),
            target_l0=target,
            total_steps=config.total_steps,
            warmup_fraction=warmup,
            device=device,
            proportional_gain=config.sparsity_proportional_gain,
        )
        self.input_scale = 1.0
        self.dead_window = config.resolved_dead_window()
        self.tokens_since_fired = torch.zeros(sae.d_sae, dtype=torch.long, device=device)
        self.any_dead = False  # refreshed at log cadence; gates auxiliary dead-latent losses
        self._reset_running()

    # -- normalisation --------------------------------------------------------------------------
    def set_input_scale(self, mean_squared_norm: float, sample: Tensor) -> None:
        """Choose c so that E‖c·x‖² matches the architecture's convention, and seed data-based init."""
        target = 1.0 if self.sae.input_norm == "unit_mean_square" else float(self.sae.d_in)
        self.input_scale = math.sqrt(target / mean_squared_norm)
        self.sae.init_from_data(sample.to(self.device) * self.input_scale)

    # -- the hot step ---------------------------------------------------------------------------
    def train_step(self, x_raw: Tensor, step: int) -> None:
        sae, config = self.sae, self.config
        x = x_raw * self.input_scale
        lr = self.base_lr * lr_multiplier(step, config.total_steps, config.lr_warmup_fraction, self.lr_decay_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        sae.set_training_progress(step / config.total_steps)
        dead_mask = self.tokens_since_fired >= self.dead_window if self.any_dead else None
        output = sae(x, sparsity_coefficient=self.controller.coefficient(step), dead_mask=dead_mask)
        self.optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        sae.remove_parallel_decoder_grad()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), config.grad_clip)
        self.optimizer.step()
        sae.after_step()
        if self.schedule_free and sae.unit_norm_decoder:
            self.optimizer.constrain(sae.W_dec, unit_norm_rows)

        with torch.no_grad():
            active = output.feature_acts > 0
            batch_l0 = active.sum(dim=-1, dtype=torch.float32).mean()
            fired = active.any(dim=0)
            self.tokens_since_fired.add_(x.shape[0]).masked_fill_(fired, 0)
            self.controller.update(batch_l0, step)
            error = (output.reconstruction - x).pow(2).sum()
            variance = (x - x.mean(dim=0)).pow(2).sum()
            self._running += torch.stack([batch_l0, error / variance, output.loss.detach(), (~torch.isfinite(x)).any().float()])
            self._running_steps += 1

    def finalize(self) -> None:
        """After the last step: evaluation weights (schedule-free: the averaged iterate) in eval mode."""
        if self.schedule_free:
            self.optimizer.use_average()
            self.sae.after_step()
        self.sae.eval()

    # -- reporting ------------------------------------------------------------------------------
    def _reset_running(self) -> None:
        self._running = torch.zeros(4, dtype=torch.float32, device=self.device)
        self._running_steps = 0

    def read_metrics(self) -> dict[str, float]:
        """Means over the steps since the last call (one host sync); refreshes the dead-latent gate."""
        dead = self.tokens_since_fired >= self.dead_window
        values = torch.cat([self._running / max(self._running_steps, 1), dead.float().mean().reshape(1)]).tolist()
        l0, fvu, loss, nonfinite, dead_fraction = values
        if nonfinite > 0:
            raise ValueError(f"{self.name}: the activations contain NaN or inf; clean the data (the batches since the last log step)")
        if not math.isfinite(loss):
            raise FloatingPointError(f"{self.name}: the training loss became {loss}; lower the learning rate (lr={self.base_lr:g})")
        self.any_dead = dead_fraction > 0
        self._reset_running()
        return {"l0": l0, "fvu": fvu, "loss": loss, "dead_fraction": dead_fraction, "sparsity_coefficient": self.controller.value()}

    # -- state for checkpoints ------------------------------------------------------------------
    def state_tensors(self) -> dict[str, Tensor]:
        tensors = {f"sae.{k}": v for k, v in self.sae.state_dict().items()}
        for index, state in self.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                tensors[f"adam.{index}.{key}"] = value
        tensors.update({f"controller.{k}": v for k, v in self.controller.state_tensors().items()})
        tensors["tokens_since_fired"] = self.tokens_since_fired
        return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    def state_info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "architecture": self.sae.architecture,
            "config": self.sae.cfg.to_dict(),
            "input_scale": self.input_scale,
            "any_dead": self.any_dead,
            "param_groups": self.optimizer.state_dict()["param_groups"],
        }

    def load_state(self, info: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        if info["architecture"] != self.sae.architecture or info["config"] != self.sae.cfg.to_dict():
            raise ValueError(f"{self.name}: the checkpoint was written for a different SAE ({info['architecture']}, {info['config']})")
        self.sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")})
        optimizer_state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("adam."):
                _, index, name = key.split(".", 2)
                optimizer_state.setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict({"state": optimizer_state, "param_groups": info["param_groups"]})
        self.controller.load_state_tensors({k[11:]: v for k, v in tensors.items() if k.startswith("controller.")})
        self.tokens_since_fired.copy_(tensors["tokens_since_fired"])
        self.input_scale = info["input_scale"]
        self.any_dead = info["any_dead"]
