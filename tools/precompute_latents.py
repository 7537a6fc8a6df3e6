r"""Turn videos + captions into VAE-latent WebDataset shards (thin CLI over megatron_vdit.data).

Examples:
  python tools/precompute_latents.py --input videos/ --output shards/ --frames 9 \
      --height 64 --width 64 --vae-config tiny --text-encoder-config tiny
  torchrun --nproc_per_node 8 tools/precompute_latents.py --input raw-*.tar --output shards/ \
      --frames 17 --height 256 --width 256 --fps 8 --vae-path ckpt/Wan2.1-VAE \
      --text-encoder-path ckpt/umt5-xxl --text-tokens 512

Rerunning the same command resumes: finished shards are kept, the rest are redone.
See docs/data.md for the output layout and the design.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_vdit.data.distributed_env import RankContext  # noqa: E402
from megatron_vdit.data.encoders import TEXT_ENCODER_CONFIGS, VAE_CONFIGS  # noqa: E402
from megatron_vdit.data.precompute import PrecomputeConfig, run_precompute  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True,
                        help="video directories and/or WebDataset tars of raw videos")
    parser.add_argument("--output", required=True)
    parser.add_argument("--frames", type=int, required=True, help="frames per clip (k*4+1)")
    parser.add_argument("--height", type=int, required=True, help="pixels")
    parser.add_argument("--width", type=int, required=True, help="pixels")
    parser.add_argument("--fps", type=float, default=None,
                        help="target frame rate (default: every source frame)")
    parser.add_argument("--clips-per-video", type=int, default=4)
    parser.add_argument("--captions", default=None, help="CSV or JSONL (path, caption[, split])")
    vae = parser.add_mutually_exclusive_group(required=True)
    vae.add_argument("--vae-path", help="local diffusers AutoencoderKLWan/CogVideoX checkpoint")
    vae.add_argument("--vae-config", choices=VAE_CONFIGS, help="tiny random-weight VAE")
    text = parser.add_mutually_exclusive_group(required=True)
    text.add_argument("--text-encoder-path", help="local T5/UMT5 checkpoint (with tokenizer)")
    text.add_argument("--text-encoder-config", choices=TEXT_ENCODER_CONFIGS,
                      help="tiny random-weight encoder with a byte tokenizer")
    parser.add_argument("--text-tokens", type=int, default=128, help="padded caption length")
    parser.add_argument("--shard-size-mb", type=float, default=256.0)
    parser.add_argument("--max-samples-per-shard", type=int, default=None)
    parser.add_argument("--val-fraction", type=float, default=0.05,
                        help="fraction of videos (by hash of path) held out for validation")
    parser.add_argument("--seed", type=int, default=0, help="seed of tiny-config weights")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per VAE call")
    parser.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    parser.add_argument("--compute-dtype", choices=("float32", "bfloat16", "float16"),
                        default="float32", help="dtype the VAE and text encoder run in")
    parser.add_argument("--device", default="auto", help="auto: cuda:LOCAL_RANK if available")
    parser.add_argument("--decode-threads", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (CPU latents differ in the last bits "
                        "across thread counts)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> dict:
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
    ctx = RankContext.from_env()
    try:
        summary = run_precompute(cfg, ctx)
    except ValueError as err:  # a user mistake: one line naming it, like argparse
        print(f"precompute_latents.py: error: {err}", file=sys.stderr)
        raise SystemExit(2) from err
    finally:
        ctx.close()
    if ctx.rank == 0:
        print(json.dumps(summary, sort_keys=True))
    return summary


if __name__ == "__main__":
    main()
