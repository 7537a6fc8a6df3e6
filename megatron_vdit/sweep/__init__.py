"""Sweeps of small training runs: the declared grid, executors, held-out validation."""
