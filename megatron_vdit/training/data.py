"""Training and validation data for the loop: the embedded default or precomputed shards.

A source hands each data-parallel rank its slice of every global batch and can resume
exactly: `state_dict()` records the position, `load_state_dict()` restores it.
Validation iterates a fixed held-out set in a fixed order; each DP rank takes the
samples whose index is congruent to its rank, so the set is covered exactly once.

The checks (`check_data_paths`, `check_manifest`, `prepare_data` on shards) import no
torch; the sources do, when they are built.
"""
from __future__ import annotations

import functools
import os

from ..data.shard_format import DataError, read_manifest, verify_shards
from .config import JobConfig
from .resolved import Resolved


class _Source:
    """Validation for both sources: each DP rank takes the held-out samples whose index is
    congruent to its rank (the config guarantees equal shares), in fixed-size batches."""

    dp_rank: int
    dp_size: int

    def val_batches(self, num_samples: int, batch_size: int):
        mine = list(range(self.dp_rank, num_samples, self.dp_size))
        for i in range(0, len(mine), batch_size):
            indices = mine[i:i + batch_size]
            yield indices, self.val_batch(indices)

    def close(self) -> None:
        """Stop background reading, if any (the shard source's prefetch thread)."""


# Data made in memory from an index (no shards): a global position resumes them.
IN_MEMORY_DATA = ("synthetic", "natural")


class SyntheticSource(_Source):
    """Global batch k holds train samples [k*B, (k+1)*B); this rank takes its DP slice.

    Serves `--data synthetic` (procedural latents) and `--data natural` (animated
    photographs, `data/natural.py`); the fixed validation set is rendered once and kept.
    """

    def __init__(self, job: JobConfig, r: Resolved, dp_rank: int, dp_size: int):
        m = job.model
        if job.data.data == "natural":
            from ..data.natural import NaturalClips
            self.data = NaturalClips(m.latent_frames, m.latent_height, m.latent_width,
                                     m.text_hidden_size, m.max_text_tokens, seed=job.data.data_seed,
                                     cache_dir=job.data.natural_cache_dir)
        else:
            from ..data.synthetic import SyntheticLatents
            self.data = SyntheticLatents(m.in_channels, m.latent_frames, m.latent_height,
                                         m.latent_width, m.text_hidden_size, m.max_text_tokens,
                                         seed=job.data.data_seed)
        self._val_cache: dict[int, dict] = {}
        self.global_batch = r.global_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.next_batch = 0

    def next(self) -> dict:
        local = self.global_batch // self.dp_size
        start = self.next_batch * self.global_batch + self.dp_rank * local
        self.next_batch += 1
        return self.data.batch("train", list(range(start, start + local)))

    def val_batch(self, indices: list[int]) -> dict:
        missing = [i for i in indices if i not in self._val_cache]
        if missing:
            batch = self.data.batch("val", missing)
            for j, i in enumerate(missing):
                self._val_cache[i] = {k: batch[k][j] for k in ("latent", "text_emb", "text_mask")}
        import torch
        return {k: torch.stack([self._val_cache[i][k] for i in indices])
                for k in ("latent", "text_emb", "text_mask")}

    def state_dict(self) -> dict:
        return {"next_batch": self.next_batch}

    def load_state_dict(self, state: dict) -> None:
        self.next_batch = int(state["next_batch"])


