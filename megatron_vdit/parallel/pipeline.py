"""Pipeline parallelism with torch.distributed.pipelining (1F1B, interleaved, GPipe).

Stages are made torchtitan-style by deleting what a stage does not need from a full
`VideoDiT`: stage 0 keeps `patch_embed`, the last stage keeps `final_layer` (and computes
the loss), and every stage keeps only its slice of `blocks` (keys stay the global layer
index, so parameter names and checkpoints never depend on the layout).

Conditioning is not sent through the pipe. Every stage keeps its own copy of the small
conditioning modules (`CONDITIONING_MODULES`) and recomputes timestep/caption
conditioning from the batch: the schedule hands the microbatched timesteps, caption and
mask to every stage as keyword arguments (`schedule.step(..., **kwargs)` chunks kwargs
like args and passes them to all stages, whatever their position), so each stage sees
exactly the microbatch it is processing. Only hidden states [S, b, D] travel.

The duplicated conditioning parameters receive a partial gradient on each stage (from
the blocks of that stage, plus the final layer on the last). `sync_duplicated_grads`
sums them over the local virtual stages and the PP group, so every
copy holds the full gradient; with identical initialisation and identical optimizer
updates the copies stay bit-identical, the grad-norm counts them once (PP rank 0, first
local stage), and checkpoints store one of them (same name on every stage). Summing
beats "own once and broadcast": no extra step after the optimizer, and the optimizer
state stays local (a few MB duplicated per stage).

Why not megatron-core's schedules: they hard-code CUDA streams/devices, so they would not
run on CPU/gloo where the equivalence tests live; torch.distributed.pipelining runs on
both with the same code.

Shape legend: B batch, b microbatch, C channels, F/H/W latent frames/height/width,
S video tokens (local to the CP rank), D hidden size.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage
from torch.distributed.pipelining.schedules import (Schedule1F1B, ScheduleGPipe,
                                                    ScheduleInterleaved1F1B)
from torch.distributed.tensor import DTensor

from .layout import PIPELINE_SCHEDULES, num_virtual_stages  # noqa: F401  (public API)
from .tensor_parallel import CONDITIONING_MODULES, allreduce_coalesced

# The virtual-stage rule lives with the layout (validated before any group exists).
SCHEDULES = PIPELINE_SCHEDULES


def local_stage_ids(pp_rank: int, pp_size: int, virtual: int) -> list[int]:
    """Looped placement: rank r runs stages r, r + PP, r + 2 PP, ... (Megatron's order)."""
    return [pp_rank + v * pp_size for v in range(virtual)]


def stage_layers(stage_id: int, num_stages: int, num_layers: int) -> range:
    if num_layers % num_stages:
        raise ValueError(f"num_layers={num_layers} is not divisible into {num_stages} "
                         f"pipeline stages")
    per = num_layers // num_stages
    return range(stage_id * per, (stage_id + 1) * per)


def _shared_attributes(model: nn.Module) -> dict[int, object]:
    """deepcopy memo that shares every non-tensor attribute (configs, process groups,
    token sharding): a stage copies parameters and buffers, never communicators."""
    memo = {}
    for module in model.modules():
        for value in vars(module).values():
            if not isinstance(value, (dict, set, list, torch.Tensor, nn.Module)):
                memo[id(value)] = value
    return memo


def split_stage_modules(model: nn.Module, stage_ids: list[int], num_stages: int) -> list[nn.Module]:
    """Cut `model` (a full VideoDiT) into this rank's stage modules.

    Each block moves (not copied) to the stage that owns it; the small remaining modules
    (conditioning, patch embedding, final layer) are deep-copied per stage, then what the
    stage does not own is deleted. `model` must not be used afterwards.
    """
    blocks = model.blocks
    model.blocks = nn.ModuleDict()
    stages = []
    for sid in stage_ids:
        stage = copy.deepcopy(model, memo=_shared_attributes(model))
        stage.blocks = nn.ModuleDict({str(i): blocks[str(i)] for i in
                                      stage_layers(sid, num_stages, len(blocks))})
        if sid != 0:
            stage.patch_embed = None
        if sid != num_stages - 1:
            stage.final_layer = None
        stages.append(stage)
    return stages


def is_duplicated(param_name: str) -> bool:
    """Whether a parameter lives on every pipeline stage (conditioning modules)."""
    return param_name.startswith(CONDITIONING_MODULES)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def _summed_local_grad(copies: list[nn.Parameter]) -> torch.Tensor:
    """Sum of the (local shards of the) grads of one parameter's local copies."""
    grads = [_local(p.grad) for p in copies if p.grad is not None]
    if not grads:
        return torch.zeros_like(_local(copies[0].detach()))
    return torch.stack(grads).sum(0)


def sync_duplicated_grads(stage_modules: list[nn.Module], pp_group: dist.ProcessGroup) -> None:
    """Sum the conditioning grads over local virtual stages and the PP group, in place.

    Afterwards every copy of a duplicated parameter holds the full gradient (the same
    one the single-process model would get), so all copies take identical steps.
    """
    named = [dict(m.named_parameters()) for m in stage_modules]
    names = [n for n in named[0] if is_duplicated(n)]
    if not names or (len(stage_modules) == 1 and pp_group.size() == 1):
        return
    copies = {name: [params[name] for params in named] for name in names}
    totals = [_summed_local_grad(copies[name]) for name in names]
    allreduce_coalesced(totals, pp_group)  # one collective for all of them
    for name, total in zip(names, totals):
        for param in copies[name]:
            if param.grad is not None:
                _local(param.grad).copy_(total)
            elif isinstance(param, DTensor):
                param.grad = DTensor.from_local(total.clone(), param.device_mesh,
                                                param.placements, shape=param.shape,
                                                stride=param.stride())
            else:
                param.grad = total.clone()


def build_schedule(stage_modules: list[nn.Module], stage_ids: list[int], num_stages: int,
                   pp_group: dist.ProcessGroup, device: torch.device, kind: str,
                   num_microbatches: int, loss_fn: Callable | None,
                   stage_io: Callable[[int], tuple[torch.Tensor, torch.Tensor]]):
    """A schedule over this rank's stages, with static P2P shapes from `stage_io`.

    `stage_io(stage_id) -> (example_input, example_output)` (meta tensors of one
    microbatch). Static shapes matter: dynamic shape inference would run a real
    forward/backward outside the schedule and leave gradients behind. Gradients are
    not scaled by the schedule (`scale_grads=False`): the loss function already carries
    the 1 / (global element count) factor.
    """
    pp = pp_group.size()
    stages = []
    for module, sid in zip(stage_modules, stage_ids):
        example_in, example_out = stage_io(sid)
        stages.append(PipelineStage(module, sid, num_stages, device, input_args=example_in,
                                    output_args=example_out, group=pp_group))
    if kind == "interleaved":
        rounds = max(1, num_microbatches // pp)  # torch's flexible interleaving rule
        if num_microbatches % rounds:
            raise ValueError(f"interleaved schedule: num_microbatches={num_microbatches} is "
                             f"not a multiple of {rounds} rounds of PP={pp}; use at most PP "
                             f"or a multiple of PP")
        return ScheduleInterleaved1F1B(stages, num_microbatches, loss_fn=loss_fn,
                                       scale_grads=False)
    cls = Schedule1F1B if kind == "1f1b" else ScheduleGPipe
    return cls(stages[0], num_microbatches, loss_fn=loss_fn, scale_grads=False)
