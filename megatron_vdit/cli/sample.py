"""Generate videos from a trained run: prompt(s) -> sampler -> VAE decode -> mp4 + latents.

``vdit-sample`` / ``python -m megatron_vdit.cli.sample`` / ``python tools/sample.py``:

  vdit-sample --run-dir runs/default --prompt "a red square moving right" \\
      --out samples/red.mp4 --num-steps 50 --sampler ddim --guidance-scale 3 --seed 0
  torchrun --nproc-per-node 2 -m megatron_vdit.cli.sample ... --tensor-model-parallel-size 2

Loads the newest checkpoint of the run (its EMA weights when it has them), the run's
text encoder and VAE (rebuilt from the data manifest), and writes FILE.mp4 plus
FILE.latents.npz (the sampled latents and what made them). With --prompts-file (one
prompt per line) prompt i goes to FILE_<i>.mp4; all are sampled as one batch.
Flags, prompts, output paths and the run directory are checked before torch is
imported. See docs/inference.md.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import warnings

from ..diffusion.names import SAMPLERS
from ..inference.run_files import latents_path, open_run
from ..parallel.layout import CP_COMM_TYPES

PROG = "sample.py"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Sample videos from a trained run.")
    p.add_argument("--run-dir", required=True, help="training run directory (with checkpoints/)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="caption of the video to generate")
    src.add_argument("--prompts-file", help="text file, one prompt per line (blank lines skipped)")
    p.add_argument("--out", required=True, help="output FILE.mp4 (FILE_<i>.mp4 per prompt "
                   "with --prompts-file); latents go to FILE.latents.npz")
    p.add_argument("--num-steps", type=int, default=50, help="model evaluations per sample "
                   "(heun uses 2 per step but the last)")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="default: ddim")
    p.add_argument("--guidance-scale", type=float, default=1.0,
                   help="classifier-free guidance scale (1: none, one model call per step)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (sample i uses (seed, i))")
    p.add_argument("--frames", type=int, help="video frames (default: the training clips')")
    p.add_argument("--height", type=int, help="video height in pixels (default: training's)")
    p.add_argument("--width", type=int, help="video width in pixels (default: training's)")
    p.add_argument("--flow-shift", type=float,
                   help="flow objective: timestep shift (default: the run's training shift)")
    p.add_argument("--raw-weights", action="store_true",
                   help="use the raw weights even when the checkpoint has EMA weights")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--tensor-model-parallel-size", type=int, default=1, help="under torchrun")
    p.add_argument("--context-parallel-size", type=int, default=1, help="under torchrun")
    p.add_argument("--cp-comm-type", choices=CP_COMM_TYPES, default="p2p",
                   help="p2p: ring attention, a2a: Ulysses, a2a+p2p: both")
    return p


def read_prompts(args, parser) -> list[str]:
    if args.prompt is not None:
        if not args.prompt.strip():
            parser.error("--prompt is empty")
        return [args.prompt]
    if not os.path.isfile(args.prompts_file):
        parser.error(f"--prompts-file {args.prompts_file}: no such file")
    with open(args.prompts_file, encoding="utf-8") as handle:
        prompts = [line.strip() for line in handle if line.strip()]
    if not prompts:
        parser.error(f"--prompts-file {args.prompts_file}: no prompts in it")
    return prompts


def output_paths(args, parser, count: int) -> list[str]:
    if not args.out.endswith(".mp4"):
        parser.error(f"--out {args.out}: must end in .mp4")
    stem = args.out[:-len(".mp4")]
    paths = [args.out] if args.prompt is not None else [f"{stem}_{i:03d}.mp4" for i in range(count)]
    existing = [p for path in paths for p in (path, latents_path(path)) if os.path.exists(p)]
    if existing and not args.overwrite:
        parser.error(f"--out: {existing[0]} exists; pass --overwrite to replace it")
    return paths


def check_numbers(args, parser) -> None:
    if args.num_steps < 1:
        parser.error(f"--num-steps {args.num_steps}: must be >= 1")
    if not (math.isfinite(args.guidance_scale) and args.guidance_scale >= 0):
        parser.error(f"--guidance-scale {args.guidance_scale}: must be finite and >= 0")
    for name in ("frames", "height", "width", "tensor_model_parallel_size",
                 "context_parallel_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} {value}: must be >= 1")
    if args.flow_shift is not None and not (math.isfinite(args.flow_shift) and args.flow_shift > 0):
        parser.error(f"--flow-shift {args.flow_shift}: must be > 0")


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message=".*(Transformer Engine|Apex).*")
    parser = build_parser()
    args = parser.parse_args(argv)
    check_numbers(args, parser)
    prompts = read_prompts(args, parser)
    paths = output_paths(args, parser, len(prompts))
    try:
        run = open_run(args.run_dir)
    except ValueError as err:
        parser.error(str(err))
    return sample_run(args, parser, run, prompts, paths)


def sample_run(args, parser, run, prompts: list[str], paths: list[str]) -> int:
    """Everything after the torch-free checks: groups, model, sampling, outputs."""
    from ..inference.generate import Generator, SampleOptions, write_outputs
    from ..parallel.layout import ParallelLayout, init_distributed
    import torch.distributed as dist
    from tqdm import tqdm
    try:  # user mistakes found while loading: one line, exit 2
        _, world = init_distributed("gloo")
        layout = ParallelLayout.from_world_size(
            world, tensor_model_parallel_size=args.tensor_model_parallel_size,
            context_parallel_size=args.context_parallel_size, cp_comm_type=args.cp_comm_type)
        gen = Generator(run, layout, args.frames, args.height, args.width,
                        prefer_ema=not args.raw_weights)
        options = SampleOptions(args.sampler, args.num_steps, args.guidance_scale, args.seed,
                                args.flow_shift)
    except ValueError as err:
        parser.error(str(err))
    rank0 = dist.get_rank() == 0
    with tqdm(total=args.num_steps, desc=f"sample ({args.sampler})", disable=not rank0) as bar:
        latents = gen.sample_latents(prompts, options, progress=lambda _: bar.update(1))
    if rank0:
        for path in paths:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        meta = {"prompts": prompts, "run_dir": str(run.run_dir), "checkpoint": str(run.checkpoint),
                "weights": gen.weights, "sampler": args.sampler, "num_steps": args.num_steps,
                "guidance_scale": args.guidance_scale, "seed": args.seed,
                "frames": gen.frames, "height": gen.height, "width": gen.width}
        write_outputs(paths, gen.decode(latents), latents, meta)
        for path in paths:
            print(f"wrote {path} ({gen.frames} frames, {gen.width}x{gen.height}, "
                  f"{gen.weights} weights)")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
