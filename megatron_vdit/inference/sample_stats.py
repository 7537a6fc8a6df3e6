"""Do a model's samples look like its data? Pixel statistics of sampled and real clips.

A batch of videos (uint8 or [0, 1] RGB, [B, F, H, W, 3]) is summarised by the per-channel
mean and std over all its pixels, a coarse spatial-frequency statistic (the mean absolute
difference of neighbouring pixels, horizontal and vertical: it grows with the share of
high spatial frequencies, so blur lowers it and noise raises it) and a temporal one (the
mean absolute difference of consecutive frames: motion). All in [0, 1] pixel units.

The per-channel mean and std alone cannot tell samples from noise: the pixel encoding of
`--data natural` normalises each channel by the data's mean and std, so N(0, I) latents
decode to pixels with the data's per-channel mean and std. Two kinds of statistic that
independent noise cannot fake complete them, each per channel or channel pair:

- `clip_sd_R/G/B`, the spread of the clips' mean colours: the sd across the batch of
  each clip's mean R, G and B. Photographs differ in colour from clip to clip; every
  clip of decoded noise averages thousands of independent pixels to the same mean.
- `corr_RG/GB/RB`, the Pearson correlation of two channels over all pixels, and
  `block_corr_RG/GB/RB`, the same over the means of `CORR_BLOCK` x `CORR_BLOCK`-pixel
  blocks of each frame. Photographs have strongly correlated channels; the encoding
  normalises each channel without decorrelating them, so decoded noise has none. The
  pixel-level correlation also falls with colour noise at the finest scale, which
  `spatial_diff` already measures; the block means average that out and leave the
  colour relation itself.

The tolerance comes from the data, not from the model: `reference_batches` of the same
size as the sampled batch, drawn independently, give each statistic's spread across
batches (`sd`). The statistic of two independent batches of one distribution differs
with standard deviation sqrt(2) sd, so a sampled batch passes a statistic when its z-score against the
reference batch whose captions it was given, ``(sample - reference) / (sqrt(2) sd)``, is
within `Z_TOLERANCE`. Conditioning both batches on the same captions makes them closer
than two independent batches, so this tolerance errs on the lenient side for a model
that matches the data and does not hide a model that misses by several data-spreads.

For `--data natural` the reference clips are the training distribution's clips at
indices no run consumes (`UNSEEN_TRAIN_START` on): the model learned the training
photographs, and the val split's photographs (a different set, chosen for generalisation)
have other colours, so they would measure transfer, not whether sampling works.

Shape legend: B clips, F frames, H/W pixel height/width.
"""
from __future__ import annotations

import math

import numpy as np

STATISTICS = ("mean_R", "mean_G", "mean_B", "std_R", "std_G", "std_B",
              "spatial_diff", "frame_diff",
              "clip_sd_R", "clip_sd_G", "clip_sd_B",
              "corr_RG", "corr_GB", "corr_RB", "block_corr_RG", "block_corr_GB", "block_corr_RB")
CHANNEL_PAIRS = ((0, 1, "RG"), (1, 2, "GB"), (0, 2, "RB"))
CORR_BLOCK = 4
"""Side in pixels of the blocks `block_corr_*` averages over (one token of `make train`'s
model: 2x2 space-to-depth, 2x2 patches); frames are cropped to a multiple of it."""
COLOUR_STATISTICS = ("mean_R", "mean_G", "mean_B", "std_R", "std_G", "std_B",
                     "clip_sd_R", "clip_sd_G", "clip_sd_B",
                     "block_corr_RG", "block_corr_GB", "block_corr_RB")
"""Colour: what `make train`'s model matches and decoded noise does not (docs/inference.md)."""
STRUCTURE_STATISTICS = ("spatial_diff", "frame_diff", "corr_RG", "corr_GB", "corr_RB")
"""Fine spatial and temporal structure (pixel-scale colour noise also lowers the pixel-level
correlations): what that model still misses, 2-4x the data's differences."""
Z_TOLERANCE = 3.0
UNSEEN_TRAIN_START = 1_000_000
"""First train-split clip index used as reference: beyond what any run here consumes
(train_iters x global_batch_size clips, from index 0)."""


