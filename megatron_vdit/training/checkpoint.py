"""Atomic checkpoints: a crash never leaves a half-written checkpoint that looks valid.

Layout: `<save>/iter_0000123/` holds the state; `<save>/latest` names the newest
complete one. A checkpoint is written into `iter_XXXXXXX.tmp/`, fsynced, then
renamed into place (atomic on POSIX); only then is `latest` replaced, itself written
atomically (`utils/atomic_io.py`). Loading reads `latest`, so a crash at any point leaves the
previous checkpoint in charge. Leftover `.tmp` directories are removed on the next save.
An async save (`--async-save`) is the same sequence with the rename deferred until every
rank's background writes have finished (`start_checkpoint` -> `PendingCheckpoint.publish`).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
from concurrent.futures import Future
from pathlib import Path
from typing import Callable

from ..utils.atomic_io import fsync_dir, write_text_atomic

LATEST = "latest"


def save_checkpoint(save_dir: str, iteration: int, write_fn: Callable[[Path], None],
                    keep: int = 2, is_writer: bool = True,
                    barrier: Callable[[], None] = lambda: None) -> Path:
    """Fill a fresh directory with `write_fn(tmp_dir)` on every rank, then publish it.

    Rank-collective: every rank calls it; `is_writer` (rank 0) creates, renames and
    prunes, `barrier` orders those steps against the other ranks' writes.
    """
    return start_checkpoint(save_dir, iteration, write_fn, keep, is_writer, barrier).publish()


def start_checkpoint(save_dir: str, iteration: int,
                     write_fn: Callable[[Path], Future | None], keep: int = 2,
                     is_writer: bool = True,
                     barrier: Callable[[], None] = lambda: None) -> "PendingCheckpoint":
    """`save_checkpoint` up to the writes: `write_fn` may return a future (an async save
    still writing); the checkpoint is published by `PendingCheckpoint.publish`."""
    root = Path(save_dir)
    final = root / f"iter_{iteration:07d}"
    tmp = root / f"{final.name}.tmp"
    if is_writer:
        root.mkdir(parents=True, exist_ok=True)
        for stale in list(root.glob("iter_*.tmp")) + list(root.glob("iter_*.old")):
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    barrier()
    written = write_fn(tmp)
    future = written if isinstance(written, Future) else None
    return PendingCheckpoint(root, final, tmp, future, keep, is_writer, barrier)


@dataclasses.dataclass
class PendingCheckpoint:
    """A checkpoint being written into `tmp`: invisible to loading until `publish`."""

    root: Path
    final: Path
    tmp: Path
    future: Future | None
    keep: int
    is_writer: bool
    barrier: Callable[[], None]

    def done(self) -> bool:
        """This rank's writes have finished (successfully or not); no communication."""
        return self.future is None or self.future.done()

    def publish(self) -> Path:
        """Wait for this rank's writes (re-raising their error), then, once every rank
        is there, fsync, rename into place and point `latest` at it. Rank-collective."""
        if self.future is not None:
            self.future.result()
        self.barrier()
        root, final, tmp = self.root, self.final, self.tmp
        if self.is_writer:
            for file in tmp.rglob("*"):
                if file.is_file():
                    with open(file, "rb") as f:
                        os.fsync(f.fileno())
            # Re-saving an iteration: move the old copy aside first, so `latest` never
            # names a missing directory; it is deleted only after the new one is published.
            replaced = root / f"{final.name}.old"
            if final.exists():
                os.rename(final, replaced)
            os.rename(tmp, final)
            fsync_dir(root)
            write_text_atomic(root / LATEST, final.name + "\n")
            shutil.rmtree(replaced, ignore_errors=True)
            _prune(root, final, self.keep)
        self.barrier()
        return final


def _prune(root: Path, newest: Path, keep: int) -> None:
    """Keep `newest` (the one just published) and the keep-1 most recent others."""
    others = sorted(p for p in root.glob("iter_*") if p.suffix not in (".tmp", ".old")
                    and p != newest)
    for old in others[:max(len(others) - (keep - 1), 0)] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(load_dir: str) -> Path | None:
    """The newest complete checkpoint under `load_dir`, or None if there is none yet."""
    root = Path(load_dir)
    pointer = root / LATEST
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    if not path.is_dir():
        raise ValueError(f"{pointer} names {path.name}, which does not exist: the checkpoint "
                         "directory was modified by hand")
    return path
