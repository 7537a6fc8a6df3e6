"""Layout-independent checkpoints with torch.distributed.checkpoint (DCP).

A parameter is TP-sharded (megatron-core layers; its `ParamRole` says along which dim),
FSDP-sharded over dp_cp, held by one pipeline stage or duplicated on all of them
(conditioning). None of that should be
visible in a checkpoint. So every tensor is saved in one canonical form: its full
(single-process) value, under its single-process name, split in row chunks over the
ranks that hold it (the dp x cp x tp ranks of its pipeline stage, as a 1-D DTensor
`Shard(0)`). DCP writes each chunk once (duplicated conditioning chunks have the same
name and offsets on every stage, and DCP's planner keeps one writer), and any other
layout reads back the rows it needs. On load, each rank rebuilds the full value of its
parameters and cuts its own TP/FSDP shard out of it.

Cost: saving and loading materialise one full parameter at a time on the ranks of its
stage and all-gather it; what is kept is each rank's row chunk (1 / (dp x cp x tp) of
its stage, copied out so the full value is freed). Fine for checkpoint frequency.

AdamW state (`exp_avg`, `exp_avg_sq`, `step`) is saved the same way under
`optim.<param name>.<key>`, so a run resumed at another layout continues bit-for-bit.
EMA weights (`training.ema.EMA`), when given, go under `ema.<param name>`; a checkpoint
without them still loads (the EMA then keeps the weights it was built from).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from .tensor_parallel import param_role

if TYPE_CHECKING:
    from .engine import ParallelEngine

_STAGE_MESH = "dp_cp_tp"


def _stage_mesh(engine: "ParallelEngine"):
    """1-D mesh of the ranks holding this rank's pipeline stage(s). `_flatten` is
    idempotent (the same mesh comes back), and collective on first use: every rank
    reaches it through save/load/full_model_state_dict, which all ranks call."""
    return engine.groups.mesh["dp", "cp", "tp"]._flatten(_STAGE_MESH)


def _unique_params(engine: "ParallelEngine"):
    """(name, [copies]) for each logical parameter of this rank, in a fixed order."""
    seen: dict[str, list[torch.nn.Parameter]] = {}
    for name, p in engine.named_parameters():
        seen.setdefault(name, []).append(p)
    return list(seen.items())


def _full_value(engine: "ParallelEngine", param: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Unsharded `value` (the param or a tensor shaped like it): FSDP, then TP gather."""
    full = (value.full_tensor() if isinstance(value, DTensor) else value).detach()
    tp_group, dim = engine.groups.tp, param_role(param).tp_partition_dim
    if tp_group.size() > 1 and dim is not None:
        parts = [torch.empty_like(full) for _ in range(tp_group.size())]
        dist.all_gather(parts, full.contiguous(), group=tp_group)
        full = torch.cat(parts, dim=dim)
    return full


