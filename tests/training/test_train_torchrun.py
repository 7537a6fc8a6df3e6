"""The training CLI under torchrun: a parallel layout reproduces the single-process run."""
import json
import os
import socket
import subprocess
import sys

import pytest

from megatron_vdit.training.config import load_config
from megatron_vdit.training.loop import train

ARGS = ["--data", "synthetic", "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "2",
        "--latent-frames", "2", "--latent-height", "8", "--latent-width", "8",
        "--text-hidden-size", "32", "--max-text-tokens", "12", "--micro-batch-size", "2",
        "--global-batch-size", "8", "--eval-samples", "16", "--eval-interval", "2",
        "--log-interval", "1", "--wandb-mode", "disabled", "--train-iters", "3"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run_dir):
    lines = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl"))]
    return [(r["iteration"], r.get("train_loss", r.get("val_loss"))) for r in lines]


def test_dp2_pp2_matches_single_process(tmp_path):
    single = train(load_config(ARGS + ["--run-dir", str(tmp_path / "single")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "4",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "megatron_vdit.train", *ARGS, "--pipeline-model-parallel-size", "2",
           "--run-dir", str(tmp_path / "par")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "par" / "run.json").read_text())
    assert record["config"]["data_parallel_size"] == 2
    par, ref = _losses(tmp_path / "par"), _losses(tmp_path / "single")
    assert [i for i, _ in par] == [i for i, _ in ref]
    for (_, a), (_, b) in zip(par, ref):
        assert a == pytest.approx(b, rel=1e-5)
    assert record["val_loss"] == pytest.approx(single["val_loss"], rel=1e-5)


def test_pipeline_needs_enough_microbatches(tmp_path, capsys):
    from megatron_vdit.training.resolved import resolve
    cfg = load_config(ARGS + ["--pipeline-model-parallel-size", "2", "--micro-batch-size", "8",
                              "--run-dir", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="needs at least 2 micro-batches per step, got 1"):
        resolve(cfg, world_size=2)  # PP2 x DP1
