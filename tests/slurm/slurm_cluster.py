"""Helpers for tests that talk to the local SLURM (the fixture is in conftest.py)."""
import json
import re
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def slurm(env: dict, *args: str, timeout: int = 60) -> str:
    proc = subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args)}: {proc.stderr}"
    return proc.stdout


def job_state(env: dict, job_id: str) -> tuple[str, str]:
    """(JobState, Reason) as slurmctld reports them."""
    out = slurm(env, "scontrol", "show", "job", job_id)
    state = re.search(r"JobState=(\S+)", out).group(1)
    return state, re.search(r"Reason=(\S+)", out).group(1)


def wait_for(what: str, predicate, timeout_s: float, poll_s: float = 0.5):
    """Poll until predicate() is truthy; fail the test (not hang) after timeout_s."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")


def _steps_alive(job_id: str) -> bool:
    """A slurmstepd of the job still runs here (all local "nodes" share this host)."""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, timeout=30).stdout
    return any(line.startswith(f"slurmstepd: [{job_id}.") for line in ps.splitlines())


def release_requeued(env: dict, job_id: str, timeout_s: float = 180) -> None:
    """SLURM holds a requeued batch job for 2 minutes (Reason=BeginTime); start it now.

    Only once the old run's steps are gone: a start before the nodes have cleaned up
    meets the revoked credential of the old run and fails the job.
    """
    wait_for(f"job {job_id} requeued and its old steps gone",
             lambda: job_state(env, job_id)[0] == "PENDING" and not _steps_alive(job_id), timeout_s)
    slurm(env, "scontrol", "update", f"JobId={job_id}", "StartTime=now")


def last_iteration(run_dir: Path) -> int:
    """Highest iteration in metrics.jsonl so far (-1 before the first line)."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return -1
    done = -1
    for line in lines:
        try:
            done = max(done, json.loads(line)["iteration"])
        except json.JSONDecodeError:  # the line the trainer is writing right now
            pass
    return done
