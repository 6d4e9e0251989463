"""Progress bar and optional metric sinks (TensorBoard, Weights & Biases), fed at log cadence only."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from saescope.errors import MissingDependency

logger = logging.getLogger("saescope")


class ProgressReporter:
    def __init__(self, total_steps: int, initial_step: int, enabled: bool, sink: str, log_dir: str | None, run_config: dict[str, Any]) -> None:
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True, desc="train")
        self.writer = None
        self.wandb_run = None
        if sink == "auto":
            sink = "tensorboard" if log_dir and importlib.util.find_spec("tensorboard") else "none"
        if sink == "tensorboard":
            if not importlib.util.find_spec("tensorboard"):
                raise MissingDependency("logger='tensorboard' needs the tensorboard package: pip install tensorboard")
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=log_dir)
        elif sink == "wandb":
            if not importlib.util.find_spec("wandb"):
                raise MissingDependency("logger='wandb' needs the wandb package: pip install wandb")
            import wandb

            self.wandb_run = wandb.init(project="saescope", config=run_config, dir=log_dir)

    def report(self, step: int, steps_done: int, tokens: int, tokens_per_second: float, per_sae: dict[str, dict[str, float]]) -> None:
        if self.bar is not None:
            self.bar.update(steps_done)
            self.bar.set_postfix_str(_postfix(tokens, tokens_per_second, per_sae), refresh=False)
        flat = {f"{name}/{key}": value for name, metrics in per_sae.items() for key, value in metrics.items()}
        flat["tokens_per_second"] = tokens_per_second
        if self.writer is not None:
            for key, value in flat.items():
                self.writer.add_scalar(key, value, step)
        if self.wandb_run is not None:
            self.wandb_run.log(flat, step=step)
        if self.bar is None:
            logger.info("step %d tokens %d %s", step, tokens, _postfix(tokens, tokens_per_second, per_sae))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


MAX_LISTED = 4
"""With more SAEs than this the bar shows ranges (min–max) instead of one value per SAE."""


def _postfix(tokens: int, tokens_per_second: float, per_sae: dict[str, dict[str, float]]) -> str:
    def joined(key: str, fmt: str) -> str:
        values = [m[key] for m in per_sae.values()]
        if len(values) > MAX_LISTED:
            return f"{format(min(values), fmt)}–{format(max(values), fmt)}"
        return "/".join(format(v, fmt) for v in values)

    count = f"{len(per_sae)} SAEs " if len(per_sae) > MAX_LISTED else ""
    return (
        f"{count}tok={_si(tokens)} L0={joined('l0', '.1f')} FVU={joined('fvu', '.3f')} "
        f"dead%={joined('dead_fraction', '.1%').replace('%', '')} {_si(tokens_per_second)}tok/s"
    )


def _si(value: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"
