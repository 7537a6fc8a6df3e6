"""What an executor runs and what it hands back (shared by the local and SLURM executors).

A `Job` is one training run: its argv (a `python -m megatron_vdit.train` command line)
and its run directory. The run writes `<run_dir>/run.json`; the executor adds
`command.json` (the argv it ran, so a changed grid point or flag is a new run) and
`stdout.log` (appended to on every attempt). A run is *finished* when both exist, match,
and the record's status is `completed` or `diverged`; anything else is rerun, and the
trainer resumes it from its last checkpoint (`--save-interval`).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..utils.atomic_io import write_json_atomic

FINAL_STATUSES = ("completed", "diverged")


@dataclasses.dataclass(frozen=True)
class Job:
    run_id: str
    argv: tuple          # full command line; argv[0] is the Python executable
    run_dir: Path


@dataclasses.dataclass(frozen=True)
class Result:
    run_id: str
    returncode: int      # 0 completed, 3 diverged, anything else failed
    status: str          # "completed", "diverged", "failed" or "skipped" (finished before)
    record: dict | None  # the run record, when one was written
    wall_s: float = 0.0


def read_record(run_dir: Path) -> dict | None:
    path = Path(run_dir) / "run.json"
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except json.JSONDecodeError:
        return None  # a torn write cannot happen (atomic publish), but never crash on one


def write_command(job: Job) -> None:
    """Record the argv a run is started with (before it starts); `is_finished` compares it."""
    job.run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(job.run_dir / "command.json", list(job.argv[1:]), indent=None)


def is_finished(job: Job) -> bool:
    used = job.run_dir / "command.json"
    record = read_record(job.run_dir)
    return (record is not None and used.exists()
            and json.loads(used.read_text()) == list(job.argv[1:])
            and record.get("status") in FINAL_STATUSES)


def status_of(returncode: int, record: dict | None) -> str:
    if record is not None and record.get("status") in FINAL_STATUSES and returncode in (0, 3):
        return record["status"]
    return "failed"
