"""Building blocks of the Cross-DiT that hold no parallel logic.

Shape legend: B batch, C latent channels, F/H/W latent frames/height/width, S video
tokens, X text tokens, D hidden size, H attention heads, E head dim, P patch features
(C * pt * ph * pw).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import VDiTConfig, rope_axis_dims
from .init import set_init


def patchify(latent_BCFHW: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
    """[B, C, F, H, W] -> tokens [S, B, P] in (t, h, w) raster order."""
    pt, ph, pw = patch
    b, c, f, h, w = latent_BCFHW.shape
    x = latent_BCFHW.reshape(b, c, f // pt, pt, h // ph, ph, w // pw, pw)
    x = x.permute(2, 4, 6, 0, 1, 3, 5, 7)  # f', h', w', B, C, pt, ph, pw
    return x.reshape((f // pt) * (h // ph) * (w // pw), b, c * pt * ph * pw)


def unpatchify(x_SBP: torch.Tensor, patch: tuple[int, int, int], channels: int,
               grid: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of `patchify`: tokens [S, B, P] -> [B, C, F, H, W]."""
    pt, ph, pw = patch
    gf, gh, gw = grid
    b = x_SBP.shape[1]
    x = x_SBP.reshape(gf, gh, gw, b, channels, pt, ph, pw)
    x = x.permute(3, 4, 0, 5, 1, 6, 2, 7)  # B, C, f', pt, h', ph, w', pw
    return x.reshape(b, channels, gf * pt, gh * ph, gw * pw)


def rope_tables(grid: tuple[int, int, int], head_dim: int, theta: float,
                device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables [S, E/2] of 3D RoPE for a (frames, height, width) token grid.

    The head dim is split over t/h/w (`rope_axis_dims`); each axis rotates its pairs by
    its own coordinate. Rows follow `patchify`'s raster order, so a context-parallel
    shard slices these tables with the same indices as its tokens (true positions).
    """
    angles = []
    coords = torch.meshgrid(*(torch.arange(n, device=device, dtype=torch.float64) for n in grid),
                            indexing="ij")
    for coord, dim in zip(coords, rope_axis_dims(head_dim)):
        inv_freq = theta ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float64) / dim)
        angles.append(coord.reshape(-1, 1) * inv_freq)
    angle_SE = torch.cat(angles, dim=1)
    return angle_SE.cos().float(), angle_SE.sin().float()


def apply_rope(x_BHSE: torch.Tensor, cos_SE: torch.Tensor, sin_SE: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) by the position's angle.

    One complex multiply in float32 (fewer kernels than the real-arithmetic form, and
    exact in fp32); bf16 inputs are rotated in fp32 and cast back.

    Memory layout is kept: the blocks pass q/k as [B, H, S, E] views of sequence-first
    [S, B, H, E] projections, and rotating them in that memory (instead of copying to a
    contiguous [B, H, S, E]) lets SDPA's output, which follows q's layout, reach the
    sequence-first output projection without a copy that autograd would then save
    (measured against diffusers' Wan block: bench/bench_vs_diffusers.py --saved).
    """
    x_SBHE = x_BHSE.permute(2, 0, 1, 3)
    if x_SBHE.is_contiguous():
        pairs = x_SBHE.float().reshape(*x_SBHE.shape[:-1], -1, 2)
        angle = torch.complex(cos_SE, sin_SE)[:, None, None]
        rotated = torch.view_as_real(torch.view_as_complex(pairs) * angle).flatten(-2)
        return rotated.to(x_BHSE.dtype).permute(1, 2, 0, 3)
    pairs = x_BHSE.float().reshape(*x_BHSE.shape[:-1], -1, 2)
    rotated = torch.view_as_complex(pairs) * torch.complex(cos_SE, sin_SE)
    return torch.view_as_real(rotated).flatten(-2).to(x_BHSE.dtype)


class SDPACoreAttention(nn.Module):
    """The core-attention slot: softmax(q k^T / sqrt(E)) v via PyTorch SDPA.

    SDPA dispatches to flash/cuDNN kernels on GPU and the fused CPU kernel here.
    Context parallelism replaces this module (through the block's ModuleSpec) and
    nothing else. `key_mask_BX` (True = attend) masks padded text tokens.
    """

    def __init__(self, config: VDiTConfig, **_unused):
        super().__init__()

    def forward(self, q_BHSE, k_BHXE, v_BHXE, key_mask_BX: torch.Tensor | None = None):
        mask = None if key_mask_BX is None else key_mask_BX[:, None, None, :]
        return F.scaled_dot_product_attention(q_BHSE, k_BHXE, v_BHXE, attn_mask=mask)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of the (float) timestep in [0, 1000) -> MLP -> [B, D]."""

    def __init__(self, config: VDiTConfig):
        super().__init__()
        self.freq_dim = config.timestep_embed_dim
        self.mlp = nn.Sequential(nn.Linear(self.freq_dim, config.hidden_size), nn.SiLU(),
                                 nn.Linear(config.hidden_size, config.hidden_size))

    def forward(self, timesteps_B: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=timesteps_B.device,
                                                            dtype=torch.float32) / half)
        args = timesteps_B.float()[:, None] * freqs[None]
        features = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class CaptionProjection(nn.Module):
    """Text-encoder embeddings [X, B, D_text] -> [X, B, D], shared by all blocks."""

    def __init__(self, config: VDiTConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.text_hidden_size, config.hidden_size)
        self.fc2 = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, text_XBT: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(text_XBT), approximate="tanh"))


class FinalLayer(nn.Module):
    """Norm + adaLN-single modulation (own shift/scale table) + linear to patch features."""

    def __init__(self, config: VDiTConfig):
        super().__init__()
        d = config.hidden_size
        self.norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.scale_shift_table = nn.Parameter(torch.empty(2, d))
        self.linear = nn.Linear(d, config.in_channels * config.patch_volume)
        set_init(self.scale_shift_table, "normal", d ** -0.5)
        set_init(self.linear.weight, "zeros")
        set_init(self.linear.bias, "zeros")

    def forward(self, x_SBD: torch.Tensor, t_emb_BD: torch.Tensor) -> torch.Tensor:
        shift_BD, scale_BD = (self.scale_shift_table[None] + t_emb_BD[:, None]).unbind(1)
        return self.linear(self.norm(x_SBD) * (1 + scale_BD) + shift_BD)
