"""Run sweep jobs as subprocesses on this machine, several at once.

Each job gets `threads` intra-op threads (OMP/MKL/torch) and up to `parallel` jobs run
together: on the 2-core development box two 1-thread runs beat one 2-thread run for
CPU-sized models (docs/benchmarks.md), hence the defaults. Children die with the sweep
(PR_SET_PDEATHSIG), so a SIGKILLed sweep leaves no orphan writing into a run directory
that the rerun is about to resume.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from typing import Callable, Sequence

from .jobs import Job, Result, is_finished, read_record, status_of, write_command

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # not Linux: children may outlive a killed sweep; the rerun still resumes


def _start(job: Job, threads: int) -> subprocess.Popen:
    write_command(job)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    log = open(job.run_dir / "stdout.log", "a")
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    proc = subprocess.Popen(list(job.argv), stdout=log, stderr=subprocess.STDOUT, env=env,
                            preexec_fn=preexec)
    log.close()
    return proc


def run_jobs(jobs: Sequence[Job], parallel: int = 2, threads: int = 1,
             on_result: Callable[[Result], None] | None = None) -> list[Result]:
    """Run every unfinished job; finished ones come back as status "skipped"."""
    results, pending, running = [], [], {}
    for job in jobs:
        if is_finished(job):
            result = Result(job.run_id, 0, "skipped", read_record(job.run_dir))
            results.append(result)
            if on_result:
                on_result(result)
        else:
            pending.append(job)
    pending.reverse()
    while pending or running:
        while pending and len(running) < max(1, parallel):
            job = pending.pop()
            running[job.run_id] = (job, _start(job, threads), time.time())
        time.sleep(0.2)
        for run_id, (job, proc, started) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[run_id]
            record = read_record(job.run_dir)
            result = Result(run_id, proc.returncode, status_of(proc.returncode, record), record,
                            time.time() - started)
            results.append(result)
            if on_result:
                on_result(result)
    return results
