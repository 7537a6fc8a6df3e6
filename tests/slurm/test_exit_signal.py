"""--exit-signal-handler without a scheduler: SIGTERM mid-run -> checkpoint, exit 4, resume.

Also the flagship script's refusal to start without real data. No SLURM needed.
"""
import json
import signal
import subprocess
import sys

import pytest

from slurm_cluster import ROOT, last_iteration, wait_for
from megatron_vdit.training.config import load_config
from megatron_vdit.training.loop import train
from megatron_vdit.training.preemption import EXIT_PREEMPTED, MARKER
from megatron_vdit.training.resolved import resolve

# One local cluster: its tests share one xdist worker (`make test` runs -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group("slurm")

ARGS = ["--data", "synthetic", "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "2",
        "--latent-frames", "2", "--latent-height", "8", "--latent-width", "8",
        "--text-hidden-size", "32", "--max-text-tokens", "12", "--micro-batch-size", "2",
        "--global-batch-size", "4", "--eval-samples", "8", "--eval-interval", "40",
        "--log-interval", "1", "--wandb-mode", "disabled", "--train-iters", "120"]


def test_sigterm_checkpoints_exits_4_and_the_rerun_matches(tmp_path):
    run_dir = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "megatron_vdit.train", *ARGS, "--exit-signal-handler",
           "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for("iteration 20", lambda: last_iteration(run_dir) >= 20 or proc.poll() is not None, 300)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_PREEMPTED, out[-2000:]
    marker = json.loads((run_dir / MARKER).read_text())
    stopped = marker["iteration"]
    assert 20 <= stopped < 120 and marker["signal"] == "SIGTERM"
    assert (run_dir / "checkpoints" / f"iter_{stopped:07d}").is_dir()
    assert not (run_dir / "run.json").exists(), "a stopped run is not a finished one"

    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"at iteration {stopped}" in rerun.stdout
    got = json.loads((run_dir / "run.json").read_text())
    want = train(load_config(ARGS + ["--run-dir", str(tmp_path / "uninterrupted")]))
    assert got["iterations"] == 120
    assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-6)
    assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-6)


@pytest.mark.parametrize("data", [None, "synthetic", "default", "/no/such/dir"])
def test_flagship_needs_real_data(data):
    args = [] if data is None else ["--data", data]
    proc = subprocess.run(["bash", str(ROOT / "examples" / "slurm_flagship.sh"), *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert proc.stderr.startswith("slurm_flagship.sh: error: --data must name a directory")


def test_flagship_config_resolves_to_its_layout():
    job = load_config(["--config", str(ROOT / "examples" / "slurm" / "flagship_7b.yaml"),
                       "--data", "/shards"])
    r = resolve(job, world_size=64)
    assert (r.num_layers, r.hidden_size, r.num_attention_heads) == (26, 4096, 32)
    assert r.data_parallel_size == 64 // (8 * 2 * 2) and r.num_microbatches == 32
    assert r.tokens_per_sample == 32 * 32 * 32
