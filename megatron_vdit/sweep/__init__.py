"""Sweep executors: how grid points of a sweep get run (SLURM job arrays here)."""
