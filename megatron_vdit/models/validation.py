"""Checks of a model shape that need no torch, so the training CLI can refuse a bad
shape before it imports megatron-core; `config.validate_model_config` applies them to a
built `VDiTConfig`."""
from __future__ import annotations


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Split of the head dim over (t, h, w) for 3D RoPE; each part even, h == w."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def output_bottleneck(*, hidden_size: int, in_channels: int,
                      patch: tuple[int, int, int]) -> str | None:
    """Why the output layer cannot represent its target (None when it can).

    Each token predicts in_channels x patch values through a linear map from the hidden
    state, so with hidden_size below that count the prediction is rank-limited and the
    loss cannot fall below the part of the target outside that rank. Measured on the
    natural sweep data (12 channels, patch 1x2x2, 48 values per token; 2 layers, 327k
    tokens, batch 16): hidden 32 ends at loss 0.40, 40 at 0.24, 48 at 0.10."""
    values = in_channels * patch[0] * patch[1] * patch[2]
    if hidden_size >= values:
        return None
    return (f"hidden_size={hidden_size} is below the {values} values each token predicts "
            f"(in_channels {in_channels} x patch {'x'.join(map(str, patch))}): the output "
            "layer is rank-limited and the loss plateaus; use hidden_size >= "
            f"{values} or a smaller patch")


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
