#!/usr/bin/env python
"""Do a trained `--data natural` run's samples have the data's pixel statistics?

  python bench/bench_sample_stats.py --run-dir runs/default      # after `make train`

Renders `--ref-batches` batches of `--num-prompts` real clips straight from the data
module (`data/natural.py`; by default train-distribution clips at indices no run
consumed, `--split val` for the held-out photographs), samples one video per caption
of the first batch with the run's model, decodes them to pixels and compares with that
batch the colour statistics (per-channel RGB mean and std, the spread of clips' mean
colours, the channel correlations of 4x4-pixel blocks) and the structure statistics
(neighbouring-pixel difference, frame difference, pixel-level channel correlations);
`inference/sample_stats.py` defines them. The tolerance is the data's own spread across
batches of the same size. As a negative control the same comparison is made for as many
N(0, I) latents decoded (the sampler's starting point, `--seed`). Prints a markdown table,
writes a PNG of sampled frames next to the real clips of the same captions (--png) and
the numbers (--json). Exit 0 whether or not the statistics hold: this measures.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import warnings

warnings.filterwarnings("ignore")


def parse_args():
    from megatron_vdit.diffusion.samplers import SAMPLERS
    p = argparse.ArgumentParser(prog="bench_sample_stats.py", description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", default="runs/default", help="a run trained on --data natural")
    p.add_argument("--num-prompts", type=int, default=32, help="sampled videos (= batch size "
                   "of each reference batch)")
    p.add_argument("--ref-batches", type=int, default=16, help="real batches for the spread")
    p.add_argument("--split", choices=("train", "val"), default="train",
                   help="train: unseen clips of the training photographs; val: held-out photographs")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim")
    p.add_argument("--num-steps", type=int, default=50)
    p.add_argument("--guidance-scale", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-clip-x0", action="store_true", help="do not clip the clean-latent "
                   "estimate to valid pixels (inference/generate.py: clip_denoised)")
    p.add_argument("--raw-weights", action="store_true", help="raw weights even with EMA")
    p.add_argument("--png", help="write a grid of sampled and real frames here")
    p.add_argument("--json", help="write the numbers here")
    args = p.parse_args()
    if args.num_prompts < 1 or args.ref_batches < 2 or args.num_steps < 1:
        p.error("--num-prompts and --num-steps must be >= 1, --ref-batches >= 2")
    return p, args


def write_png(path: str, sampled, real, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from megatron_vdit.inference.sample_stats import frame_grid
    fig, axes = plt.subplots(1, 2, figsize=(8, 8.5))
    for ax, videos, name in ((axes[0], sampled, "samples"), (axes[1], real, "data, same captions")):
        ax.imshow(frame_grid(videos), interpolation="nearest")
        ax.set_title(f"{name} (rows: clips, columns: frames)", fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    from megatron_vdit.utils.atomic_io import save_figure_atomic
    save_figure_atomic(fig, path, dpi=100)
    plt.close(fig)


def main() -> int:
    parser, args = parse_args()
    import torch
    from tqdm import tqdm

    from megatron_vdit.data.natural import NaturalClips
    from megatron_vdit.inference import sample_stats as ss
    from megatron_vdit.inference.generate import Generator, SampleOptions
    from megatron_vdit.inference.run_files import find_field, open_run
    from megatron_vdit.parallel.layout import ParallelLayout, init_distributed
    try:
        run = open_run(args.run_dir)
        if run.data_dir != "natural":
            raise ValueError(f"--run-dir {args.run_dir} did not train on --data natural")
        init_distributed("gloo")
        gen = Generator(run, ParallelLayout(), prefer_ema=not args.raw_weights)
    except ValueError as err:
        parser.error(str(err))
    cfg = run.config
    clips = NaturalClips(gen.frames, gen.latent_shape[2], gen.latent_shape[3],
                         find_field(cfg, "text_hidden_size"), find_field(cfg, "max_text_tokens"),
                         seed=find_field(cfg, "data_seed", 0) or 0)
    start = ss.UNSEEN_TRAIN_START if args.split == "train" else 0
    refs = ss.reference_batches(clips, args.ref_batches, args.num_prompts, args.split, start)
    prompts = refs[0][1]
    options = SampleOptions(args.sampler, args.num_steps, args.guidance_scale, args.seed,
                            clip_x0=not args.no_clip_x0)
    with tqdm(total=args.num_steps, desc=f"sample ({args.sampler})") as bar:
        latents = gen.sample_latents(prompts, options, progress=lambda _: bar.update(1))
    videos = gen.decode(latents)
    ref_stats = [ss.video_statistics(v) for v, _ in refs]
    rows = ss.compare(ss.video_statistics(videos), ref_stats)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(args.seed))
    noise_rows = ss.compare(ss.video_statistics(gen.decode(noise)), ref_stats)
    iters = find_field(cfg, "train_iters")
    header = (f"run {args.run_dir} ({iters} iters, {gen.weights} weights), {args.sampler} "
              f"{args.num_steps} steps, guidance {args.guidance_scale}, seed {args.seed}, "
              f"x0 {'unclipped' if args.no_clip_x0 else 'clipped'};\n"
              f"{args.num_prompts} samples vs {args.ref_batches} real batches of "
              f"{args.num_prompts} ({args.split} split from clip {start}); "
              f"holds when |z| <= {ss.Z_TOLERANCE}")
    print(header + "\n\n" + ss.markdown_table(rows, noise_rows))
    for group, names in (("colour", ss.COLOUR_STATISTICS), ("structure", ss.STRUCTURE_STATISTICS)):
        held = [sum(r["ok"] for r in rs if r["statistic"] in names) for rs in (rows, noise_rows)]
        print(f"{group}: samples {held[0]}/{len(names)}, noise {held[1]}/{len(names)} "
              "within tolerance")
    if args.png:
        write_png(args.png, videos, refs[0][0], header)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(
            {"run_dir": args.run_dir, "options": vars(args), "weights": gen.weights,
             "rows": rows, "noise_rows": noise_rows, "prompts": prompts}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
