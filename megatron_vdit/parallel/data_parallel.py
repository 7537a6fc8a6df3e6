"""Data parallelism (FSDP2 over the flattened DP x CP mesh), gradient finishing, clipping.

Gradient reduction, end to end (one optimizer step):
1. Every CP rank (and, under SP, every TP rank) computes the *same* loss on the full
   prediction (`gather_tokens` all-gathers it; its backward keeps only this rank's
   tokens), so each rank's gradients are the contribution of its own tokens.
2. FSDP2 reduce-scatters gradients over `dp_cp` with divide factor DP: a sum over CP
   (partial contributions of one sample set) and a mean over DP (different samples).
3. `finalize_grads` then sums the TP-partial gradients over TP (per-head q/k norms;
   under SP every replicated parameter). With PP > 1 the pipeline code also sums the
   conditioning modules' gradients over stages (`pipeline.sync_duplicated_grads`):
   every stage recomputes the conditioning, so each holds a partial gradient.
4. `clip_grad_norm_` computes the global norm, counting each element of the full model
   once: TP shards summed over TP, replicated parameters once, FSDP shards summed over
   DP x CP, stages summed over PP, PP-replicated conditioning counted on stage 0 only.
"""
from __future__ import annotations

import math


import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Shard

from .layout import ZERO_STAGES, ParallelGroups
from .tensor_parallel import (all_reduce_sum, allreduce_coalesced, local_grad, param_role,
                              tag_params)


def apply_data_parallel(model: nn.Module, groups: ParallelGroups, *, zero_stage: int = 2,
                        param_dtype: torch.dtype | None = None,
                        reduce_dtype: torch.dtype | None = None) -> nn.Module:
    """Shard parameters, gradients and optimizer state over `groups.mesh["dp_cp"]`.

    The fp32 master weights and the AdamW moments are sharded at every stage; the stage
    decides what lives unsharded during a step (P = the stage's parameters, n = DP x CP,
    compute dtype c bytes, e.g. 2 for bf16; see docs/parallelism.md for the table):
    - 1 (Megatron's distributed optimizer): parameters all-gathered once per step and
      kept for every microbatch; gradients accumulate unsharded in fp32 over the
      microbatches and are reduce-scattered once (`set_microbatch_sync` drives this).
      Unsharded: c*P + 4*P. Fewest collectives.
    - 2: parameters kept gathered from a microbatch's forward to its backward, freed
      after it (`reshard_after_forward=False`); gradients reduce-scattered every
      microbatch into sharded fp32 accumulators. Unsharded: c*P (one microbatch).
    - 3: every block's parameters freed after its forward and all-gathered again for its
      backward. Unsharded: about two blocks' worth (the one computing, the prefetched).
    `param_dtype=torch.bfloat16` runs compute in bf16 with float32 master weights;
    `reduce_dtype` is the gradient-reduction dtype (float32 recommended). Each block is
    its own FSDP unit (its all-gather overlaps the previous block's compute); the root
    holds embeddings, conditioning and the final layer. Call after `apply_recompute`,
    before building the optimizer. A no-op when DP x CP == 1 and no mixed precision is
    asked for. Blocks a pipeline stage deleted are simply absent.
    """
    if zero_stage not in ZERO_STAGES:
        raise ValueError(f"zero_stage={zero_stage}; expected one of {ZERO_STAGES}")
    mesh = groups.mesh["dp_cp"]
    if mesh.size() == 1 and param_dtype is None and reduce_dtype is None:
        return model
    # No FSDP input casting anywhere: it would round the float32 timesteps to bf16
    # (999 -> 1000) and the RoPE tables. The model casts latent and caption to its
    # weights' dtype itself; blocks take activations as produced.
    block_policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype,
                                        cast_forward_inputs=False)
    for block in model.blocks.values():
        fully_shard(block, mesh=mesh, reshard_after_forward=zero_stage == 3,
                    mp_policy=block_policy)
    # The root's parameters are needed again at the start of backward: never reshard.
    fully_shard(model, mesh=mesh, reshard_after_forward=False,
                mp_policy=MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=reduce_dtype,
                                               cast_forward_inputs=False))
    gloo = dist.get_backend(groups.dp_cp) == "gloo"
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # Sum over CP (partial contributions), mean over DP (different samples).
            module.set_gradient_divide_factor(float(groups.layout.data_parallel_size))
            # Gloo has no pre-multiplied sum: reduce with SUM and scale separately.
            module.set_force_sum_reduction_for_comms(gloo)
    tag_params(model)  # fully_shard replaced the parameter objects
    return model


