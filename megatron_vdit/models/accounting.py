"""Parameter and FLOP accounting: the one place these numbers are defined.

Pure Python (no torch) so the planner and scaling_laws can import it cheaply.

Conventions (Yin et al., "Towards Precise Scaling Laws for Video Diffusion Transformers",
CVPR 2025, arXiv 2411.17470; docs/scaling_laws.md says what the project takes from it):
- ``params_nonembed``: every parameter inside the transformer blocks. Its leading term
  is the paper's ``N = 16 * L * d^2`` (self-attention 4d^2, cross-attention 4d^2,
  MLP 8d^2); biases, q/k RMSNorm weights, the cross-attention norm and each block's
  adaLN table add O(L * d).
- ``params_total``: everything, i.e. blocks plus patch embedding, caption projection,
  timestep MLP, the shared adaLN-single MLP and the final layer.
- ``paper_flops_per_token = 3/4 * N * (7 + n_ctx / d)``: training FLOPs per video token,
  exactly the paper's formula (train = 3x forward, cross-attention K/V on text tokens
  left out, attention score/value products as ``n_ctx / d``).
- ``lm_flops_per_token = 6 N``: the language-model convention, offered by
  ``scaling_laws`` as ``--compute 6n``.
- ``model_flops_per_sample``: training FLOPs of the built model for one sample, every
  matmul counted (text-token K/V, cross-attention scores, embeddings): use it for MFU.
- ``inference_flops_per_video``: sampling cost of one video, model calls x forward FLOPs
  (a third of the training FLOPs), doubled with classifier-free guidance.
"""
from __future__ import annotations

import dataclasses
import math

PRESETS: dict[str, tuple[int, int, int]] = {
    # name: (num_layers, hidden_size, num_attention_heads). CPU-sized presets first.
    "cpu-0.13m": (2, 64, 2),
    "cpu-0.6m": (4, 96, 3),
    "cpu-1.6m": (6, 128, 4),
    "cpu-4.7m": (8, 192, 6),
    "cpu-8.4m": (8, 256, 8),
    "cpu-16m": (10, 320, 5),
    # The paper's family: 16 * L * d^2 within 2% of the name.
    "0.017b": (16, 256, 4),
    "0.057b": (18, 448, 7),
    "0.13b": (20, 640, 10),
    "0.26b": (28, 768, 12),
    "0.72b": (34, 1152, 18),
    "1.07b": (28, 1536, 12),
    # Flagships.
    "7b": (26, 4096, 32),
    "18b": (30, 6144, 48),
    "30b": (28, 8192, 64),
}


@dataclasses.dataclass(frozen=True)
class ModelShape:
    """Everything the accounting needs; units: counts of params, tokens, channels."""

    num_layers: int
    hidden_size: int
    num_attention_heads: int = 1
    in_channels: int = 4
    patch_volume: int = 4
    text_hidden_size: int = 64
    max_text_tokens: int = 32
    timestep_embed_dim: int = 256

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_config(cls, cfg) -> "ModelShape":
        return cls(cfg.num_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.in_channels,
                   cfg.patch_volume, cfg.text_hidden_size, cfg.max_text_tokens,
                   cfg.timestep_embed_dim)


def paper_params_nonembed(num_layers: int, hidden_size: int) -> int:
    """The paper's N: 16 * L * d^2."""
    return 16 * num_layers * hidden_size ** 2


def block_params(shape: ModelShape) -> int:
    """Exact parameters of one Cross-DiT block as built in `models/vdit.py`."""
    d, hd = shape.hidden_size, shape.head_dim
    self_attn = (3 * d * d + 3 * d) + (d * d + d) + 2 * hd  # qkv, out, q/k RMSNorm
    cross_attn = (d * d + d) + (2 * d * d + 2 * d) + (d * d + d) + 2 * hd + 2 * d  # + norm
    mlp = (4 * d * d + 4 * d) + (4 * d * d + d)
    ada_table = 6 * d
    return self_attn + cross_attn + mlp + ada_table


def params_nonembed(shape: ModelShape) -> int:
    return shape.num_layers * block_params(shape)


