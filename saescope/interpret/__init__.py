"""Interpretation: what each SAE feature responds to and what it does to the model's output."""

from saescope.interpret.collect import FeatureCollector, FeatureStats

__all__ = ["FeatureCollector", "FeatureStats"]
