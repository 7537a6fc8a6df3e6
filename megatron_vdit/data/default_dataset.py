"""The embedded default dataset: procedural mp4 files -> the real precompute -> shards.

Nothing here is a shortcut: clips are rendered by `procedural.render_clip`, written as
H.264 mp4 files with PyAV, captioned through a JSONL captions file, and encoded by the
same `run_precompute` that users run, with the tiny Wan VAE and tiny UMT5 encoder.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil

from tqdm import tqdm

from megatron_vdit.data.precompute import PrecomputeConfig, run_precompute
from megatron_vdit.data.precompute_config import vae_compression_before_loading, vae_latent_shape
from megatron_vdit.data.procedural import render_clip
from megatron_vdit.data.video_io import write_video
from megatron_vdit.utils.atomic_io import write_json_atomic

DEFAULT_FPS = 8
# Small shards so the default data can feed up to 32 data-parallel ranks.
DEFAULT_SAMPLES_PER_SHARD = 8
_GENERATED = ("videos", "train", "val", "_state", "manifest.json", "errors.jsonl")


@contextlib.contextmanager
def _locked(root: str):
    """Serialise concurrent callers (e.g. every rank of a job) on one root."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_videos(video_dir: str, num_train_clips: int, num_val_clips: int, frames: int,
                  height: int, width: int, seed: int) -> str:
    """Render one mp4 per clip; returns the captions JSONL path (with explicit splits)."""
    os.makedirs(video_dir, exist_ok=True)
    rows = []
    total = num_train_clips + num_val_clips
    for index in tqdm(range(total), desc="render default videos", unit="video"):
        split = "train" if index < num_train_clips else "val"
        frames_FHWC, caption = render_clip(seed, index, frames, height, width)
        name = f"{split}-{index:06d}.mp4"
        write_video(os.path.join(video_dir, name), frames_FHWC, DEFAULT_FPS)
        rows.append({"path": name, "caption": caption, "split": split})
    captions_path = os.path.join(video_dir, "captions.jsonl")
    with open(captions_path, "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    return captions_path


def _is_current(root: str, expected: dict, num_train_clips: int, num_val_clips: int) -> bool:
    manifest_path = os.path.join(root, "manifest.json")
    if not os.path.exists(manifest_path):
        return False
    with open(manifest_path) as handle:
        manifest = json.load(handle)
    splits = manifest.get("splits", {})
    return (manifest.get("default_dataset") == expected
            and splits.get("train", {}).get("num_samples") == num_train_clips
            and splits.get("val", {}).get("num_samples") == num_val_clips)


def ensure_default_shards(root: str, num_train_clips: int, num_val_clips: int, frames: int,
                          height: int, width: int, seed: int = 0, text_tokens: int = 128) -> str:
    """Build (once) the default shards in ``root`` and return ``root``.

    Rebuilds when ``root/manifest.json`` is missing or was made with other arguments.
    ``frames`` must be ``4k+1`` and ``height``/``width`` multiples of 8 (the tiny VAE's
    compression); latents are ``[4, (frames-1)/4+1, height/8, width/8]``, text embeddings
    ``[text_tokens, 64]`` (byte tokens: 128 covers every procedural caption).
    """
    if num_train_clips < 1 or num_val_clips < 1:
        raise ValueError(f"need at least one clip per split, got train={num_train_clips} "
                         f"val={num_val_clips}")
    expected = {"num_train_clips": num_train_clips, "num_val_clips": num_val_clips,
                "frames": frames, "height": height, "width": width, "seed": seed,
                "text_tokens": text_tokens, "fps": DEFAULT_FPS, "version": 1}
    with _locked(root):
        if _is_current(root, expected, num_train_clips, num_val_clips):
            return root
        for name in _GENERATED:  # only what this function creates; nothing else in root
            path = os.path.join(root, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
        video_dir = os.path.join(root, "videos")
        cfg = PrecomputeConfig(
            inputs=[video_dir], output=root, num_frames=frames, height=height, width=width,
            clips_per_video=1, captions=os.path.join(video_dir, "captions.jsonl"),
            vae_config="tiny-wan", text_encoder_config="tiny-umt5", text_tokens=text_tokens,
            max_samples_per_shard=DEFAULT_SAMPLES_PER_SHARD, val_fraction=0.0, seed=seed,
            batch_size=16, dtype="float32", device="cpu", threads=1)
        cfg.validate()
        vae_latent_shape(*vae_compression_before_loading(None, cfg.vae_config), frames, height,
                         width)  # before rendering
        _write_videos(video_dir, num_train_clips, num_val_clips, frames, height, width, seed)
        run_precompute(cfg)
        manifest_path = os.path.join(root, "manifest.json")
        with open(manifest_path) as handle:
            manifest = json.load(handle)
        manifest["default_dataset"] = expected
        write_json_atomic(manifest_path, manifest, indent=1, sort_keys=True)
        if not _is_current(root, expected, num_train_clips, num_val_clips):
            raise RuntimeError(f"default shards in {root} lost clips; see {root}/errors.jsonl")
    return root
