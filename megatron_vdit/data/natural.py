"""Sweep data with real image statistics: photographs animated by a moving camera.

Why: procedural shapes on flat backgrounds are solved by every CPU-sized model, so a
sweep on them shows no size effect. Natural images have the power-law spectra and
textures whose loss keeps falling with model size and tokens.

Source pixels are the photographs bundled in scikit-image's wheel (no download). Train
and validation are disjoint in *content*: the validation clips are cut from photographs
the training stream never shows (`VAL_IMAGES`), and their moving objects too.

Clip `i` of a split is a pure function of (seed, split, i) (unlimited, resumable from
an index): a background photograph seen through a camera that pans (8 directions, slow
or fast), zooms (in, out or not) and rotates (clockwise, counter-clockwise or not), and
a textured disc cut from another photograph of the same split, moving in its own
direction at its own speed in front of it (two-layer parallax). The caption says all of
that with the scene names, so conditioning carries information.

Latent encoding (fixed, documented, invertible; `encode` / `decode`): each RGB pixel in
[0, 1] is normalised per channel by the mean and std measured on the training photographs
(`channel_stats`), then 2x2 space-to-depth folds pixel frames [F, 2H, 2W, 3] into
latents [12, F, H, W] (channel index = 4 * rgb + 2 * dy + dx). Real runs keep the VAE
path (`--data default` or precomputed shards); this encoding is for CPU sweeps.

Shape legend: F frames, H/W latent height/width, P pixel side (= 2H), C=12 channels.
"""
from __future__ import annotations

import functools
import math
import os
import zipfile

import numpy as np

from ..utils.atomic_io import atomic_open
from .synthetic import CaptionEmbedder, stack_samples

# Photographs (and two photographed textures) bundled with scikit-image, by file name.
TRAIN_IMAGES = ("astronaut", "coffee", "rocket", "hubble_deep_field", "ihc", "retina",
                "motorcycle_left", "camera", "coins", "moon", "brick", "grass", "cell",
                "page", "text")
VAL_IMAGES = ("chelsea", "gravel", "clock_motion")
SPACE_TO_DEPTH = 2
LATENT_CHANNELS = 3 * SPACE_TO_DEPTH ** 2
SOURCE_SIDE = 128          # photographs are resized once so their short side is this
DIRECTIONS = {"right": (1, 0), "up-right": (1, -1), "up": (0, -1), "up-left": (-1, -1),
              "left": (-1, 0), "down-left": (-1, 1), "down": (0, 1), "down-right": (1, 1)}
PAN_SPEEDS = {"slow": 1.5, "fast": 4.0}            # source pixels per frame
ZOOMS = {"in": 1 / 1.12, "out": 1.12, "steady": 1.0}  # view-size factor per frame
ROTATIONS = {"clockwise": -0.12, "counterclockwise": 0.12, "level": 0.0}  # rad per frame
_SPLIT_STREAM = {"train": 0, "val": 1}


def _image_path(name: str) -> str:
    import skimage
    folder = os.path.join(os.path.dirname(skimage.__file__), "data")
    for ext in (".png", ".jpg"):
        if os.path.exists(os.path.join(folder, name + ext)):
            return os.path.join(folder, name + ext)
    raise FileNotFoundError(f"scikit-image ships no image {name!r} in {folder}")


@functools.lru_cache(maxsize=None)
def load_photo(name: str) -> np.ndarray:
    """RGB float32 [h, w, 3] in [0, 1], short side SOURCE_SIDE (anti-aliased resize)."""
    from skimage import io, transform
    image = io.imread(_image_path(name))
    image = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 else 1.0)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = image[..., :3]
    scale = SOURCE_SIDE / min(image.shape[:2])
    shape = (round(image.shape[0] * scale), round(image.shape[1] * scale), 3)
    return np.clip(transform.resize(image, shape, anti_aliasing=True), 0, 1).astype(np.float32)


@functools.lru_cache(maxsize=None)
def channel_stats() -> tuple[np.ndarray, np.ndarray]:
    """Per-RGB mean and std over the training photographs (the latent normalisation)."""
    pixels = np.concatenate([load_photo(n).reshape(-1, 3) for n in TRAIN_IMAGES])
    return pixels.mean(0).astype(np.float32), pixels.std(0).astype(np.float32)


