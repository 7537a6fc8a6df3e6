"""Procedural videos with captions: the embedded default data, no download needed.

Each clip is a pure function of ``(seed, index)``: one to three coloured shapes (circles
and squares) move at constant velocity and bounce off the borders of a textured
background (a two-colour stripe pattern of random orientation and frequency). The
caption names the shapes, their colours, their directions and the background, so a
text-conditioned model has something real to learn from it.

Shapes: frames are ``[F, H, W, 3]`` uint8 (channels last, as video decoders return).
"""
from __future__ import annotations

import numpy as np

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
SHAPES = ("circle", "square")
BACKGROUND_COLORS = ("gray", "teal", "brown", "navy")
_BACKGROUND_RGB = {"gray": (110, 110, 110), "teal": (30, 120, 120),
                   "brown": (110, 70, 40), "navy": (20, 30, 80)}


def _direction_word(vx: float, vy: float) -> str:
    horizontal = "right" if vx > 0 else "left"
    vertical = "down" if vy > 0 else "up"
    return horizontal if abs(vx) >= abs(vy) else vertical


def _background(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, str]:
    name = BACKGROUND_COLORS[rng.integers(len(BACKGROUND_COLORS))]
    base = np.array(_BACKGROUND_RGB[name], dtype=np.float32)
    angle = rng.uniform(0, np.pi)
    freq = rng.uniform(2.0, 6.0) * 2 * np.pi / max(height, width)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    stripes = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy))
    image = base[None, None, :] * (1.0 + 0.25 * stripes[..., None])
    return image, name


def render_clip(seed: int, index: int, num_frames: int, height: int, width: int
                ) -> tuple[np.ndarray, str]:
    """Render clip ``index`` of the stream ``seed``: frames ``[F, H, W, 3]`` uint8, caption."""
    if min(num_frames, height, width) < 1:
        raise ValueError(f"clip dims must be positive, got frames={num_frames} "
                         f"height={height} width={width}")
    rng = np.random.default_rng([seed, index])
    background, background_name = _background(rng, height, width)
    num_shapes = int(rng.integers(1, 4))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    color_names = list(COLORS)
    shapes = []
    for _ in range(num_shapes):
        radius = rng.uniform(0.08, 0.2) * min(height, width)
        shapes.append(dict(
            kind=SHAPES[rng.integers(len(SHAPES))],
            color=color_names[rng.integers(len(color_names))],
            radius=radius,
            pos=np.array([rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)]),
            vel=rng.uniform(-0.06, 0.06, size=2) * np.array([width, height]),
        ))
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for f in range(num_frames):
        image = background.copy()
        for shape in shapes:
            cx, cy = _bounce(shape["pos"], shape["vel"], f, shape["radius"], width, height)
            if shape["kind"] == "circle":
                inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= shape["radius"] ** 2
            else:
                inside = (np.abs(xx - cx) <= shape["radius"]) & (np.abs(yy - cy) <= shape["radius"])
            image[inside] = COLORS[shape["color"]]
        frames[f] = np.clip(image, 0, 255).astype(np.uint8)
    described = [f"a {s['color']} {s['kind']} moving {_direction_word(*s['vel'])}" for s in shapes]
    caption = " and ".join(described) + f" on a striped {background_name} background"
    return frames, caption


def _bounce(pos: np.ndarray, vel: np.ndarray, step: int, radius: float,
            width: int, height: int) -> tuple[float, float]:
    """Position after ``step`` frames of straight motion, reflected off the borders."""
    out = []
    for coord, speed, size in ((pos[0], vel[0], width), (pos[1], vel[1], height)):
        lo, hi = radius, max(size - radius, radius + 1e-3)
        span = hi - lo
        unfolded = (coord - lo + speed * step) % (2 * span)
        out.append(lo + (unfolded if unfolded <= span else 2 * span - unfolded))
    return out[0], out[1]
