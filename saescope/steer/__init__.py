"""Steering: add, clamp or ablate SAE features while the model generates, and measure the effect."""

from saescope.steer.generate import Generation, generate, measure, steer_and_compare
from saescope.steer.interventions import Intervention, Steering, feature_max_activation

__all__ = ["Generation", "Intervention", "Steering", "feature_max_activation", "generate", "measure", "steer_and_compare"]
