"""Apply parallelism to the Cross-DiT: the entry point every trainer and recipe uses.

Fixed order (torchtitan's): build with TP / SP / CP -> (split into pipeline stages) ->
`apply_recompute` -> `apply_data_parallel` -> optimizer. One training step:

    pred = model(latent, t, text, mask)     # full prediction on every TP/CP rank
    loss = mse(pred, target); loss.backward()
    finalize_grads(model, groups)           # TP-partial (+ PP-replicated) grads summed
    clip_grad_norm_(model, max_norm, groups)
    optimizer.step()

Weights: `build_parallel_model(config, groups, seed=s)` holds, on every rank, exactly
its pieces of `torch.manual_seed(s); VideoDiT(config, <TP group of one>)`. It is built on
the meta device and `materialize` draws only this rank's shards (TP slice, then FSDP rows)
from per-tile seeded generators (models/init.py), so no rank ever holds more than its
share, and the weights are the same at every layout. The caller's RNG state is left
untouched.

Token edges: the model subclass below shards the patchified video tokens right after
`patchify` (`shard_tokens`) and gathers the final layer's output right before
`unpatchify` (`gather_tokens`); everything in between sees only this rank's tokens.
Tokens are padded at the end to a multiple of CP x (TP if SP); RoPE tables are sliced to
each shard's true positions and padded keys are dropped by the core attention. Pipeline
stages (pieces deleted from the model) keep working: the hidden states passed between
stages are the local shard [S_local, B, D].

Shape legend: S video tokens (global), L tokens on this rank, B batch, D hidden, X text
tokens, E head dim.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
from torch import nn
from megatron.core.transformer.spec_utils import ModuleSpec

from ..models.config import VDiTConfig
from ..models.init import init_parameters
from ..models.layers import patchify, unpatchify
from ..models.vdit import Conditioning, VDiTBlock, VDiTBlockSubmodules, VideoDiT
from .context_parallel import ContextParallelAttention, TEContextParallelAttention
from .data_parallel import (apply_data_parallel, clip_grad_norm_, finalize_grads,
                            fsdp_local_rows)
from .layout import CP_BACKENDS, ParallelGroups
from .recompute import apply_recompute
from .tensor_parallel import (SequenceParallelColumnLinear, SequenceParallelRowLinear,
                              all_gather_dim0, gather_tp_param, param_role, param_roles,
                              tag_params)

__all__ = ["TokenSharding", "token_sharding", "local_num_tokens", "shard_tokens", "gather_tokens",
           "ParallelVideoDiT", "build_parallel_model", "materialize", "apply_recompute",
           "apply_data_parallel", "finalize_grads", "clip_grad_norm_", "full_state_dict",
           "average_over_dp"]

MODEL_CONFIG_DEGREES = ("tensor_model_parallel_size", "pipeline_model_parallel_size",
                        "context_parallel_size", "sequence_parallel")


# --- token edges ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TokenSharding:
    """How the video tokens of one sample are split: CP chunks, then SP chunks inside."""

    num_tokens: int
    """Real tokens per sample (before padding)."""
    cp_group: dist.ProcessGroup | None
    sp_group: dist.ProcessGroup | None
    """The TP group when sequence parallel, else None."""

    def __deepcopy__(self, memo):
        return self  # immutable, and process groups cannot be copied (pipeline stages are)

    @property
    def cp_size(self) -> int:
        return 1 if self.cp_group is None else self.cp_group.size()

    @property
    def sp_size(self) -> int:
        return 1 if self.sp_group is None else self.sp_group.size()

    @property
    def padded_tokens(self) -> int:
        shards = self.cp_size * self.sp_size
        return -(-self.num_tokens // shards) * shards

    @property
    def tokens_per_cp_rank(self) -> int:
        return self.padded_tokens // self.cp_size

    @property
    def tokens_per_rank(self) -> int:
        return self.tokens_per_cp_rank // self.sp_size

    def cp_slice(self) -> slice:
        start = (0 if self.cp_group is None else self.cp_group.rank()) * self.tokens_per_cp_rank
        return slice(start, start + self.tokens_per_cp_rank)

    def local_slice(self) -> slice:
        sp_rank = 0 if self.sp_group is None else self.sp_group.rank()
        start = self.cp_slice().start + sp_rank * self.tokens_per_rank
        return slice(start, start + self.tokens_per_rank)


def token_sharding(groups: ParallelGroups, num_tokens: int) -> TokenSharding:
    layout = groups.layout
    return TokenSharding(
        num_tokens=num_tokens,
        cp_group=groups.cp if layout.context_parallel_size > 1 else None,
        sp_group=groups.tp if layout.sequence_parallel else None)


def local_num_tokens(num_tokens: int, groups: ParallelGroups) -> int:
    """Video tokens one rank holds between blocks (after padding and the CP/SP split):
    the length of the hidden states a pipeline stage sends."""
    return token_sharding(groups, num_tokens).tokens_per_rank


def _pad_tokens(x_S: torch.Tensor, length: int, value: float = 0.0) -> torch.Tensor:
    pad = length - x_S.shape[0]
    if pad == 0:
        return x_S
    return torch.cat([x_S, x_S.new_full((pad, *x_S.shape[1:]), value)])


def shard_tokens(x_SBX: torch.Tensor, sharding: TokenSharding) -> torch.Tensor:
    """Full tokens [S, B, ...] (same on every rank) -> this rank's padded piece [L, B, ...].

    Backward puts the gradient of the piece back in place (zeros elsewhere): each rank's
    upstream gradients are the contribution of its own tokens.
    """
    return _pad_tokens(x_SBX, sharding.padded_tokens)[sharding.local_slice()]


class _GatherTokens(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_LBX, sharding):
        ctx.sharding = sharding
        for group in (sharding.sp_group, sharding.cp_group):  # SP chunks sit inside CP chunks
            if group is not None:
                x_LBX = all_gather_dim0(x_LBX, group)
        return x_LBX[:sharding.num_tokens]

    @staticmethod
    def backward(ctx, grad_SBX):
        # Every rank computed the same loss from the gathered tensor: keep own tokens.
        sharding = ctx.sharding
        return _pad_tokens(grad_SBX, sharding.padded_tokens)[sharding.local_slice()], None


def gather_tokens(x_LBX: torch.Tensor, sharding: TokenSharding) -> torch.Tensor:
    """This rank's piece [L, B, ...] -> full unpadded tokens [S, B, ...] on every rank.

    Backward keeps this rank's slice of the gradient (no sum): the loss computed from the
    gathered tensor is the same on every CP/SP rank, and FSDP sums the CP contributions.
    """
    if sharding.cp_group is None and sharding.sp_group is None:
        return x_LBX
    return _GatherTokens.apply(x_LBX, sharding)


# --- the model with its edges -------------------------------------------------------------
class ParallelVideoDiT(VideoDiT):
    """VideoDiT whose edges shard and gather tokens; the blocks are unchanged math.

    Overrides only `condition` (SP splits the caption over TP), `embed` and `head`.
    """

    def __init__(self, config: VDiTConfig, tp_group: dist.ProcessGroup,
                 sharding: TokenSharding, block_spec: ModuleSpec):
        super().__init__(config, tp_group, block_spec)
        self.token_sharding = sharding
        # Local RoPE rows: true positions of this CP shard (SP gathers tokens inside a CP
        # shard before attention). Padded rows are the identity rotation.
        rows = sharding.cp_slice()
        self.rope_cos = _pad_tokens(self.rope_cos, sharding.padded_tokens, 1.0)[rows].clone()
        self.rope_sin = _pad_tokens(self.rope_sin, sharding.padded_tokens, 0.0)[rows].clone()

    def condition(self, timesteps_B, text_BXT, text_mask_BX) -> Conditioning:
        cond = super().condition(timesteps_B, text_BXT, text_mask_BX)
        sp_group = self.token_sharding.sp_group
        if sp_group is None:
            return cond
        # The K/V column linear all-gathers its input over TP like every SP column
        # linear, so hand it this rank's piece of the caption (padding masked out).
        n, x_len = sp_group.size(), cond.text_XBD.shape[0]
        padded = -(-x_len // n) * n
        text_XBD = _pad_tokens(cond.text_XBD, padded)
        mask_XB = _pad_tokens(cond.text_mask_BX.t(), padded, False)
        rows = padded // n
        return dataclasses.replace(cond, text_XBD=text_XBD[sp_group.rank() * rows:][:rows],
                                   text_mask_BX=mask_XB.t())

    def embed(self, latent_BCFHW: torch.Tensor) -> torch.Tensor:
        tokens_SBP = patchify(latent_BCFHW, self.patch).to(self.patch_embed.weight.dtype)
        return self.patch_embed(shard_tokens(tokens_SBP, self.token_sharding))

    def head(self, x_LBD: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        x_SBP = gather_tokens(self.final_layer(x_LBD, cond.t_emb_BD), self.token_sharding)
        return unpatchify(x_SBP, self.patch, self.config.in_channels, self.config.token_grid)


def _block_spec(config: VDiTConfig, groups: ParallelGroups, sharding: TokenSharding,
                cp_backend: str) -> ModuleSpec:
    sub = VDiTBlockSubmodules()
    if groups.layout.sequence_parallel:
        sub.column_linear = SequenceParallelColumnLinear
        sub.row_linear = SequenceParallelRowLinear
    if cp_backend == "te" and sharding.cp_size > 1:
        if groups.layout.cp_comm_type == "a2a+p2p":
            raise ValueError("cp_backend='te' with cp_comm_type='a2a+p2p' needs TE's "
                             "hierarchical groups, which are not wired up; use 'native'")
        sub.core_attention = ModuleSpec(TEContextParallelAttention, params=dict(
            num_tokens=sharding.num_tokens, padded_tokens=sharding.padded_tokens,
            cp_group=groups.cp, cp_comm_type=groups.layout.cp_comm_type,
            num_local_heads=config.num_attention_heads // groups.tp.size()))
    elif sharding.cp_size > 1 or sharding.padded_tokens != sharding.num_tokens:
        sub.core_attention = ModuleSpec(ContextParallelAttention, params=dict(
            num_tokens=sharding.num_tokens, ulysses_group=groups.cp_ulysses,
            ring_group=groups.cp_ring))
    return ModuleSpec(module=VDiTBlock, submodules=sub)


def build_parallel_model(config: VDiTConfig, groups: ParallelGroups, *, seed: int,
                         cp_backend: str = "native",
                         device: torch.device | str = "cpu") -> VideoDiT:
    """This rank's model: TP via `groups.tp`, SP and CP per `groups.layout`, token edges.

    See the module docstring for the weight contract. `cp_backend="te"` swaps in
    TransformerEngine's CP attention (GPU only, untested here). The model is built on
    CPU and then moved to `device`.
    """
    layout = groups.layout
    layout.validate(dist.get_world_size(), config.num_layers, config.num_attention_heads,
                    config.tokens_per_sample)
    if cp_backend not in CP_BACKENDS:
        raise ValueError(f"cp_backend={cp_backend!r}; expected one of {CP_BACKENDS}")
    ulysses = layout.ulysses_degree(config.num_attention_heads)
    built = 1 if groups.cp_ulysses is None else groups.cp_ulysses.size()
    if layout.context_parallel_size > 1 and ulysses != built:
        raise ValueError(f"groups were built with Ulysses degree {built} but the model's "
                         f"{config.num_attention_heads} heads give {ulysses}: pass "
                         "num_attention_heads to build_parallel_groups")
    # Degrees live in the layout only; megatron's own SP path (CUDA-only) is replaced by
    # ours, so a model config asking for it would be silently ignored: refuse it.
    degrees = {name: getattr(config, name) for name in MODEL_CONFIG_DEGREES
               if getattr(config, name) not in (1, False)}
    if degrees:
        raise ValueError(f"the model config sets parallel degrees {degrees}; they belong in "
                         "the ParallelLayout only")
    # Built on the meta device: no weight memory until `materialize` draws this rank's
    # shards (megatron's own init would draw every full TP weight on every rank).
    config = dataclasses.replace(config, use_cpu_initialization=True, perform_initialization=False)
    sharding = token_sharding(groups, config.tokens_per_sample)
    spec = _block_spec(config, groups, sharding, cp_backend)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        torch.manual_seed(seed)
        model = ParallelVideoDiT(config, groups.tp, sharding, spec)
    model.param_roles = param_roles(model, layout.sequence_parallel)
    tag_params(model)
    if torch.device(device).type == "meta":
        return model
    return materialize(model, groups, device)


@torch.no_grad()
def materialize(model: nn.Module, groups: ParallelGroups, device: torch.device | str) -> nn.Module:
    """Give a model built on the meta device (`build_parallel_model(device="meta")`, then
    perhaps cut into a pipeline stage and FSDP-wrapped) real tensors on `device`, each
    rank drawing only its own shards (models/init.py): the same weights as the
    single-process model at any layout, and never more than this rank's share in memory.
    Buffers (RoPE tables) are real from the start and kept."""
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    model.to_empty(device=device)
    for name, value in buffers.items():
        model.get_buffer(name).copy_(value)
    tag_params(model)  # to_empty may have replaced the parameter objects
    init_parameters(model.named_parameters(), model.init_rules, model.init_seed,
                    tp_dim=lambda p: param_role(p).tp_partition_dim, tp_size=groups.tp.size(),
                    tp_rank=groups.rank_in("tp"), local_rows=fsdp_local_rows)
    return model


# --- activation recomputation -------------------------------------------------------------
# --- helpers for trainers, checkpoints and tests -----------------------------------------
def full_state_dict(model: nn.Module, groups: ParallelGroups) -> dict[str, torch.Tensor]:
    """Full (un-TP-split, un-FSDP-sharded) parameters by name, on every rank (collective)."""
    return {name: gather_tp_param(p, groups.tp) for name, p in model.named_parameters()}


def average_over_dp(value: torch.Tensor, groups: ParallelGroups) -> torch.Tensor:
    """Mean over DP ranks of a per-rank scalar (e.g. the loss, for logging)."""
    value = value.detach().clone()
    dist.all_reduce(value, group=groups.dp)
    return value / groups.dp.size()
