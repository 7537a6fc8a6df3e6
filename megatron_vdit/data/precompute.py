"""Precompute: videos + captions -> VAE latents + text embeddings -> WebDataset shards.

Determinism is the design: sources are sorted, each video is probed (frame count, fps),
its clips are cut by a fixed rule, clips are split by a hash of their source and packed
into shards in order. That *plan* is computed identically by every rank before any
encoding, so each shard's content is a pure function of its inputs and the args:

- torchrun ranks take disjoint shards (every ``world_size``-th shard of the plan);
- a rerun skips shards whose tar and state record match the plan and redoes the rest;
- shards are written temp + rename, so a killed run leaves no partial shard.

Rank 0 writes ``manifest.json`` and ``errors.jsonl`` after all shards exist; the
manifest is written last, so its presence means the output is complete.

Shape legend: B = clips in a batch, C = channels, F = frames, H/W = height/width,
S = text tokens, D = text embedding width.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import time

import numpy as np
import torch
from tqdm import tqdm

from megatron_vdit.data import shard_format
from megatron_vdit.data.distributed_env import RankContext
from megatron_vdit.data.encoders import TextEncoder, VideoVAE, load_text_encoder, load_vae
from megatron_vdit.data.sources import SPLITS, Source, discover_sources, read_video_bytes, split_of
from megatron_vdit.data.video_io import (ClipSpec, VideoError, decode_clips, frames_to_model_input,
                                         plan_clips, probe_video)

MANIFEST_FORMAT = "megatron_vdit.latent_shards/1"
STATE_DIR = "_state"


@dataclasses.dataclass
class PrecomputeConfig:
    """Everything the CLI exposes. Fields in `content_args` determine shard bytes."""

    inputs: list[str]
    output: str
    num_frames: int
    height: int
    width: int
    fps: float | None = None
    """Target frame rate; None samples every source frame."""
    clips_per_video: int = 4
    """At most this many non-overlapping clips per video, evenly spaced."""
    captions: str | None = None
    vae_path: str | None = None
    vae_config: str | None = None
    text_encoder_path: str | None = None
    text_encoder_config: str | None = None
    text_tokens: int = 128
    """Padded caption length S (tokens of the encoder's tokenizer)."""
    shard_size_mb: float = 256.0
    max_samples_per_shard: int | None = None
    val_fraction: float = 0.05
    seed: int = 0
    """Seeds tiny-config weights only; nothing else is random."""
    batch_size: int = 8
    dtype: str = "float16"
    """Storage dtype of latent.npy and text_emb.npy."""
    compute_dtype: str = "float32"
    """Dtype the VAE and text encoder run in (bfloat16 halves GPU memory and time)."""
    device: str = "auto"
    decode_threads: int = 4
    threads: int | None = None
    """torch intra-op threads (None: torch's default). Bits of CPU latents depend on it."""
    progress: bool = True

    def content_args(self) -> dict:
        """Args that change shard contents; a rerun into the same output must match them."""
        skip = {"output", "device", "decode_threads", "threads", "progress"}
        args = {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}
        args["inputs"] = [os.path.abspath(p) for p in self.inputs]
        return args

    def validate(self) -> None:
        if self.dtype not in ("float16", "float32"):
            raise ValueError(f"--dtype {self.dtype!r} must be float16 or float32")
        if self.compute_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"--compute-dtype {self.compute_dtype!r} must be float32, bfloat16 "
                             "or float16")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction {self.val_fraction} must be in [0, 1)")
        if self.shard_size_mb <= 0 or self.batch_size < 1 or self.clips_per_video < 1:
            raise ValueError(f"--shard-size-mb {self.shard_size_mb}, --batch-size {self.batch_size}"
                             f" and --clips-per-video {self.clips_per_video} must be positive")
        if self.max_samples_per_shard is not None and self.max_samples_per_shard < 1:
            raise ValueError(f"--max-samples-per-shard {self.max_samples_per_shard} must be >= 1")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"--fps {self.fps} must be positive")


@dataclasses.dataclass(frozen=True)
class ShardTask:
    split: str
    index: int
    items: tuple[tuple[Source, ClipSpec], ...]

    def item_ids(self) -> list[list]:
        return [[source.source_id, clip.clip_index] for source, clip in self.items]


