#!/usr/bin/env python
"""Post-training quantization (ModelOpt INT8 / FP8 fake-quant) of a trained run: what it costs
in validation loss and how far it moves a sample at the same seed.

  python bench/bench_quantization.py --run-dir runs/default   # after `make train`

For fp32 and each scheme: the deterministic validation loss (the training protocol:
stratified timesteps, noise seeded per sample) on the run's held-out shards, and a
sample of each of two prompts at the same seed, compared with the fp32 sample as the
relative L2 distance of the latents and the PSNR of the decoded videos. Calibration:
`--calib-batches` batches of training latents noised at the validation timesteps.
Each quantized model is saved and restored into a fresh model before it is measured,
so the numbers are those of the restored file. Prints a markdown table (and --json).
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import tempfile
import warnings

warnings.filterwarnings("ignore")

import torch  # noqa: E402

PROMPTS = ["a red square moving right", "a blue circle on a white background"]
# `--data natural` captions (data/natural.py's vocabulary).
NATURAL_PROMPTS = ["astronaut camera pans left slow zooms steady turns level coins disc moves up fast",
                   "coffee camera pans down fast zooms in turns clockwise brick disc moves left slow"]


def _batches(run, split: str, count: int, batch_size: int) -> list[dict]:
    """The first `count` batches of `split`: the run's shards, or, for `--data natural`,
    clips rendered from the data module (val: the training run's held-out set, indices 0..)."""
    if run.data_dir == "natural":
        clips = _natural_clips(run.config)
        return [clips.batch(split, list(range(b * batch_size, (b + 1) * batch_size)))
                for b in range(count)]
    from megatron_vdit.data.loader import ShardLoader
    root = run.data_dir
    out = []
    for batch in ShardLoader(root, split, batch_size, infinite=False):
        out.append(batch)
        if len(out) == count:
            break
    return out


def _natural_clips(config: dict):
    from megatron_vdit.data.natural import NaturalClips
    from megatron_vdit.inference.run_files import find_field
    return NaturalClips(*(find_field(config, k) for k in ("latent_frames", "latent_height",
                                                           "latent_width", "text_hidden_size",
                                                           "max_text_tokens")),
                        seed=find_field(config, "data_seed", 0) or 0)


def _examples(objective, batches, num_samples: int, seed: int):
    """(x_t, t, text, mask, target) per batch under the validation protocol."""
    examples, first = [], 0
    for batch in batches:
        n = batch["latent"].shape[0]
        indices = list(range(first, first + n))
        x_t, t, target = objective.validation_example(batch["latent"], indices, num_samples, seed)
        examples.append((x_t, t, batch["text_emb"], batch["text_mask"], target))
        first += n
    return examples


@torch.no_grad()
def val_loss(model, examples) -> float:
    total = count = 0
    for x_t, t, text, mask, target in examples:
        total += (model(x_t, t, text, mask).float() - target).pow(2).sum().item()
        count += target.numel()
    return total / count


def _per_channel(x_BCFHW, stat: str) -> list[float]:
    flat = x_BCFHW.transpose(0, 1).reshape(x_BCFHW.shape[1], -1).double()
    return getattr(flat, stat)(1).tolist()


def psnr(a, b) -> float:
    mse = ((a.astype("float64") - b.astype("float64")) ** 2).mean()
    return float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse)


def main() -> int:
    p = argparse.ArgumentParser(prog="bench_quantization.py", description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", default="runs/default")
    p.add_argument("--schemes", nargs="+", default=["int8", "fp8"])
    p.add_argument("--calib-batches", type=int, default=4)
    p.add_argument("--eval-samples", type=int, default=64)
    p.add_argument("--num-steps", type=int, default=20)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--guidance-scale", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    from megatron_vdit.inference import quantize as quant
    from megatron_vdit.inference.generate import Generator, SampleOptions
    from megatron_vdit.inference.run_files import find_field, open_run
    from megatron_vdit.parallel.layout import ParallelLayout, init_distributed
    init_distributed("gloo")
    run = open_run(args.run_dir)
    gen = Generator(run, ParallelLayout())
    eval_seed = find_field(run.config, "eval_seed", 0)
    batch = min(16, args.eval_samples)
    val = _examples(gen.objective, _batches(run, "val", -(-args.eval_samples // batch),
                                            batch), args.eval_samples, eval_seed)
    calib = [e[:4] for e in _examples(gen.objective, _batches(run, "train",
                                                              args.calib_batches, 16),
                                      16 * args.calib_batches, eval_seed + 1)]
    options = SampleOptions(args.sampler, args.num_steps, args.guidance_scale, args.seed)
    prompts = NATURAL_PROMPTS if run.data_dir == "natural" else PROMPTS
    ref_latents = gen.sample_latents(prompts, options)
    ref_video = gen.decode(ref_latents)
    rows = [{"scheme": "fp32", "weights": gen.weights, "val_loss": val_loss(gen.model, val),
             "val_loss_delta": 0.0, "latent_rel_l2": 0.0, "video_psnr_db": float("inf")}]
    for scheme in args.schemes:
        quantized = quant.quantize(Generator(run, ParallelLayout()).model, scheme, calib)
        with tempfile.TemporaryDirectory() as tmp:
            quant.save(quantized, f"{tmp}/{scheme}.pth")
            restored = Generator(run, ParallelLayout())
            quant.restore(restored.model, f"{tmp}/{scheme}.pth")
        latents = restored.sample_latents(prompts, options)
        loss = val_loss(restored.model, val)
        rows.append({"scheme": scheme, "weights": gen.weights, "val_loss": loss,
                     "val_loss_delta": loss - rows[0]["val_loss"],
                     "quantized_layers": len(quant.quantized_layers(restored.model)),
                     "latent_rel_l2": ((latents - ref_latents).norm() / ref_latents.norm()).item(),
                     "video_psnr_db": psnr(restored.decode(latents), ref_video)})
    print(f"run {args.run_dir} ({gen.weights} weights), {args.eval_samples} val samples, "
          f"{args.calib_batches}x16 calibration samples, {args.sampler} {args.num_steps} steps, "
          f"guidance {args.guidance_scale}, seed {args.seed}\n")
    # Do samples have the data's per-channel statistics? Sample the first held-out
    # captions (fp32) and compare with those clips' latents.
    held_out = val[0]
    data_latents = _batches(run, "val", 1, batch)[0]["latent"]
    samples = gen.sample_from_text(held_out[2], held_out[3], options)
    stats = {"data_mean": _per_channel(data_latents, "mean"), "data_std": _per_channel(data_latents, "std"),
             "sample_mean": _per_channel(samples, "mean"), "sample_std": _per_channel(samples, "std")}
    print(f"per-channel latent statistics, {batch} held-out clips vs samples of their captions:")
    for key, values in stats.items():
        print(f"  {key:12s} " + " ".join(f"{v:+.3f}" for v in values))
    print()
    print("| scheme | val loss | delta vs fp32 | latent rel. L2 vs fp32 | video PSNR vs fp32 (dB) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['scheme']} | {r['val_loss']:.5f} | {r['val_loss_delta']:+.5f} | "
              f"{r['latent_rel_l2']:.4f} | {r['video_psnr_db']:.1f} |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"rows": rows, "stats": stats}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
