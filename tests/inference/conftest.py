"""Tiny trained runs shared by the inference tests (trained once per session, in temp dirs).

`trained_run`: tiny-VAE latents [4, 2, 4, 4] (5 frames of 32x32), 2 layers of width 64,
2 heads (so TP2 and CP2 Ulysses divide them), 8 video tokens; 6 steps on the embedded
default data with caption dropout and EMA, checkpoint at the end.

`natural_run`: `make train`'s run (configs/tiny_natural.yaml: `--data natural`, 4 frames
of 32x32 pixels, 256 tokens, cpu-0.6m, 120 steps), whose samples have the data's colour
statistics (test_sample_stats.py).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]

TRAIN_ARGS = ["--data", "default", "--num-layers", "2", "--hidden-size", "64",
              "--num-attention-heads", "2", "--latent-frames", "2", "--latent-height", "4",
              "--latent-width", "4", "--max-text-tokens", "32", "--micro-batch-size", "4",
              "--global-batch-size", "4", "--eval-samples", "8", "--eval-interval", "3",
              "--log-interval", "1", "--wandb-mode", "disabled",
              "--default-data-train-clips", "24", "--default-data-val-clips", "8",
              "--train-iters", "6", "--save-interval", "6", "--lr", "3e-3",
              "--text-dropout", "0.25", "--ema-decay", "0.9"]


NATURAL_CONFIG = REPO / "configs" / "tiny_natural.yaml"
NATURAL_ITERS = yaml.safe_load(NATURAL_CONFIG.read_text())["train_iters"]
NATURAL_TRAIN_ARGS = ["--config", str(NATURAL_CONFIG), "--eval-samples", "8",
                      "--eval-interval", str(NATURAL_ITERS), "--wandb-mode", "disabled"]
"""`make train` itself, evaluated once: smaller or shorter runs tried (2 layers of width
64 for 60 or 120 steps, cpu-0.6m for 60 steps at twice the lr) miss the data's spread of
clip colours or its channel correlations (docs/inference.md)."""


def _train(args: list[str], timeout: int = 900) -> None:
    """Trained in a subprocess: training in the pytest process would leave threads and
    library state behind that the gloo worlds these tests fork can inherit mid-lock (a
    forked rank then hangs reading a checkpoint)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "megatron_vdit.train", *args],
                          capture_output=True, text=True, env=env, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference_run")
    run_dir = root / "run"
    _train([*TRAIN_ARGS, "--default-data-dir", str(root / "data"), "--run-dir", str(run_dir)])
    return run_dir


@pytest.fixture(scope="session")
def natural_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("natural_run") / "run"
    _train([*NATURAL_TRAIN_ARGS, "--run-dir", str(run_dir), "--save", str(run_dir / "checkpoints")])
    return run_dir
