"""Where a run starts: fresh, from a checkpoint, or not at all (already finished).

Decided from files only (run.json, `latest`, trainer_state.json), before any process
group or model exists, so a wrong directory costs nothing and nothing is destroyed:

- `--run-dir`, `--save`, `--load` naming a regular file: refused.
- `--load DIR` empty or absent: a fresh start with a warning, as in Megatron-LM;
  `--exit-on-missing-checkpoint` makes it an error.
- A checkpoint to resume from (`--load`, or `--save` with `--save-interval`) must agree
  with this config on every field marked `resume` (else it silently becomes another
  run); extending a run (more iterations) is a resume.
- A `--run-dir` holding a finished run (run.json): resuming it from a checkpoint is
  fine; the same config with nothing to resume is a no-op; another config is refused,
  naming the run and `--overwrite`.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from . import checkpoint as ckpt
from .config import FIELDS, JobConfig
from .records import RUN_RECORD

TRAINER_STATE = "trainer_state.json"


@dataclasses.dataclass(frozen=True)
class StartPoint:
    checkpoint: Path | None = None
    """Resume from this checkpoint directory (None: a fresh start)."""
    meta: dict | None = None
    """Its trainer_state.json."""
    finished_record: dict | None = None
    """Set when the run dir already holds this run, finished: nothing to do."""


def save_dir(job: JobConfig) -> str:
    return job.checkpoint.save or os.path.join(job.logging.run_dir, "checkpoints")


def check_output_paths(job: JobConfig) -> None:
    for flag, path in (("--run-dir", job.logging.run_dir), ("--save", job.checkpoint.save),
                       ("--load", job.checkpoint.load),
                       ("--natural-cache-dir", job.data.natural_cache_dir)):
        if path is not None and os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"{flag} {path} is an existing file, not a directory")


def find_start(job: JobConfig, identity: dict, warn=print) -> StartPoint:
    """Where this run starts (see the module docstring); ValueError when refused.
    `identity` is the resolved flat config (`resolved.resolved_flat`)."""
    check_output_paths(job)
    c = job.checkpoint
    explicit = c.load is not None
    resumable = c.save_interval or c.exit_signal_handler  # both save into save_dir
    load_dir = c.load if explicit else (save_dir(job) if resumable and not
                                        job.logging.overwrite else None)
    path = ckpt.latest_checkpoint(load_dir) if load_dir else None
    if explicit and path is None:
        if c.exit_on_missing_checkpoint:
            raise ValueError(f"--load {c.load}: no checkpoint there (--exit-on-missing-checkpoint)")
        warn(f"WARNING: --load {c.load} holds no checkpoint; starting from iteration 0")
    start = StartPoint()
    if path is not None:
        meta = _read_json(path / TRAINER_STATE, "checkpoint state")
        check_resume_compatible(meta.get("config", {}), identity, path)
        start = StartPoint(checkpoint=path, meta=meta)
    record_path = Path(job.logging.run_dir) / RUN_RECORD
    if start.checkpoint is not None or job.logging.overwrite or not record_path.exists():
        return start
    record = _read_json(record_path, "run record")
    differ = _differences(record.get("config", {}), identity,
                          [n for n, s in FIELDS.items() if s.result] + _DERIVED)
    if not differ:
        return StartPoint(finished_record=record)
    raise ValueError(f"--run-dir {job.logging.run_dir} holds a finished run "
                     f"{record.get('run_id')!r} (status {record.get('status')}, "
                     f"{record.get('iterations')} iterations) made with another config "
                     f"({_listed(differ)}); use another --run-dir, or --overwrite to replace it")


# Derived values that define a run besides the fields (a preset or tokens may set them).
_DERIVED = ["num_layers", "hidden_size", "num_attention_heads", "global_batch_size",
            "train_iters"]


def check_resume_compatible(saved: dict, identity: dict, path: Path) -> None:
    differ = _differences(saved, identity, [n for n, s in FIELDS.items() if s.resume])
    if differ:
        raise ValueError(f"cannot resume from {path}: the config changed ({_listed(differ)}); "
                         "use a new --run-dir/--save, restore these values, or --overwrite to "
                         "start this run dir afresh")


def _differences(saved: dict, current: dict, names) -> dict:
    """Fields both configs have that differ (records from before a field existed agree)."""
    norm = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731  (JSON has no tuples)
    return {k: (saved[k], current[k]) for k in dict.fromkeys(names)
            if k in saved and k in current and norm(saved[k]) != norm(current[k])}


def _listed(differ: dict) -> str:
    return ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in differ.items())


def _read_json(path: Path, what: str) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: unreadable {what} ({err}); move it away or pass "
                         "--overwrite") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: {what} is not a JSON object; move it away or pass --overwrite")
    return value
