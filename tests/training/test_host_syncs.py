"""The training loop waits for the device only at log, eval and save points.

On a GPU every read of a device value on the host (`.item()`, `.tolist()`, `float(t)`,
`bool(t)`) waits for the queued kernels. CPU tensors cannot show the stall, but the
reads themselves can be counted: the tensor methods that copy a value to the host are
wrapped, and each call made from the package's own code is recorded (torch's
internals are not the package's reads).
"""
import math
import sys
from pathlib import Path

import pytest
import torch

import megatron_vdit
from megatron_vdit.training.config import load_config
from megatron_vdit.training.loop import Trainer

PACKAGE = str(Path(megatron_vdit.__file__).parent)
HOST_READS = ("item", "tolist", "__float__", "__int__", "__bool__", "numpy")
TINY = ["--data", "synthetic", "--num-layers", "2", "--hidden-size", "64",
        "--num-attention-heads", "2", "--latent-frames", "2", "--latent-height", "8",
        "--latent-width", "8", "--text-hidden-size", "32", "--max-text-tokens", "12",
        "--micro-batch-size", "2", "--global-batch-size", "4", "--eval-samples", "4",
        "--wandb-mode", "disabled", "--train-iters", "4"]


@pytest.fixture
def host_reads(monkeypatch):
    """Where the package's code read a tensor's value on the host: (method, file:line)."""
    reads = []

    def wrap(name, original):
        def counted(self, *args, **kwargs):
            caller = sys._getframe(1)
            if caller.f_code.co_filename.startswith(PACKAGE):
                reads.append((name, f"{Path(caller.f_code.co_filename).name}:{caller.f_lineno}"))
            return original(self, *args, **kwargs)
        return counted

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, wrap(name, getattr(torch.Tensor, name)))
    return reads


@pytest.mark.parametrize("clip", ["1.0", "0"])
def test_a_training_step_reads_nothing_on_the_host(tmp_path, host_reads, clip):
    trainer = Trainer(load_config(TINY + ["--clip-grad", clip, "--run-dir", str(tmp_path)]))
    trainer.train_step()  # the first step also checks the data's shapes
    host_reads.clear()
    for _ in range(3):
        loss, grad_norm, _ = trainer.train_step()
    assert host_reads == []
    # The outcome is there for the next read: finite values, no step skipped.
    stats = trainer.read_step_stats()
    assert len(host_reads) == 1
    assert math.isfinite(stats["loss"]) and stats["skipped_steps"] == 0
    assert math.isfinite(stats["grad_norm"]) and not stats["diverged"]  # measured unclipped too


def test_the_loop_reads_once_per_log_interval(tmp_path, host_reads):
    """12 steps logged every 4, no eval or save between: 3 reads by the loop (the start
    and the end validate, and validation reads each batch's loss in the engine)."""
    trainer = Trainer(load_config(TINY[:-1] + ["12", "--log-interval", "4",
                                               "--eval-interval", "100",
                                               "--run-dir", str(tmp_path)]))
    trainer.run()
    loop_reads = [where for _, where in host_reads if where.startswith("loop.py")]
    assert len(loop_reads) == 3, host_reads


def test_the_counter_sees_the_reads_of_validation(tmp_path, host_reads):
    """The wrappers do count the package's reads (else the test above proves nothing):
    validation reads each batch's loss."""
    trainer = Trainer(load_config(TINY + ["--run-dir", str(tmp_path)]))
    host_reads.clear()
    trainer.validate_all()
    assert any(where.startswith("engine.py") for _, where in host_reads), host_reads
