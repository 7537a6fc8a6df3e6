"""Video shape -> latent shape -> tokens per sample, through the VAE and the patch size.

The default VAE is causal in time (the first frame alone, then ``temporal`` frames per
latent frame: 17 frames -> 5) and compresses ``spatial`` x ``spatial`` pixels per latent
pixel, as the video VAEs the paper family uses (4x8x8). 17x256x256 with patch 1x2x2
gives 5 x 16 x 16 = 1280 tokens, the paper's setting.
"""
from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class LatentShape:
    frames: int
    height: int
    width: int
    patch: tuple[int, int, int] = (1, 2, 2)

    @property
    def tokens(self) -> int:
        pt, ph, pw = self.patch
        return (self.frames // pt) * (self.height // ph) * (self.width // pw)


def latent_from_video(frames: int, height: int, width: int, temporal: int = 4,
                      spatial: int = 8, patch=(1, 2, 2)) -> LatentShape:
    """The latent of a ``frames x height x width`` clip; ValueError naming the flag."""
    if (frames - 1) % temporal:
        raise ValueError(f"--frames {frames}: a causal VAE with temporal compression "
                         f"{temporal} takes 1 + {temporal} k frames (e.g. {1 + temporal * 4})")
    pt, ph, pw = patch
    for flag, size in (("--height", height), ("--width", width)):
        if size % (spatial * (ph if flag == "--height" else pw)):
            raise ValueError(f"{flag} {size} is not a multiple of the VAE's spatial "
                             f"compression {spatial} x the patch size")
    latent = LatentShape(1 + (frames - 1) // temporal, height // spatial, width // spatial,
                         tuple(patch))
    if latent.frames % pt:
        raise ValueError(f"--frames {frames}: {latent.frames} latent frames are not a "
                         f"multiple of the temporal patch size {pt}")
    return latent


def latent_for_tokens(tokens: int, patch=(1, 2, 2)) -> LatentShape:
    """A latent shape of exactly ``tokens`` patches: square frames at least as many
    patches wide as there are latent frames, as many frames as that allows (73728 ->
    32 x 48 x 48 patches, Movie Gen's; 1280 -> 5 x 16 x 16, the paper's)."""
    pt, ph, pw = patch
    for side in range(1, math.isqrt(tokens) + 1):
        frames = tokens // (side * side)
        if tokens % (side * side) == 0 and frames <= side:
            return LatentShape(frames * pt, side * ph, side * pw, tuple(patch))
    return LatentShape(tokens * pt, ph, pw, tuple(patch))  # a prime: one patch per frame
