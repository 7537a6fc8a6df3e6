"""Caption dropout and the null caption that classifier-free guidance samples against.

The null caption is a *zero* caption: every embedding is zero and only the first token
is attended (the mask must keep one key, or attention over an all-masked caption is
undefined). It needs no new parameter, so old checkpoints, parameter counts and the
parallel layouts are untouched; it is still a learned condition in effect, because the
caption projection maps the zero embedding to its learned bias (fc2(gelu(b1)) + b2),
which the model learns to read as "no caption". A zero embedding with one live token is
also what the T5-family encoders give an empty prompt after the precompute zeroes the
padding, up to the EOS token's embedding.

Dropout decisions are seeded per sample by (seed, iteration, position in the global
batch), like the training noise, so every layout and a resumed run drop the same
captions.
"""
from __future__ import annotations

import torch

from .objectives import seed_for

_DROPOUT_STREAM = 0xCAFE  # keeps the dropout draws apart from the noise draws


def null_caption(batch_size: int, num_tokens: int, width: int,
                 dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(text [B, X, T] of zeros, mask [B, X] with only token 0 attended)."""
    mask = torch.zeros(batch_size, num_tokens, dtype=torch.bool)
    mask[:, 0] = True
    return torch.zeros(batch_size, num_tokens, width, dtype=dtype), mask


def drop_captions(text_BXT: torch.Tensor, mask_BX: torch.Tensor, probability: float,
                  sample_seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each sample's caption by the null caption with `probability`."""
    if not 0.0 <= probability <= 1.0:
        raise ValueError(f"caption dropout probability {probability} must be in [0, 1]")
    if probability == 0.0:
        return text_BXT, mask_BX
    drop_B = torch.tensor([
        torch.rand(1, generator=torch.Generator().manual_seed(seed_for(s, _DROPOUT_STREAM))).item()
        < probability for s in sample_seeds]).to(text_BXT.device)
    null_text, null_mask = (t.to(text_BXT.device) for t in
                            null_caption(*text_BXT.shape, dtype=text_BXT.dtype))
    keep = ~drop_B
    text = torch.where(keep[:, None, None], text_BXT, null_text)
    mask = torch.where(keep[:, None], mask_BX.bool(), null_mask).to(mask_BX.dtype)
    return text, mask
