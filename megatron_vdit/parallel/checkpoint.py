"""Layout-independent checkpoints with torch.distributed.checkpoint (DCP), no gathers.

A parameter is TP-sharded (megatron-core layers; its `ParamRole` says along which dim),
FSDP-sharded over dp_cp, held by one pipeline stage or duplicated on all of them
(conditioning). None of that should be visible in a checkpoint, and none of it should
cost communication to save. So every rank hands DCP the tensors it already holds (its
local shard of each parameter, AdamW moment and EMA weight), wrapped as a DTensor that
says where that shard sits in the full single-process tensor: on the 2-D mesh
("tp", "dp_cp") of its pipeline stage, with placements [Shard(d) or Replicate(),
Shard(0)] (TP split first, then FSDP's row split of each TP slice, which is exactly how
the shards nest). The names are the single-process names and the shapes the full
shapes. DCP writes each chunk once (replicated chunks have the same name and offsets
on every TP rank and stage, and DCP's planner keeps one writer) straight from the
parameter's memory: nothing is gathered, copied or materialised at full size. Loading
builds the same kind of DTensors for the loading layout and lets DCP read, from
whatever chunks the file holds, exactly the rows and columns each rank needs, so a
checkpoint saved at one layout loads at any other (checkpoints written by the earlier
row-chunk format load too: names and full shapes are the same).

`async_save` stages the shards to CPU memory and writes them in a background thread,
on a gloo group of its own (so its collectives never interleave with training's); the
returned future says when the files are complete. Staging copies, so training may
change the parameters as soon as it returns.

AdamW state (`exp_avg`, `exp_avg_sq`, `step`) is saved the same way under
`optim.<param name>.<key>`, so a run resumed at another layout continues bit-for-bit.
EMA weights (`training.ema.EMA`), when given, go under `ema.<param name>`; a checkpoint
without them still loads (the EMA then keeps the weights it was built from).
"""
from __future__ import annotations

from concurrent.futures import Future
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard

from .tensor_parallel import param_role

if TYPE_CHECKING:
    from .engine import ParallelEngine


def _stage_mesh(engine: "ParallelEngine") -> DeviceMesh:
    """2-D mesh ("tp", "dp_cp") of the ranks holding this rank's pipeline stage(s).

    Only the coordinates are used (DCP computes each shard's global offsets from them),
    so no process groups are created. dp_cp is flattened row-major from (dp, cp), as
    FSDP's mesh is, so a rank's coordinate there is its FSDP shard index.
    """
    groups = engine.groups
    cached = getattr(groups, "_checkpoint_mesh", None)
    if cached is None:
        world = groups.mesh.mesh  # ranks, dims (pp, dp, cp, tp)
        pp, dp, cp, tp = world.shape
        stages = world.permute(0, 3, 1, 2).reshape(pp, tp, dp * cp)
        cached = DeviceMesh(groups.mesh.device_type, stages[groups.rank_in("pp")],
                            mesh_dim_names=("tp", "dp_cp"), _init_backend=False)
        groups._checkpoint_mesh = cached
    return cached


def _unique_params(engine: "ParallelEngine"):
    """(name, [copies]) for each logical parameter of this rank, in a fixed order."""
    seen: dict[str, list[torch.nn.Parameter]] = {}
    for name, p in engine.named_parameters():
        seen.setdefault(name, []).append(p)
    return list(seen.items())


def _local_tensor(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _full_shape(engine: "ParallelEngine", param: torch.Tensor) -> torch.Size:
    """Single-process shape of `param` (an FSDP DTensor's shape is already un-sharded)."""
    shape = list(param.shape)
    dim = param_role(param).tp_partition_dim
    if dim is not None:
        shape[dim] *= engine.groups.tp.size()
    return torch.Size(shape)


def _placed(engine: "ParallelEngine", mesh: DeviceMesh, param: torch.Tensor,
            local: torch.Tensor) -> DTensor:
    """`local` (this rank's shard of a tensor laid out like `param`) as a DTensor of the
    full single-process tensor: a view, no copy and no communication."""
    dim = param_role(param).tp_partition_dim
    fsdp = isinstance(param, DTensor)
    if fsdp:
        assert param.placements == (Shard(0),), param.placements
    shape = _full_shape(engine, param)
    return DTensor.from_local(local, mesh,
                              [Replicate() if dim is None else Shard(dim),
                               Shard(0) if fsdp else Replicate()],
                              run_check=False, shape=shape,
                              stride=torch.empty(shape, device="meta").stride())


@torch.no_grad()
def state_dict_for_save(engine: "ParallelEngine", optimizer=None, ema=None) -> dict:
    """{name: DTensor} of the model (and AdamW, EMA state) with layout-free names; every
    tensor is a view of what this rank holds."""
    mesh = _stage_mesh(engine)
    state: dict[str, object] = {}
    for name, copies in _unique_params(engine):
        param = copies[0]
        state[f"model.{name}"] = _placed(engine, mesh, param, _local_tensor(param).detach())
        if ema is not None:
            shadow = ema.shadow[name]
            state[f"ema.{name}"] = _placed(engine, mesh, param,
                                           shadow if shadow.dtype == param.dtype
                                           else shadow.to(param.dtype))
        opt_state = optimizer.state.get(param) if optimizer is not None else None
        for key, value in (opt_state or {}).items():
            if torch.is_tensor(value) and value.dim() > 0:
                state[f"optim.{name}.{key}"] = _placed(engine, mesh, param, _local_tensor(value))
            else:
                state[f"optim.{name}.{key}"] = torch.as_tensor(value).detach().clone().cpu()
    return state


def save(engine: "ParallelEngine", path: str, optimizer=None, ema=None) -> None:
    dcp.save(state_dict_for_save(engine, optimizer, ema), checkpoint_id=path)


def async_save(engine: "ParallelEngine", path: str, optimizer=None, ema=None) -> Future:
    """Start writing a checkpoint in the background; the future completes when this
    rank's files are written and DCP's metadata is committed (collective: every rank
    calls it, and every rank must wait for its future before the checkpoint is used)."""
    groups = engine.groups
    group = getattr(groups, "_async_checkpoint_group", None)
    if group is None:  # collective, on first use only; gloo: DCP stages to CPU memory
        group = groups._async_checkpoint_group = dist.new_group(backend="gloo")
    return dcp.async_save(state_dict_for_save(engine, optimizer, ema), checkpoint_id=path,
                          process_group=group)


def saved_keys(path: str) -> set[str]:
    """Every tensor name in the DCP checkpoint at `path` (reads only its metadata)."""
    return set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)


