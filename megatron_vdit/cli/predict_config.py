"""From a compute budget to a launchable flagship: size, tokens, lr, batch, layout, days.

  vdit-plan --budget 1e22                                   # paper preset, 17x256x256
  vdit-plan --budget 1e22 --frames 17 --height 256 --width 256 --gpus 64 --gpu h100-80gb
  vdit-plan --budget 3e24 --tokens-per-sample 73728 --max-params 3e10 --gpus 6144 \\
            --write-config flagship.yaml --json

(``python tools/predict_config.py`` and ``python -m megatron_vdit.cli.predict_config``
are the same command.) ``scaling_laws.planner`` gives N, T, lr and batch from the law;
``megatron_vdit.planning`` adds the model shape, the inference trade-off, the parallel
layout (memory model + step-time model) and the wall-clock; docs/planning.md says how.
Exit 2 when the law, a flag, or the request cannot give a usable plan (docs/errors.md).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from megatron_vdit.cli.errors import (POSITIVE, add_debug_flag, finite_number,
                                      integer_at_least, run_cli)
from megatron_vdit.models.accounting import PRESETS, paper_params_nonembed, shape_for_params
from megatron_vdit.planning import flagship, report, video, write_config
from megatron_vdit.planning.gpus import GPUS, gpu_spec
from scaling_laws import lawfile, planner
from scaling_laws.__main__ import add_plan_arguments

# The smallest model worth planning: the smallest shape preset (a CPU test model).
MIN_PARAMS_NONEMBED = min(paper_params_nonembed(layers, hidden)
                          for layers, hidden, _ in PRESETS.values())
PFLOP_DAY = 1e15 * 86400
FRACTION = finite_number(lambda x: 0 < x <= 1, "in (0, 1]")
MARGIN = finite_number(lambda x: 0 <= x < 1, "in [0, 1)")


def _add_video_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("video (instead of --tokens-per-sample)")
    for flag, unit in (("--frames", "frames"), ("--height", "pixels"), ("--width", "pixels")):
        g.add_argument(flag, type=integer_at_least(1), default=None, help=f"clip {unit}")
    g.add_argument("--vae-temporal", type=integer_at_least(1), default=4,
                   help="VAE temporal compression, causal: 1 + k*t frames -> 1 + k (default 4)")
    g.add_argument("--vae-spatial", type=integer_at_least(1), default=8,
                   help="VAE spatial compression (default 8)")
    g.add_argument("--patch-size", type=integer_at_least(1), nargs=3, default=[1, 2, 2],
                   metavar=("T", "H", "W"), help="patch size in latent pixels (default 1 2 2)")
    g.add_argument("--latent-channels", type=integer_at_least(1), default=16)
    g.add_argument("--text-hidden-size", type=integer_at_least(1), default=4096,
                   help="caption embedding width (default 4096, UMT5-XXL)")
    g.add_argument("--text-tokens", type=integer_at_least(1), default=128,
                   help="padded caption length (default 128)")
    g.add_argument("--sampling-steps", type=integer_at_least(1), default=50,
                   help="model calls per generated video, for inference cost (default 50, "
                        "with classifier-free guidance)")


def _add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("cluster (a layout and the wall-clock need --gpus)")
    g.add_argument("--gpus", type=integer_at_least(1), default=None, help="GPUs for the run")
    g.add_argument("--gpu", default="h100-80gb", metavar="TYPE",
                   help=f"GPU type: {', '.join(GPUS)} (default h100-80gb; docs/planning.md)")
    g.add_argument("--gpus-per-node", type=integer_at_least(1), default=None,
                   help="GPUs per node: TP stays within one (default: the GPU type's, 8)")
    g.add_argument("--gpu-memory-gib", type=POSITIVE, default=None,
                   help="override the GPU type's memory (GiB)")
    g.add_argument("--mfu", type=FRACTION, default=0.4,
                   help="assumed model-FLOP utilisation of the compute (default 0.4)")
    g.add_argument("--memory-margin", type=MARGIN, default=0.1,
                   help="fraction of GPU memory kept free beyond the fixed reserve "
                        "(default 0.1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plan_arguments(parser)
    parser.add_argument("--budget-unit", choices=("flops", "pflop-days"), default="flops",
                        help="unit of --budget (1 PFLOP/s-day = 8.64e19 FLOPs)")
    _add_video_arguments(parser)
    _add_cluster_arguments(parser)
    parser.add_argument("--write-config", default=None, metavar="PATH",
                        help="write the training config (YAML) for the chosen layout")
    parser.add_argument("--data", default=None, metavar="DIR",
                        help="with --write-config: the latents directory to train on "
                             "(default: the placeholder 'synthetic', overridden at launch)")
    parser.add_argument("--plot", default=None, metavar="PNG",
                        help="also draw the trade-off and the layout ranking (PNG)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite --write-config / --plot")
    add_debug_flag(parser)
    return parser


def _check_model_size(law: dict, args) -> None:
    """Refuse, before planning, a model below the smallest sensible one (no shape exists)."""
    if args.max_params is not None and args.max_params < MIN_PARAMS_NONEMBED:
        raise ValueError(f"--max-params {args.max_params:g} is below the smallest model "
                         f"({MIN_PARAMS_NONEMBED:,} non-embedding params)")
    if law.get("usable") is False:
        return  # the planner refuses the whole law, naming why
    n_opt, _ = lawfile.n_opt_params(law, args.budget)
    if n_opt >= MIN_PARAMS_NONEMBED:
        return
    part = law["n_opt"]
    needed = (MIN_PARAMS_NONEMBED / part["k"]) ** (1 / part["a"])
    raise ValueError(f"--budget {args.budget:g} FLOPs gives N_opt = {n_opt:.3g} params, below "
                     f"the smallest model ({MIN_PARAMS_NONEMBED:,} non-embedding params); "
                     f"this law needs a budget of at least {needed:.3g} FLOPs")


def latent_shape(args, law: dict) -> video.LatentShape:
    given = [f for f in ("frames", "height", "width") if getattr(args, f) is not None]
    if given and args.tokens_per_sample is not None:
        raise ValueError("give the video shape (--frames --height --width) or "
                         "--tokens-per-sample, not both")
    if given:
        if len(given) < 3:
            missing = sorted({"frames", "height", "width"} - set(given))
            raise ValueError(f"--frames, --height and --width go together; missing "
                             f"{', '.join('--' + m for m in missing)}")
        return video.latent_from_video(args.frames, args.height, args.width,
                                       args.vae_temporal, args.vae_spatial, args.patch_size)
    tokens = args.tokens_per_sample or law["compute"]["tokens_per_sample"]
    if float(tokens) != int(tokens):
        raise ValueError(f"--tokens-per-sample {tokens:g} is not a whole number")
    return video.latent_for_tokens(int(tokens), args.patch_size)


def cluster(args):
    if args.gpus is None:
        return None
    spec = gpu_spec(args.gpu)
    if args.gpu_memory_gib is not None:
        spec = dataclasses.replace(spec, memory_gib=args.gpu_memory_gib)
    return flagship.Cluster(args.gpus, spec, args.gpus_per_node or spec.gpus_per_node,
                            args.mfu, args.memory_margin)


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    if args.budget_unit == "pflop-days":
        args.budget *= PFLOP_DAY
    target = (write_config.check_target(args.write_config, args.force)
              if args.write_config else None)
    picture = write_config.check_target(args.plot, args.force, "--plot") if args.plot else None
    gpu_spec(args.gpu)  # an unknown type fails now, with or without --gpus
    law = lawfile.load_law(args.law)
    latent = latent_shape(args, law)
    cond = flagship.Conditioning(args.latent_channels, args.text_hidden_size,
                                 args.text_tokens, args.sampling_steps)
    _check_model_size(law, args)
    # With real shapes, T = C / C_token uses the shape's hidden size rather than the
    # law's smooth d(N) rule (they differ by a few percent in T).
    base = planner.plan(law, args.budget, latent.tokens, args.max_params,
                        hidden_size_for_params=lambda n: shape_for_params(float(n))["hidden_size"],
                        warmup_steps=args.warmup_steps)
    plan = flagship.make_plan(base, law, latent, cond, cluster(args), args.max_params)
    plan.update(warmup_steps=args.warmup_steps, num_gpus=args.gpus, gpu=args.gpu, mfu=args.mfu)
    if target is not None:
        write_config.write_config(plan, cond, target, args.data)
        print(f"wrote {target}" + ("" if args.data else " (data: synthetic placeholder; "
                                   "launch with --data DIR)"), file=sys.stderr)
    if picture is not None:
        from megatron_vdit.planning.plot import write_plot  # matplotlib only when asked
        write_plot(plan, picture)
        print(f"wrote {picture}", file=sys.stderr)
    print(json.dumps(lawfile.to_jsonable(plan), indent=1) if args.json
          else report.format_plan(plan))
    return 0


def main(argv=None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
