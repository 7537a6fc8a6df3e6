#!/usr/bin/env python
"""Recommend a model size, token count, learning rate and batch size for a FLOP budget.

  python tools/predict_config.py --budget 1e22                    # paper preset
  python tools/predict_config.py --budget 1e21 --law law.json --max-params 5e8 --json

A thin wrapper over ``scaling_laws.planner``; it adds a suggested model shape from
``megatron_vdit.models.accounting.shape_for_params`` when that is importable.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from scaling_laws import lawfile, planner  # noqa: E402
from scaling_laws.__main__ import add_plan_arguments  # noqa: E402


def suggested_shape(params_nonembed: float):
    """(shape dict, note); the import is lazy so the planner never needs the model package."""
    try:
        from megatron_vdit.models.accounting import shape_for_params
    except ImportError as err:
        return None, f"unavailable (megatron_vdit.models.accounting not importable: {err})"
    return shape_for_params(params_nonembed), ""


def _shape_fn():
    try:
        from megatron_vdit.models.accounting import shape_for_params
    except ImportError:
        return None
    return shape_for_params


def suggested_layout(shape: dict | None, tokens_per_sample: int, args):
    """(layout dict, note) for `--gpus`; lazy imports as for the shape."""
    if shape is None or not args.gpus:
        return None, ""
    from megatron_vdit.models.accounting import ModelShape, params_total
    from megatron_vdit.parallel.memory import suggest_layout
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
        return None, str(err)
    layout = {"flags": est.flags(), "data_parallel_size": est.data_parallel_size,
              "memory_gib_per_gpu": round(est.memory_gib, 1),
              "model_states_gib": round(est.model_states_gib, 1),
              "activations_gib": round(est.activations_gib, 1)}
    return layout, ""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plan_arguments(parser)
    parser.add_argument("--gpus", type=int, default=0,
                        help="also suggest a parallel layout for this many GPUs")
    parser.add_argument("--gpu-memory-gib", type=float, default=80.0)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    args = parser.parse_args(argv)
    shape_fn = _shape_fn()
    # With real shapes available, T = C / C_token uses the suggested shape's hidden size
    # rather than the law's smooth d(N) rule (they differ by a few percent in T).
    hidden = (lambda n: shape_fn(float(n))["hidden_size"]) if shape_fn else None
    try:
        result = planner.plan(args.law, args.budget, args.tokens_per_sample, args.max_params,
                              hidden_size_for_params=hidden)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    shape, note = suggested_shape(result["params_nonembed"])
    layout, layout_note = suggested_layout(shape, int(result["tokens_per_sample"]), args)
    if args.json:
        result["model_shape"] = shape
        if note:
            result["model_shape_note"] = note
        if args.gpus:
            result["parallel_layout"] = layout or {"error": layout_note}
        print(json.dumps(lawfile.to_jsonable(result), indent=1))
    else:
        print(planner.format_plan(result, shape, note))
        if layout:
            print(f"  layout on {args.gpus} GPUs  {layout['flags']} (DP "
                  f"{layout['data_parallel_size']}); ~{layout['memory_gib_per_gpu']} GiB/GPU "
                  f"({layout['model_states_gib']} states + {layout['activations_gib']} "
                  "activations, micro-batch 1; estimate, see megatron_vdit/parallel/memory.py)")
        elif layout_note:
            print(f"  layout on {args.gpus} GPUs  {layout_note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
