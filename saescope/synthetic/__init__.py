"""Benchmarks with known answers: synthetic activations built from ground-truth directions."""
