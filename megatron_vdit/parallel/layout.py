"""Parallel layout: validate a (TP, CP, PP, DP) layout and build its process groups once.

Rank order follows Megatron-LM's default "tp-cp-dp-pp": tensor parallel ranks are
adjacent (fastest varying, same node), then context, then data, then pipeline. Groups
come from a torch DeviceMesh so FSDP2 can shard over the flattened (dp, cp) mesh.
Everything downstream receives `ParallelGroups` explicitly; no global getters.

The layout and its validation need no torch (the training CLI checks a job before it
imports torch); torch is imported where groups are built, after the torch floor check.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
from typing import TYPE_CHECKING

from ..torch_floor import require_torch

if TYPE_CHECKING:
    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh

CP_COMM_TYPES = ("p2p", "a2a", "a2a+p2p")
CP_BACKENDS = ("native", "te")  # core attention under CP: ours or TransformerEngine's
ZERO_STAGES = (1, 2, 3)  # what FSDP2 keeps unsharded during a step (data_parallel.py)
PIPELINE_SCHEDULES = ("1f1b", "interleaved", "gpipe")


@dataclasses.dataclass(frozen=True)
class ParallelLayout:
    """Degrees of each parallel dimension; their product is the world size."""

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    context_parallel_size: int = 1
    data_parallel_size: int = 1
    cp_comm_type: str = "p2p"
    """p2p: ring attention; a2a: Ulysses; a2a+p2p: Ulysses inside, ring across."""
    ulysses_size: int | None = None
    """Ulysses degree for a2a+p2p (default: largest divisor of heads and CP size)."""
    sequence_parallel: bool = False
    num_layers_per_virtual_pipeline_stage: int | None = None

    @property
    def world_size(self) -> int:
        return (self.tensor_model_parallel_size * self.pipeline_model_parallel_size
                * self.context_parallel_size * self.data_parallel_size)

    @classmethod
    def from_world_size(cls, world_size: int, **degrees) -> "ParallelLayout":
        """Data parallel size is what remains of the world size (Megatron-LM's rule)."""
        model = (degrees.get("tensor_model_parallel_size", 1)
                 * degrees.get("pipeline_model_parallel_size", 1)
                 * degrees.get("context_parallel_size", 1))
        if model < 1 or world_size % model:
            raise ValueError(f"world size {world_size} is not divisible by TP x PP x CP = "
                             f"{model} (TP{degrees.get('tensor_model_parallel_size', 1)} x "
                             f"PP{degrees.get('pipeline_model_parallel_size', 1)} x "
                             f"CP{degrees.get('context_parallel_size', 1)})")
        return cls(data_parallel_size=world_size // model, **degrees)

    def validate(self, world_size: int, num_layers: int, num_attention_heads: int,
                 tokens_per_sample: int, schedule: str | None = None) -> None:
        """Raise ValueError naming the numbers; call before any group is created."""
        tp, pp, cp = (self.tensor_model_parallel_size, self.pipeline_model_parallel_size,
                      self.context_parallel_size)
        for name, value in dataclasses.asdict(self).items():
            if name.endswith("_size") and value is not None and value < 1:
                raise ValueError(f"{name}={value} must be >= 1")
        if self.world_size != world_size:
            raise ValueError(f"layout TP{tp} x CP{cp} x PP{pp} x DP{self.data_parallel_size} "
                             f"= {self.world_size} != world size {world_size}")
        if num_attention_heads % tp:
            raise ValueError(f"tensor parallel size {tp} does not divide "
                             f"num_attention_heads={num_attention_heads}")
        if self.cp_comm_type not in CP_COMM_TYPES:
            raise ValueError(f"cp_comm_type={self.cp_comm_type!r}; expected one of {CP_COMM_TYPES}")
        ulysses = self.ulysses_degree(num_attention_heads)
        if (num_attention_heads // tp) % ulysses:
            raise ValueError(f"Ulysses degree {ulysses} does not divide the "
                             f"{num_attention_heads // tp} heads per TP rank "
                             f"(num_attention_heads={num_attention_heads}, TP={tp})")
        if cp % ulysses:
            raise ValueError(f"Ulysses degree {ulysses} does not divide context_parallel_size={cp}")
        virtual = self.virtual_stages(num_layers, schedule)
        if num_layers % (pp * virtual):
            raise ValueError(f"num_layers={num_layers} cannot be split into {pp * virtual} "
                             f"pipeline stages (PP={pp}, virtual={virtual})")
        if self.sequence_parallel and tp == 1:
            raise ValueError("--sequence-parallel needs tensor_model_parallel_size > 1")
        if tokens_per_sample < cp * tp:
            raise ValueError(f"tokens_per_sample={tokens_per_sample} is smaller than CP x TP = "
                             f"{cp * tp}: some ranks would hold no tokens")

    def ulysses_degree(self, num_attention_heads: int) -> int:
        if self.cp_comm_type == "p2p":
            return 1
        if self.cp_comm_type == "a2a":
            return self.context_parallel_size
        if self.ulysses_size is not None:
            return self.ulysses_size
        heads = num_attention_heads // self.tensor_model_parallel_size
        return max(u for u in range(1, self.context_parallel_size + 1)
                   if self.context_parallel_size % u == 0 and heads % u == 0)

    def virtual_stages(self, num_layers: int, schedule: str | None = None) -> int:
        """Model chunks per pipeline rank under `schedule` (default: `default_schedule`)."""
        per_virtual = self.num_layers_per_virtual_pipeline_stage
        return num_virtual_stages(schedule or default_schedule(per_virtual), num_layers,
                                  self.pipeline_model_parallel_size, per_virtual)


def default_cp_comm_type(num_attention_heads: int, tensor_model_parallel_size: int,
                         context_parallel_size: int) -> str:
    """The fastest CP flavour the head count allows.

    Ulysses ("a2a") when the heads per TP rank divide over CP: two all-to-alls per
    attention and one full-sequence fused kernel, where the ring runs CP smaller kernels
    and CP - 1 KV exchanges. Otherwise the hybrid ("a2a+p2p") when some Ulysses degree
    > 1 divides both, and the ring ("p2p") when none does.
    """
    local_heads = num_attention_heads // tensor_model_parallel_size
    if local_heads % context_parallel_size == 0:
        return "a2a"
    return "a2a+p2p" if math.gcd(local_heads, context_parallel_size) > 1 else "p2p"


def default_schedule(layers_per_virtual_stage: int | None) -> str:
    """Megatron-LM's rule: --num-layers-per-virtual-pipeline-stage selects interleaving."""
    return "interleaved" if layers_per_virtual_stage is not None else "1f1b"


def num_virtual_stages(schedule: str, num_layers: int, pp_size: int,
                       layers_per_virtual_stage: int | None) -> int:
    """Model chunks per rank: the one rule, used by layout validation and the engine.
    Raises ValueError naming the numbers. Interleaving without
    `layers_per_virtual_stage` uses two chunks per rank where the layers allow."""
    if schedule not in PIPELINE_SCHEDULES:
        raise ValueError(f"unknown pipeline schedule {schedule!r}; expected one of "
                         f"{PIPELINE_SCHEDULES}")
    if pp_size > num_layers:
        raise ValueError(f"pipeline_model_parallel_size={pp_size} is larger than "
                         f"num_layers={num_layers}: some stages would hold no layer")
    if schedule != "interleaved":
        if layers_per_virtual_stage is not None:
            raise ValueError(f"num_layers_per_virtual_pipeline_stage={layers_per_virtual_stage}"
                             f" needs schedule='interleaved', got {schedule!r}")
        return 1
    if pp_size == 1:
        raise ValueError("the interleaved schedule (num_layers_per_virtual_pipeline_stage="
                         f"{layers_per_virtual_stage}) needs pipeline_model_parallel_size > 1")
    per_stage = num_layers // pp_size
    per_virtual = layers_per_virtual_stage or max(1, per_stage // 2)
    if per_virtual < 1 or per_stage % per_virtual or num_layers % pp_size:
        raise ValueError(f"num_layers={num_layers} over PP={pp_size} gives {per_stage} layers "
                         f"per stage, not divisible by num_layers_per_virtual_pipeline_stage="
                         f"{per_virtual}")
    return per_stage // per_virtual


@dataclasses.dataclass
class ParallelGroups:
    """Process groups of one rank, built once by `build_parallel_groups`."""

    layout: ParallelLayout
    mesh: DeviceMesh
    """Dims ("pp", "dp", "cp", "tp"), plus the flattened "dp_cp"."""
    tp: dist.ProcessGroup
    cp: dist.ProcessGroup
    pp: dist.ProcessGroup
    dp: dist.ProcessGroup
    dp_cp: dist.ProcessGroup
    """Gradient-reduction group: data and context parallel ranks of one model shard."""
    cp_ulysses: dist.ProcessGroup | None = None
    """All-to-all (Ulysses) part of the CP group: `ulysses_degree` adjacent CP ranks."""
    cp_ring: dist.ProcessGroup | None = None
    """Ring (p2p) part of the CP group: CP ranks with the same Ulysses index."""
    replica: dist.ProcessGroup | None = None
    """The pp x cp x tp ranks of this rank's data-parallel replica, which train on the
    same batch (None when that is this rank alone): its first rank reads the batch and
    broadcasts it (`training.data.ReplicaBroadcastSource`)."""

    def rank_in(self, name: str) -> int:
        import torch.distributed as dist
        return dist.get_rank(getattr(self, name))


def init_distributed(backend: str | None = None) -> tuple[int, int]:
    """Initialise torch.distributed from torchrun's env, or as a world of one.

    A world of one still gets a real (gloo) process group so single-process runs take
    the same code path as parallel ones.
    """
    require_torch()  # fail here, with the fix, rather than deep inside a parallel step
    import torch
    import torch.distributed as dist
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        # One GPU per process: without this every rank of a node would use GPU 0.
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    timeout = datetime.timedelta(minutes=int(os.environ.get("VDIT_PG_TIMEOUT_MIN", "30")))
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        dist.init_process_group(backend, timeout=timeout)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                timeout=timeout)
    return dist.get_rank(), dist.get_world_size()


def build_parallel_groups(layout: ParallelLayout, device_type: str = "cpu", *,
                          num_attention_heads: int | None = None) -> ParallelGroups:
    """Create every group of `layout` (call on all ranks, after `layout.validate`).

    `num_attention_heads` fixes the default Ulysses degree of a2a+p2p (not needed when
    `layout.ulysses_size` is set, nor for other comm types).
    """
    require_torch()
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    world = dist.get_world_size()
    if layout.world_size != world:
        raise ValueError(f"layout world size {layout.world_size} != torch.distributed world "
                         f"size {world}")
    if (layout.cp_comm_type == "a2a+p2p" and layout.ulysses_size is None
            and num_attention_heads is None):
        raise ValueError("cp_comm_type='a2a+p2p' without ulysses_size: pass "
                         "num_attention_heads to build_parallel_groups")
    mesh = init_device_mesh(
        device_type,
        (layout.pipeline_model_parallel_size, layout.data_parallel_size,
         layout.context_parallel_size, layout.tensor_model_parallel_size),
        mesh_dim_names=("pp", "dp", "cp", "tp"),
    )
    mesh["dp", "cp"]._flatten("dp_cp")
    cp_ulysses, cp_ring = _build_cp_subgroups(layout, mesh, num_attention_heads)
    replica = None
    if world > layout.data_parallel_size:
        # Rank lists in (pp, cp, tp) order, so the first is the replica's pp/cp/tp rank 0.
        replicas = mesh.mesh.transpose(0, 1).reshape(layout.data_parallel_size, -1).tolist()
        replica, _ = dist.new_subgroups_by_enumeration(replicas)
    return ParallelGroups(layout=layout, mesh=mesh, tp=mesh.get_group("tp"),
                          cp=mesh.get_group("cp"), pp=mesh.get_group("pp"),
                          dp=mesh.get_group("dp"), dp_cp=mesh.get_group("dp_cp"),
                          cp_ulysses=cp_ulysses, cp_ring=cp_ring, replica=replica)


def _build_cp_subgroups(layout: ParallelLayout, mesh: DeviceMesh,
                        num_attention_heads: int | None):
    """(ulysses, ring) groups of this rank for its cp_comm_type; None where unused.

    CP rank c sits at Ulysses index c % U and ring index c // U, so a Ulysses group is U
    adjacent CP ranks (fast links) and its all-to-all yields a contiguous token range.
    """
    cp = layout.context_parallel_size
    if cp == 1:
        return None, None
    if layout.cp_comm_type == "p2p":
        return None, mesh.get_group("cp")
    if layout.cp_comm_type == "a2a":
        return mesh.get_group("cp"), None
    import torch.distributed as dist
    ulysses = layout.ulysses_degree(num_attention_heads)
    cp_groups = mesh.mesh.permute(0, 1, 3, 2).reshape(-1, cp).tolist()  # (pp, dp, tp) x cp
    ulysses_lists = [ranks[i:i + ulysses] for ranks in cp_groups for i in range(0, cp, ulysses)]
    ring_lists = [ranks[j::ulysses] for ranks in cp_groups for j in range(ulysses)]
    ulysses_group, _ = dist.new_subgroups_by_enumeration(ulysses_lists)
    ring_group, _ = dist.new_subgroups_by_enumeration(ring_lists)
    return ulysses_group, ring_group
