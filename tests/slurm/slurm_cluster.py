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
    assert proc.returncode == 0, f"{' '.join(args)}: {proc.stderr}{controller_log(env, args)}"
    return proc.stdout


def controller_log(env: dict, args, lines: int = 60) -> str:
    """What slurmctld logged about the jobs named in `args` (all of it when none is):
    the last `lines` lines, for the failure message."""
    path = Path(env["SLURM_CONF"]).parent / "log" / "slurmctld.log"
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"\n(no slurmctld log: {e})"
    ids = {m.group(1) for a in args for m in re.finditer(r"(?:JobId=)?\b(\d+)\b", str(a))}
    if ids:
        text = [ln for ln in text if any(re.search(rf"JobId={i}\b|\b{i}\.|job {i}\b", ln)
                                         for i in ids)] or text
    return f"\nslurmctld ({path}), last {lines} lines:\n" + "\n".join(text[-lines:])


def job_fields(env: dict, job_id: str) -> dict[str, str]:
    """`scontrol show job`'s Key=Value fields (the first of each key)."""
    fields = {}
    for key, value in re.findall(r"(\w+)=(\S*)", slurm(env, "scontrol", "show", "job", job_id)):
        fields.setdefault(key, value)
    return fields


def job_state(env: dict, job_id: str) -> tuple[str, str]:
    """(JobState, Reason) as slurmctld reports them."""
    fields = job_fields(env, job_id)
    return fields["JobState"], fields["Reason"]


def wait_for(what: str, predicate, timeout_s: float, poll_s: float = 0.5, details=None):
    """Poll until predicate() is truthy; fail the test (not hang) after timeout_s, with
    `details()` (what the scheduler logged, say) in the message."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}"
                f"{details() if details else ''}")


def _steps_alive(job_id: str) -> bool:
    """A slurmstepd of the job still runs here (all local "nodes" share this host)."""
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, timeout=30).stdout
    return any(line.startswith(f"slurmstepd: [{job_id}.") for line in ps.splitlines())


def release_requeued(env: dict, job_id: str, restarts: int, timeout_s: float = 180) -> None:
    """Start the job's `restarts`-th requeued run now: SLURM holds a requeued batch job
    for 2 minutes (Reason=BeginTime).

    Only once the old run's steps are gone: a start before the nodes have cleaned up
    meets the revoked credential of the old run and fails the job. On a loaded machine
    the cleanup can outlast the hold; SLURM has then started the job itself, and that
    is fine too.
    """
    def requeued():
        fields = job_fields(env, job_id)
        if int(fields["Restarts"]) < restarts:
            return None  # this requeue has not happened yet
        if fields["JobState"] == "PENDING":
            return None if _steps_alive(job_id) else "held"
        return "started" if fields["JobState"] in ("RUNNING", "COMPLETED") else None

    if wait_for(f"job {job_id} requeued ({restarts}) and its old steps gone", requeued,
                timeout_s, details=lambda: controller_log(env, [job_id])) == "started":
        return
    proc = subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], env=env,
                          capture_output=True, text=True, timeout=60)
    state = job_state(env, job_id)[0]
    assert proc.returncode == 0 or state in ("RUNNING", "COMPLETED"), \
        f"scontrol update JobId={job_id} StartTime=now ({state}): {proc.stderr}" \
        f"{controller_log(env, [job_id])}"


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
