"""The precompute's arguments and the checks made before any model is loaded.

Torch-free on purpose: the CLI runs :func:`preflight` (flag values, paths, captions
file, input discovery) before importing torch, so bad input is refused in well under a
second and before anything is written.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os

from megatron_vdit.data import precompute_state as state
from megatron_vdit.data.sources import Source, discover_sources

VAE_CONFIGS = ("tiny", "tiny-wan", "tiny-cogvideox")
"""Names of the tiny random-weight VAEs (``encoders.load_vae``)."""
TEXT_ENCODER_CONFIGS = ("tiny", "tiny-umt5", "tiny-t5")
"""Names of the tiny random-weight text encoders (``encoders.load_text_encoder``)."""

# Tiny VAEs: 4 latent channels, 8x spatial and 4x temporal compression like the real
# ones, 0.1-0.2M parameters. Wan's cost is dominated by its full-resolution stage, so
# that stage is only 4 channels wide (2x faster than 8).
TINY_WAN = dict(base_dim=4, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                temperal_downsample=[False, True, True],
                latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
TINY_COGVIDEOX = dict(block_out_channels=(8, 16, 16, 16), latent_channels=4, layers_per_block=1,
                      norm_num_groups=4, sample_height=64, sample_width=64,
                      temporal_compression_ratio=4)
VAE_CLASSES = {"AutoencoderKLWan": "wan", "AutoencoderKLCogVideoX": "cogvideox"}


def vae_compression(kind: str, config: dict) -> tuple[int, int]:
    """(temporal, spatial) compression of a diffusers video VAE from its config.

    `config` is the model's config (or its config.json); KeyError when a key it needs
    is absent (a config.json may leave defaults out)."""
    if kind == "wan":
        patch = config.get("patch_size") or 1
        return (2 ** sum(bool(t) for t in config["temperal_downsample"]),
                2 ** (len(config["dim_mult"]) - 1) * patch)
    if kind == "cogvideox":
        return (int(config["temporal_compression_ratio"]),
                2 ** (len(config["block_out_channels"]) - 1))
    raise ValueError(f"unknown VAE kind {kind!r}")


def vae_latent_shape(kind: str, temporal: int, spatial: int, num_frames: int, height: int,
                     width: int) -> tuple[int, int, int]:
    """``(F', H', W')`` of a clip; `ValueError` if the VAE cannot take these dims.

    Causal video VAEs encode the first frame alone and then groups of `temporal`
    frames, so frames must be ``k * temporal + 1``; any other count would silently drop
    frames."""
    t, s = temporal, spatial
    if num_frames < 1 or (num_frames - 1) % t:
        valid = ", ".join(str(k * t + 1) for k in range(1, 5))
        raise ValueError(f"--frames {num_frames} does not fit the {kind} VAE "
                         f"(temporal compression {t}): use k*{t}+1 frames, e.g. {valid}")
    if height % s or width % s or height < s or width < s:
        raise ValueError(f"--height {height} / --width {width} must be positive multiples "
                         f"of the {kind} VAE's spatial compression {s}")
    return (num_frames - 1) // t + 1, height // s, width // s


def vae_compression_before_loading(vae_path: str | None,
                                   vae_config: str | None) -> tuple[str, int, int] | None:
    """(kind, temporal, spatial) of the VAE the precompute will load, read without torch
    (a tiny config's dict, or the checkpoint's config.json); None when config.json does
    not say (the loaded model is checked again in any case)."""
    if vae_config is not None:
        if vae_config not in VAE_CONFIGS:
            return None
        if vae_config == "tiny-cogvideox":
            return "cogvideox", *vae_compression("cogvideox", TINY_COGVIDEOX)
        return "wan", *vae_compression("wan", TINY_WAN)
    if vae_path is None:
        return None
    for candidate in (os.path.join(vae_path, "vae", "config.json"),
                      os.path.join(vae_path, "config.json")):
        if os.path.isfile(candidate):
            try:
                with open(candidate) as handle:
                    config = json.load(handle)
                kind = VAE_CLASSES[config.get("_class_name", "")]
                return kind, *vae_compression(kind, config)
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return None  # load_vae names what is wrong with it
    return None


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
        """Values of every flag (paths: ``precompute_state.check_paths``)."""
        for flag, value in (("--frames", self.num_frames), ("--height", self.height),
                            ("--width", self.width), ("--text-tokens", self.text_tokens),
                            ("--decode-threads", self.decode_threads),
                            ("--threads", 1 if self.threads is None else self.threads)):
            if value < 1:
                raise ValueError(f"{flag} {value} must be >= 1")
        for flag, value in (("--fps", self.fps), ("--shard-size-mb", self.shard_size_mb),
                            ("--val-fraction", self.val_fraction)):
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{flag} {value} must be a finite number")
        if not self.inputs:
            raise ValueError("--input needs at least one directory or .tar file")
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


def all_rejected(errors: list[dict], stage: str) -> ValueError:
    """The error for a run with nothing to encode: it did not succeed (exit 2)."""
    if not errors:
        return ValueError("--input holds no videos or tars of videos; nothing to encode")
    shown = "; ".join(f"{e['path']}: {e['reason']}" for e in errors[:3])
    more = f"; and {len(errors) - 3} more" if len(errors) > 3 else ""
    return ValueError(f"all {len(errors)} inputs were rejected at {stage}, nothing written: "
                      f"{shown}{more}")


def preflight(cfg: PrecomputeConfig) -> tuple[list[Source], list[dict]]:
    """Flag values, paths, captions file and inputs, before anything is loaded or written.

    Returns the usable sources and the error records of the others; ``ValueError`` for
    bad input, including inputs of which none is usable.
    """
    cfg.validate()
    state.check_paths(cfg)
    vae = vae_compression_before_loading(cfg.vae_path, cfg.vae_config)
    if vae is not None:
        vae_latent_shape(*vae, cfg.num_frames, cfg.height, cfg.width)
    sources, errors = discover_sources(cfg.inputs, cfg.captions, cfg.output)
    if not sources:
        raise all_rejected(errors, "discovery")
    return sources, errors