def _local_shard(engine: "ParallelEngine", param: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """This rank's piece of a full value, in the layout `param` has (inverse of _full_value)."""
    tp_group, dim = engine.groups.tp, param_role(param).tp_partition_dim
    if tp_group.size() > 1 and dim is not None:
        full = full.chunk(tp_group.size(), dim=dim)[dist.get_rank(tp_group)]
    if isinstance(param, DTensor):
        return distribute_tensor(full, param.device_mesh, param.placements,
                                 src_data_rank=None).to_local()
    return full


def _row_chunk(full: torch.Tensor, mesh) -> DTensor:
    """This rank's rows of `full` as a 1-D `Shard(0)` DTensor that owns its memory (a
    view would keep the whole full tensor alive while the state dict is held)."""
    view = distribute_tensor(full, mesh, [Shard(0)], src_data_rank=None)
    return DTensor.from_local(view.to_local().clone(), mesh, [Shard(0)], shape=view.shape,
                              stride=view.stride())


def _canonical(engine, mesh, param, value) -> DTensor:
    return _row_chunk(_full_value(engine, param, value).contiguous(), mesh)


@torch.no_grad()
def state_dict_for_save(engine: "ParallelEngine", optimizer=None, ema=None) -> dict:
    """{name: row-chunk DTensor} of the full model (and AdamW, EMA state); layout-free names."""
    mesh = _stage_mesh(engine)
    state: dict[str, object] = {}
    for name, copies in _unique_params(engine):
        param = copies[0]
        state[f"model.{name}"] = _canonical(engine, mesh, param, param)
        if ema is not None:
            state[f"ema.{name}"] = _canonical(engine, mesh, param, ema.shaped_like(name))
        opt_state = optimizer.state.get(param) if optimizer is not None else None
        for key, value in (opt_state or {}).items():
            if torch.is_tensor(value) and value.dim() > 0:
                state[f"optim.{name}.{key}"] = _canonical(engine, mesh, param, value)
            else:
                state[f"optim.{name}.{key}"] = torch.as_tensor(value).detach().clone().cpu()
    return state


def save(engine: "ParallelEngine", path: str, optimizer=None, ema=None) -> None:
    dcp.save(state_dict_for_save(engine, optimizer, ema), checkpoint_id=path)


def saved_keys(path: str) -> set[str]:
    """Every tensor name in the DCP checkpoint at `path` (reads only its metadata)."""
    return set(dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata)


def _full_shape(engine: "ParallelEngine", param: torch.Tensor) -> torch.Size:
    """Single-process shape of `param` (an FSDP DTensor's shape is already un-sharded)."""
    shape = list(param.shape)
    dim = param_role(param).tp_partition_dim
    if dim is not None:
        shape[dim] *= engine.groups.tp.size()
    return torch.Size(shape)


def _load_templates(engine, mesh, optimizer, ema: bool = False) -> dict:
    """Empty canonical tensors to load into (same keys as `state_dict_for_save`)."""
    def empty(shape):
        return _row_chunk(torch.empty(shape, device=mesh.device_type), mesh)

    state: dict[str, object] = {}
    for name, copies in _unique_params(engine):
        shape = _full_shape(engine, copies[0])
        state[f"model.{name}"] = empty(shape)
        if ema:
            state[f"ema.{name}"] = empty(shape)
        if optimizer is not None:
            state[f"optim.{name}.exp_avg"] = empty(shape)
            state[f"optim.{name}.exp_avg_sq"] = empty(shape)
            state[f"optim.{name}.step"] = torch.zeros((), dtype=torch.float32)
    return state


def _step_tensor(optimizer, param, step: torch.Tensor) -> torch.Tensor:
    """AdamW keeps `step` on CPU, except fused/capturable groups (on the param's device)."""
    group = next(g for g in optimizer.param_groups if any(p is param for p in g["params"]))
    on_device = group.get("fused") or group.get("capturable")
    return step.clone().to(param.device if on_device else "cpu")


@torch.no_grad()
def load(engine: "ParallelEngine", path: str, optimizer=None, ema=None) -> None:
    """Load a checkpoint saved at any layout into this engine (and its AdamW, EMA)."""
    mesh = _stage_mesh(engine)
    with_ema = ema is not None and any(k.startswith("ema.") for k in saved_keys(path))
    state = _load_templates(engine, mesh, optimizer, with_ema)
    dcp.load(state, checkpoint_id=path)
    for name, copies in _unique_params(engine):
        full = state[f"model.{name}"].full_tensor()
        for p in copies:
            _local_tensor(p).copy_(_local_shard(engine, p, full))
        if ema is not None:  # without saved EMA weights, start the average from these
            ema_full = state[f"ema.{name}"].full_tensor() if with_ema else full
            ema.shadow[name].copy_(_local_shard(engine, copies[0], ema_full))
        if optimizer is None:
            continue
        moments = {k: state[f"optim.{name}.{k}"].full_tensor() for k in ("exp_avg", "exp_avg_sq")}
        for p in copies:
            slot = optimizer.state[p]
            for key, full_moment in moments.items():
                slot[key] = torch.zeros_like(p.detach())
                _local_tensor(slot[key]).copy_(_local_shard(engine, p, full_moment))
            slot["step"] = _step_tensor(optimizer, p, state[f"optim.{name}.step"])


def _local_tensor(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


@torch.no_grad()
def full_model_state_dict(engine: "ParallelEngine") -> dict[str, torch.Tensor]:
    """Unsharded parameters with single-process names on global rank 0 ({} elsewhere)."""
    g = engine.groups
    keep = g.rank_in("tp") == 0 and g.rank_in("dp_cp") == 0
    mine = {}
    for name, copies in _unique_params(engine):
        full = _full_value(engine, copies[0], copies[0])
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
