"""Training: the run loop (``Trainer``), per-SAE state (``SaeTrainer``), schedules and checkpoints."""

from saescope.training.config import TrainConfig
from saescope.training.sae_trainer import SaeTrainer
from saescope.training.trainer import Trainer, train_saes

__all__ = ["SaeTrainer", "TrainConfig", "Trainer", "train_saes"]
