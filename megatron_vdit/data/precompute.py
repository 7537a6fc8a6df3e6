"""Precompute: videos + captions -> VAE latents + text embeddings -> WebDataset shards.

Determinism is the design: sources are sorted, each video is probed (frame count, fps),
its clips are cut by a fixed rule, clips are split by a hash of their source and packed
into shards in order. That *plan* is computed identically by every rank before any
encoding, so each shard's content is a pure function of its inputs and the args:

- torchrun ranks take disjoint shards (every ``world_size``-th shard of the plan);
- a rerun skips shards whose tar matches its state record (planned clips, byte size,
  sha256) and redoes the rest, so a shard cut short after the run is redone too;
- shards are written temp + rename, so a killed run leaves no partial shard.

Bad input (paths, args, a malformed captions file, inputs that are all unusable) is a
``ValueError`` before any encoding, and a refused run leaves nothing behind
(``precompute_state``).

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
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from megatron_vdit.data import precompute_config, precompute_state as state, shard_format
from megatron_vdit.data.distributed_env import RankContext
from megatron_vdit.data.encoders import TextEncoder, VideoVAE, load_text_encoder, load_vae
from megatron_vdit.data.precompute_config import PrecomputeConfig, preflight  # noqa: F401
from megatron_vdit.data.sources import SPLITS, Source, read_video_bytes, split_of
from megatron_vdit.data.video_io import (ClipSpec, VideoError, decode_clips, frames_to_model_input,
                                         plan_clips, probe_video)
from megatron_vdit.utils.atomic_io import atomic_path, write_json_atomic, write_text_atomic

MANIFEST_FORMAT = "megatron_vdit.latent_shards/1"
STATE_DIR = state.STATE_DIR


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
    cache = state.read_json(cache_path)
    cache = cache if isinstance(cache, dict) else {}  # missing or torn: probe again
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
        write_json_atomic(cache_path, {i: cache[i] for i in sorted(stamps)}, indent=None,
                          sort_keys=True)
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


def _publish(task: ShardTask, record: dict, output: str) -> None:
    """Tar to a temp file, its size and sha256 into the record, record, then the tar's
    rename last: a tar on disk always has a matching record."""
    tar = state.tar_path(output, task.split, task.index)
    if os.path.exists(tar):
        os.remove(tar)  # stale or damaged: its record no longer matches it
    with atomic_path(tar) as temp:   # renamed over `tar` when the block ends
        shard_format.write_tar(temp, record.pop("_members"))
        record["bytes"], record["sha256"] = os.path.getsize(temp), shard_format.file_sha256(temp)
        write_json_atomic(state.record_path(output, task.split, task.index), record,
                          sort_keys=True)


def run_tasks(tasks: list[ShardTask], vae: VideoVAE, text_encoder: TextEncoder,
              cfg: PrecomputeConfig, ctx: RankContext) -> dict:
    """Write this rank's shards (skipping finished, intact ones); returns counts."""
    mine = tasks[ctx.rank::ctx.world_size]
    counts = {"shards_written": 0, "shards_skipped": 0, "shards_redone": 0, "clips_encoded": 0}
    started = time.perf_counter()
    bar = tqdm(total=sum(len(t.items) for t in mine), unit="clip", position=ctx.rank,
               desc=f"[rank {ctx.rank}] encode", disable=not cfg.progress)
    with concurrent.futures.ThreadPoolExecutor(cfg.decode_threads) as pool:
        for task in mine:
            problem = state.shard_problem(cfg.output, task.split, task.index, task.item_ids())
            if problem is None:
                counts["shards_skipped"] += 1
            else:
                if problem != "not written by this plan":
                    name = shard_format.shard_name(task.index)
                    print(f"precompute: {task.split}/{name} is damaged ({problem}); "
                          "redoing it", file=sys.stderr)
                    counts["shards_redone"] += 1
                record = write_shard(task, vae, text_encoder, cfg, pool)
                _publish(task, record, cfg.output)
                counts["shards_written"] += 1
                counts["clips_encoded"] += record["num_samples"]
            bar.update(len(task.items))
    bar.close()
    counts["encode_seconds"] = time.perf_counter() - started
    return counts


def _split_summary(tasks: list[ShardTask], records: dict, output: str, split: str) -> dict:
    shards = []
    for task in tasks:
        if task.split == split:
            record = records[(task.split, task.index)]
            # bytes + sha256 (from the record, taken when the shard was written) let a
            # reader catch a shard cut short or corrupted after this run.
            shards.append({"name": record["name"], "num_samples": record["num_samples"],
                           "bytes": record["bytes"], "sha256": record["sha256"]})
    return {"num_samples": sum(s["num_samples"] for s in shards), "num_shards": len(shards),
            "num_sources": len({item[0] for t in tasks if t.split == split
                                for item in t.item_ids()}),
            "shards": shards}


