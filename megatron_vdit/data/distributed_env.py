"""The precompute's view of torchrun: rank, world size, all-gather and barrier.

Ranks come from the ``RANK``/``WORLD_SIZE`` environment that torchrun sets. With more than
one rank a gloo process group carries the few small objects the ranks exchange (probe
results, a barrier before rank 0 writes the manifest); no tensors move, so no GPU
backend is needed. Without torchrun everything is local.
"""
from __future__ import annotations

import dataclasses
import datetime
import os

import torch.distributed as dist


@dataclasses.dataclass
class RankContext:
    rank: int = 0
    world_size: int = 1
    owns_group: bool = False

    @classmethod
    def from_env(cls) -> "RankContext":
        rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        if not 0 <= rank < world_size:
            raise ValueError(f"RANK={rank} must be in [0, WORLD_SIZE={world_size})")
        owns_group = False
        if world_size > 1 and not dist.is_initialized():
            # Probing a large dataset can take long; keep the default timeout generous.
            dist.init_process_group("gloo", rank=rank, world_size=world_size,
                                    timeout=datetime.timedelta(hours=6))
            owns_group = True
        return cls(rank, world_size, owns_group)

    def all_gather(self, obj) -> list:
        if self.world_size == 1:
            return [obj]
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            dist.destroy_process_group()
