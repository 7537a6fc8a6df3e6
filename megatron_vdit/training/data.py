"""Training and validation data for the loop: the embedded default or precomputed shards.

A source hands each data-parallel rank its slice of every global batch and can resume
exactly: `state_dict()` records the position, `load_state_dict()` restores it.
Validation iterates a fixed held-out set in a fixed order; each DP rank takes the
samples whose index is congruent to its rank, so the set is covered exactly once.
"""
from __future__ import annotations

import torch

from .config import TrainConfig


class SyntheticSource:
    """Global batch k holds train samples [k*B, (k+1)*B); this rank takes its DP slice."""

    def __init__(self, cfg: TrainConfig, dp_rank: int, dp_size: int):
        from ..data.synthetic import SyntheticLatents

        self.data = SyntheticLatents(cfg.in_channels, cfg.latent_frames, cfg.latent_height,
                                     cfg.latent_width, cfg.text_hidden_size, cfg.max_text_tokens,
                                     seed=cfg.seed)
        self.global_batch = cfg.global_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.next_batch = 0

    def next(self) -> dict:
        local = self.global_batch // self.dp_size
        start = self.next_batch * self.global_batch + self.dp_rank * local
        self.next_batch += 1
        return self.data.batch("train", list(range(start, start + local)))

    def val_batches(self, num_samples: int, batch_size: int):
        mine = list(range(self.dp_rank, num_samples, self.dp_size))
        for i in range(0, len(mine), batch_size):
            indices = mine[i:i + batch_size]
            yield indices, self.data.batch("val", indices)

    def state_dict(self) -> dict:
        return {"next_batch": self.next_batch}

    def load_state_dict(self, state: dict) -> None:
        self.next_batch = int(state["next_batch"])


class ShardSource:
    """Precomputed WebDataset shards (tools/precompute_latents.py) via `ShardLoader`."""

    def __init__(self, cfg: TrainConfig, dp_rank: int, dp_size: int):
        from ..data.loader import ShardLoader

        self.root, self.dp_rank, self.dp_size, self.seed = cfg.data, dp_rank, dp_size, cfg.seed
        self.train = ShardLoader(cfg.data, "train", cfg.global_batch_size // dp_size,
                                 dp_rank=dp_rank, dp_size=dp_size, seed=cfg.seed)
        self._iter = iter(self.train)

    def next(self) -> dict:
        return next(self._iter)

    def val_batches(self, num_samples: int, batch_size: int):
        from ..data.loader import ShardLoader

        val = ShardLoader(self.root, "val", batch_size, dp_rank=0, dp_size=1, seed=self.seed,
                          infinite=False)
        index = 0
        for batch in val:
            n = batch["latent"].shape[0]
            indices = list(range(index, index + n))
            index += n
            keep = [j for j, i in enumerate(indices) if i < num_samples and i % self.dp_size == self.dp_rank]
            if keep:
                yield [indices[j] for j in keep], {
                    "latent": batch["latent"][keep], "text_emb": batch["text_emb"][keep],
                    "text_mask": batch["text_mask"][keep]}
            if index >= num_samples:
                break

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
            f"n{cfg.default_data_train_clips}-{cfg.default_data_val_clips}_s{cfg.seed}")
    return os.path.join(cfg.default_data_dir, name)


def default_pixel_shape(cfg: TrainConfig) -> tuple[int, int, int]:
    """Pixel clip (frames, height, width) whose tiny-VAE latent has the config's shape."""
    return 4 * (cfg.latent_frames - 1) + 1, 8 * cfg.latent_height, 8 * cfg.latent_width


def prepare_data(cfg: TrainConfig) -> None:
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
                                         seed=cfg.seed, text_tokens=cfg.max_text_tokens)
    manifest_path = os.path.join(cfg.data, "manifest.json")
    if not os.path.exists(manifest_path):
        raise ValueError(f"--data {cfg.data}: no manifest.json there; pass 'default', "
                         "'synthetic' or a directory made by tools/precompute_latents.py")
    import json
    with open(manifest_path) as f:
        manifest = json.load(f)
    check_data_shapes(cfg, {"latent": torch.empty([1] + manifest["latent"]["shape"]),
                            "text_emb": torch.empty([1] + manifest["text_emb"]["shape"])})


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
    assert isinstance(batch["latent"], torch.Tensor)
