"""Everything needed to train one SAE job on a stream of raw activation batches.

The run-level ``Trainer`` owns the data and the loop; a ``SaeTrainer`` owns one job's optimiser,
sparsity controller, input scale, dead-latent counters, running firing rates and metrics, and exposes
``train_step(x_raw, step)``. What the loss is, which optimiser and lr, how inputs are scaled and
whether decoder rows stay unit norm are the job's objective's answers, never this file's. Nothing
here synchronises with the host except ``read_metrics`` (log cadence).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from saescope.errors import Diverged, InvalidInput
from saescope.jobs import SaeJob
from saescope.objectives import StepContext
from saescope.parallel import Ranks
from saescope.saes.base import unit_norm_rows
from saescope.training.config import TrainConfig
from saescope.training.cpu_allocator import retain_freed_memory
from saescope.training.optimizers import ScheduleFreeAdam, build_optimizer
from saescope.training.precision import step_autocast
from saescope.training.replicas import (
    average_buffers,
    average_gradients,
    average_tensor,
    global_step_statistics,
)
from saescope.training.schedules import lr_multiplier
from saescope.training.sparsity_control import SparsityController

TARGET_WARMUP_LIMIT = 0.2
"""Longest default λ warm-up (fraction of the run) in target-L0 mode."""
FIRING_RATE_HALF_LIFE_TOKENS = 1_000_000
"""Half-life, in tokens, of the running per-latent firing rate handed to objectives (StepContext.firing_rate)."""


TRANSCODER_INIT_ROWS = 8192
"""Rows of the normalisation sample a transcoder's decoder is initialised from."""


@torch.no_grad()
def init_transcoder_decoder(sae: Any, x: Tensor, y: Tensor) -> None:
    """Start a transcoder's decoder where the data points: b_dec at the target's mean, each firing latent's decoder row
    at the (unit) direction of the target that co-varies with it, and the activations scaled by the least-squares factor.

    With the SAE's tied initialisation (W_dec = W_enc^T) a transcoder would start by writing its input's directions
    into the output; the loss then shrinks every activation at once and most latents die before they learn (measured on
    SmolLM2-135M: 60-94% dead, benchmarks/RESULTS.md). Latents that do not fire on the sample keep their random rows.
    """
    x, y = x[:TRANSCODER_INIT_ROWS], y[:TRANSCODER_INIT_ROWS]
    mean = y.mean(dim=0)
    sae.b_dec.copy_(mean.to(sae.b_dec.dtype))
    code = sae.encode_code(x.to(sae.W_enc.dtype)).dense()
    directions = code.T @ (y - mean).to(code.dtype)  # [d_sae, d_out]
    norms = directions.norm(dim=1)
    fired = norms > 1e-8
    if not bool(fired.any()):
        return
    sae.W_dec[fired] = (directions[fired] / norms[fired, None]).to(sae.W_dec.dtype)
    decoded = code @ sae.W_dec
    factor = float((decoded * (y - mean)).sum() / decoded.pow(2).sum().clamp_min(1e-12))
    if factor > 0:
        sae.scale_activations(factor)


