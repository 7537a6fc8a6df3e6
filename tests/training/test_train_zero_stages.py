"""The training CLI under torchrun with --zero-stage 1 and 3 (2, the default, is what
test_train_torchrun.py runs) on CP2 x DP2 at PP=1: the plain microbatch loop, with
Ulysses CP picked by default, reproduces the single-process losses and validation loss."""
import json
import os
import subprocess
import sys

import pytest

from megatron_vdit.training.config import load_config
from megatron_vdit.training.loop import train
from test_train_torchrun import ARGS, _free_port, _losses


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("single")
    record = train(load_config(ARGS + ["--run-dir", str(run_dir)]))
    return record, _losses(run_dir)


@pytest.mark.parametrize("zero_stage", [1, 3])
def test_zero_stage_cp2_dp2_matches_single_process(tmp_path, single, zero_stage):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "4",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "megatron_vdit.train", *ARGS, "--context-parallel-size", "2",
           "--zero-stage", str(zero_stage), "--run-dir", str(tmp_path / "par")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "par" / "run.json").read_text())
    config = record["config"]
    assert (config["data_parallel_size"], config["zero_stage"], config["cp_comm_type"]) == \
        (2, zero_stage, "a2a")
    ref_record, ref = single
    par = _losses(tmp_path / "par")
    assert [i for i, _ in par] == [i for i, _ in ref]
    for (_, a), (_, b) in zip(par, ref):
        assert a == pytest.approx(b, rel=1e-5)
    assert record["val_loss"] == pytest.approx(ref_record["val_loss"], rel=1e-5)