def encode(pixels_FPP3: np.ndarray) -> np.ndarray:
    """Pixels [F, 2H, 2W, 3] in [0, 1] -> latents [12, F, H, W] (normalise, space-to-depth)."""
    mean, std = channel_stats()
    f, ph, pw, _ = pixels_FPP3.shape
    k = SPACE_TO_DEPTH
    x = (pixels_FPP3 - mean) / std
    x = x.reshape(f, ph // k, k, pw // k, k, 3)              # f, h, dy, w, dx, c
    return np.ascontiguousarray(x.transpose(5, 2, 4, 0, 1, 3).reshape(3 * k * k, f, ph // k, pw // k))


def decode(latent_CFHW: np.ndarray) -> np.ndarray:
    """Exact inverse of `encode`: latents [12, F, H, W] -> pixels [F, 2H, 2W, 3]."""
    mean, std = channel_stats()
    k = SPACE_TO_DEPTH
    _, f, h, w = latent_CFHW.shape
    x = latent_CFHW.reshape(3, k, k, f, h, w).transpose(3, 4, 1, 5, 2, 0)  # f, h, dy, w, dx, c
    return x.reshape(f, h * k, w * k, 3) * std + mean


def _sample_view(image: np.ndarray, center, side: float, angle: float, out: int) -> np.ndarray:
    """A rotated square view (side in source pixels) of `image`, 2x supersampled to out px."""
    n = 2 * out
    grid = (np.arange(n, dtype=np.float32) + 0.5) / n - 0.5
    u, v = np.meshgrid(grid * side, grid * side)               # u: x offset, v: y offset
    c, s = math.cos(angle), math.sin(angle)
    xs, ys = center[0] + c * u - s * v, center[1] + s * u + c * v
    rgb = _bilinear(image, ys, xs)
    return 0.25 * (rgb[0::2, 0::2] + rgb[0::2, 1::2] + rgb[1::2, 0::2] + rgb[1::2, 1::2])


def _mirror(index: np.ndarray, size: int) -> np.ndarray:
    """Integer pixel indices reflected about the edge pixels' centres (d c b | a b c d | c b a),
    scipy.ndimage's "mirror" mode."""
    if size == 1:
        return np.zeros_like(index)
    period = 2 * (size - 1)
    index = np.mod(index, period)
    return np.where(index > size - 1, period - index, index)


def _bilinear(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """`image` [h, w, 3] sampled at (ys, xs) by bilinear interpolation, mirrored outside:
    all three channels in one gather (several times faster than one scipy call per channel,
    which copies the strided channel first; the values agree to float rounding)."""
    h, w, _ = image.shape
    y0, x0 = np.floor(ys), np.floor(xs)
    fy, fx = (ys - y0)[..., None], (xs - x0)[..., None]
    y0, x0 = y0.astype(np.int64), x0.astype(np.int64)
    ya, yb = _mirror(y0, h), _mirror(y0 + 1, h)
    xa, xb = _mirror(x0, w), _mirror(x0 + 1, w)
    flat = image.reshape(-1, image.shape[-1])
    corners = flat.take(np.stack([ya * w + xa, ya * w + xb, yb * w + xa, yb * w + xb]), axis=0)
    top = corners[0] + (corners[1] - corners[0]) * fx
    bottom = corners[2] + (corners[3] - corners[2]) * fx
    return (top + (bottom - top) * fy).astype(np.float32)


def _choice(rng: np.random.Generator, table: dict) -> str:
    keys = list(table)
    return keys[rng.integers(len(keys))]


class NaturalClips:
    """Animated photographs as latents [12, F, H, W] with caption embeddings [X, T]."""

    def __init__(self, frames: int, height: int, width: int, text_width: int,
                 max_text_tokens: int, seed: int = 0, cache_dir: str | None = None):
        if height != width:
            raise ValueError(f"--data natural renders square views; got latent height {height} "
                             f"!= width {width}")
        self.frames, self.side, self.seed = frames, height * SPACE_TO_DEPTH, seed
        self.captions = CaptionEmbedder(text_width, max_text_tokens, seed)
        key = f"v{RENDER_VERSION}-f{frames}-p{self.side}-t{text_width}x{max_text_tokens}-s{seed}"
        self.cache = ClipCache(os.path.join(cache_dir, key), self._render_chunk) \
            if cache_dir else None

    def render(self, split: str, index: int) -> tuple[np.ndarray, str]:
        """Pixels [F, P, P, 3] in [0, 1] and the caption of clip `index` of `split`."""
        if split not in _SPLIT_STREAM:
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'val'")
        names = TRAIN_IMAGES if split == "train" else VAL_IMAGES
        rng = np.random.default_rng([self.seed, _SPLIT_STREAM[split], index])
        scene, thing = names[rng.integers(len(names))], names[rng.integers(len(names))]
        pan, speed = _choice(rng, DIRECTIONS), _choice(rng, PAN_SPEEDS)
        zoom, turn = _choice(rng, ZOOMS), _choice(rng, ROTATIONS)
        move, move_speed = _choice(rng, DIRECTIONS), _choice(rng, PAN_SPEEDS)
        image, texture = load_photo(scene), load_photo(thing)
        side = self.side * math.exp(rng.uniform(0, math.log(3)))   # 1x-3x the output size
        center = np.array([rng.uniform(0, image.shape[1]), rng.uniform(0, image.shape[0])])
        angle = rng.uniform(-0.3, 0.3)
        pan_v = np.array(DIRECTIONS[pan], np.float32) * PAN_SPEEDS[speed]
        # The object: a disc of texture, its own velocity (in output pixels per frame).
        radius = rng.uniform(0.15, 0.3) * self.side
        pos = rng.uniform(0.25, 0.75, size=2) * self.side
        obj_v = np.array(DIRECTIONS[move], np.float32) * PAN_SPEEDS[move_speed] * 0.75
        tex_center = np.array([rng.uniform(0, texture.shape[1]), rng.uniform(0, texture.shape[0])])
        patch = _sample_view(texture, tex_center, 2.0 * self.side, 0.0, self.side)
        yy, xx = np.mgrid[0:self.side, 0:self.side].astype(np.float32) + 0.5
        frames = []
        for f in range(self.frames):
            view = _sample_view(image, center + f * pan_v, side * ZOOMS[zoom] ** f,
                                angle + f * ROTATIONS[turn], self.side)
            p = pos + f * obj_v
            dist = np.hypot(xx - p[0], yy - p[1])
            alpha = np.clip(radius - dist + 0.5, 0, 1)[..., None]   # 1-pixel soft edge
            shifted = np.roll(patch, (round(p[1] - self.side / 2), round(p[0] - self.side / 2)), (0, 1))
            frames.append(view * (1 - alpha) + shifted * alpha)
        caption = (f"{scene} camera pans {pan} {speed} zooms {zoom} turns {turn} "
                   f"{thing} disc moves {move} {move_speed}")
        return np.clip(np.stack(frames), 0, 1).astype(np.float32), caption

    def sample(self, split: str, index: int) -> dict:
        pixels, caption = self.render(split, index)
        text, mask = self.captions(caption)
        return {"latent": encode(pixels), "text_emb": text, "text_mask": mask, "caption": caption}

    def batch(self, split: str, indices: list[int]) -> dict:
        if self.cache is None:
            return stack_samples([self.sample(split, i) for i in indices], split, indices)
        return stack_samples([self.cache.sample(split, i) for i in indices], split, indices)

    def _render_chunk(self, split: str, start: int, count: int) -> dict:
        rows = [self.sample(split, i) for i in range(start, start + count)]
        return {k: np.stack([r[k] for r in rows]) for k in CACHED_KEYS}


CACHED_KEYS = ("latent", "text_emb", "text_mask")
RENDER_VERSION = 1  # bump when render() changes: a cache of another version is not read
CHUNK = 256          # clips per cache file (12 MB at 4 x 32 x 32 pixels)


class ClipCache:
    """Rendered clips on disk, shared by every run that renders the same ones (a sweep).

    Rendering costs about as much as a small model's training step, and every run of a
    sweep sees the same clips (same `--data-seed`), so the first run to need a chunk of
    `CHUNK` clips renders and writes it (atomically: concurrent runs at worst both
    render it) and the others read it. The cached arrays are the rendered ones, so a
    cached run is bit-identical to an uncached one. A chunk that cannot be read is
    rendered again and replaced.
    """

    def __init__(self, directory: str, render, keep: int = 4):
        self.directory, self.render, self.keep = directory, render, keep
        self.loaded: dict[tuple, dict] = {}

    def sample(self, split: str, index: int) -> dict:
        chunk = self._chunk(split, index // CHUNK)
        return {k: chunk[k][index % CHUNK] for k in CACHED_KEYS}

    def _chunk(self, split: str, number: int) -> dict:
        if (split, number) in self.loaded:
            return self.loaded[(split, number)]
        path = os.path.join(self.directory, f"{split}-{number:06d}.npz")
        try:
            with np.load(path) as archive:
                arrays = {k: archive[k] for k in CACHED_KEYS}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            arrays = self.render(split, number * CHUNK, CHUNK)
            os.makedirs(self.directory, exist_ok=True)
            with atomic_open(path, "wb") as handle:
                np.savez(handle, **arrays)
        if len(self.loaded) >= self.keep:
            self.loaded.pop(next(iter(self.loaded)))
        self.loaded[(split, number)] = arrays
        return arrays
