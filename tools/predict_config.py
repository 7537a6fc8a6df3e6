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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_plan_arguments(parser)
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
    if args.json:
        result["model_shape"] = shape
        if note:
            result["model_shape_note"] = note
        print(json.dumps(lawfile.to_jsonable(result), indent=1))
    else:
        print(planner.format_plan(result, shape, note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
