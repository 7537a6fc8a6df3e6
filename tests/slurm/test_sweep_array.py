"""The sweep's SLURM executor on a real scheduler: one job array, records, resubmission."""
import json
import subprocess
import sys

import pytest

from slurm_cluster import ROOT
from megatron_vdit.cli import sweep as run_sweep
from megatron_vdit.sweep.slurm_executor import Job, run_array

# One local cluster: its tests share one xdist worker (`make test` runs -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group("slurm")

# The tiny base config shared with the other sweep tests.
BASE = (ROOT / "tests" / "tools" / "tiny_sweep_base.yaml").read_text()

# Fails (exit 1) on its first N attempts, then writes a completed run record.
FLAKY = """import json, pathlib, sys
run_dir, fail_first = pathlib.Path(sys.argv[1]), int(sys.argv[2])
tries = run_dir / "tries"
n = int(tries.read_text()) + 1 if tries.exists() else 1
tries.write_text(str(n))
if n <= fail_first:
    sys.exit(1)
(run_dir / "run.json").write_text(json.dumps({"status": "completed", "attempt": n}))
"""


@pytest.fixture
def slurm_client(slurm_env, monkeypatch):
    """sbatch/squeue from this process (the executor's) talk to the local cluster."""
    for key in ("SLURM_CONF", "PYTHONPATH", "OMP_NUM_THREADS"):
        monkeypatch.setenv(key, slurm_env[key])
    return slurm_env


def test_sweep_as_one_array_then_fit(slurm_client, tmp_path):
    config = tmp_path / "base.yaml"
    config.write_text(BASE)
    out = tmp_path / "sweep"
    argv = ["--config", str(config), "--presets", "cpu-0.13m", "--train-tokens", "512",
            "--lrs", "1e-3", "3e-3", "--batch-sizes", "8", "--tokens-per-sample", "32",
            "--evals-per-run", "2", "--out", str(out), "--executor", "slurm",
            "--sbatch-args", "--cpus-per-task=1 --time=10"]
    assert run_sweep.main(argv) == 0
    records = sorted(out.glob("*/run.json"))
    assert [r.parent.name for r in records] == ["cpu-0.13m_T512_lr0.001_B8", "cpu-0.13m_T512_lr0.003_B8"]
    for path in records:
        record = json.loads(path.read_text())
        assert record["status"] == "completed" and record["train_tokens"] == 512
        assert len(record["val_loss_curve"]) == 3
    logs = sorted(p.stem for p in (out / "slurm" / "logs").glob("*.out"))
    assert len(logs) == 2 and len({name.split("_")[0] for name in logs}) == 1, \
        f"one array with two tasks, got {logs}"
    # The fit reads every record of the sweep (two runs are too few for a surface, so it
    # may stop there with exit 2 and says why).
    fit = subprocess.run([sys.executable, "-m", "scaling_laws", "fit", str(out),
                          "--out", str(tmp_path / "law.json")], capture_output=True, text=True,
                         timeout=300, env=slurm_client)
    assert "2 usable runs" in fit.stdout + fit.stderr, fit.stdout + fit.stderr
    assert fit.returncode in (0, 2), fit.stderr


def test_failed_tasks_are_resubmitted_up_to_the_limit(slurm_client, tmp_path):
    jobs = [Job([sys.executable, "-c", FLAKY, str(tmp_path / f"r{n}"), str(n)], tmp_path / f"r{n}")
            for n in (0, 1, 5)]
    results = run_array(jobs, max_retries=2, poll_s=0.5, sbatch_args=["--time=5"],
                        work_dir=tmp_path / "slurm", progress=False)
    assert [r.status for r in results] == ["completed", "completed", "failed"]
    assert [r.attempts for r in results] == [1, 2, 3]
    assert [r.record["attempt"] for r in results[:2]] == [1, 2]
    # Each retry is a new array holding only the failed indices.
    arrays = [{tid.split("_")[0] for tid in r.task_ids} for r in results]
    assert len(arrays[1]) == 2 and len(arrays[2]) == 3 and arrays[0] < arrays[2]
    assert (tmp_path / "r5" / "tries").read_text() == "3"
