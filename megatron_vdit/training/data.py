"""Training and validation data for the loop: the embedded default or precomputed shards.

A source hands each data-parallel rank its slice of every global batch and can resume
exactly: `state_dict()` records the position, `load_state_dict()` restores it.
Validation iterates a fixed held-out set in a fixed order; each DP rank takes the
samples whose index is congruent to its rank, so the set is covered exactly once.
"""
from __future__ import annotations

import torch

from .config import TrainConfig


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


class SyntheticSource(_Source):
    """Global batch k holds train samples [k*B, (k+1)*B); this rank takes its DP slice."""

    def __init__(self, cfg: TrainConfig, dp_rank: int, dp_size: int):
        from ..data.synthetic import SyntheticLatents

        self.data = SyntheticLatents(cfg.in_channels, cfg.latent_frames, cfg.latent_height,
                                     cfg.latent_width, cfg.text_hidden_size, cfg.max_text_tokens,
                                     seed=cfg.data_seed)
        self.global_batch = cfg.global_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.next_batch = 0

    def next(self) -> dict:
        local = self.global_batch // self.dp_size
        start = self.next_batch * self.global_batch + self.dp_rank * local
        self.next_batch += 1
        return self.data.batch("train", list(range(start, start + local)))

    def val_batch(self, indices: list[int]) -> dict:
        return self.data.batch("val", indices)

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

    def __init__(self, cfg: TrainConfig, dp_rank: int, dp_size: int):
        from ..data.loader import ShardLoader

        self.root, self.dp_rank, self.dp_size = cfg.data, dp_rank, dp_size
        self.train = ShardLoader(cfg.data, "train", cfg.global_batch_size // dp_size,
                                 dp_rank=dp_rank, dp_size=dp_size, seed=cfg.data_seed)
        self._iter = iter(self.train)
        self._val = None

    def next(self) -> dict:
        return next(self._iter)

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
        return {k: torch.cat(v)[:num_samples] for k, v in parts.items()}

    def state_dict(self) -> dict:
        return self.train.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.train.load_state_dict(state)
        self._iter = iter(self.train)


def build_source(cfg: TrainConfig, dp_rank: int, dp_size: int):
    if cfg.data == "synthetic":
        return SyntheticSource(cfg, dp_rank, dp_size)
    return ShardSource(cfg, dp_rank, dp_size)


def default_data_root(cfg: TrainConfig) -> str:
    """Where the embedded default's shards for this latent shape live (one cache per shape)."""
    import os
    frames, height, width = default_pixel_shape(cfg)
    name = (f"f{frames}_h{height}_w{width}_x{cfg.max_text_tokens}_"
            f"n{cfg.default_data_train_clips}-{cfg.default_data_val_clips}_s{cfg.data_seed}")
    return os.path.join(cfg.default_data_dir, name)


def default_pixel_shape(cfg: TrainConfig) -> tuple[int, int, int]:
    """Pixel clip (frames, height, width) whose tiny-VAE latent has the config's shape."""
    return 4 * (cfg.latent_frames - 1) + 1, 8 * cfg.latent_height, 8 * cfg.latent_width


def prepare_data(cfg: TrainConfig, data_parallel_size: int) -> None:
    """Resolve `--data` to shards and check their shapes against the model config.

    Runs before any model is built: a mismatch is a ValueError naming both shapes.
    """
    import os
    if cfg.data == "synthetic":
        return
    if cfg.data == "default":
        if cfg.in_channels != 4 or cfg.text_hidden_size != 64:
            raise ValueError(f"--data default makes tiny-VAE latents with 4 channels and 64-wide "
                             f"text embeddings; got --in-channels={cfg.in_channels} "
                             f"--text-hidden-size={cfg.text_hidden_size}")
        from ..data.loader import ensure_default_shards
        frames, height, width = default_pixel_shape(cfg)
        cfg.data = ensure_default_shards(default_data_root(cfg), cfg.default_data_train_clips,
                                         cfg.default_data_val_clips, frames, height, width,
                                         seed=cfg.data_seed, text_tokens=cfg.max_text_tokens)
    manifest_path = os.path.join(cfg.data, "manifest.json")
    if not os.path.exists(manifest_path):
        raise ValueError(f"--data {cfg.data}: no manifest.json there; pass 'default', "
                         "'synthetic' or a directory made by tools/precompute_latents.py")
    import json
    with open(manifest_path) as f:
        manifest = json.load(f)
    try:
        latent_shape, text_shape = manifest["latent"]["shape"], manifest["text_emb"]["shape"]
        splits = manifest["splits"]
        val_samples = splits["val"]["num_samples"]
        train_shards = sum(1 for s in splits["train"]["shards"] if s["num_samples"] > 0)
    except (KeyError, TypeError) as err:
        raise ValueError(f"{manifest_path} lacks {err}: not a precompute manifest") from None
    check_data_shapes(cfg, {"latent": torch.empty([1] + latent_shape),
                            "text_emb": torch.empty([1] + text_shape)})
    if val_samples < cfg.eval_samples:
        raise ValueError(f"--eval-samples={cfg.eval_samples} but the val split of {cfg.data} "
                         f"holds {val_samples} samples")
    if train_shards < data_parallel_size:
        raise ValueError(f"the train split of {cfg.data} has {train_shards} non-empty shards but "
                         f"data-parallel size {data_parallel_size} needs one per rank; rerun the "
                         "precompute with smaller shards")


def check_data_shapes(cfg: TrainConfig, batch: dict) -> None:
    """Fail on the first batch if the data does not match the model config."""
    want = (cfg.in_channels, cfg.latent_frames, cfg.latent_height, cfg.latent_width)
    got = tuple(batch["latent"].shape[1:])
    if got != want:
        raise ValueError(f"data latents have shape [C, F, H, W] = {list(got)} but the model "
                         f"expects {list(want)} (--in-channels --latent-frames --latent-height "
                         f"--latent-width)")
    text = tuple(batch["text_emb"].shape[1:])
    if text != (cfg.max_text_tokens, cfg.text_hidden_size):
        raise ValueError(f"data text embeddings have shape [X, T] = {list(text)} but the model "
                         f"expects {[cfg.max_text_tokens, cfg.text_hidden_size]} "
                         f"(--max-text-tokens --text-hidden-size)")
