"""Atomic file writing: a reader sees the old file or the complete new one, never a part.

The one implementation for the whole repository (run records, checkpoints' `latest`,
shards, manifests, law files). Standard library only, so `scaling_laws` and the
torch-free CLIs can import it without pulling in torch.

Protocol: write a temp file next to the target (same directory, hence same file
system), flush and fsync it, `os.replace` it over the target (atomic on POSIX), then
fsync the directory so the rename itself survives a power cut. On any error the temp
file is removed and the target is untouched. Temp names carry the pid and a random
suffix, so concurrent writers (ranks, retries) never share one; they start with "."
so directory listings and globs for the real files skip them.
"""
from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import IO, Iterator


def fsync_dir(directory) -> None:
    """Make a rename in `directory` durable (POSIX: fsync the directory itself)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path(path) -> Path:
    """A hidden temp file next to `path` that keeps its suffix, so writers that pick a
    format by extension (savefig, np.savez, video muxers, tarfile) write the same file."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """A temp path for writers that need a file name; what the block writes there is
    fsynced and moved over `path` when the block succeeds, and removed when it fails.

        with atomic_path("plot.png") as tmp:
            fig.savefig(tmp)
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)   # FileNotFoundError: the block wrote nothing
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_open(path, mode: str = "w") -> Iterator[IO]:
    """`open(path, mode)` whose result appears at `path` only when the block succeeds.

    `mode` is "w" (text, UTF-8) or "wb"."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
    encoding = None if "b" in mode else "utf-8"
    with atomic_path(path) as tmp:
        with open(tmp, mode.replace("w", "x"), encoding=encoding) as handle:
            yield handle


def save_figure_atomic(fig, path, **savefig_kwargs) -> None:
    """`fig.savefig(path, ...)` atomically (the format follows `path`'s suffix)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, **savefig_kwargs)


def write_text_atomic(path, text: str) -> None:
    with atomic_open(path, "w") as handle:
        handle.write(text)


def write_bytes_atomic(path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def write_json_atomic(path, obj, *, indent: int | None = 1, sort_keys: bool = False,
                      default=None, allow_nan: bool = True) -> None:
    """`json.dump` + a final newline, atomically."""
    with atomic_open(path, "w") as handle:
        json.dump(obj, handle, indent=indent, sort_keys=sort_keys, default=default,
                  allow_nan=allow_nan)
        handle.write("\n")
