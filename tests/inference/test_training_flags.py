"""The training side of inference: --text-dropout, --ema-decay, --flow-shift are validated
at load, and a run with EMA records raw and EMA validation losses."""
import json

import pytest

from megatron_vdit.training.config import load_config
from megatron_vdit.training.resolved import resolve

BASE = ["--train-iters", "1", "--num-layers", "2", "--hidden-size", "64",
        "--num-attention-heads", "2"]


@pytest.mark.parametrize("extra,needle", [(["--text-dropout", "1.5"], "--text-dropout"),
                                          (["--ema-decay", "1"], "--ema-decay"),
                                          (["--flow-shift", "3"], "--objective flow")])
def test_bad_values_name_the_flag(extra, needle):
    with pytest.raises(ValueError, match=needle):
        resolve(load_config(BASE + extra), 1)


def test_good_values_load():
    job = load_config(BASE + ["--objective", "flow", "--flow-shift", "3", "--ema-decay", "0.99",
                              "--text-dropout", "0.1"])
    resolve(job, 1)
    assert (job.model.flow_shift, job.model.ema_decay, job.model.text_dropout) == (3.0, 0.99, 0.1)


def test_run_records_raw_and_ema_val_loss(trained_run):
    record = json.loads((trained_run / "run.json").read_text())
    assert record["val_loss"] == record["val_loss_ema"] != record["val_loss_raw"]
    assert all("val_loss_raw" in p and "val_loss_ema" in p for p in record["val_loss_curve"])
    state = json.loads((trained_run / "checkpoints" / "iter_0000006" / "trainer_state.json")
                       .read_text())
    assert state["ema"]["num_updates"] == 6 and state["data_dir"]