def _step_tensor(optimizer, param, step: torch.Tensor) -> torch.Tensor:
    """AdamW keeps `step` on CPU, except fused/capturable groups (on the param's device)."""
    group = next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))
    on_device = group.get("fused") or group.get("capturable")
    return step.clone().to(param.device if on_device else "cpu")


@torch.no_grad()
def load(engine: "ParallelEngine", path: str, optimizer=None, ema=None) -> None:
    """Load a checkpoint saved at any layout into this engine (and its AdamW, EMA).

    DCP reads straight into this rank's parameters, moments and EMA shards (the
    templates below are views of them); copies of a parameter held by several local
    chunks (conditioning under virtual pipeline stages) are then filled from the first.
    """
    mesh = _stage_mesh(engine)
    with_ema = ema is not None and any(k.startswith("ema.") for k in saved_keys(path))
    state: dict[str, object] = {}
    for name, copies in _unique_params(engine):
        param = copies[0]
        state[f"model.{name}"] = _placed(engine, mesh, param, _local_tensor(param).detach())
        if with_ema:
            state[f"ema.{name}"] = _placed(engine, mesh, param,
                                           torch.empty_like(_local_tensor(param)))
        if optimizer is not None:
            slot = optimizer.state[param]
            for key in ("exp_avg", "exp_avg_sq"):
                if key not in slot:
                    slot[key] = torch.zeros_like(param.detach())
                state[f"optim.{name}.{key}"] = _placed(engine, mesh, param, _local_tensor(slot[key]))
            state[f"optim.{name}.step"] = torch.zeros((), dtype=torch.float32)
    dcp.load(state, checkpoint_id=path)
    for name, copies in _unique_params(engine):
        first = _local_tensor(copies[0])
        for p in copies[1:]:
            _local_tensor(p).copy_(first)
        if ema is not None:  # without saved EMA weights, start the average from these
            ema.shadow[name].copy_(state[f"ema.{name}"].to_local() if with_ema else first)
        if optimizer is None:
            continue
        slot = optimizer.state[copies[0]]
        slot["step"] = _step_tensor(optimizer, copies[0], state[f"optim.{name}.step"])
        for p in copies[1:]:
            optimizer.state[p].update({k: v.clone() for k, v in slot.items()})


def _full_value(engine: "ParallelEngine", param: torch.Tensor) -> torch.Tensor:
    """Unsharded value of `param`: FSDP, then TP gather (collective over its stage)."""
    full = (param.full_tensor() if isinstance(param, DTensor) else param).detach()
    tp_group, dim = engine.groups.tp, param_role(param).tp_partition_dim
    if tp_group.size() > 1 and dim is not None:
        parts = [torch.empty_like(full) for _ in range(tp_group.size())]
        dist.all_gather(parts, full.contiguous(), group=tp_group)
        full = torch.cat(parts, dim=dim)
    return full


@torch.no_grad()
def full_model_state_dict(engine: "ParallelEngine") -> dict[str, torch.Tensor]:
    """Unsharded parameters with single-process names on global rank 0 ({} elsewhere).

    For export and tests, not checkpoints: it gathers every parameter."""
    g = engine.groups
    keep = g.rank_in("tp") == 0 and g.rank_in("dp_cp") == 0
    mine = {}
    for name, copies in _unique_params(engine):
        full = _full_value(engine, copies[0])
        if keep:
            mine[name] = full.detach().cpu().clone()
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(mine, gathered, dst=0)
    if dist.get_rank() != 0:
        return {}
    merged: dict[str, torch.Tensor] = {}
    for part in gathered:
        for name, value in part.items():
            merged.setdefault(name, value)
    return merged
