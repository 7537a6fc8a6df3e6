"""Parallel defaults the trainer resolves: CP flavour from the heads, the validation
micro-batch from training's, ZeRO stage and CP backend passed through, TE refused early."""
import subprocess
import sys

import pytest

from megatron_vdit.parallel.context_parallel import transformer_engine_problem
from megatron_vdit.training.config import load_config
from megatron_vdit.training.resolved import resolve, resolved_flat

BASE = ["--num-layers", "4", "--hidden-size", "64", "--num-attention-heads", "4",
        "--train-iters", "2", "--micro-batch-size", "2"]


def _resolve(argv, world_size):
    job = load_config(BASE + argv)
    return job, resolve(job, world_size)


@pytest.mark.parametrize("argv, world, expected", [
    (["--context-parallel-size", "2"], 2, "a2a"),              # 4 heads over CP 2
    (["--context-parallel-size", "4", "--tensor-model-parallel-size", "2"], 8, "a2a+p2p"),
    (["--context-parallel-size", "2", "--cp-comm-type", "p2p"], 2, "p2p"),  # asked for
])
def test_cp_flavour_defaults_to_ulysses_when_heads_allow(argv, world, expected):
    job, r = _resolve(argv + ["--latent-frames", "4"], world)
    assert r.layout.cp_comm_type == expected
    assert resolved_flat(job, r)["cp_comm_type"] == expected


@pytest.mark.parametrize("argv, world, expected", [
    ([], 1, 2),                                                   # training's micro-batch
    (["--pipeline-model-parallel-size", "2", "--global-batch-size", "8"], 2, 4),  # 2 per stage
    (["--eval-micro-batch-size", "8"], 1, 8),
])
def test_eval_micro_batch_defaults_to_training_micro_batch(argv, world, expected):
    _, r = _resolve(argv, world)
    assert r.eval_micro_batch_size == expected


def test_zero_stage_and_backend_are_flags_with_choices():
    job = load_config(BASE + ["--zero-stage", "3"])
    assert job.parallel.zero_stage == 3 and job.parallel.cp_backend == "native"
    assert load_config(BASE).parallel.zero_stage == 2


@pytest.mark.parametrize("argv, message", [
    (["--zero-stage", "4"], "--zero-stage"),
    (["--cp-backend", "flash"], "--cp-backend"),
])
def test_bad_parallel_choices_are_usage_errors(argv, message):
    proc = subprocess.run([sys.executable, "-m", "megatron_vdit.train", *BASE, *argv],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]


@pytest.mark.skipif(transformer_engine_problem() is None, reason="TransformerEngine runs here")
def test_te_backend_without_te_fails_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "megatron_vdit.train", *BASE,
                           "--cp-backend", "te", "--run-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("megatron_vdit.train: error: --cp-backend te: TransformerEngine")
    assert not (tmp_path / "run").exists()