def embedding_params(shape: ModelShape) -> int:
    d, p = shape.hidden_size, shape.in_channels * shape.patch_volume
    patch_embed = p * d + d
    caption = (shape.text_hidden_size * d + d) + (d * d + d)
    timestep = (shape.timestep_embed_dim * d + d) + (d * d + d)
    ada_single = d * 6 * d + 6 * d
    final = 2 * d + (d * p + p)
    return patch_embed + caption + timestep + ada_single + final


def params_total(shape: ModelShape) -> int:
    return params_nonembed(shape) + embedding_params(shape)


def paper_flops_per_token(params: float, tokens_per_sample: int, hidden_size: int) -> float:
    """C_token = 3/4 * N * (7 + n_ctx / d): training FLOPs per video token (paper)."""
    return 0.75 * params * (7.0 + tokens_per_sample / hidden_size)


def lm_flops_per_token(params: float) -> float:
    """C_token = 6 N: the language-model convention (C = 6 N D), for comparisons."""
    return 6.0 * params


def paper_training_flops(params: float, tokens_per_sample: int, hidden_size: int,
                         train_tokens: float) -> float:
    """C = C_token * T."""
    return paper_flops_per_token(params, tokens_per_sample, hidden_size) * train_tokens


def model_flops_per_sample(shape: ModelShape, tokens_per_sample: int,
                           text_tokens: int | None = None) -> float:
    """Training FLOPs (3x forward) of one sample through the built model, for MFU."""
    d, n = shape.hidden_size, tokens_per_sample
    s = shape.max_text_tokens if text_tokens is None else text_tokens
    p = shape.in_channels * shape.patch_volume
    per_layer = (
        2 * n * 14 * d * d        # qkv, self out, cross q, cross out, MLP (on video tokens)
        + 2 * s * 2 * d * d       # cross-attention K/V on text tokens
        + 2 * 2 * n * n * d       # self-attention scores and values
        + 2 * 2 * n * s * d       # cross-attention scores and values
    )
    embed = 2 * n * p * d * 2 + 2 * s * (shape.text_hidden_size * d + d * d)
    return 3.0 * (shape.num_layers * per_layer + embed)


def inference_flops_per_video(shape: ModelShape, tokens_per_sample: int, model_calls: int,
                              guidance: bool, text_tokens: int | None = None) -> float:
    """FLOPs to sample one video: `model_calls` forwards (the sampler's steps; Heun makes
    2 per step but the last), x2 with guidance (captioned + null caption). The VAE decode
    and text encoder are left out: they run once per video, not once per step."""
    forward = model_flops_per_sample(shape, tokens_per_sample, text_tokens) / 3.0
    return model_calls * forward * (2 if guidance else 1)


def preset_shape(name: str) -> tuple[int, int, int]:
    """(num_layers, hidden_size, num_attention_heads) of a named preset."""
    key = name.lower()
    if key not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[key]


def _target_aspect(params: float) -> float:
    """d / L that the presets follow: deeper-per-width for small, wider for large models."""
    return 10.0 * (params / 1e6) ** 0.33


def shape_for_params(params_nonembed: float, head_dim: int | None = None) -> dict:
    """A (num_layers, hidden_size, num_attention_heads) whose 16 L d^2 is near the target.

    Widths are multiples of the head dim (64 below 2048 wide, else 128) and give a head
    count divisible by 8 from 1024 wide up (by 2 below), so tensor parallel sizes 2..8
    stay available. Among shapes within 5% of the target, the one closest to the
    presets' aspect ratio wins.
    """
    if not params_nonembed > 0:
        raise ValueError(f"params_nonembed must be positive, got {params_nonembed}")
    best, best_score = None, math.inf
    for hidden in range(64, 32768 + 1, 64):
        hd = head_dim or (64 if hidden < 2048 else 128)
        if hidden % hd or (hidden // hd) % (8 if hidden >= 1024 else 2 if hidden >= 128 else 1):
            continue
        layers = max(1, round(params_nonembed / (16 * hidden ** 2)))
        err = abs(math.log(paper_params_nonembed(layers, hidden) / params_nonembed))
        aspect = abs(math.log((hidden / layers) / _target_aspect(params_nonembed)))
        score = aspect + (0 if err <= math.log(1.05) else 100 * err)
        if score < best_score:
            best, best_score = (layers, hidden, hidden // hd), score
    layers, hidden, heads = best
    return {"num_layers": layers, "hidden_size": hidden, "num_attention_heads": heads,
            "params_nonembed": paper_params_nonembed(layers, hidden)}
