"""The accelerators the planner knows: peak dense BF16 FLOP/s, memory and bandwidths.

Figures are the vendors' datasheet numbers (docs/planning.md, "GPU table", lists the
sources): dense BF16 tensor-core throughput (the datasheets' "with sparsity" figures
halved), HBM capacity as the device reports it, NVLink bandwidth per GPU in one
direction (datasheets quote both directions summed) and the inter-node network per
GPU (one 200 or 400 Gb/s NIC per GPU in the vendors' reference nodes).
"""
from __future__ import annotations

import dataclasses

GB = 1e9


@dataclasses.dataclass(frozen=True)
class GpuSpec:
    name: str
    peak_bf16_flops: float
    """Dense BF16 tensor-core FLOP/s."""
    memory_gib: float
    """HBM as the device reports it (GiB)."""
    nvlink_bytes_per_s: float
    """Intra-node bandwidth per GPU, one direction."""
    internode_bytes_per_s: float
    """Network bandwidth per GPU between nodes, one direction."""
    gpus_per_node: int = 8


GPUS: dict[str, GpuSpec] = {g.name: g for g in (
    GpuSpec("a100-80gb", 312e12, 80.0, 300 * GB, 25 * GB),
    GpuSpec("h100-80gb", 989e12, 79.6, 450 * GB, 50 * GB),
    GpuSpec("h200-141gb", 989e12, 140.4, 450 * GB, 50 * GB),
    GpuSpec("b200-192gb", 2250e12, 178.0, 900 * GB, 50 * GB),
)}


def gpu_spec(name: str) -> GpuSpec:
    """The table row for ``name``; ValueError naming the known types otherwise."""
    key = name.lower()
    if key not in GPUS:
        raise ValueError(f"--gpu {name!r}: unknown GPU type; known: {', '.join(GPUS)} "
                         "(docs/planning.md, 'GPU table')")
    return GPUS[key]