def sample_key(source_id: str, clip_index: int) -> str:
    """Stable, dot-free sample key (WebDataset keys end at the first dot)."""
    return hashlib.sha1(f"{source_id}#{clip_index}".encode()).hexdigest()[:16]


def _probe_one(source: Source, cfg: PrecomputeConfig) -> tuple[str, list | str]:
    try:
        info = probe_video(read_video_bytes(source))
        clips = plan_clips(info, cfg.num_frames, cfg.fps, cfg.clips_per_video)
        return source.source_id, [dataclasses.astuple(c) for c in clips]
    except VideoError as err:
        return source.source_id, str(err)


def _stamp(source: Source) -> list:
    """Identifies a source's bytes for the probe cache: file size, mtime, tar offset."""
    stat = os.stat(source.path)
    return [stat.st_size, stat.st_mtime_ns, source.member_offset]


def probe_all(sources: list[Source], cfg: PrecomputeConfig, ctx: RankContext
              ) -> tuple[dict[str, list[ClipSpec]], list[dict], int]:
    """Clips of every source, probe errors, and how many sources were probed (not cached).

    Each rank probes a slice; results are all-gathered.

    Outcomes are cached in ``_state/probe.json`` keyed by source id and file stamp, so a
    rerun probes only new or changed inputs (args cannot change: see args.json).
    """
    cache_path = os.path.join(cfg.output, STATE_DIR, "probe.json")
    cache = {}
    if os.path.exists(cache_path):
        with open(cache_path) as handle:
            cache = json.load(handle)
    stamps = {s.source_id: _stamp(s) for s in sources}
    todo = [s for s in sources if cache.get(s.source_id, {}).get("stamp") != stamps[s.source_id]]
    mine = todo[ctx.rank::ctx.world_size]
    with concurrent.futures.ThreadPoolExecutor(cfg.decode_threads) as pool:
        results = list(tqdm(pool.map(lambda s: _probe_one(s, cfg), mine), total=len(mine),
                            desc=f"[rank {ctx.rank}] probe videos", disable=not cfg.progress))
    for part in ctx.all_gather(results):
        for source_id, outcome in part:
            cache[source_id] = {"stamp": stamps[source_id], "outcome": outcome}
    if ctx.rank == 0 and todo:
        shard_format.write_json_atomic(cache_path, {i: cache[i] for i in sorted(stamps)},
                                       indent=None)
    clips, errors = {}, []
    for source in sources:
        outcome = cache[source.source_id]["outcome"]
        if isinstance(outcome, str):
            errors.append({"path": source.source_id, "reason": outcome})
        else:
            clips[source.source_id] = [ClipSpec(i, tuple(idx), fps) for i, idx, fps in outcome]
    return clips, errors, len(todo)


