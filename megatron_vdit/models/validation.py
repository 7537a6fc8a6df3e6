"""Checks of a model shape that need no torch, so the training CLI can refuse a bad
shape before it imports megatron-core; `config.validate_model_config` applies them to a
built `VDiTConfig`."""
from __future__ import annotations


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Split of the head dim over (t, h, w) for 3D RoPE; each part even, h == w."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def validate_model_shape(*, hidden_size: int, num_attention_heads: int,
                         latent: tuple[int, int, int], patch: tuple[int, int, int],
                         max_text_tokens: int, text_hidden_size: int) -> None:
    """Raise ValueError naming the offending values. `latent`: (frames, height, width);
    `patch`: patch size (t, h, w)."""
    if hidden_size % num_attention_heads:
        raise ValueError(f"num_attention_heads={num_attention_heads} does not divide "
                         f"hidden_size={hidden_size}")
    head_dim = hidden_size // num_attention_heads
    if head_dim % 2 or min(rope_axis_dims(head_dim)) < 2:
        raise ValueError(f"head dim {head_dim} (hidden_size={hidden_size} / "
                         f"heads={num_attention_heads}) must be even and >= 6 for 3D RoPE")
    for axis, size, size_patch in zip(("frames", "height", "width"), latent, patch):
        if size_patch < 1 or size < 1:
            raise ValueError(f"latent {axis}={size} and patch size {size_patch} must be positive")
        if size % size_patch:
            raise ValueError(f"patch size {size_patch} does not divide latent {axis}={size}")
    if max_text_tokens < 1 or text_hidden_size < 1:
        raise ValueError(f"max_text_tokens={max_text_tokens} and text_hidden_size="
                         f"{text_hidden_size} must be positive")