def video_statistics(videos_BFHW3: np.ndarray) -> dict[str, float]:
    """`STATISTICS` of a batch of RGB videos (uint8 or float in [0, 1])."""
    x = np.asarray(videos_BFHW3, dtype=np.float64)
    if videos_BFHW3.dtype == np.uint8:
        x = x / 255.0
    flat = x.reshape(-1, 3)
    stats = {f"mean_{c}": float(v) for c, v in zip("RGB", flat.mean(0))}
    stats.update({f"std_{c}": float(v) for c, v in zip("RGB", flat.std(0))})
    horizontal = np.abs(np.diff(x, axis=3)).mean()
    vertical = np.abs(np.diff(x, axis=2)).mean()
    stats["spatial_diff"] = float((horizontal + vertical) / 2)
    stats["frame_diff"] = float(np.abs(np.diff(x, axis=1)).mean()) if x.shape[1] > 1 else 0.0
    clip_means_B3 = x.mean(axis=(1, 2, 3))
    stats.update({f"clip_sd_{c}": float(v) for c, v in zip("RGB", clip_means_B3.std(0))})
    b, f, h, w, _ = x.shape
    k = CORR_BLOCK
    blocks = x[:, :, :h - h % k, :w - w % k].reshape(b, f, h // k, k, w // k, k, 3)
    block_means = blocks.mean(axis=(3, 5)).reshape(-1, 3)
    for i, j, pair in CHANNEL_PAIRS:
        stats[f"corr_{pair}"] = _correlation(flat[:, i], flat[:, j])
        stats[f"block_corr_{pair}"] = _correlation(block_means[:, i], block_means[:, j])
    return stats


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either is constant (or empty: no whole block)."""
    if a.size == 0:
        return math.nan
    da, db = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((da * da).sum()) * float((db * db).sum()))
    return float((da * db).sum()) / denom if denom > 0 else math.nan


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """[0, 1] floats as the sampler's decoded videos are stored (clipped, rounded)."""
    return (np.clip(pixels, 0, 1) * 255).round().astype(np.uint8)


def reference_batches(clips, num_batches: int, batch_size: int,
                      split: str = "train", start: int = UNSEEN_TRAIN_START):
    """`num_batches` consecutive batches of real clips, from `clips.render(split, i)`
    (a `data.natural.NaturalClips`), as (uint8 videos [B, F, H, W, 3], captions)."""
    batches = []
    for b in range(num_batches):
        first = start + b * batch_size
        rendered = [clips.render(split, i) for i in range(first, first + batch_size)]
        batches.append((to_uint8(np.stack([r[0] for r in rendered])),
                        [r[1] for r in rendered]))
    return batches


def compare(sampled: dict[str, float], references: list[dict[str, float]],
            paired: int = 0) -> list[dict]:
    """Per statistic: the sampled value, the paired reference batch's, the spread (sd)
    over all reference batches, the z-score and whether |z| <= Z_TOLERANCE."""
    if len(references) < 2:
        raise ValueError(f"need >= 2 reference batches for a spread, got {len(references)}")
    rows = []
    for name in STATISTICS:
        values = np.array([r[name] for r in references])
        sd = float(values.std(ddof=1))
        diff = sampled[name] - references[paired][name]
        z = diff / (math.sqrt(2) * sd) if sd > 0 else math.copysign(math.inf, diff)
        rows.append({"statistic": name, "sample": sampled[name],
                     "reference": references[paired][name], "reference_sd": sd,
                     "tolerance": Z_TOLERANCE * math.sqrt(2) * sd, "z": z,
                     "ok": abs(z) <= Z_TOLERANCE})
    return rows


def markdown_table(rows: list[dict], noise_rows: list[dict] | None = None) -> str:
    """`compare`'s rows; with `noise_rows` (the same comparison for decoded N(0, I)
    latents) two more columns: what a sampler that learned nothing would score."""
    head = ("| statistic | samples | data (paired batch) | data sd across batches | "
            "tolerance (+-) | z | holds |")
    rule = "|---|---|---|---|---|---|---|"
    if noise_rows is not None:
        head, rule = head + " noise | noise z |", rule + "---|---|"
    lines = [head, rule]
    for i, r in enumerate(rows):
        line = (f"| {r['statistic']} | {r['sample']:.4f} | {r['reference']:.4f} | "
                f"{r['reference_sd']:.4f} | {r['tolerance']:.4f} | {r['z']:+.2f} | "
                f"{'yes' if r['ok'] else 'NO'} |")
        if noise_rows is not None:
            line += f" {noise_rows[i]['sample']:.4f} | {noise_rows[i]['z']:+.2f} |"
        lines.append(line)
    return "\n".join(lines)


def frame_grid(videos_BFHW3: np.ndarray, max_rows: int = 8) -> np.ndarray:
    """Up to `max_rows` videos as rows of their frames, one uint8 image with 1-px gaps."""
    v = videos_BFHW3[:max_rows]
    b, f, h, w, _ = v.shape
    grid = np.full((b * (h + 1) - 1, f * (w + 1) - 1, 3), 255, np.uint8)
    for i in range(b):
        for j in range(f):
            grid[i * (h + 1):i * (h + 1) + h, j * (w + 1):j * (w + 1) + w] = v[i, j]
    return grid
