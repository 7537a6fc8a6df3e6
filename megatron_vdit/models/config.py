"""The one model config: megatron-core's TransformerConfig plus the video fields.

Validation of what depends only on the model lives in `validation` (torch-free, applied
here by `validate_model_config`); what depends on a parallel layout lives in
`megatron_vdit.parallel.layout`.
"""
from __future__ import annotations

import dataclasses
import warnings

from .validation import rope_axis_dims, validate_model_shape  # noqa: F401  (rope: public API)

with warnings.catch_warnings():
    # megatron-core warns at import time that TransformerEngine/apex are absent; we
    # do not use either, so the warning is noise for every CPU user.
    warnings.simplefilter("ignore")
    from megatron.core.transformer import TransformerConfig


@dataclasses.dataclass
class VDiTConfig(TransformerConfig):
    """Cross-DiT config. Latent dims are those of one training sample after the VAE."""

    in_channels: int = 4
    """Latent channels produced by the VAE (16 for Wan / CogVideoX VAEs)."""
    latent_frames: int = 3
    """Latent frames per sample (after the VAE's temporal compression)."""
    latent_height: int = 8
    """Latent height per sample (after the VAE's spatial compression)."""
    latent_width: int = 8
    """Latent width per sample."""
    patch_size_t: int = 1
    """Patch size along time."""
    patch_size_h: int = 2
    """Patch size along height."""
    patch_size_w: int = 2
    """Patch size along width."""
    text_hidden_size: int = 64
    """Width of the text encoder's embeddings (projected to hidden_size once)."""
    max_text_tokens: int = 32
    """Padded caption length S_text."""
    rope_theta: float = 10000.0
    """Base of the 3D rotary position embedding."""
    timestep_embed_dim: int = 256
    """Width of the sinusoidal timestep features fed to the timestep MLP."""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def patch_volume(self) -> int:
        return self.patch_size_t * self.patch_size_h * self.patch_size_w

    @property
    def token_grid(self) -> tuple[int, int, int]:
        """(frames, height, width) of the video token grid."""
        return (self.latent_frames // self.patch_size_t,
                self.latent_height // self.patch_size_h,
                self.latent_width // self.patch_size_w)

    @property
    def tokens_per_sample(self) -> int:
        """n_ctx in the paper's compute accounting: video tokens per sample."""
        f, h, w = self.token_grid
        return f * h * w


def validate_model_config(cfg: VDiTConfig) -> None:
    """Raise ValueError naming the offending values; call before building anything."""
    validate_model_shape(
        hidden_size=cfg.hidden_size, num_attention_heads=cfg.num_attention_heads,
        latent=(cfg.latent_frames, cfg.latent_height, cfg.latent_width),
        patch=(cfg.patch_size_t, cfg.patch_size_h, cfg.patch_size_w),
        max_text_tokens=cfg.max_text_tokens, text_hidden_size=cfg.text_hidden_size)
