#!/usr/bin/env python
"""Benchmark: the full scaling-law fit of a few hundred runs with 1000 bootstrap resamples.

  python bench/bench_scaling_fit.py [--resamples 1000] [--sizes 6] [--repeats 3]

Synthesises a planted sweep (7 x 5 (eta, B) grid per size, validation curves), then
times ``pipeline.fit_law`` end to end: cell surfaces, hyperparameter laws, loss law,
N_opt(C), baselines and the leave-largest-out check (which bootstraps again).
Issue #3's bar: under a minute on this machine. Results go to docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

from scaling_laws import pipeline
from scaling_laws.fit import FitOptions
from scaling_laws.records import prepare
from scaling_laws.synthetic import PlantedSweep

SIZES = (0.017e9, 0.036e9, 0.057e9, 0.13e9, 0.26e9, 0.5e9, 1.07e9, 2e9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--sizes", type=int, default=8, help="model sizes (<= 8)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sweep = PlantedSweep.recovery(sizes_params=SIZES[:args.sizes])
    records = sweep.records(seed=0)
    t0 = time.perf_counter()
    runs = prepare(records)
    load_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        law = pipeline.fit_law(runs, FitOptions(num_resamples=args.resamples))
        times.append(time.perf_counter() - t0)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}")
    print(f"runs: {len(records)} records, {runs.num_runs} usable, {len(runs.point_loss)} loss "
          f"points, {law['diagnostics']['num_cells']} cells, {args.resamples} resamples")
    print(f"prepare: {load_s:.2f}s; fit_law (incl. extrapolation bootstrap): "
          f"min {min(times):.2f}s, max {max(times):.2f}s over {args.repeats} repeats")
    return 0


if __name__ == "__main__":
    sys.exit(main())
