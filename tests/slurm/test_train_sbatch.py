"""examples/slurm/train.sbatch on a real scheduler: a 2-node gloo job, and preemption.

Two interruptions of one job cover both ways SLURM stops a run: the warning signal of
`#SBATCH --signal` (sent to the job's steps only; here by `scancel --signal=TERM`, what
slurmctld sends at the warning time), after which the batch script requeues the job
itself, and `scontrol requeue` (SIGTERM to the whole job, requeued by SLURM). The runs
save no periodic checkpoints, so a resumed run can only have come from the checkpoint
written on the signal. The interrupted job must end with the uninterrupted job's losses.
"""
import json
import re
from pathlib import Path

import pytest

from slurm_cluster import (ROOT, controller_log, job_state, last_iteration, release_requeued,
                           slurm, wait_for)

# One local cluster: its tests share one xdist worker (`make test` runs -n 2 --dist loadgroup).
pytestmark = pytest.mark.xdist_group("slurm")

TRAIN_ITERS = 150
CONFIG = f"""data: synthetic
num_layers: 2
hidden_size: 64
num_attention_heads: 2
latent_frames: 2
latent_height: 8
latent_width: 8
text_hidden_size: 32
max_text_tokens: 12
micro_batch_size: 2
global_batch_size: 4
eval_samples: 8
eval_interval: 50
log_interval: 1
wandb_mode: disabled
train_iters: {TRAIN_ITERS}
"""


def submit(env, tmp_path: Path, name: str) -> tuple[str, Path]:
    run_dir = tmp_path / name
    config = tmp_path / f"{name}.yaml"
    config.write_text(CONFIG + f"run_dir: {run_dir}\n")
    out = slurm(env, "sbatch", "--parsable", "--nodes=2", f"--output={tmp_path}/slurm-%j.out",
                str(ROOT / "examples" / "slurm" / "train.sbatch"), str(config))
    return out.strip(), run_dir


def finished(env, job_id: str) -> bool:
    state, _ = job_state(env, job_id)
    assert state not in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"), \
        f"job {job_id}: {state}{controller_log(env, [job_id])}"
    return state == "COMPLETED"


def resumes(run_dir: Path) -> list[int]:
    """Iterations resumed at, in order (rank 0 says it, on whichever node it ran)."""
    text = "".join(p.read_text() for p in (run_dir / "logs").glob("*-node*.out"))
    return sorted(int(k) for k in re.findall(r"resumed from \S+iter_\d+ at iteration (\d+)", text))


@pytest.fixture(scope="module")
def reference_job(slurm_env, tmp_path_factory):
    """Submitted, not awaited: the preemption test drives its own job meanwhile."""
    job_id, run_dir = submit(slurm_env, tmp_path_factory.mktemp("sbatch"), "reference")
    yield job_id, run_dir
    slurm(slurm_env, "scancel", job_id)


@pytest.fixture(scope="module")
def reference(slurm_env, reference_job):
    """An uninterrupted 2-node job: torchrun on each of the two slurmd nodes, DP = 2."""
    job_id, run_dir = reference_job
    wait_for(f"job {job_id} to complete", lambda: finished(slurm_env, job_id), 600, poll_s=1)
    return job_id, run_dir


def test_preempted_job_resumes_with_the_same_losses(slurm_env, reference_job, tmp_path):
    env = slurm_env
    job_id, run_dir = submit(env, tmp_path, "preempted")
    try:
        _interrupt_twice(env, job_id, run_dir)
    finally:
        slurm(env, "scancel", job_id)
    ref_id, ref_dir = reference_job
    wait_for(f"job {ref_id} to complete", lambda: finished(env, ref_id), 600, poll_s=1)
    want = json.loads((ref_dir / "run.json").read_text())
    got = json.loads((run_dir / "run.json").read_text())
    assert got["status"] == "completed" and got["iterations"] == TRAIN_ITERS
    assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-6)
    assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-6)
    assert [p["val_loss"] for p in got["val_loss_curve"]] == pytest.approx(
        [p["val_loss"] for p in want["val_loss_curve"]], rel=1e-6)


def _interrupt_twice(env, job_id: str, run_dir: Path) -> None:
    # 1. The time-limit warning: steps get SIGTERM, the batch script requeues the job.
    wait_for("iteration 30", lambda: last_iteration(run_dir) >= 30, 600)
    slurm(env, "scancel", "--signal=TERM", job_id)
    release_requeued(env, job_id, restarts=1)
    first = wait_for("the first resume", lambda: resumes(run_dir), 300)[0]
    # 2. scontrol requeue: the whole job gets SIGTERM and SLURM requeues it.
    wait_for(f"iteration {first + 30}", lambda: last_iteration(run_dir) >= first + 30, 600)
    slurm(env, "scontrol", "requeue", job_id)
    release_requeued(env, job_id, restarts=2)
    wait_for(f"job {job_id} to complete", lambda: finished(env, job_id), 600, poll_s=1,
             details=lambda: controller_log(env, [job_id]))

    first_resume, second_resume = resumes(run_dir)
    assert 30 <= first_resume == first and first + 30 <= second_resume < TRAIN_ITERS
    batch_log = (run_dir / "logs" / f"batch-{job_id}.out").read_text()
    assert batch_log.count("checkpointed on a signal") == 1 and "start 3" in batch_log
    assert not (run_dir / "preempted.json").exists()


def test_two_node_job_runs_to_completion(reference):
    job_id, run_dir = reference
    record = json.loads((run_dir / "run.json").read_text())
    assert record["status"] == "completed" and record["iterations"] == TRAIN_ITERS
    assert record["config"]["data_parallel_size"] == 2, "one rank on each of the 2 nodes"
    logs = sorted(p.name for p in (run_dir / "logs").iterdir())
    assert logs == [f"{job_id}-node0.out", f"{job_id}-node1.out", f"batch-{job_id}.out"]
    assert "training exited with 0" in (run_dir / "logs" / f"batch-{job_id}.out").read_text()
