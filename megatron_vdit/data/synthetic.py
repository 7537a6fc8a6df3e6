"""The embedded default data as latents, with no VAE: procedural clips mapped to latents.

`SyntheticLatents` renders procedural clips (`procedural.render_clip`) and maps them to
the model's latent shape by a fixed, deterministic encoder: average-pool space by
`spatial_factor`, scale RGB to [-1, 1] and mix the 3 colour channels into C latent
channels with a fixed seeded matrix. Captions go through `CaptionEmbedder`, a small
built-in text embedder (word table + sinusoidal positions, fixed by seed).

Sample `i` of a split is a pure function of (seed, split, i): train and validation are
disjoint streams, data is unlimited, and resuming needs only the next sample index.
The latent-precompute pipeline (`data/loader.py`) replaces this with real VAE latents.

Shape legend: B batch, C latent channels, F/H/W latent frames/height/width,
X text tokens, T text embedding width.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np

from .procedural import render_clip

_SPLIT_STREAM = {"train": 0, "val": 1}


def _stable_hash(word: str, buckets: int) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little") % buckets


class CaptionEmbedder:
    """Whitespace tokens -> fixed random word vectors + sinusoidal positions, [X, T]."""

    def __init__(self, width: int, max_tokens: int, seed: int = 0, vocab_buckets: int = 4096):
        rng = np.random.default_rng([seed, 7])
        self.table = rng.standard_normal((vocab_buckets, width)).astype(np.float32)
        self.buckets, self.width, self.max_tokens = vocab_buckets, width, max_tokens
        pos = np.arange(max_tokens)[:, None]
        freq = np.exp(-math.log(10000.0) * np.arange(0, width, 2) / max(width, 2))
        pe = np.zeros((max_tokens, width), np.float32)
        pe[:, 0::2] = np.sin(pos * freq)
        pe[:, 1::2] = np.cos(pos * freq)[:, : width // 2]
        self.positions = 0.5 * pe

    def __call__(self, caption: str) -> tuple[np.ndarray, np.ndarray]:
        words = caption.lower().split()[: self.max_tokens] or ["<empty>"]
        emb = np.zeros((self.max_tokens, self.width), np.float32)
        mask = np.zeros(self.max_tokens, bool)
        for i, word in enumerate(words):
            emb[i] = self.table[_stable_hash(word, self.buckets)] + self.positions[i]
            mask[i] = True
        return emb, mask


class SyntheticLatents:
    """Procedural latents of shape [C, F, H, W] with caption embeddings."""

    def __init__(self, channels: int, frames: int, height: int, width: int,
                 text_width: int, max_text_tokens: int, seed: int = 0, spatial_factor: int = 4):
        self.shape = (channels, frames, height, width)
        self.spatial_factor = spatial_factor
        self.seed = seed
        rng = np.random.default_rng([seed, 11])
        self.mix_C3 = (rng.standard_normal((channels, 3)) / math.sqrt(3)).astype(np.float32)
        self.captions = CaptionEmbedder(text_width, max_text_tokens, seed)

    def sample(self, split: str, index: int) -> dict:
        if split not in _SPLIT_STREAM:
            raise ValueError(f"unknown split {split!r}; expected 'train' or 'val'")
        c, f, h, w = self.shape
        k = self.spatial_factor
        frames, caption = render_clip(2 * self.seed + _SPLIT_STREAM[split], index, f, h * k, w * k)
        pixels = frames.astype(np.float32) / 127.5 - 1.0                  # [F, H*k, W*k, 3]
        pooled = pixels.reshape(f, h, k, w, k, 3).mean(axis=(2, 4))       # [F, H, W, 3]
        latent = np.einsum("cr,fhwr->cfhw", self.mix_C3, pooled)
        text, mask = self.captions(caption)
        return {"latent": latent, "text_emb": text, "text_mask": mask, "caption": caption}

    def batch(self, split: str, indices: list[int]) -> dict:
        return stack_samples([self.sample(split, i) for i in indices], split, indices)


def stack_samples(samples: list[dict], split: str, indices: list[int]) -> dict:
    """Samples (numpy latent, text_emb, text_mask) as one batch of tensors."""
    import torch  # only here: the CLIs check --data natural's shapes before loading torch
    return {
        "latent": torch.from_numpy(np.stack([s["latent"] for s in samples])),
        "text_emb": torch.from_numpy(np.stack([s["text_emb"] for s in samples])),
        "text_mask": torch.from_numpy(np.stack([s["text_mask"] for s in samples])),
        "keys": [f"{split}-{i}" for i in indices],
    }