class SaeTrainer:
    def __init__(self, job: SaeJob, config: TrainConfig, device: torch.device) -> None:
        if device.type == "cpu" and config.retain_cpu_memory:
            retain_freed_memory()
        sae, objective = job.sae, job.objective
        self.job = job
        self.sae = sae.to(device).train()
        self.objective = objective
        self.config = config
        self.name = job.name
        self.hookpoint = job.reads.hookpoint
        self.device = device
        self.base_lr = objective.learning_rate(sae)
        self.optimizer = build_optimizer(objective.optimizer_name(), sae.parameters(), self.base_lr, objective.betas())
        self.schedule_free = isinstance(self.optimizer, ScheduleFreeAdam)
        # Schedule-free Adam replaces the lr decay by its averaged iterate.
        self.lr_decay_fraction = 0.0 if self.schedule_free else config.lr_decay_fraction
        target = objective.controlled_target_l0()
        warmup = config.sparsity_warmup_fraction
        if warmup is None:
            # The target-L0 controller only acts after the warm-up, so it must end well before the run does.
            default = objective.sparsity_warmup_default
            warmup = default if target is None else min(default, TARGET_WARMUP_LIMIT)
        self.controller = SparsityController(
            initial=objective.initial_sparsity_coefficient(sae),
            target_l0=target,
            total_steps=config.total_steps,
            warmup_fraction=warmup,
            device=device,
            proportional_gain=config.sparsity_proportional_gain,
        )
        self.input_scale = 1.0
        self.output_scale: float | None = None
        """A transcoder's target scale (None for an SAE, whose output is its input)."""
        self.input_offset: Tensor | None = None
        """A transcoder's input mean (scaled units), subtracted before encoding and folded into the biases at the end.
        SAEs centre by subtracting b_dec; a transcoder's b_dec is in the output space, and an uncentred input whose
        mean dominates (a norm's large fixed gains) drives every pre-activation down together until most latents die."""
        self.layer_scales = torch.ones(max(1, len(job.reads.hookpoints)), device=device)
        self.dead_window = config.resolved_dead_window()
        self.tokens_since_fired = torch.zeros(sae.d_sae, dtype=torch.long, device=device)
        # An EMA with Adam's bias correction: firing_rate_sum / firing_rate_weight is an average from the first step on.
        self.firing_rate_sum = torch.zeros(sae.d_sae, dtype=torch.float32, device=device)
        self.firing_rate_weight = torch.zeros((), dtype=torch.float32, device=device)
        self.firing_rate_decay = 0.5 ** (config.batch_size / FIRING_RATE_HALF_LIFE_TOKENS)
        self.any_dead = False  # refreshed at log cadence; gates auxiliary dead-latent losses
        self.replicas: Ranks | None = None
        """Set by the Trainer under replicated placement: gradients and step statistics are averaged over these ranks."""
        self._reset_running()

    # -- normalisation --------------------------------------------------------------------------
    def set_input_scale(self, mean_squared_norms: list[float], sample: Tensor, layer_index: Tensor | None = None,
                        target_sample: Tensor | None = None) -> None:
        """Choose c so that E‖c·x‖² matches the objective's convention, and seed data-based init.

        A stacked read gets one c per hookpoint (residual norms grow with depth); ``input_scale`` is
        then their geometric mean, the scale folded into the saved weights, and the per-hookpoint
        ratios are recorded beside it (``saescope.saes.stacked``). A transcoder's target gets its own
        scale by the same rule (``output_scale``), its input is centred (``input_offset``) and its decoder
        starts from the data (``init_transcoder_decoder``).
        """
        scales = [math.sqrt(self._wanted_mean_square(self.sae.d_in) / value) for value in mean_squared_norms]
        self.layer_scales = torch.tensor(scales, dtype=torch.float32, device=self.device)
        self.input_scale = math.exp(sum(math.log(c) for c in scales) / len(scales))
        scaled = sample.to(self.device) * (self.input_scale if layer_index is None else self.layer_scales[layer_index].unsqueeze(1))
        if target_sample is not None:
            self.input_offset = scaled.mean(dim=0)
            scaled = scaled - self.input_offset
        self.objective.init_from_data(self.sae, scaled)
        if target_sample is not None:
            target_sample = target_sample.to(self.device).double()
            self.output_scale = math.sqrt(self._wanted_mean_square(self.sae.d_out) / target_sample.pow(2).sum(dim=1).mean().item())
            init_transcoder_decoder(self.sae, scaled, (target_sample * self.output_scale).float())

    def _wanted_mean_square(self, width: int) -> float:
        """E‖c·v‖² the objective's convention asks for: 1, or the vector's width."""
        return 1.0 if self.objective.input_norm == "unit_mean_square" else float(width)

    # -- the hot step ---------------------------------------------------------------------------
    def train_step(self, x_raw: Tensor, step: int, layer_index: Tensor | None = None, target_raw: Tensor | None = None) -> None:
        """One optimiser step on raw activations (rows of a stacked read carry their ``layer_index``; a transcoder's
        rows come with the raw ``target_raw`` they must predict)."""
        sae, objective, config = self.sae, self.objective, self.config
        x = x_raw * (self.input_scale if layer_index is None else self.layer_scales[layer_index].unsqueeze(1))
        y = x if target_raw is None else target_raw * self.output_scale
        if self.input_offset is not None:
            x = x - self.input_offset
        lr = self.base_lr * lr_multiplier(step, config.total_steps, config.lr_warmup_fraction, self.lr_decay_fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        ctx = StepContext(
            step=step,
            progress=step / config.total_steps,
            sparsity_coefficient=self.controller.coefficient(step),
            dead_mask=self._dead_mask() if self.any_dead else None,
            firing_rate=self.firing_rate if objective.uses_firing_rate else None,
            layer_index=layer_index,
        )
        with step_autocast(self.device, config.step_autocast):
            if target_raw is not None:
                # the loss compares the decoder's output with what the skip connection leaves (W_skip trains through it)
                skip = sae.skip_output(x)
                ctx.target = y if skip is None else y - skip
            output = objective.loss(sae, x, ctx)
        self.optimizer.zero_grad(set_to_none=True)
        output.loss.backward()
        if self.replicas is not None:
            average_gradients(sae.parameters(), self.replicas)
        objective.before_optimizer_step(sae)
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(sae.parameters(), config.grad_clip)
        self.optimizer.step()
        objective.after_step(sae)
        if self.schedule_free and objective.unit_norm_decoder:
            self.optimizer.constrain(sae.W_dec, unit_norm_rows)

        with torch.no_grad():
            code = output.code
            batch_l0 = code.l0_per_token().mean()
            n_rows, counts = x.shape[0], None
            if self.replicas is not None:  # every replica must see the global batch's statistics
                batch_l0, counts = global_step_statistics(batch_l0, code.count_per_feature(), self.replicas)
                n_rows *= self.replicas.world
                average_buffers(sae, self.replicas)
            elif objective.uses_firing_rate:
                counts = code.count_per_feature()
            fired = code.fired() if counts is None else counts > 0
            if objective.uses_firing_rate:
                decay = self.firing_rate_decay
                self.firing_rate_sum.mul_(decay).add_(counts.float() / n_rows, alpha=1 - decay)
                self.firing_rate_weight.mul_(decay).add_(1 - decay)
            self.tokens_since_fired.add_(n_rows).masked_fill_(fired, 0)
            self.controller.update(batch_l0, step)
            error = (output.reconstruction - ctx.reference(x)).pow(2).sum()
            variance = (y - y.mean(dim=0)).pow(2).sum()
            self._running += torch.stack([batch_l0, error / variance, output.loss.detach(), (~torch.isfinite(x)).any().float()])
            self._running_steps += 1

    @property
    def firing_rate(self) -> Tensor:
        """Running fraction of tokens on which each latent fires, float32 [d_sae] (0 before the first step)."""
        return self.firing_rate_sum / self.firing_rate_weight.clamp_min(1e-12)

    def finalize(self) -> None:
        """After the last step: evaluation weights (schedule-free: the averaged iterate) in eval mode.

        The averaged iterate is then projected onto the objective's constraints (unit-norm decoder
        rows, θ ≥ 0), as every step's iterate is.
        """
        if self.schedule_free:
            self.optimizer.use_average()
            self.objective.after_step(self.sae)
        self.sae.eval()

    # -- reporting ------------------------------------------------------------------------------
    def _reset_running(self) -> None:
        self._running = torch.zeros(4, dtype=torch.float32, device=self.device)
        self._running_steps = 0

    def _dead_mask(self) -> Tensor:
        return self.tokens_since_fired >= self.dead_window

    def dead_fraction(self) -> float:
        """Latents that fired in none of the last ``dead_window`` training tokens (one host sync)."""
        return float(self._dead_mask().float().mean())

    def read_metrics(self) -> dict[str, float]:
        """Means over the steps since the last call (one host sync); refreshes the dead-latent gate."""
        dead = self._dead_mask()
        running = self._running if self.replicas is None else average_tensor(self._running, self.replicas)
        values = torch.cat([running / max(self._running_steps, 1), dead.float().mean().reshape(1)]).tolist()
        l0, fvu, loss, nonfinite, dead_fraction = values
        if nonfinite > 0:
            raise InvalidInput(f"{self.name}: the activations contain NaN or inf; clean the data (the batches since the last log step)")
        if not math.isfinite(loss):
            raise Diverged(f"{self.name}: the training loss became {loss}; lower the learning rate (lr={self.base_lr:g})")
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
        tensors["firing_rate_sum"] = self.firing_rate_sum
        tensors["firing_rate_weight"] = self.firing_rate_weight
        if self.input_offset is not None:
            tensors["input_offset"] = self.input_offset
        return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}

    def state_info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "architecture": self.sae.architecture,
            "config": self.sae.cfg.to_dict(),
            "objective": self.objective.to_dict(),
            "input_scale": self.input_scale,
            "output_scale": self.output_scale,
            "layer_scales": self.layer_scales.tolist(),
            "any_dead": self.any_dead,
            "param_groups": self.optimizer.state_dict()["param_groups"],
        }

    def load_state(self, info: dict[str, Any], tensors: dict[str, Tensor]) -> None:
        if info["architecture"] != self.sae.architecture or info["config"] != self.sae.cfg.to_dict():
            raise InvalidInput(f"{self.name}: the checkpoint was written for a different SAE ({info['architecture']}, {info['config']})")
        if info.get("objective") != self.objective.to_dict():
            raise InvalidInput(f"{self.name}: the checkpoint was trained with another objective ({info.get('objective')}); resume with the same settings")
        self.sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")})
        optimizer_state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("adam."):
                _, index, name = key.split(".", 2)
                optimizer_state.setdefault(int(index), {})[name] = value
        self.optimizer.load_state_dict({"state": optimizer_state, "param_groups": info["param_groups"]})
        self.controller.load_state_tensors({k[11:]: v for k, v in tensors.items() if k.startswith("controller.")})
        self.tokens_since_fired.copy_(tensors["tokens_since_fired"])
        self.firing_rate_sum.copy_(tensors["firing_rate_sum"])
        self.firing_rate_weight.copy_(tensors["firing_rate_weight"])
        self.input_scale = info["input_scale"]
        self.output_scale = info.get("output_scale")
        self.input_offset = tensors["input_offset"].to(self.device) if "input_offset" in tensors else None
        self.layer_scales = torch.tensor(info.get("layer_scales", [self.input_scale]), dtype=torch.float32, device=self.device)
        self.any_dead = info["any_dead"]
