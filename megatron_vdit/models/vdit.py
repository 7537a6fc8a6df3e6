"""Cross-DiT for video latents, built from megatron-core tensor-parallel layers.

The model is math only: parallelism is applied from `megatron_vdit.parallel`. The
tensor-parallel group is passed in (a world of one when not parallel), so the same
module runs on one CPU process and under TP on GPUs. Heads are laid out so that a
column-parallel shard always holds whole heads.

Pipeline stages are made by deleting pieces: `patch_embed`, `final_layer` may be set to
None and `blocks` (a ModuleDict keyed by the global layer index, so checkpoint names
never change) may lose entries. `forward` tolerates missing pieces: without
`patch_embed` it takes hidden states [S, B, D] instead of a latent, without
`final_layer` it returns hidden states. Conditioning (timestep, caption) is cheap and
recomputed by every stage from the batch rather than sent through the pipe.

Shape legend: B batch, C channels, F/H/W latent frames/height/width, S video tokens
(sequence first, as in megatron-core), X text tokens, D hidden, H heads (local to the
TP rank), E head dim, P patch features.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn
import torch.distributed as dist

from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes
from megatron.core.transformer.spec_utils import ModuleSpec, build_module

from .config import VDiTConfig, validate_model_config
from .init import init_parameters, init_rules, normal_std, set_init, xavier_uniform_bound
from .linears import FusedColumnParallelLinear, FusedRowParallelLinear
from .layers import (CaptionProjection, FinalLayer, SDPACoreAttention, TimestepEmbedder,
                     apply_rope, patchify, rope_tables, unpatchify)


@dataclasses.dataclass
class VDiTBlockSubmodules:
    """Backends of one block; swapping one changes no other code."""

    column_linear: ModuleSpec | type = FusedColumnParallelLinear
    row_linear: ModuleSpec | type = FusedRowParallelLinear
    core_attention: ModuleSpec | type = SDPACoreAttention
    """Self-attention kernel: the only slot context parallelism replaces."""
    cross_core_attention: ModuleSpec | type = SDPACoreAttention
    """Cross-attention kernel: local video queries against the full caption."""


def get_block_spec(core_attention: ModuleSpec | type = SDPACoreAttention) -> ModuleSpec:
    return ModuleSpec(module=VDiTBlock,
                      submodules=VDiTBlockSubmodules(core_attention=core_attention))


@dataclasses.dataclass
class Conditioning:
    """Per-batch inputs every block needs; recomputed on every pipeline stage."""

    t_emb_BD: torch.Tensor
    ada_B6D: torch.Tensor
    text_XBD: torch.Tensor
    text_mask_BX: torch.Tensor
    rope_cos_SE: torch.Tensor
    rope_sin_SE: torch.Tensor


def _megatron_init(linear, init_method, partition_dim: int):
    # Megatron marks a weight as TP-split only when it initialises it; built on the meta
    # device (perform_initialization=False) it is marked here.
    if not hasattr(linear.weight, "tensor_model_parallel"):
        set_tensor_model_parallel_attributes(linear.weight, True, partition_dim, 1)
    set_init(linear.weight, "normal", normal_std(init_method))
    if linear.bias is not None:
        set_init(linear.bias, "zeros")
    return linear


def _column(spec, config, inp, out, tp_group, bias=True):
    return _megatron_init(build_module(
        spec, inp, out, config=config, init_method=config.init_method, bias=bias,
        gather_output=False, tp_group=tp_group), config.init_method, partition_dim=0)


def _row(spec, config, inp, out, tp_group):
    return _megatron_init(build_module(
        spec, inp, out, config=config, init_method=config.output_layer_init_method, bias=True,
        input_is_parallel=True, skip_bias_add=False, tp_group=tp_group),
        config.output_layer_init_method, partition_dim=1)


class _Attention(nn.Module):
    """What self- and cross-attention share: local heads, per-head q/k RMSNorm, the core
    attention slot and the row-parallel output projection. Subclasses create their input
    projections first (construction order fixes the seeded initialisation)."""

    def _init_common(self, config: VDiTConfig, sub: VDiTBlockSubmodules, tp_group,
                     layer_number: int, kind: str) -> None:
        self.heads = config.num_attention_heads // tp_group.size()
        self.head_dim = config.head_dim
        self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        core_spec = sub.core_attention if kind == "self" else sub.cross_core_attention
        self.core_attention = build_module(core_spec, config=config, layer_number=layer_number,
                                           attn_kind=kind)
        self.linear_proj = _row(sub.row_linear, config, config.hidden_size, config.hidden_size,
                                tp_group)

    def _project_out(self, out_BHSE: torch.Tensor, s: int, b: int) -> torch.Tensor:
        out, _ = self.linear_proj(out_BHSE.permute(2, 0, 1, 3).reshape(s, b, -1))
        return out


class SelfAttention(_Attention):
    def __init__(self, config: VDiTConfig, sub: VDiTBlockSubmodules, tp_group, layer_number: int):
        super().__init__()
        d = config.hidden_size
        self.linear_qkv = _column(sub.column_linear, config, d, 3 * d, tp_group)
        self._init_common(config, sub, tp_group, layer_number, "self")

    def forward(self, x_SBD, cond: Conditioning):
        qkv, _ = self.linear_qkv(x_SBD)
        s, b = qkv.shape[:2]  # not x's: a sequence-parallel linear gathers tokens
        q, k, v = qkv.view(s, b, self.heads, 3, self.head_dim).unbind(3)   # [S, B, H, E]
        # Normed and rotated in sequence-first memory, handed over as [B, H, S, E] views:
        # the attention output then follows that memory and `_project_out` needs no copy.
        q = apply_rope(self.q_norm(q).permute(1, 2, 0, 3), cond.rope_cos_SE, cond.rope_sin_SE)
        k = apply_rope(self.k_norm(k).permute(1, 2, 0, 3), cond.rope_cos_SE, cond.rope_sin_SE)
        return self._project_out(self.core_attention(q, k, v.permute(1, 2, 0, 3)), s, b)


class CrossAttention(_Attention):
    def __init__(self, config: VDiTConfig, sub: VDiTBlockSubmodules, tp_group, layer_number: int):
        super().__init__()
        d = config.hidden_size
        self.linear_q = _column(sub.column_linear, config, d, d, tp_group)
        self.linear_kv = _column(sub.column_linear, config, d, 2 * d, tp_group)
        self._init_common(config, sub, tp_group, layer_number, "cross")

    def forward(self, x_SBD, cond: Conditioning):
        q, _ = self.linear_q(x_SBD)
        kv, _ = self.linear_kv(cond.text_XBD)
        (s, b), x_len = q.shape[:2], kv.shape[0]  # not the inputs': SP linears gather tokens
        q_BHSE = self.q_norm(q.view(s, b, self.heads, self.head_dim)).permute(1, 2, 0, 3)
        kv_BHX2E = kv.view(x_len, b, self.heads, 2, self.head_dim).permute(1, 2, 0, 3, 4)
        k_BHXE, v_BHXE = kv_BHX2E.unbind(3)
        out_BHSE = self.core_attention(q_BHSE, self.k_norm(k_BHXE), v_BHXE, cond.text_mask_BX)
        return self._project_out(out_BHSE, s, b)


class MLP(nn.Module):
    def __init__(self, config: VDiTConfig, sub: VDiTBlockSubmodules, tp_group):
        super().__init__()
        d, ffn = config.hidden_size, config.ffn_hidden_size
        self.linear_fc1 = _column(sub.column_linear, config, d, ffn, tp_group)
        self.linear_fc2 = _row(sub.row_linear, config, ffn, d, tp_group)

    def forward(self, x_SBD):
        h, _ = self.linear_fc1(x_SBD)
        out, _ = self.linear_fc2(F.gelu(h, approximate="tanh"))
        return out


class VDiTBlock(nn.Module):
    """Self-attention (3D RoPE, q/k RMSNorm), cross-attention, MLP; adaLN-single gates."""

    def __init__(self, config: VDiTConfig, submodules: VDiTBlockSubmodules, tp_group,
                 layer_number: int):
        super().__init__()
        d = config.hidden_size
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.self_attention = SelfAttention(config, submodules, tp_group, layer_number)
        self.norm_cross = nn.LayerNorm(d, eps=1e-6)
        self.cross_attention = CrossAttention(config, submodules, tp_group, layer_number)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(config, submodules, tp_group)
        # adaLN-single: one shared MLP makes 6 x D modulations; each block adds its table.
        self.scale_shift_table = nn.Parameter(torch.empty(6, d))
        set_init(self.scale_shift_table, "normal", d ** -0.5)

    def forward(self, x_SBD: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        mods = (self.scale_shift_table[None] + cond.ada_B6D).unbind(1)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        # addcmul fuses modulation and gated residuals into one kernel each.
        h = torch.addcmul(shift_msa, self.norm1(x_SBD), 1 + scale_msa)
        x_SBD = torch.addcmul(x_SBD, gate_msa, self.self_attention(h, cond))
        x_SBD = x_SBD + self.cross_attention(self.norm_cross(x_SBD), cond)
        h = torch.addcmul(shift_mlp, self.norm2(x_SBD), 1 + scale_mlp)
        return torch.addcmul(x_SBD, gate_mlp, self.mlp(h))


class VideoDiT(nn.Module):
    """Cross-DiT: latent [B, C, F, H, W] + timestep + caption -> prediction, same shape."""

    def __init__(self, config: VDiTConfig, tp_group: dist.ProcessGroup,
                 block_spec: ModuleSpec | None = None):
        super().__init__()
        validate_model_config(config)
        # The one draw from the global RNG: `torch.manual_seed(s); VideoDiT(...)` fixes the
        # weights, and every layout draws its shards from this seed (models/init.py).
        self.init_seed = int(torch.randint(0, 2 ** 62, (1,), device="cpu").item())
        self.tp_rank, self.tp_size = dist.get_rank(tp_group), tp_group.size()
        self.config = config
        d = config.hidden_size
        spec = block_spec or get_block_spec()
        self.patch = (config.patch_size_t, config.patch_size_h, config.patch_size_w)
        self.patch_embed = nn.Linear(config.in_channels * config.patch_volume, d)
        self.timestep_embedder = TimestepEmbedder(config)
        self.ada_single = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.caption_projection = CaptionProjection(config)
        self.blocks = nn.ModuleDict({
            str(i): build_module(spec, config=config, tp_group=tp_group, layer_number=i + 1)
            for i in range(config.num_layers)})
        self.final_layer = FinalLayer(config)
        set_init(self.patch_embed.weight, "uniform",
                 xavier_uniform_bound(*self.patch_embed.weight.shape))
        set_init(self.ada_single[1].weight, "zeros")
        set_init(self.ada_single[1].bias, "zeros")
        # Real values even when the parameters are built on the meta device.
        cos, sin = rope_tables(config.token_grid, config.head_dim, config.rope_theta,
                               device=torch.device("cpu"))
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_rules = init_rules(self)
        if not self.patch_embed.weight.is_meta:
            self.init_unsharded_weights()

    @torch.no_grad()
    def init_unsharded_weights(self) -> None:
        """Draw this rank's TP pieces of every parameter (no FSDP wrapping yet); a model
        built on the meta device is materialised by `parallelize.materialize` instead."""
        init_parameters(self.named_parameters(), self.init_rules, self.init_seed,
                        tp_dim=lambda p: p.partition_dim if getattr(
                            p, "tensor_model_parallel", False) else None,
                        tp_size=self.tp_size, tp_rank=self.tp_rank)

    def condition(self, timesteps_B, text_BXT, text_mask_BX) -> Conditioning:
        t_emb_BD = self.timestep_embedder(timesteps_B)
        ada_B6D = self.ada_single(t_emb_BD).unflatten(1, (6, -1))
        # Inputs follow the weights' dtype (bf16 under mixed precision); timesteps stay
        # float32 into the sinusoidal features, so 999 is not rounded to 1000.
        proj_dtype = self.caption_projection.fc1.weight.dtype
        text_XBD = self.caption_projection(text_BXT.transpose(0, 1).to(proj_dtype))
        return Conditioning(t_emb_BD, ada_B6D, text_XBD, text_mask_BX.bool(),
                            self.rope_cos, self.rope_sin)

    def embed(self, latent_BCFHW: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(patchify(latent_BCFHW, self.patch).to(self.patch_embed.weight.dtype))

    def head(self, x_SBD: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        x_SBP = self.final_layer(x_SBD, cond.t_emb_BD)
        return unpatchify(x_SBP, self.patch, self.config.in_channels, self.config.token_grid)

    def forward(self, x: torch.Tensor, timesteps_B: torch.Tensor, text_BXT: torch.Tensor,
                text_mask_BX: torch.Tensor, cond: Conditioning | None = None) -> torch.Tensor:
        """`x` is a latent [B, C, F, H, W], or hidden states [S, B, D] on later PP stages."""
        cond = cond or self.condition(timesteps_B, text_BXT, text_mask_BX)
        x_SBD = self.embed(x) if self.patch_embed is not None else x
        for block in self.blocks.values():
            x_SBD = block(x_SBD, cond)
        return self.head(x_SBD, cond) if self.final_layer is not None else x_SBD