class ShardSource(_Source):
    """Precomputed WebDataset shards (tools/precompute_latents.py) via `ShardLoader`.

    The held-out set is the first `eval_samples` samples of the val split in its fixed
    order, read once and kept in memory (it is small), so every layout evaluates the
    same samples.
    """

    def __init__(self, root: str, job: JobConfig, r: Resolved, dp_rank: int, dp_size: int,
                 train: bool = True):
        from ..data.loader import ShardLoader
        from ..data.prefetch import Prefetcher

        self.root, self.dp_rank, self.dp_size = root, dp_rank, dp_size
        self._val, self._prefetch = None, None
        args = (root, "train", r.global_batch_size // dp_size)
        kwargs = dict(dp_rank=dp_rank, dp_size=dp_size, seed=job.data.data_seed)
        # Bad shards or arguments fail here (the manifest is read, no shard opened), on
        # every rank, also those that receive their batches: all exit with the error.
        ShardLoader(*args, **kwargs)
        if not train:  # validation only: a rank that receives its train batches
            return
        # A worker process reads the next batch while the current step runs.
        self._prefetch = Prefetcher(functools.partial(open_reader, *args, **kwargs))

    def next(self) -> dict:
        return self._prefetch.next()

    def close(self) -> None:
        if self._prefetch is not None:
            self._prefetch.close()

    def val_batches(self, num_samples: int, batch_size: int):
        if self._val is None or self._val["latent"].shape[0] < num_samples:
            self._val = self._read_val(num_samples)
        yield from super().val_batches(num_samples, batch_size)

    def val_batch(self, indices: list[int]) -> dict:
        return {k: v[indices] for k, v in self._val.items()}

    def _read_val(self, num_samples: int) -> dict:
        from ..data.loader import ShardLoader

        loader = ShardLoader(self.root, "val", min(num_samples, 64), infinite=False)
        parts = {"latent": [], "text_emb": [], "text_mask": []}
        count = 0
        for batch in loader:
            for key in parts:
                parts[key].append(batch[key])
            count += batch["latent"].shape[0]
            if count >= num_samples:
                break
        assert count >= num_samples, "prepare_data checks the val split's size"
        import torch
        return {k: torch.cat(v)[:num_samples] for k, v in parts.items()}

    def state_dict(self) -> dict:
        return self._prefetch.state_dict() if self._prefetch is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self._prefetch is not None:
            self._prefetch.load_state_dict(state)


# What a training batch holds; the sources' other keys are not used by the step.
BATCH_KEYS = ("latent", "text_emb", "text_mask")


class ReplicaBroadcastSource:
    """One data-parallel replica's batches read once and broadcast to its other ranks.

    Every pp/cp/tp rank of a replica trains on the same batch, so only the replica's
    first rank reads it (its own source: shards through the prefetch worker, or the
    in-memory data) and broadcasts it over `group`, as tensors already on `device`;
    the others open no train data (Megatron-LM reads on TP rank 0 and broadcasts too).
    Shapes and dtypes travel once, on the first batch. Validation and the loader
    position stay with each rank's own source (`inner`), which on the receiving ranks
    serves validation only.
    """

    def __init__(self, inner, group, device):
        import torch.distributed as dist
        self.inner, self.group, self.device = inner, group, device
        self.src = dist.get_global_rank(group, 0)
        self.reads = dist.get_rank(group) == 0
        self._layout: list | None = None  # [(key, shape, dtype name)]

    def next(self) -> dict:
        import torch
        import torch.distributed as dist
        batch = None
        if self.reads:
            read = self.inner.next()
            batch = {k: read[k].to(self.device, non_blocking=True) for k in BATCH_KEYS}
        if self._layout is None:
            layout = [[(k, tuple(v.shape), str(v.dtype).removeprefix("torch."))
                       for k, v in batch.items()] if self.reads else None]
            dist.broadcast_object_list(layout, src=self.src, group=self.group,
                                       device=self.device)
            self._layout = layout[0]
        if not self.reads:
            batch = {k: torch.empty(shape, dtype=getattr(torch, dtype), device=self.device)
                     for k, shape, dtype in self._layout}
        for key in BATCH_KEYS:
            dist.broadcast(batch[key], src=self.src, group=self.group)
        return batch

    def val_batches(self, num_samples: int, batch_size: int):
        return self.inner.val_batches(num_samples, batch_size)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)

    def close(self) -> None:
        self.inner.close()


def open_reader(*args, **kwargs) -> "_LoaderReader":
    """A `ShardLoader(*args, **kwargs)` as a prefetcher's source (made in its worker)."""
    from ..data.loader import ShardLoader
    return _LoaderReader(ShardLoader(*args, **kwargs))


class _LoaderReader:
    """A `ShardLoader` as the `next` / `state_dict` / `load_state_dict` source the
    prefetcher reads from."""

    def __init__(self, loader):
        self.loader, self._iter = loader, iter(loader)

    def next(self) -> dict:
        return next(self._iter)

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)
        self._iter = iter(self.loader)


def build_source(job: JobConfig, r: Resolved, data_root: str | None, dp_rank: int,
                 dp_size: int, replica=None, device=None):
    """The in-memory source when `data_root` is None, else shards under it; with a
    `replica` group (several ranks train on this replica's batches), read by its first
    rank only and broadcast on `device` (`ReplicaBroadcastSource`)."""
    import torch.distributed as dist
    reads = replica is None or dist.get_rank(replica) == 0
    if data_root is None:
        source = SyntheticSource(job, r, dp_rank, dp_size)
    else:
        source = ShardSource(data_root, job, r, dp_rank, dp_size, train=reads)
    return source if replica is None else ReplicaBroadcastSource(source, replica, device)


def default_data_root(job: JobConfig) -> str:
    """Where the embedded default's shards for this latent shape live (one cache per shape)."""
    d, m = job.data, job.model
    frames, height, width = default_pixel_shape(job)
    name = (f"f{frames}_h{height}_w{width}_x{m.max_text_tokens}_"
            f"n{d.default_data_train_clips}-{d.default_data_val_clips}_s{d.data_seed}")
    return os.path.join(d.default_data_dir, name)


def default_pixel_shape(job: JobConfig) -> tuple[int, int, int]:
    """Pixel clip (frames, height, width) whose tiny-VAE latent has the config's shape."""
    m = job.model
    return 4 * (m.latent_frames - 1) + 1, 8 * m.latent_height, 8 * m.latent_width


