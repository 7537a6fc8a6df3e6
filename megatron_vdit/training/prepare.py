"""Everything checked and derived before any process group, model or data loader exists.

Torch-free: `prepare` runs the whole validation of a job (values, layout at the world
size, model shape, run dir and checkpoints, data paths, manifest and shards) before the
CLI imports torch and megatron-core, so bad input is refused in a fraction of a second.
"""
from __future__ import annotations

import dataclasses
import os

from .config import JobConfig
from .data import data_identity, prepare_data
from .resolved import Resolved, model_config, resolve, resolved_flat, world_size_from_env
from .rundir import StartPoint, find_start


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A validated job and what it implies at this world size."""

    job: JobConfig
    resolved: Resolved
    identity: dict
    """The resolved flat config stored in run.json and checkpoints."""
    data_root: str | None
    """Shard directory (None: synthetic)."""
    start: StartPoint

    @property
    def model(self):
        """The model's `VDiTConfig` (imports megatron-core)."""
        return model_config(self.job, self.resolved)


def prepare(job: JobConfig) -> Prepared:
    """Validate everything that can be validated before any group or model exists."""
    rank, world = int(os.environ.get("RANK", "0")), world_size_from_env()
    r = resolve(job, world)
    identity = resolved_flat(job, r, data_identity(job))
    start = find_start(job, identity, warn=print if rank == 0 else lambda _: None)
    data_root = None if start.finished_record else prepare_data(job, r, rank, world)
    return Prepared(job, r, identity, data_root, start)
