"""Save a checkpoint and stop when the scheduler says time is up (`--exit-signal-handler`).

SLURM asks a job to stop with SIGTERM: `#SBATCH --signal=TERM@<s>` sends it <s>
seconds before the time limit, and `scontrol requeue`, `scancel` and preemption send
it too, each followed by SIGKILL after the cluster's KillWait. torchrun forwards SIGTERM
to its workers and waits `--shutdown-timeout` seconds before killing them.

The handler only sets a flag (a signal can land anywhere, even inside a collective).
The loop asks `should_exit()` once per iteration, after the optimizer step: an
all-reduce (max) of the flag over all ranks, so every rank stops at the same iteration
even when the signal reaches them at different times. The trainer then saves a
checkpoint of that iteration, rank 0 writes `<run-dir>/preempted.json` (what was saved,
on which signal), and every rank exits with `EXIT_PREEMPTED`. Rerunning the same
command resumes from that checkpoint; `examples/slurm/train.sbatch` requeues itself when
it finds the marker (torchrun turns a worker's exit code into its own, so the marker,
not the code, is what a launcher under torchrun can rely on).

Same name and default signal as Megatron-LM's `--exit-signal-handler`.
"""
from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

EXIT_PREEMPTED = 4
"""Exit status of a run stopped by the exit signal after saving a checkpoint: rerun the
same command to resume (0 completed, 1 crash, 2 bad input, 3 diverged)."""
MARKER = "preempted.json"
EXIT_SIGNAL = signal.SIGTERM


class ExitSignalHandler:
    """Records that `sig` arrived; the previous handler comes back on `release()`."""

    def __init__(self, sig: signal.Signals = EXIT_SIGNAL):
        self.sig, self.received = sig, False
        self._previous = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.received = True

    def should_exit(self) -> bool:
        """Rank-collective when a process group exists: True on every rank if any got it."""
        if not (dist.is_available() and dist.is_initialized()):
            return self.received
        device = "cuda" if torch.cuda.is_available() and "nccl" in str(dist.get_backend()) else "cpu"
        flag = torch.tensor([1 if self.received else 0], dtype=torch.int32, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def release(self) -> None:
        signal.signal(self.sig, self._previous)


def install(enabled: bool) -> ExitSignalHandler | None:
    return ExitSignalHandler() if enabled else None


def read_marker(run_dir: str | Path) -> dict | None:
    path = Path(run_dir) / MARKER
    return json.loads(path.read_text()) if path.exists() else None


def stop(trainer) -> None:
    """Checkpoint the current iteration, leave the marker, exit with EXIT_PREEMPTED.

    Rank-collective (the save is). Raises SystemExit, so the CLI's exit status is
    EXIT_PREEMPTED without the loop knowing about exit codes.
    """
    from .records import write_json_atomic

    if trainer.saved_iteration != trainer.iteration:
        trainer.save()
    trainer.finish_saves()  # an async save must be on disk before the job ends
    if trainer.is_logger:
        write_json_atomic(Path(trainer.run_dir) / MARKER, {
            "iteration": trainer.iteration, "signal": trainer.exit_handler.sig.name,
            "checkpoint_dir": str(trainer.save_dir)})
        print(f"{trainer.exit_handler.sig.name}: saved iteration {trainer.iteration} to "
              f"{trainer.save_dir}; exiting with {EXIT_PREEMPTED} (rerun to resume)", flush=True)
    trainer.exit_handler.release()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.exit(EXIT_PREEMPTED)
