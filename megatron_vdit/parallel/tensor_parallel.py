"""Tensor parallelism (+ sequence parallelism) and the TP side of gradient bookkeeping.

Tensor parallelism is megatron-core's: the model is built from its
ColumnParallelLinear / RowParallelLinear with `groups.tp`, heads laid out so a column
shard holds whole heads. Nothing here changes that path.

Sequence parallelism (SP) is ours. Megatron-core's SP path allocates its gather and
reduce-scatter buffers with `torch.cuda.current_device()` (in the linear autograd
function and in `tensor_parallel.mappings`), so it cannot run on CPU/gloo. Instead two
thin subclasses of megatron's linears, plugged into the block spec's `column_linear` /
`row_linear` slots, do the same math with device-agnostic autograd collectives:
column = all-gather tokens -> local matmul (backward: reduce-scatter), row = local matmul
-> reduce-scatter tokens (backward: all-gather). Between them the residual stream,
norms, modulation and gates run on S / TP tokens per rank. The caption projection's
K/V linear is also a column linear, so under SP the caption is split over TP along its
tokens (padded, the padding masked) and all-gathered by that linear.

Each parameter carries a `ParamRole` (an attribute, re-attached from the model's
`param_roles` dict whenever parameter objects may have been replaced): how it is split over TP, and whether its gradient is a partial
sum to be all-reduced over TP: the per-head q/k RMSNorm weights (each rank sees only its
heads) and, under SP, every replicated parameter (each rank sees only its tokens).
"""
from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear

# Submodules inside an attention module that act per (local) head.
_HEAD_LOCAL_MODULES = ("q_norm", "k_norm")