def samples_per_shard(cfg: PrecomputeConfig, latent_shape: tuple, text_shape: tuple) -> int:
    itemsize = np.dtype(cfg.dtype).itemsize
    sample_bytes = (itemsize * (int(np.prod(latent_shape)) + int(np.prod(text_shape)))
                    + text_shape[0] + shard_format.TAR_OVERHEAD_BYTES_PER_SAMPLE)
    per_shard = max(1, int(cfg.shard_size_mb * 2 ** 20 // sample_bytes))
    return min(per_shard, cfg.max_samples_per_shard or per_shard)


def make_plan(sources: list[Source], clips: dict[str, list[ClipSpec]], cfg: PrecomputeConfig,
              per_shard: int) -> list[ShardTask]:
    """Shards of each split, in source order; shard indices restart at 0 per split."""
    tasks = []
    for split in SPLITS:
        items = [(s, c) for s in sources if s.source_id in clips
                 and split_of(s, cfg.val_fraction) == split for c in clips[s.source_id]]
        for start in range(0, len(items), per_shard):
            chunk = tuple(items[start:start + per_shard])
            tasks.append(ShardTask(split, start // per_shard, chunk))
    return tasks


def _decode_chunk(items, cfg: PrecomputeConfig, pool) -> tuple[list, list[dict]]:
    """(decoded ``(source, clip, frames_FHWC)`` in plan order, decode errors) for a few clips.

    Clips of one video decode in one pass; different videos decode in parallel threads
    (PyAV releases the GIL while decoding).
    """
    by_source: dict[str, list] = {}
    for source, clip in items:
        by_source.setdefault(source.source_id, [source, []])[1].append(clip)

    def decode(entry):
        source, clip_list = entry
        try:
            return decode_clips(read_video_bytes(source), clip_list, cfg.height, cfg.width)
        except VideoError as err:
            return [err] * len(clip_list)

    decoded = dict(zip(by_source, pool.map(decode, by_source.values())))
    frames, errors = [], []
    for source, clip in items:
        position = by_source[source.source_id][1].index(clip)
        result = decoded[source.source_id][position]
        if isinstance(result, VideoError):
            errors.append({"path": source.source_id, "reason": str(result),
                           "clip_index": clip.clip_index})
        else:
            frames.append((source, clip, result))
    return frames, errors


def _encode_texts(captions: list[str], text_encoder: TextEncoder, batch_size: int) -> dict:
    """Unique caption -> (emb_SD, mask_S, truncated); clips of one video share a caption."""
    unique = sorted(set(captions))
    out = {}
    for start in range(0, len(unique), batch_size):
        chunk = unique[start:start + batch_size]
        emb_BSD, mask_BS, truncated = text_encoder.encode(chunk)
        for i, caption in enumerate(chunk):
            out[caption] = (emb_BSD[i].numpy(), mask_BS[i].numpy(), truncated[i])
    return out


def _sample_meta(task: ShardTask, source: Source, clip: ClipSpec, latent_shape, text_shape,
                 truncated: bool, vae: VideoVAE, text_encoder: TextEncoder,
                 cfg: PrecomputeConfig) -> dict:
    return {"source": source.source_id, "source_member": source.member, "split": task.split,
            "clip_index": clip.clip_index, "frame_indices": list(clip.frame_indices),
            "fps": clip.fps, "frames": cfg.num_frames, "height": cfg.height, "width": cfg.width,
            "latent_shape": list(latent_shape), "text_shape": list(text_shape),
            "caption": source.caption, "caption_truncated": truncated,
            "vae": {"class": type(vae.model).__name__, "source": vae.source,
                    "scaling": vae.scaling_type},
            "text_encoder": {"class": type(text_encoder.model).__name__,
                             "source": text_encoder.source}}


def write_shard(task: ShardTask, vae: VideoVAE, text_encoder: TextEncoder,
                cfg: PrecomputeConfig, pool) -> dict:
    """Decode and encode one shard's clips, a batch at a time; returns its state record
    with the tar members (``_members``) still to be written.

    Decoding per batch bounds memory to ``batch_size`` clips of pixels.
    """
    texts = _encode_texts([s.caption for s, _ in task.items], text_encoder, cfg.batch_size)
    members, keys, errors = [], [], []
    for start in range(0, len(task.items), cfg.batch_size):
        chunk, chunk_errors = _decode_chunk(task.items[start:start + cfg.batch_size], cfg, pool)
        errors += chunk_errors
        if not chunk:
            continue
        video_BCFHW = torch.stack([frames_to_model_input(f) for _, _, f in chunk])
        latent_BCFHW = vae.encode(video_BCFHW).numpy().astype(cfg.dtype)
        for (source, clip, _), latent_CFHW in zip(chunk, latent_BCFHW):
            emb_SD, mask_S, truncated = texts[source.caption]
            key = sample_key(source.source_id, clip.clip_index)
            meta = _sample_meta(task, source, clip, latent_CFHW.shape, emb_SD.shape, truncated,
                                vae, text_encoder, cfg)
            members += shard_format.sample_members(key, latent_CFHW, emb_SD.astype(cfg.dtype),
                                                   mask_S.astype(bool), meta)
            keys.append(key)
    return {"split": task.split, "name": shard_format.shard_name(task.index),
            "items": task.item_ids(), "keys": keys, "num_samples": len(keys),
            "errors": errors, "_members": members}


def _state_path(output: str, task: ShardTask) -> str:
    name = shard_format.shard_name(task.index) + ".json"
    return os.path.join(output, STATE_DIR, task.split, name)


def _is_done(output: str, task: ShardTask) -> bool:
    tar_path = os.path.join(output, task.split, shard_format.shard_name(task.index))
    state_path = _state_path(output, task)
    if not (os.path.exists(tar_path) and os.path.exists(state_path)):
        return False
    with open(state_path) as handle:
        return json.load(handle)["items"] == task.item_ids()


def run_tasks(tasks: list[ShardTask], vae: VideoVAE, text_encoder: TextEncoder,
              cfg: PrecomputeConfig, ctx: RankContext) -> dict:
    """Write this rank's shards (skipping finished ones); returns counts."""
    mine = tasks[ctx.rank::ctx.world_size]
    counts = {"shards_written": 0, "shards_skipped": 0, "clips_encoded": 0}
    started = time.perf_counter()
    bar = tqdm(total=sum(len(t.items) for t in mine), unit="clip", position=ctx.rank,
               desc=f"[rank {ctx.rank}] encode", disable=not cfg.progress)
    with concurrent.futures.ThreadPoolExecutor(cfg.decode_threads) as pool:
        for task in mine:
            if _is_done(cfg.output, task):
                counts["shards_skipped"] += 1
            else:
                tar_path = os.path.join(cfg.output, task.split, shard_format.shard_name(task.index))
                if os.path.exists(tar_path):
                    os.remove(tar_path)  # stale: its record no longer matches the plan
                record = write_shard(task, vae, text_encoder, cfg, pool)
                members = record.pop("_members")
                # Record first, tar rename last: a tar on disk always has a matching record.
                shard_format.write_json_atomic(_state_path(cfg.output, task), record)
                shard_format.write_tar_atomic(tar_path, members)
                counts["shards_written"] += 1
                counts["clips_encoded"] += record["num_samples"]
            bar.update(len(task.items))
    bar.close()
    counts["encode_seconds"] = time.perf_counter() - started
    return counts


def _check_or_record_args(cfg: PrecomputeConfig, ctx: RankContext) -> None:
    """Refuse to mix shards made with different args in one output directory."""
    path = os.path.join(cfg.output, STATE_DIR, "args.json")
    wanted = json.loads(json.dumps(cfg.content_args()))
    if os.path.exists(path):
        with open(path) as handle:
            found = json.load(handle)
        if found != wanted:
            changed = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
            raise ValueError(f"--output {cfg.output} holds shards made with different args "
                             f"(changed: {changed}); use a new output directory")
    ctx.barrier()
    if ctx.rank == 0 and not os.path.exists(path):
        shard_format.write_json_atomic(path, wanted)


def _split_summary(tasks: list[ShardTask], records: dict, output: str, split: str) -> dict:
    shards = []
    for task in tasks:
        if task.split == split:
            record = records[(task.split, task.index)]
            path = os.path.join(output, split, record["name"])
            # bytes + sha256 let a reader catch a shard cut short or corrupted after this run.
            shards.append({"name": record["name"], "num_samples": record["num_samples"],
                           "bytes": os.path.getsize(path),
                           "sha256": shard_format.file_sha256(path)})
    return {"num_samples": sum(s["num_samples"] for s in shards), "num_shards": len(shards),
            "num_sources": len({item[0] for t in tasks if t.split == split
                                for item in t.item_ids()}),
            "shards": shards}


def finalize(cfg: PrecomputeConfig, tasks: list[ShardTask], early_errors: list[dict],
             vae: VideoVAE, text_encoder: TextEncoder, shapes: dict) -> dict:
    """Rank 0: errors.jsonl, stray-shard cleanup, then manifest.json (written last)."""
    records = {}
    for task in tasks:
        with open(_state_path(cfg.output, task)) as handle:
            records[(task.split, task.index)] = json.load(handle)
    errors = early_errors + [e for r in records.values() for e in r["errors"]]
    errors.sort(key=lambda e: (e["path"], e.get("clip_index", -1), e["reason"]))
    errors_path = os.path.join(cfg.output, "errors.jsonl")
    with open(errors_path + ".tmp", "w") as handle:
        for error in errors:
            handle.write(json.dumps(error, sort_keys=True) + "\n")
    os.replace(errors_path + ".tmp", errors_path)
    for split in SPLITS:
        planned = {shard_format.shard_name(t.index) for t in tasks if t.split == split}
        for name in os.listdir(os.path.join(cfg.output, split)):
            # Temp files of killed runs and shards of an older, larger plan.
            unplanned = name.startswith("shard-") and name not in planned
            if name.startswith(".shard-") or unplanned:
                os.remove(os.path.join(cfg.output, split, name))
    manifest = {
        "format": MANIFEST_FORMAT,
        "splits": {split: _split_summary(tasks, records, cfg.output, split) for split in SPLITS},
        "latent": {"shape": list(shapes["latent"]), "dtype": cfg.dtype},
        "text_emb": {"shape": list(shapes["text"]), "dtype": cfg.dtype},
        "text_mask": {"shape": [shapes["text"][0]], "dtype": "bool"},
        "video": {"frames": cfg.num_frames, "height": cfg.height, "width": cfg.width,
                  "fps": cfg.fps, "pixel_range": [-1.0, 1.0]},
        "vae": vae.identity(), "text_encoder": text_encoder.identity(),
        "num_errors": len(errors), "errors_file": "errors.jsonl",
        "args": cfg.content_args(),
    }
    shard_format.write_json_atomic(os.path.join(cfg.output, "manifest.json"), manifest)
    return manifest


def _resolve_device(device: str, ctx: RankContext) -> str:
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', ctx.rank)) % torch.cuda.device_count()}"
    return "cpu"


def run_precompute(cfg: PrecomputeConfig, ctx: RankContext | None = None) -> dict:
    """Run the whole precompute (this rank's share of it); returns a summary dict.

    Raises `ValueError` before any decoding for bad args, including a frame count or
    size the VAE cannot take.
    """
    cfg.validate()
    previous_threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, ctx or RankContext())
    finally:
        torch.set_num_threads(previous_threads)


def _run(cfg: PrecomputeConfig, ctx: RankContext) -> dict:
    started = time.perf_counter()
    device = _resolve_device(cfg.device, ctx)
    compute_dtype = getattr(torch, cfg.compute_dtype)
    vae = load_vae(cfg.vae_path, cfg.vae_config, seed=cfg.seed, device=device, dtype=compute_dtype)
    latent_shape = vae.latent_shape(cfg.num_frames, cfg.height, cfg.width)
    text_encoder = load_text_encoder(cfg.text_encoder_path, cfg.text_encoder_config,
                                     max_tokens=cfg.text_tokens, seed=cfg.seed, device=device,
                                     dtype=compute_dtype)
    shapes = {"latent": latent_shape, "text": (cfg.text_tokens, text_encoder.embed_dim)}
    for directory in [os.path.join(cfg.output, STATE_DIR, s) for s in SPLITS] + \
            [os.path.join(cfg.output, s) for s in SPLITS]:
        os.makedirs(directory, exist_ok=True)
    _check_or_record_args(cfg, ctx)
    sources, discover_errors = discover_sources(cfg.inputs, cfg.captions, cfg.output)
    clips, probe_errors, num_probed = probe_all(sources, cfg, ctx)
    per_shard = samples_per_shard(cfg, latent_shape, shapes["text"])
    tasks = make_plan(sources, clips, cfg, per_shard)
    counts = run_tasks(tasks, vae, text_encoder, cfg, ctx)
    ctx.barrier()
    summary = {"rank": ctx.rank, "world_size": ctx.world_size, "sources": len(sources),
               "sources_probed": num_probed,
               "clips_planned": sum(len(t.items) for t in tasks), "shards_planned": len(tasks),
               **counts}
    if ctx.rank == 0:
        manifest = finalize(cfg, tasks, discover_errors + probe_errors, vae, text_encoder, shapes)
        summary.update({"samples": {s: manifest["splits"][s]["num_samples"] for s in SPLITS},
                        "errors": manifest["num_errors"]})
    ctx.barrier()
    summary["seconds"] = time.perf_counter() - started
    return summary