def finalize(cfg: PrecomputeConfig, tasks: list[ShardTask], early_errors: list[dict],
             vae: VideoVAE, text_encoder: TextEncoder, shapes: dict) -> dict:
    """Rank 0: errors.jsonl, stray-shard cleanup, then manifest.json (written last)."""
    records = {}
    for task in tasks:
        with open(state.record_path(cfg.output, task.split, task.index)) as handle:
            records[(task.split, task.index)] = json.load(handle)
    errors = early_errors + [e for r in records.values() for e in r["errors"]]
    errors.sort(key=lambda e: (e["path"], e.get("clip_index", -1), e["reason"]))
    errors_path = os.path.join(cfg.output, "errors.jsonl")
    write_text_atomic(errors_path, "".join(json.dumps(e, sort_keys=True) + "\n" for e in errors))
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
    write_json_atomic(os.path.join(cfg.output, "manifest.json"), manifest, sort_keys=True)
    return manifest


def _resolve_device(device: str, ctx: RankContext) -> str:
    if device == "auto":
        if torch.cuda.is_available():
            local_rank = int(os.environ.get("LOCAL_RANK", ctx.rank))
            return f"cuda:{local_rank % torch.cuda.device_count()}"
        return "cpu"
    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"--device {device!r} is not a device ({err})") from err
    if parsed.type == "cuda" and not (torch.cuda.is_available() and
                                      (parsed.index or 0) < torch.cuda.device_count()):
        raise ValueError(f"--device {device}: no such CUDA device on this machine "
                         f"({torch.cuda.device_count()} visible)")
    return device


def run_precompute(cfg: PrecomputeConfig, ctx: RankContext | None = None,
                   discovered: tuple[list[Source], list[dict]] | None = None) -> dict:
    """Run the whole precompute (this rank's share of it); returns a summary dict.

    Raises `ValueError` before any decoding for bad args and paths (including a frame
    count or size the VAE cannot take), a malformed captions file, or inputs of which
    none is usable; a refused run leaves nothing in ``cfg.output``. ``discovered`` is
    what :func:`preflight` returned, if the caller ran it already.
    """
    discovered = discovered or preflight(cfg)
    previous_threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, ctx or RankContext(), *discovered)
    finally:
        torch.set_num_threads(previous_threads)


def _prepare_output(cfg: PrecomputeConfig, ctx: RankContext) -> list[str]:
    """Check the output's args (all ranks, before anything is written), then rank 0 makes
    the directories and records the args. Returns what this run created."""
    wanted = json.loads(json.dumps(cfg.content_args()))
    args_state = state.args_state(cfg.output, wanted)
    ctx.barrier()
    created = state.fresh_dirs(cfg.output) if ctx.rank == 0 else []
    if ctx.rank == 0:
        for directory in [os.path.join(cfg.output, STATE_DIR, s) for s in SPLITS] + \
                [os.path.join(cfg.output, s) for s in SPLITS]:
            os.makedirs(directory, exist_ok=True)
        state.record_args(cfg.output, wanted, args_state)
    ctx.barrier()
    return created


def _run(cfg: PrecomputeConfig, ctx: RankContext, sources: list[Source],
         discover_errors: list[dict]) -> dict:
    started = time.perf_counter()
    device = _resolve_device(cfg.device, ctx)
    compute_dtype = getattr(torch, cfg.compute_dtype)
    vae = load_vae(cfg.vae_path, cfg.vae_config, seed=cfg.seed, device=device, dtype=compute_dtype)
    latent_shape = vae.latent_shape(cfg.num_frames, cfg.height, cfg.width)
    text_encoder = load_text_encoder(cfg.text_encoder_path, cfg.text_encoder_config,
                                     max_tokens=cfg.text_tokens, seed=cfg.seed, device=device,
                                     dtype=compute_dtype)
    shapes = {"latent": latent_shape, "text": (cfg.text_tokens, text_encoder.embed_dim)}
    created = _prepare_output(cfg, ctx)
    try:
        clips, probe_errors, num_probed = probe_all(sources, cfg, ctx)
        per_shard = samples_per_shard(cfg, latent_shape, shapes["text"])
        tasks = make_plan(sources, clips, cfg, per_shard)
        if not tasks:
            raise precompute_config.all_rejected(discover_errors + probe_errors, "probing")
    except ValueError:
        ctx.barrier()
        if ctx.rank == 0:
            state.undo_fresh(cfg.output, created)
        raise
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
