"""Run sweep jobs on this machine, several at once.

Each job gets `threads` intra-op threads (OMP/MKL/torch) and up to `parallel` jobs run
together: on the 2-core development box two 1-thread runs beat one 2-thread run for
CPU-sized models (docs/benchmarks.md), hence the defaults.

Warm start (the default): a training run is `python -m megatron_vdit.train ARGS`, and
importing torch and megatron-core costs about 6 s per process here, more than a toy
run trains. So training jobs are forked from one fork server (multiprocessing's
`forkserver`) that has imported the trainer once and never computes anything itself;
each child sets its threads, sends its output to the run's `stdout.log` and calls the
same `megatron_vdit.train.main(ARGS)` that the command line would. Runs are the same
run, bit for bit (tests/tools/test_local_executor.py); any other argv, or
`warm_start=False`, is a fresh subprocess.

Children die with the sweep (a subprocess by PR_SET_PDEATHSIG, a forked run by watching
the sweep's pidfd), so a SIGKILLed sweep leaves no orphan writing into a run directory
that the rerun is about to resume.
"""
from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Sequence

from .jobs import Job, Result, is_finished, read_record, status_of, write_command

PR_SET_PDEATHSIG = 1
TRAIN_MODULE = "megatron_vdit.train"
# What a training run imports, loaded once by the fork server (imports only: a process
# that has run torch ops is not safe to fork).
PRELOAD = ["megatron_vdit.train", "megatron_vdit.training.prepare", "megatron_vdit.training.loop",
           "megatron_vdit.sweep.local_executor", "matplotlib.pyplot"]


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # not Linux: children may outlive a killed sweep; the rerun still resumes


def _thread_env(threads: int) -> dict:
    return {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads)}


def train_args(argv: Sequence[str]) -> list[str] | None:
    """ARGS when argv is `<this python> -m megatron_vdit.train ARGS`, else None."""
    if len(argv) >= 3 and argv[0] == sys.executable and tuple(argv[1:3]) == ("-m", TRAIN_MODULE):
        return list(argv[3:])
    return None


def _die_with(pid: int) -> None:
    """SIGKILL this process when process `pid` exits (a thread waits on its pidfd).

    A forked run's parent is the fork server, which outlives a killed sweep as long as a
    run it forked lives (each holds its liveness pipe), so PR_SET_PDEATHSIG alone would
    leave orphans: the run watches the sweep itself."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)  # the sweep is gone already
    except (AttributeError, OSError):
        return  # no pidfd (not Linux >= 5.3): a killed sweep may leave this run behind

    def wait() -> None:
        select.select([fd], [], [])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=wait, name="die-with-sweep", daemon=True).start()


def _train_in_child(args: list[str], log_path: str, threads: int, sweep_pid: int) -> None:
    """The forked run: what `python -m megatron_vdit.train ARGS >> log 2>&1` would do."""
    _die_with(sweep_pid)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout.reconfigure(line_buffering=True)
    os.environ.update(_thread_env(threads))
    import torch
    torch.set_num_threads(threads)
    from megatron_vdit.train import main
    sys.argv = [TRAIN_MODULE, *args]
    sys.exit(main(args))


class _Forked:
    """A forked run behind Popen's poll()/returncode."""

    def __init__(self, process):
        self.process = process

    def poll(self) -> int | None:
        code = self.process.exitcode
        if code is None:
            return None
        self.process.join()
        return code  # as Popen: -s when killed by signal s

    @property
    def returncode(self) -> int | None:
        return self.poll()


@contextlib.contextmanager
def _environ(extra: dict):
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _fork_context(threads: int):
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    with _environ(_thread_env(threads)):  # the server's BLAS pools are sized at import
        from multiprocessing import forkserver
        forkserver.ensure_running()
    return ctx


def _start(job: Job, threads: int, ctx=None):
    write_command(job)
    log_path = job.run_dir / "stdout.log"
    args = train_args(job.argv) if ctx is not None else None
    if args is not None:
        process = ctx.Process(target=_train_in_child, args=(args, str(log_path), threads, os.getpid()),
                              name=job.run_id)
        process.start()
        return _Forked(process)
    env = {**os.environ, **_thread_env(threads)}
    log = open(log_path, "a")
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    proc = subprocess.Popen(list(job.argv), stdout=log, stderr=subprocess.STDOUT, env=env,
                            preexec_fn=preexec)
    log.close()
    return proc


def run_jobs(jobs: Sequence[Job], parallel: int = 2, threads: int = 1,
             on_result: Callable[[Result], None] | None = None,
             warm_start: bool = True) -> list[Result]:
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
    use_fork = warm_start and sys.platform.startswith("linux") and \
        any(train_args(job.argv) is not None for job in pending)
    ctx = _fork_context(threads) if use_fork else None
    while pending or running:
        while pending and len(running) < max(1, parallel):
            job = pending.pop()
            running[job.run_id] = (job, _start(job, threads, ctx), time.time())
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
