"""Streaming loader over the precompute's WebDataset shards, exactly resumable.

Two modes:

* ``infinite=True`` (training): epoch ``e`` visits the split's shards in a permutation
  seeded by ``(seed, e)``, the same on every rank; DP rank ``r`` takes every
  ``dp_size``-th shard of it, so ranks read disjoint shards (the I/O a rank does is
  ``1/dp_size`` of the data) and see disjoint samples within an epoch. Samples pass a
  shuffle buffer (seeded by ``(seed, dp_rank)``) that carries across epochs.
* ``infinite=False`` (validation): one pass over the split's shards in manifest order,
  no shuffle; rank ``r`` takes the samples whose index in that order is ``r`` mod
  ``dp_size``. Every ``iter()`` starts again from the first sample, so the set and the
  order are identical every time; the last batch may be short.

Context- and tensor-parallel ranks of one replica pass the same ``dp_rank`` and get
the same batches, because nothing here depends on anything but the arguments.

Resume: ``state_dict()`` holds the stream position (epoch, shard, sample in shard), the
RNG state and the shuffle buffer as *pointers* ``(shard, index)``, never sample data, so
checkpoints stay small; ``load_state_dict`` re-reads the few shards the pointers name.

Shape legend: B = batch, C = latent channels, F/H/W = latent frames/height/width,
S = text tokens, D = text embedding width.
"""
from __future__ import annotations

import hashlib
import os
import tarfile

import numpy as np
import torch
from webdataset.tariterators import group_by_keys, tar_file_iterator

from megatron_vdit.data import shard_format
from megatron_vdit.data.shard_format import DataError, read_manifest, verify_shards  # noqa: F401
from megatron_vdit.data.default_dataset import ensure_default_shards  # noqa: F401  (public API)

__all__ = ["DataError", "ShardLoader", "ensure_default_shards", "read_manifest", "verify_shards"]

_STATE_VERSION = 1


def _iter_shard(path: str):
    """WebDataset samples of one tar, in file order; the file closes with the generator.
    A tar that cannot be read is a DataError naming it."""
    with open(path, "rb") as handle:
        members = ({**member, "__url__": path} for member in tar_file_iterator(handle))
        try:
            yield from group_by_keys(members)
        except (tarfile.TarError, OSError, EOFError) as err:
            raise DataError(f"shard {path} is not a readable tar ({err}); copy it again or "
                            "rerun the precompute") from None


