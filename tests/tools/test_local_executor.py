"""The local executor's warm start (runs forked from a fork server that imported the
trainer once) is the same run as a fresh `python -m megatron_vdit.train` subprocess."""
import json
import sys
from pathlib import Path

from megatron_vdit.sweep.jobs import Job
from megatron_vdit.sweep.local_executor import run_jobs, train_args

ROOT = Path(__file__).resolve().parents[2]
BASE = (ROOT / "tests" / "tools" / "tiny_sweep_base.yaml").read_text()


def _job(tmp_path: Path, name: str, *flags: str) -> Job:
    config = tmp_path / "base.yaml"
    config.write_text(BASE)
    run_dir = tmp_path / name
    argv = (sys.executable, "-m", "megatron_vdit.train", "--config", str(config),
            "--num-layers", "1", "--hidden-size", "32", "--num-attention-heads", "2",
            "--train-iters", "6", "--global-batch-size", "4", "--micro-batch-size", "2",
            "--lr", "2e-3", "--eval-interval", "3", "--save-interval", "3",
            "--run-dir", str(run_dir), "--seed", "7", "--wandb-mode", "disabled", *flags)
    return Job(name, argv, run_dir)


def test_train_args_recognises_only_this_interpreter_running_the_trainer():
    assert train_args((sys.executable, "-m", "megatron_vdit.train", "--lr", "1")) == ["--lr", "1"]
    assert train_args(("/other/python", "-m", "megatron_vdit.train")) is None
    assert train_args((sys.executable, "-m", "scaling_laws", "fit")) is None


def test_warm_start_run_equals_a_fresh_subprocess_and_reports_bad_input(tmp_path):
    warm, cold = _job(tmp_path, "warm"), _job(tmp_path, "cold")
    bad = _job(tmp_path, "bad", "--min-lr", "1.0")  # above --lr: bad input, exit 2
    results = {r.run_id: r for r in run_jobs([warm, bad], parallel=2)}
    results.update({r.run_id: r for r in run_jobs([cold], warm_start=False)})
    assert results["warm"].status == results["cold"].status == "completed"
    records = {name: json.loads((tmp_path / name / "run.json").read_text())
               for name in ("warm", "cold")}
    for key in ("val_loss", "val_loss_curve", "iterations", "train_tokens", "params_nonembed"):
        assert records["warm"][key] == records["cold"][key], key
    assert (tmp_path / "warm" / "loss.png").stat().st_size > 0
    assert "status=completed" in (tmp_path / "warm" / "stdout.log").read_text()
    assert results["bad"].returncode == 2 and results["bad"].status == "failed"
    assert "--min-lr" in (tmp_path / "bad" / "stdout.log").read_text()
    again = run_jobs([warm])
    assert again[0].status == "skipped"
