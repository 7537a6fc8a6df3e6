"""Sweeps of small training runs: the declared grid, executors (local subprocesses,
SLURM job arrays), held-out validation."""