class ShardLoader:
    """Batches ``{"latent": [B,C,F,H,W] f32, "text_emb": [B,S,D] f32, "text_mask": [B,S] bool,
    "keys": list[str]}`` from ``<root>/<split>/shard-*.tar`` (see module docstring)."""

    def __init__(self, root: str, split: str, batch_size: int, dp_rank: int = 0,
                 dp_size: int = 1, seed: int = 0, shuffle_buffer: int = 256,
                 infinite: bool = True):
        self.manifest = read_manifest(root)
        splits = self.manifest["splits"]
        if split not in splits:
            raise ValueError(f"split {split!r} not in {root}/manifest.json (has {sorted(splits)})")
        if batch_size < 1 or dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ValueError(f"need batch_size >= 1 and 0 <= dp_rank < dp_size, got "
                             f"batch_size={batch_size} dp_rank={dp_rank} dp_size={dp_size}")
        self.root, self.split, self.batch_size = root, split, batch_size
        self.dp_rank, self.dp_size, self.seed = dp_rank, dp_size, seed
        self.shuffle_buffer, self.infinite = (shuffle_buffer, True) if infinite else (0, False)
        self._shards = [s["name"] for s in splits[split]["shards"] if s["num_samples"] > 0]
        num_samples = splits[split]["num_samples"]
        if num_samples == 0:
            raise ValueError(f"split {split!r} of {root} has no samples")
        if infinite and len(self._shards) < dp_size:
            raise ValueError(f"split {split!r} of {root} has {len(self._shards)} shards but "
                             f"dp_size={dp_size} ranks each need one; rerun the precompute with "
                             "a smaller --shard-size-mb or --max-samples-per-shard")
        # Finite mode: samples this rank sees per pass; infinite mode: samples in the split.
        self.num_samples = (num_samples if infinite
                            else len(range(dp_rank, num_samples, dp_size)))
        self._reader = None
        self._resume_pending = False
        self._reset()

    # -- stream position -------------------------------------------------------------
    def _reset(self) -> None:
        self._close_reader()
        self._epoch, self._shard_cursor, self._sample_cursor = 0, 0, 0
        self._global_index = 0  # finite mode: index of the next sample in split order
        self._buffer: list[tuple[tuple[str, int], dict]] = []
        self._rng = np.random.default_rng([self.seed, self.dp_rank])
        self._exhausted = False

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._reader = None

    def epoch_shards(self, epoch: int) -> list[str]:
        """This rank's shards in epoch ``epoch`` (infinite mode), in visiting order."""
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self._shards))
        return [self._shards[i] for i in order[self.dp_rank::self.dp_size]]

    def _shard_list(self) -> list[str]:
        return self.epoch_shards(self._epoch) if self.infinite else self._shards

    def _open_current(self) -> None:
        """Open the shard at the cursor and skip the samples already consumed from it."""
        name = self._shard_list()[self._shard_cursor]
        self._reader = _iter_shard(os.path.join(self.root, self.split, name))
        for _ in range(self._sample_cursor):
            next(self._reader)

    def _pull(self) -> tuple[tuple[str, int], dict] | None:
        """Next raw sample of the stream with its pointer; None when a finite pass ends."""
        while True:
            shards = self._shard_list()
            if self._shard_cursor >= len(shards):
                if not self.infinite:
                    return None
                self._epoch, self._shard_cursor, self._sample_cursor = self._epoch + 1, 0, 0
                continue
            if self._reader is None:
                self._open_current()
            sample = next(self._reader, None)
            if sample is None:
                self._close_reader()
                self._shard_cursor, self._sample_cursor = self._shard_cursor + 1, 0
                continue
            pointer = (shards[self._shard_cursor], self._sample_cursor)
            self._sample_cursor += 1
            return pointer, sample

    def _next_sample(self) -> dict | None:
        if not self.infinite:
            while True:  # finite: keep every dp_size-th sample of the split order
                pulled = self._pull()
                if pulled is None:
                    return None
                self._global_index += 1
                if (self._global_index - 1) % self.dp_size == self.dp_rank:
                    return shard_format.decode_sample(pulled[1])
        while len(self._buffer) < max(self.shuffle_buffer, 1):
            self._buffer.append(self._pull())
        slot = int(self._rng.integers(len(self._buffer))) if self.shuffle_buffer > 1 else 0
        self._buffer[slot], self._buffer[-1] = self._buffer[-1], self._buffer[slot]
        return shard_format.decode_sample(self._buffer.pop()[1])

    # -- iteration -------------------------------------------------------------------
    def __iter__(self) -> "ShardLoader":
        if not self.infinite and not self._resume_pending:
            self._reset()
        self._resume_pending = False
        return self

    def __next__(self) -> dict:
        samples = []
        while len(samples) < self.batch_size and not self._exhausted:
            sample = self._next_sample()
            if sample is None:
                self._exhausted = True
            else:
                samples.append(sample)
        if not samples:
            raise StopIteration
        return {"latent": torch.from_numpy(np.stack([s["latent"] for s in samples])
                                           .astype(np.float32)),
                "text_emb": torch.from_numpy(np.stack([s["text_emb"] for s in samples])
                                             .astype(np.float32)),
                "text_mask": torch.from_numpy(np.stack([s["text_mask"] for s in samples])),
                "keys": [s["key"] for s in samples]}

    def __len__(self) -> int:
        """Batches per pass (finite mode only)."""
        if self.infinite:
            raise TypeError("an infinite ShardLoader has no length")
        return -(-self.num_samples // self.batch_size)

    # -- checkpointing ---------------------------------------------------------------
    def _identity(self) -> dict:
        return {"split": self.split, "dp_rank": self.dp_rank, "dp_size": self.dp_size,
                "seed": self.seed, "shuffle_buffer": self.shuffle_buffer,
                "infinite": self.infinite,
                "shards_sha1": hashlib.sha1("\n".join(self._shards).encode()).hexdigest()}

    def state_dict(self) -> dict:
        """Position after the last batch returned; JSON-serialisable, no sample data."""
        return {"version": _STATE_VERSION, **self._identity(), "epoch": self._epoch,
                "shard_cursor": self._shard_cursor, "sample_cursor": self._sample_cursor,
                "global_index": self._global_index, "exhausted": self._exhausted,
                "buffer": [list(pointer) for pointer, _ in self._buffer],
                "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next batches equal those an uninterrupted loader would return."""
        mismatched = {k: (state.get(k), v) for k, v in self._identity().items()
                      if state.get(k) != v}
        if state.get("version") != _STATE_VERSION or mismatched:
            raise ValueError(f"loader state does not match this loader (saved, current): "
                             f"{mismatched or {'version': (state.get('version'), _STATE_VERSION)}}")
        self._reset()
        self._epoch, self._shard_cursor = state["epoch"], state["shard_cursor"]
        self._sample_cursor, self._global_index = state["sample_cursor"], state["global_index"]
        self._exhausted = state["exhausted"]
        self._rng.bit_generator.state = state["rng"]
        self._buffer = self._fetch([tuple(p) for p in state["buffer"]])
        self._resume_pending = True

    def _fetch(self, pointers: list[tuple[str, int]]) -> list[tuple[tuple[str, int], dict]]:
        """Re-read buffered samples by pointer, one pass per shard they come from."""
        found: dict[tuple[str, int], dict] = {}
        for name in sorted({name for name, _ in pointers}):
            wanted = {index for shard, index in pointers if shard == name}
            reader = _iter_shard(os.path.join(self.root, self.split, name))
            for index, sample in enumerate(reader):
                if index in wanted:
                    found[(name, index)] = sample
                if index >= max(wanted):
                    break
            reader.close()
        missing = [p for p in pointers if p not in found]
        if missing:
            raise ValueError(f"loader state points at samples not in {self.root}: {missing[:3]}")
        return [(p, found[p]) for p in pointers]