def fsdp_local_rows(param: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(this rank's local tensor, its first row in the unsharded tensor) of a parameter
    FSDP2 sharded here (`Shard(0)`, torch.chunk sizes); a plain tensor is all of itself."""
    if not isinstance(param, DTensor):
        return param, 0
    assert param.placements == (Shard(0),), param.placements
    chunk = -(-param.shape[0] // param.device_mesh.size())
    return param.to_local(), min(param.device_mesh.get_local_rank() * chunk, param.shape[0])


def set_microbatch_sync(model: nn.Module, zero_stage: int, last_microbatch: bool) -> None:
    """Before a microbatch's backward outside a pipeline schedule: under ZeRO-1 keep the
    gathered parameters and the unsharded gradients until the last microbatch, which
    reduce-scatters once; ZeRO-2/3 reduce-scatter every microbatch (FSDP's default)."""
    if zero_stage == 1 and isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(last_microbatch)
        model.set_reshard_after_backward(last_microbatch)


def reshard(model: nn.Module) -> None:
    """Free gathered parameters after a forward-only pass: FSDP frees a unit it keeps
    gathered for backward (`reshard_after_forward=False`) only when backward runs."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def _chunks(model_or_chunks) -> list[nn.Module]:
    return list(model_or_chunks) if isinstance(model_or_chunks, (list, tuple)) else [model_or_chunks]


def finalize_grads(model_or_chunks, groups: ParallelGroups) -> None:
    """Sum the TP-partial gradients over TP, after the last backward of a step.

    Takes the model or the list of this rank's model chunks (virtual pipeline stages).
    The conditioning gradients duplicated over pipeline stages are PP's business
    (`pipeline.sync_duplicated_grads`); call that too when PP > 1, in either order.
    """
    chunks = _chunks(model_or_chunks)
    for chunk in chunks:
        if groups.dp_cp.size() > 1 and not isinstance(chunk, FSDPModule):
            raise ValueError(f"DP x CP = {groups.dp_cp.size()} but the model is not sharded: "
                             "call apply_data_parallel (it is the DP/CP gradient reduction)")
        tag_params(chunk)
    allreduce_coalesced([local_grad(p) for chunk in chunks for p in chunk.parameters()
                         if p.grad is not None and param_role(p).tp_partial_grad], groups.tp)


def _params_counted_in_norm(model_params, groups: ParallelGroups):
    """(param, counted) pairs: PP-replicated parameters count once, on PP rank 0."""
    if isinstance(model_params, nn.Module) or (
            isinstance(model_params, (list, tuple)) and model_params
            and isinstance(model_params[0], nn.Module)):
        chunks = _chunks(model_params)
        for chunk in chunks:
            tag_params(chunk)
        named = [(n, p) for chunk in chunks for n, p in chunk.named_parameters()]
    else:
        named = [(None, p) for p in model_params]  # assumed to be a single chunk
    seen, pairs = set(), []
    for name, p in named:
        if p.grad is None:
            continue
        counted = True
        if param_role(p).pp_replicated:
            counted = groups.pp.rank() == 0 and (name is None or name not in seen)
            seen.add(name)
        pairs.append((p, counted))
    return pairs


@torch.no_grad()
def clip_grad_norm_(model_params, max_norm: float, groups: ParallelGroups,
                    norm_type: float = 2.0) -> torch.Tensor:
    """Scale gradients so their global 2-norm is at most `max_norm`; return that norm.

    `model_params`: the model, the list of this rank's model chunks, or an iterable of
    parameters (of one chunk), built by `build_parallel_model` so each carries its role.
    Call after `finalize_grads`. Every element of the full model counts once (see the
    module docstring).
    """
    if norm_type != 2.0:
        raise ValueError(f"norm_type={norm_type}: only the 2-norm is supported")
    pairs = _params_counted_in_norm(model_params, groups)
    if not pairs:
        raise ValueError("clip_grad_norm_: no parameter has a gradient")
    fsdp = {hasattr(p.grad, "to_local") for p, _ in pairs}
    assert len(fsdp) == 1, "mixed FSDP-sharded and plain gradients"
    sq_sharded_replicated = torch.zeros(2, dtype=torch.float64, device=pairs[0][0].device)
    for p, counted in pairs:
        if counted:
            replicated = param_role(p).tp_partition_dim is None
            sq_sharded_replicated[int(replicated)] += local_grad(p).double().pow(2).sum()
    all_reduce_sum(sq_sharded_replicated[:1], groups.tp)
    total_sq = sq_sharded_replicated.sum()
    if fsdp.pop():  # each dp_cp rank holds a disjoint shard of every parameter
        all_reduce_sum(total_sq, groups.dp_cp)
    all_reduce_sum(total_sq, groups.pp)
    total = total_sq.sqrt().float()
    if math.isfinite(max_norm):  # max_norm=inf: only measure (the trainer's --clip-grad 0)
        clip_coef = (max_norm / (total + 1e-6)).clamp(max=1.0)  # no host sync
        torch._foreach_mul_([local_grad(p) for p, _ in pairs], clip_coef)
    return total
