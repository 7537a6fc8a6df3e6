"""Run sweep points as one SLURM job array: one array task per grid point.

    results = run_array([Job(argv, run_dir), ...], max_retries=2, poll_s=5,
                        sbatch_args=["--cpus-per-task=2", "--time=60"])

Each task runs its `argv` (a training command line) with stdout and stderr in
`<run_dir>/stdout.log`, exactly like the local executor, so the sweep directory holds
the same `<run_dir>/run.json` records either way. A task succeeded when its run.json
says `completed` or `diverged` (a diverged run is a data point, not a failure); any
other ending (crash, node failure, time limit, preempted without a requeue) is resubmitted
as a new array of just the failed indices, up to `max_retries` times. Waiting polls
`squeue` (no accounting database needed) with a progress bar.

The array's tasks read their command from `<work_dir>/jobs.json`, written before
submission; `python -m megatron_vdit.sweep.slurm_executor task <jobs.json>` is the
task body (SLURM_ARRAY_TASK_ID picks the entry).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from tqdm import tqdm

from ..utils.atomic_io import write_json_atomic

FINISHED = ("completed", "diverged")
MANIFEST = "jobs.json"


@dataclasses.dataclass(frozen=True)
class Job:
    """One grid point: the command to run and the run dir it writes run.json into."""
    argv: tuple[str, ...]
    run_dir: Path

    def __post_init__(self):
        object.__setattr__(self, "argv", tuple(str(a) for a in self.argv))
        object.__setattr__(self, "run_dir", Path(self.run_dir))


@dataclasses.dataclass
class Result:
    job: Job
    status: str
    """The run record's status (completed, diverged), or "failed" after every attempt."""
    attempts: int
    task_ids: list[str]
    """SLURM ids of every attempt, `<array job id>_<index>`."""
    record: dict | None
    """The parsed run.json, or None when the run never wrote one."""


def _record(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "run.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _slurm(cmd: list[str], timeout_s: float = 60) -> str:
    """A SLURM client command's stdout; a RuntimeError with its stderr on failure."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise RuntimeError(f"{cmd[0]} not found: is this a SLURM login node?") from None
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{' '.join(cmd[:2])} did not answer in {timeout_s:.0f}s") from None
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:2])} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def write_manifest(jobs: list[Job], work_dir: Path) -> Path:
    work_dir.mkdir(parents=True, exist_ok=True)
    path = work_dir / MANIFEST
    write_json_atomic(path, [{"argv": list(j.argv), "run_dir": str(j.run_dir)} for j in jobs])
    return path


def submit(manifest: Path, indices: list[int], *, sbatch_args=(), job_name="vdit-sweep",
           max_parallel: int | None = None) -> str:
    """Submit the array tasks `indices` of `manifest`; returns the array's job id."""
    logs = manifest.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    array = ",".join(str(i) for i in indices) + (f"%{max_parallel}" if max_parallel else "")
    body = " ".join(shlex.quote(a) for a in (sys.executable, "-m", __name__, "task", str(manifest)))
    out = _slurm(["sbatch", "--parsable", f"--array={array}", f"--job-name={job_name}",
                  f"--output={logs}/%A_%a.out", *sbatch_args, f"--wrap={body}"])
    return out.strip().split(";")[0]


def queued(array_id: str, tries: int = 3) -> set[int]:
    """Indices of `array_id` still pending or running (gone once finished, any way).

    A busy slurmctld can time out a query: retried, so a long sweep survives it.
    """
    for attempt in range(tries):
        try:
            out = _slurm(["squeue", "-h", "-r", "-j", array_id, "-o", "%i"])
            return {int(line.rsplit("_", 1)[1]) for line in out.split() if "_" in line}
        except RuntimeError:
            if attempt == tries - 1:
                raise
            time.sleep(10)


def wait(array_id: str, indices: list[int], bar: tqdm, poll_s: float, deadline: float | None) -> None:
    left = set(indices)
    while left:
        time.sleep(poll_s)
        still = queued(array_id) & left
        bar.update(len(left) - len(still))
        left = still
        if deadline is not None and time.time() > deadline and left:
            subprocess.run(["scancel", array_id], capture_output=True, timeout=60)
            raise TimeoutError(f"array {array_id}: {len(left)} task(s) still queued at the deadline; "
                               "cancelled")


def run_array(jobs: list[Job], *, max_retries: int = 2, poll_s: float = 5.0, sbatch_args=(),
              work_dir: str | Path | None = None, job_name: str = "vdit-sweep",
              max_parallel: int | None = None, timeout_s: float | None = None,
              progress: bool = True) -> list[Result]:
    """Run every job as a task of one array, resubmit failures, return one Result per job.

    Every job given is run (skipping finished ones is the caller's choice, as the
    sweep's resume rule also compares command lines). `work_dir` (default: `<parent of
    the first run dir>/slurm`) gets jobs.json and the array's SLURM logs. Ctrl-C cancels
    the array before re-raising.
    """
    if not jobs:
        return []
    if max_retries < 0:
        raise ValueError(f"max_retries={max_retries} must be >= 0")
    manifest = write_manifest(jobs, Path(work_dir) if work_dir else jobs[0].run_dir.parent / "slurm")
    attempts, task_ids = [0] * len(jobs), [[] for _ in jobs]
    todo = list(range(len(jobs)))
    deadline = time.time() + timeout_s if timeout_s else None
    bar = tqdm(total=len(todo), desc="sweep (slurm)", unit="run", disable=not progress)
    array_id = None
    try:
        while todo:
            array_id = submit(manifest, todo, sbatch_args=list(sbatch_args), job_name=job_name,
                              max_parallel=max_parallel)
            for i in todo:
                attempts[i] += 1
                task_ids[i].append(f"{array_id}_{i}")
            bar.set_postfix(array=array_id)
            wait(array_id, todo, bar, poll_s, deadline)
            failed = [i for i in todo if (_record(jobs[i].run_dir) or {}).get("status") not in FINISHED]
            todo = [i for i in failed if attempts[i] <= max_retries]
            bar.total += len(todo)
            bar.refresh()
    except KeyboardInterrupt:
        if array_id is not None:
            subprocess.run(["scancel", array_id], capture_output=True, timeout=60)
        raise
    finally:
        bar.close()
    results = []
    for i, job in enumerate(jobs):
        record = _record(job.run_dir)
        status = record["status"] if record and record.get("status") in FINISHED else "failed"
        results.append(Result(job, status, attempts[i], task_ids[i], record))
    return results


def run_task(manifest: Path) -> int:
    """Body of one array task: run its entry's argv, output to <run_dir>/stdout.log."""
    entries = json.loads(Path(manifest).read_text())
    entry = entries[int(os.environ["SLURM_ARRAY_TASK_ID"])]
    run_dir = Path(entry["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    # The record decides success, so one from an earlier attempt must not outlive this one
    # (the trainer drops it too, but only once it has started).
    (run_dir / "run.json").unlink(missing_ok=True)
    log = os.open(run_dir / "stdout.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.environ["PYTHONUNBUFFERED"] = "1"
    # exec, not a child: the scheduler's signals (preemption, time limit) reach the run.
    os.execvp(entry["argv"][0], entry["argv"])


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "task":
        print(f"usage: python -m {__name__} task JOBS.json (runs inside a SLURM array task)",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(run_task(Path(sys.argv[2])))