# --- autograd collectives along the token (first) dim --------------------------------
def all_gather_dim0(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    x = x.contiguous()
    out = x.new_empty((x.shape[0] * group.size(), *x.shape[1:]))
    dist.all_gather_into_tensor(out, x, group=group)
    return out


def reduce_scatter_dim0(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    x = x.contiguous()
    out = x.new_empty((x.shape[0] // group.size(), *x.shape[1:]))
    dist.reduce_scatter_tensor(out, x, group=group)
    return out


class _AllGatherTokens(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return all_gather_dim0(x, group)

    @staticmethod
    def backward(ctx, grad):
        return reduce_scatter_dim0(grad, ctx.group), None


class _ReduceScatterTokens(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return reduce_scatter_dim0(x, group)

    @staticmethod
    def backward(ctx, grad):
        return all_gather_dim0(grad, ctx.group), None


def all_gather_tokens(x_SBD: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """[S/n, B, D] -> [S, B, D]; backward reduce-scatters (the consumer is TP-partial)."""
    return _AllGatherTokens.apply(x_SBD, group)


def reduce_scatter_tokens(x_SBD: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Partial sums [S, B, D] -> reduced [S/n, B, D]; backward all-gathers."""
    return _ReduceScatterTokens.apply(x_SBD, group)


# --- sequence-parallel linears (block-spec backends) ---------------------------------
class SequenceParallelColumnLinear(ColumnParallelLinear):
    """ColumnParallelLinear whose input is split over TP along tokens: all-gather, matmul.

    Weights, init and checkpoint names are megatron's; only `forward` differs (no
    copy-to-TP-region: the gather's backward already sums the input gradient over TP).
    """

    def forward(self, input_, weight=None, runtime_gather_output=None):
        assert not self.gather_output and runtime_gather_output is None
        weight = self.weight if weight is None else weight
        bias = None if self.skip_bias_add else self.bias
        out = F.linear(all_gather_tokens(input_, self.tp_group), weight, bias)
        return out, (self.bias if self.skip_bias_add else None)


class SequenceParallelRowLinear(RowParallelLinear):
    """RowParallelLinear whose output is reduce-scattered over TP along tokens."""

    def forward(self, input_):
        assert self.input_is_parallel
        out = reduce_scatter_tokens(F.linear(input_, self.weight), self.tp_group)
        if self.skip_bias_add:
            return out, self.bias
        return (out + self.bias if self.bias is not None else out), None


# --- gradient roles -------------------------------------------------------------------
# Modules every pipeline stage keeps and recomputes from the batch (see vdit.py), so
# with PP > 1 each stage holds a partial gradient of their (replicated) parameters.
CONDITIONING_MODULES = ("timestep_embedder.", "ada_single.", "caption_projection.")


@dataclasses.dataclass(frozen=True)
class ParamRole:
    tp_partition_dim: int | None
    """Dim along which the parameter is split over TP; None when replicated."""
    tp_partial_grad: bool
    """Replicated over TP, but each rank's gradient is a partial sum (all-reduce it)."""
    pp_replicated: bool
    """Present on every pipeline stage (conditioning); each stage's grad is partial."""


def param_roles(model: nn.Module, sequence_parallel: bool) -> dict[str, ParamRole]:
    """FQN -> ParamRole for every parameter of a freshly built (unwrapped) model."""
    roles = {}
    for module_name, module in model.named_modules():
        head_local = module_name.rsplit(".", 1)[-1] in _HEAD_LOCAL_MODULES
        for pname, param in module.named_parameters(recurse=False):
            name = f"{module_name}.{pname}" if module_name else pname
            sharded = bool(getattr(param, "tensor_model_parallel", False))
            roles[name] = ParamRole(
                tp_partition_dim=getattr(param, "partition_dim", 0) if sharded else None,
                tp_partial_grad=not sharded and (sequence_parallel or head_local),
                pp_replicated=name.startswith(CONDITIONING_MODULES))
    return roles


def tag_params(model: nn.Module, roles: dict[str, ParamRole] | None = None) -> None:
    """Attach each parameter's role as `param.role` (which `param_role` reads), from
    `roles` or else from `model.param_roles` (set by `build_parallel_model`).

    Idempotent; re-run because wrapping (FSDP2's `fully_shard`) and copying (pipeline
    stages are deep copies) make new parameter objects. The finalize/clip/FSDP entry
    points re-tag by themselves.
    """
    roles = model.param_roles if roles is None else roles
    for name, param in model.named_parameters():
        param.role = roles[name]


def param_role(param: nn.Parameter) -> ParamRole:
    role = getattr(param, "role", None)
    if role is None:
        raise ValueError("parameter has no role: build the model with build_parallel_model "
                         "(and shard it with apply_data_parallel, which re-tags)")
    return role


def local_grad(param: nn.Parameter) -> torch.Tensor | None:
    """This rank's piece of `param.grad` (the local shard of an FSDP2 DTensor grad)."""
    grad = param.grad
    if grad is None:
        return None
    return grad.to_local() if hasattr(grad, "to_local") else grad


def all_reduce_sum(tensor: torch.Tensor, group: dist.ProcessGroup) -> None:
    """Sum `tensor` in place over `group`; nothing to do (no call at all) on a group of
    one, which every per-step reduction of a single-process run is (a gloo all-reduce
    over one rank still costs about 1.5 ms on CPU)."""
    if group.size() > 1:
        dist.all_reduce(tensor, group=group)


def allreduce_coalesced(tensors: list[torch.Tensor], group: dist.ProcessGroup) -> None:
    """Sum `tensors` in place over `group` with one all-reduce."""
    if not tensors or group.size() == 1:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, group=group)
    for t, piece in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(piece.view_as(t))


@torch.no_grad()
def gather_tp_param(param: torch.Tensor, tp_group: dist.ProcessGroup) -> torch.Tensor:
    """Full (un-TP-split, un-FSDP-sharded) value of a parameter, as a new tensor."""
    dim = param_role(param).tp_partition_dim
    value = param.full_tensor() if hasattr(param, "full_tensor") else param.detach()
    if dim is None or tp_group.size() == 1:
        return value.clone()
    pieces = [torch.empty_like(value) for _ in range(tp_group.size())]
    dist.all_gather(pieces, value.contiguous(), group=tp_group)
    return torch.cat(pieces, dim=dim)