def data_identity(job: JobConfig) -> str:
    """What `--data` names, as stored in records: 'synthetic' or the shard directory
    (known before the default shards are built)."""
    return default_data_root(job) if job.data.data == "default" else job.data.data


def check_data_paths(job: JobConfig) -> None:
    """Cheap path checks of --data / --default-data-dir (no data is read or built)."""
    d = job.data
    if d.data == "default":
        if os.path.exists(d.default_data_dir) and not os.path.isdir(d.default_data_dir):
            raise ValueError(f"--default-data-dir {d.default_data_dir} is a file, not a directory")
        m = job.model
        if m.in_channels != 4 or m.text_hidden_size != 64:
            raise ValueError(f"--data default makes tiny-VAE latents with 4 channels and 64-wide "
                             f"text embeddings; got --in-channels={m.in_channels} "
                             f"--text-hidden-size={m.text_hidden_size}")
    elif d.data == "natural":
        from ..data.natural import LATENT_CHANNELS
        m = job.model
        if m.in_channels != LATENT_CHANNELS or m.latent_height != m.latent_width:
            raise ValueError(f"--data natural makes square latents with {LATENT_CHANNELS} channels "
                             f"(RGB, 2x2 space-to-depth); got --in-channels={m.in_channels} "
                             f"--latent-height={m.latent_height} --latent-width={m.latent_width}")
    elif d.data != "synthetic" and not os.path.isdir(d.data):
        what = "is a file" if os.path.exists(d.data) else "does not exist"
        raise ValueError(f"--data {d.data} {what}: pass 'default', 'natural', 'synthetic' or a directory "
                         "made by tools/precompute_latents.py")


def prepare_data(job: JobConfig, r: Resolved, rank: int = 0, world_size: int = 1) -> str | None:
    """Resolve `--data` to a shard directory (None: synthetic) and check it against the
    model config and its manifest: shapes, split sizes, every shard's size and checksum
    (shared out over `world_size` ranks). Runs before any model is built; a mismatch is
    a ValueError naming the file and both values."""
    check_data_paths(job)
    if job.data.data in IN_MEMORY_DATA:
        return None
    root = job.data.data
    if root == "default":
        from ..data.loader import ensure_default_shards
        d, m = job.data, job.model
        frames, height, width = default_pixel_shape(job)
        root = ensure_default_shards(default_data_root(job), d.default_data_train_clips,
                                     d.default_data_val_clips, frames, height, width,
                                     seed=d.data_seed, text_tokens=m.max_text_tokens)
    manifest = check_manifest(job, r, root)
    verify_shards(root, manifest, checksum=job.data.data_verify == "checksum",
                  part=(rank, world_size), progress=rank == 0)
    return root


def check_manifest(job: JobConfig, r: Resolved, root: str) -> dict:
    """The manifest of a shard directory, checked against the config (no shard is read)."""
    manifest = read_manifest(root)
    manifest_path = os.path.join(root, "manifest.json")
    try:
        latent_shape, text_shape = manifest["latent"]["shape"], manifest["text_emb"]["shape"]
        splits = manifest["splits"]
        val_samples = splits["val"]["num_samples"]
        train_shards = sum(1 for s in splits["train"]["shards"] if s["num_samples"] > 0)
    except (KeyError, TypeError) as err:
        raise DataError(f"{manifest_path} lacks {err}: not a precompute manifest") from None
    check_data_shapes(job, latent_shape, text_shape, where=manifest_path)
    s = job.schedule
    if val_samples < s.eval_samples:
        raise ValueError(f"--eval-samples={s.eval_samples} but the val split of {root} "
                         f"holds {val_samples} samples")
    if train_shards < r.data_parallel_size:
        raise ValueError(f"the train split of {root} has {train_shards} non-empty shards but "
                         f"data-parallel size {r.data_parallel_size} needs one per rank; rerun "
                         "the precompute with smaller shards")
    return manifest


def check_data_shapes(job: JobConfig, latent_shape, text_shape, where: str = "data") -> None:
    """Fail (before the model exists, and on the first batch) if one sample's latent
    [C, F, H, W] and text [X, T] shapes do not match the model config."""
    m = job.model
    want = (m.in_channels, m.latent_frames, m.latent_height, m.latent_width)
    got = tuple(latent_shape)
    if got != want:
        raise DataError(f"{where}: latents have shape [C, F, H, W] = {list(got)} but the model "
                         f"expects {list(want)} (--in-channels --latent-frames --latent-height "
                         f"--latent-width)")
    text = tuple(text_shape)
    if text != (m.max_text_tokens, m.text_hidden_size):
        raise DataError(f"{where}: text embeddings have shape [X, T] = {list(text)} but the "
                         f"model expects {[m.max_text_tokens, m.text_hidden_size]} "
                         f"(--max-text-tokens --text-hidden-size)")
