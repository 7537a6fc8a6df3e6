r"""Turn videos + captions into VAE-latent WebDataset shards.

Examples:
  vdit-precompute --input videos/ --output shards/ --frames 9 \
      --height 64 --width 64 --vae-config tiny --text-encoder-config tiny
  torchrun --nproc_per_node 8 -m megatron_vdit.cli.precompute_latents --input raw-*.tar \
      --output shards/ --frames 17 --height 256 --width 256 --fps 8 \
      --vae-path ckpt/Wan2.1-VAE --text-encoder-path ckpt/umt5-xxl --text-tokens 512

(``python tools/precompute_latents.py`` is the same command.) Rerunning the same command
resumes: finished shards that still match their size and checksum are kept, the rest
are redone. Bad input exits 2 before any encoding and leaves --output as it was.
See docs/data.md for the output layout and docs/errors.md for exit codes.
"""
from __future__ import annotations

import argparse
import json
import sys

from megatron_vdit.cli.errors import add_debug_flag, run_cli
# Torch-free: flags, paths and captions are checked before torch is imported.
from megatron_vdit.data.precompute_config import (TEXT_ENCODER_CONFIGS, VAE_CONFIGS,
                                                  PrecomputeConfig, preflight)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True,
                        help="video directories and/or WebDataset tars of raw videos")
    parser.add_argument("--output", required=True,
                        help="output directory (created; a rerun into it resumes)")
    parser.add_argument("--frames", type=int, required=True, help="frames per clip (k*4+1)")
    parser.add_argument("--height", type=int, required=True, help="pixels")
    parser.add_argument("--width", type=int, required=True, help="pixels")
    parser.add_argument("--fps", type=float, default=None,
                        help="target frame rate (default: every source frame)")
    parser.add_argument("--clips-per-video", type=int, default=4,
                        help="at most this many clips per video (default 4)")
    parser.add_argument("--captions", default=None,
                        help="CSV (with a header) or JSONL: path, caption[, split]; "
                        "default: a sidecar <stem>.txt per video")
    vae = parser.add_mutually_exclusive_group(required=True)
    vae.add_argument("--vae-path", help="local diffusers AutoencoderKLWan/CogVideoX checkpoint")
    vae.add_argument("--vae-config", choices=VAE_CONFIGS, help="tiny random-weight VAE")
    text = parser.add_mutually_exclusive_group(required=True)
    text.add_argument("--text-encoder-path", help="local T5/UMT5 checkpoint (with tokenizer)")
    text.add_argument("--text-encoder-config", choices=TEXT_ENCODER_CONFIGS,
                      help="tiny random-weight encoder with a byte tokenizer")
    parser.add_argument("--text-tokens", type=int, default=128,
                        help="padded caption length in tokens (default 128)")
    parser.add_argument("--shard-size-mb", type=float, default=256.0,
                        help="target shard size in MiB (default 256)")
    parser.add_argument("--max-samples-per-shard", type=int, default=None)
    parser.add_argument("--val-fraction", type=float, default=0.05,
                        help="fraction of videos (by hash of path) held out for validation")
    parser.add_argument("--seed", type=int, default=0, help="seed of tiny-config weights")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per VAE call")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                        help="storage dtype of latents and text embeddings")
    parser.add_argument("--compute-dtype", choices=("float32", "bfloat16", "float16"),
                        default="float32", help="dtype the VAE and text encoder run in")
    parser.add_argument("--device", default="auto", help="auto: cuda:LOCAL_RANK if available")
    parser.add_argument("--decode-threads", type=int, default=4,
                        help="videos decoded in parallel (default 4)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (CPU latents differ in the last bits "
                        "across thread counts)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_debug_flag(parser)
    return parser


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    cfg = PrecomputeConfig(
        inputs=args.input, output=args.output, num_frames=args.frames, height=args.height,
        width=args.width, fps=args.fps, clips_per_video=args.clips_per_video,
        captions=args.captions, vae_path=args.vae_path, vae_config=args.vae_config,
        text_encoder_path=args.text_encoder_path, text_encoder_config=args.text_encoder_config,
        text_tokens=args.text_tokens, shard_size_mb=args.shard_size_mb,
        max_samples_per_shard=args.max_samples_per_shard, val_fraction=args.val_fraction,
        seed=args.seed, batch_size=args.batch_size, dtype=args.dtype,
        compute_dtype=args.compute_dtype, device=args.device,
        decode_threads=args.decode_threads, threads=args.threads,
        progress=not args.no_progress)
    discovered = preflight(cfg)
    from megatron_vdit.data.distributed_env import RankContext
    from megatron_vdit.data.precompute import run_precompute
    ctx = RankContext.from_env()
    try:
        summary = run_precompute(cfg, ctx, discovered)
    finally:
        ctx.close()
    if ctx.rank == 0:
        print(json.dumps(summary, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
