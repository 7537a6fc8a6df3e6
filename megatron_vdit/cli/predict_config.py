"""Recommend a model size, token count, learning rate and batch size for a FLOP budget.

  vdit-plan --budget 1e22                                  # paper preset
  vdit-plan --budget 1e21 --law law.json --max-params 5e8 --json
  vdit-plan --budget 1e24 --gpus 64 --gpu-memory-gib 80    # also a parallel layout

(``python tools/predict_config.py`` and ``python -m megatron_vdit.cli.predict_config``
are the same command.) A thin layer over ``scaling_laws.planner`` that adds a model
shape from ``megatron_vdit.models.accounting.shape_for_params`` and, with ``--gpus``, the
cheapest parallel layout that fits (``megatron_vdit.parallel.memory``). Exit 2 when the
law, a flag, or the request cannot give a usable plan (docs/errors.md).
"""
from __future__ import annotations

import argparse
import json
import sys

from megatron_vdit.cli.errors import POSITIVE, add_debug_flag, integer_at_least, run_cli
from megatron_vdit.models.accounting import (PRESETS, ModelShape, paper_params_nonembed,
                                             params_total, shape_for_params)
from megatron_vdit.parallel.memory import suggest_layout
from scaling_laws import lawfile, planner
from scaling_laws.__main__ import add_plan_arguments

# The smallest model worth planning: the smallest shape preset (a CPU test model).
MIN_PARAMS_NONEMBED = min(paper_params_nonembed(layers, hidden)
                          for layers, hidden, _ in PRESETS.values())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plan_arguments(parser)
    parser.add_argument("--gpus", type=integer_at_least(1), default=None,
                        help="also suggest a parallel layout for this many GPUs")
    parser.add_argument("--gpu-memory-gib", type=POSITIVE, default=80.0,
                        help="memory of one GPU in GiB (default 80)")
    parser.add_argument("--gpus-per-node", type=integer_at_least(1), default=8,
                        help="GPUs per node: tensor parallelism stays within one (default 8)")
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


def suggested_layout(shape: dict, tokens_per_sample: int, args) -> dict:
    """The cheapest fitting layout on ``--gpus``; ValueError (exit 2) when none fits."""
    # Wan-like latents and a UMT5 caption width: what a flagship video DiT trains on.
    total = params_total(ModelShape(shape["num_layers"], shape["hidden_size"],
                                    shape["num_attention_heads"], in_channels=16,
                                    patch_volume=4, text_hidden_size=4096))
    try:
        est = suggest_layout(params_total=total, num_layers=shape["num_layers"],
                             hidden_size=shape["hidden_size"],
                             num_attention_heads=shape["num_attention_heads"],
                             tokens_per_sample=tokens_per_sample, num_gpus=args.gpus,
                             gpu_memory_gib=args.gpu_memory_gib,
                             gpus_per_node=args.gpus_per_node)
    except ValueError as err:
        raise ValueError(f"--gpus {args.gpus} --gpu-memory-gib {args.gpu_memory_gib:g}: "
                         f"{err}") from err
    return {"flags": est.flags(), "data_parallel_size": est.data_parallel_size,
            "memory_gib_per_gpu": round(est.memory_gib, 1),
            "model_states_gib": round(est.model_states_gib, 1),
            "activations_gib": round(est.activations_gib, 1)}


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    law = lawfile.load_law(args.law)
    # With real shapes, T = C / C_token uses the suggested shape's hidden size rather
    # than the law's smooth d(N) rule (they differ by a few percent in T).
    hidden = (lambda n: shape_for_params(float(n))["hidden_size"])
    _check_model_size(law, args)
    result = planner.plan(law, args.budget, args.tokens_per_sample, args.max_params,
                          hidden_size_for_params=hidden, warmup_steps=args.warmup_steps)
    shape = shape_for_params(result["params_nonembed"])
    layout = (suggested_layout(shape, int(result["tokens_per_sample"]), args)
              if args.gpus else None)
    if args.json:
        result["model_shape"] = shape
        if layout:
            result["parallel_layout"] = layout
        print(json.dumps(lawfile.to_jsonable(result), indent=1))
        return 0
    print(planner.format_plan(result, shape))
    if layout:
        print(f"  layout on {args.gpus} GPUs  {layout['flags']} (DP "
              f"{layout['data_parallel_size']}); ~{layout['memory_gib_per_gpu']} GiB/GPU "
              f"({layout['model_states_gib']} states + {layout['activations_gib']} "
              "activations, micro-batch 1; estimate, see megatron_vdit/parallel/memory.py)")
    return 0


def main(argv=None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
