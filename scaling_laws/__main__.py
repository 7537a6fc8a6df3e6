"""``python -m scaling_laws fit|report|plan``.

  fit RUNS... --out law.json [--plots DIR]   fit the laws, write law.json, print the report
  report LAW                                 print a law file (or the preset ``paper``)
  plan --budget FLOPS [--law LAW]            recommend N, T, eta, B for a budget
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

from megatron_vdit.cli.errors import (NON_NEGATIVE, POSITIVE, add_debug_flag,
                                      check_output_file, integer_at_least, run_cli)
from scaling_laws import lawfile, pipeline, planner, records, report
from scaling_laws.compute import ACCOUNTINGS
from scaling_laws.fit import BOOTSTRAPS, FitOptions


def _check_fit_paths(args) -> None:
    """Before any work: --out is not overwritten unasked, --plots can be a directory."""
    out = pathlib.Path(args.out)
    check_output_file(out, "--out")
    if out.exists() and not args.force:
        raise ValueError(f"--out {out} already exists; pass --force to overwrite it or "
                         "choose another path")
    if args.plots is not None:
        plots = pathlib.Path(args.plots)
        if plots.exists() and not plots.is_dir():
            raise ValueError(f"--plots {plots} exists and is not a directory")


def _fit(args) -> int:
    t0 = time.time()
    _check_fit_paths(args)
    print(f"reading run records from {', '.join(args.runs)}", file=sys.stderr)
    runs = records.prepare(records.load_records(args.runs), use_curves=not args.no_curves,
                           min_curve_tokens=args.min_curve_tokens)
    excluded = {k: len(v) for k, v in runs.excluded.items()}
    print(f"{runs.num_runs} usable runs, {len(runs.point_loss)} loss points; excluded: "
          f"{excluded or 'none'}", file=sys.stderr)
    opts = FitOptions(num_resamples=args.resamples, seed=args.seed, window=args.window,
                      surface=args.surface, t_slope=args.t_slope,
                      bootstrap_windows=tuple(args.bootstrap_windows),
                      bootstrap_surfaces=tuple(args.bootstrap_surfaces), bootstrap=args.bootstrap,
                      fixed_lr=args.fixed_lr, fixed_batch_tokens=args.fixed_batch_tokens,
                      compute=args.compute)
    law, core = pipeline.fit_law(runs, opts, sources=args.runs,
                                 extrapolate=not args.no_extrapolation, return_core=True)
    lawfile.save_law(law, args.out)
    print(report.format_law(law))
    if args.plots:
        from scaling_laws import plots  # matplotlib only when asked
        for path in plots.write_all(law, core, args.plots):
            print(f"wrote {path}", file=sys.stderr)
    print(f"wrote {args.out} ({time.time() - t0:.1f}s)", file=sys.stderr)
    if not law["usable"]:  # written for inspection, but no one should plan from it
        print("error: the fitted law is not usable (marked so in the law file):\n  - "
              + "\n  - ".join(law["unusable_reasons"]), file=sys.stderr)
        return 1
    return 0


def _report(args) -> int:
    law = lawfile.load_law(args.law)
    try:
        text = json.dumps(law, indent=1) if args.json else report.format_law(law)
    except (KeyError, TypeError, AttributeError, IndexError) as err:
        # The coefficients passed the load check; a hand-edited report section did not.
        raise ValueError(f"{args.law}: a report section of this law file is malformed "
                         f"({type(err).__name__}: {err}); --debug shows where") from err
    print(text)
    return 0


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--budget", type=POSITIVE, required=True,
                        help="training compute in FLOPs")
    parser.add_argument("--law", default="paper", help="law.json path or the preset 'paper'")
    parser.add_argument("--tokens-per-sample", type=POSITIVE, default=None,
                        help="video tokens per sample (default: the law's)")
    parser.add_argument("--max-params", type=POSITIVE, default=None,
                        help="cap on non-embedding params (e.g. an inference budget)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument("--warmup-steps", type=integer_at_least(0),
                        default=planner.DEFAULT_WARMUP_STEPS,
                        help="refuse plans with fewer optimizer steps than this warm-up "
                             f"(default {planner.DEFAULT_WARMUP_STEPS})")


def _plan(args) -> int:
    result = planner.plan(args.law, args.budget, args.tokens_per_sample, args.max_params,
                          warmup_steps=args.warmup_steps)
    print(json.dumps(lawfile.to_jsonable(result), indent=1) if args.json
          else planner.format_plan(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m scaling_laws", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="fit the laws from run records")
    fit.add_argument("runs", nargs="+", help="run dirs, .jsonl/.json files, wandb dirs")
    fit.add_argument("--out", required=True,
                     help="law.json to write (an existing file is kept unless --force)")
    fit.add_argument("--force", action="store_true", help="overwrite an existing --out")
    fit.add_argument("--plots", default=None, help="directory for PNG plots")
    fit.add_argument("--resamples", type=integer_at_least(0), default=1000,
                     help="bootstrap resamples (>= 0)")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--window", type=POSITIVE, default=FitOptions.window,
                     help="surface uses runs within this relative loss of the cell's best "
                     "(> 0; widened until the surface is identifiable)")
    fit.add_argument("--surface", choices=("auto", "quartic", "cubic", "quadratic", "near_set"),
                     default=FitOptions.surface,
                     help="each cell's (eta, B) surface: 'auto' (default) fits the quartic "
                     "in lr where the cell has >= 15 settings and >= 5 lr values, the cubic "
                     "where it has >= 12, the quadratic on smaller grids (a 3 x 3 grid); "
                     "'near_set' averages the runs within 0.25%% of the best")
    fit.add_argument("--bootstrap-windows", type=POSITIVE, nargs="+", default=[],
                     metavar="W", help="resample rows cycle through these surface windows, "
                     "so the intervals carry the window choice (e.g. 0.05 0.2; off by "
                     "default: each window adds a surface fit per cell)")
    fit.add_argument("--bootstrap-surfaces", nargs="+", default=[], metavar="FORM",
                     choices=("auto", "quartic", "cubic", "quadratic", "near_set"),
                     help="resample rows cycle through these cell surfaces, so the intervals "
                     "carry the estimator choice (e.g. quartic cubic; off by default)")
    fit.add_argument("--bootstrap", choices=BOOTSTRAPS, default=FitOptions.bootstrap,
                     help="resample rows: 'runs' resamples each size's runs (default; wide, "
                     "covers the estimator's bias too); 'wild' keeps every run and flips the "
                     "signs of its residuals (about calibrated widths where noise dominates; "
                     "not with --surface near_set or --bootstrap-windows; "
                     "docs/scaling_laws.md)")
    fit.add_argument("--t-slope", choices=("within_run", "cells"), default=FitOptions.t_slope,
                     help="token exponent of the eta and B laws: 'within_run' (default) from "
                     "how each run's loss changes between token counts, 'cells' from the "
                     "cell optima alone")
    fit.add_argument("--no-curves", action="store_true", help="ignore val_loss_curve")
    fit.add_argument("--min-curve-tokens", type=NON_NEGATIVE, default=0.0,
                     help="ignore curve points before this many tokens (warmup)")
    fit.add_argument("--no-extrapolation", action="store_true",
                     help="skip the leave-largest-size-out check")
    fit.add_argument("--fixed-lr", type=POSITIVE, default=None, help="fixed-HP baseline eta")
    fit.add_argument("--fixed-batch-tokens", type=POSITIVE, default=None,
                     help="fixed-HP baseline batch (tokens)")
    fit.add_argument("--compute", choices=sorted(ACCOUNTINGS), default="video",
                     help="training FLOPs per token: 'video' = 3/4 N (7 + n_ctx/d) (default), "
                          "'6n' = 6 N (C = 6ND, the language-model convention)")
    fit.set_defaults(func=_fit)
    rep = sub.add_parser("report", help="print a law file")
    rep.add_argument("law", help="law.json or 'paper'")
    rep.add_argument("--json", action="store_true")
    rep.set_defaults(func=_report)
    plan = sub.add_parser("plan", help="plan a run for a compute budget")
    add_plan_arguments(plan)
    plan.set_defaults(func=_plan)
    for command in (fit, rep, plan):
        add_debug_flag(command)
    return parser


def _main(argv) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


def main(argv=None) -> int:
    return run_cli(_main, argv, prog="python -m scaling_laws")


if __name__ == "__main__":
    sys.exit(main())
