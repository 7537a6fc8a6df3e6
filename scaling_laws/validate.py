"""Planted-law recovery study: ``python -m scaling_laws.validate [--reps 40] [--resamples 200]
[--bootstrap runs|wild]``.

Synthesises sweeps from known laws (:class:`scaling_laws.synthetic.PlantedSweep`),
fits them, and reports for every exponent the relative error of the plain fit and
whether the bootstrap 95% interval covers the truth, over seeded repetitions; plus the
leave-largest-size-out extrapolation error on one sweep. The numbers in
docs/scaling_laws.md come from this command.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
from tqdm.auto import tqdm

from megatron_vdit.cli.errors import integer_at_least

from scaling_laws import fit, pipeline
from scaling_laws.records import prepare
from scaling_laws.synthetic import PlantedSweep

EXPONENTS = (("eta_opt", "beta", "eta", 1), ("eta_opt", "gamma", "eta", 2),
             ("batch_opt", "beta", "batch", 1), ("batch_opt", "gamma", "batch", 2),
             ("loss", "alpha_T", "loss", 1), ("loss", "alpha_N", "loss", 3),
             ("n_opt", "a", "n_opt", 1))


def truths(sweep: PlantedSweep, core: dict) -> dict:
    _, a = sweep.truth_n_opt(core["compute"], core["budgets"])
    return {("eta_opt", "beta"): sweep.eta_law["beta"], ("eta_opt", "gamma"): sweep.eta_law["gamma"],
            ("batch_opt", "beta"): sweep.batch_law["beta"],
            ("batch_opt", "gamma"): sweep.batch_law["gamma"],
            ("loss", "alpha_T"): sweep.loss_law["alpha_T"],
            ("loss", "alpha_N"): sweep.loss_law["alpha_N"], ("n_opt", "a"): a}


def one_repetition(sweep: PlantedSweep, seed: int, num_resamples: int,
                   bootstrap: str = "runs") -> dict:
    """{(law, exponent): (relative error, interval covers truth, truth)} for one sweep."""
    core = fit.core_fit(prepare(sweep.records(seed=seed)),
                        fit.FitOptions(num_resamples=num_resamples, seed=seed,
                                       bootstrap=bootstrap))
    truth = truths(sweep, core)
    out = {}
    for law, name, key, col in EXPONENTS:
        value = core[key][0, col]
        low, high = fit.interval(core[key][1:, col])
        true = truth[(law, name)]
        out[(law, name)] = (float(value / true - 1), bool(low <= true <= high), float(true))
    return out


def study(sweep: PlantedSweep, reps: int, num_resamples: int, progress=True,
          bootstrap: str = "runs") -> dict:
    results = [one_repetition(sweep, seed, num_resamples, bootstrap)
               for seed in tqdm(range(reps), desc="planted sweeps", disable=not progress)]
    summary = {}
    for law, name, _, _ in EXPONENTS:
        errs = np.array([r[(law, name)][0] for r in results])
        cover = np.array([r[(law, name)][1] for r in results])
        summary[(law, name)] = {"max_abs_rel_error": float(np.abs(errs).max()),
                                "mean_rel_error": float(errs.mean()),
                                "coverage": float(cover.mean()),
                                "truth": results[0][(law, name)][2]}
    return summary


def extrapolation(sweep: PlantedSweep, num_resamples: int) -> dict:
    law = pipeline.fit_law(prepare(sweep.records(seed=0)),
                           fit.FitOptions(num_resamples=num_resamples))
    return law["extrapolation"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=integer_at_least(1), default=40,
                        help="seeded sweeps per design (>= 1)")
    parser.add_argument("--resamples", type=integer_at_least(0), default=200,
                        help="bootstrap resamples (>= 0)")
    parser.add_argument("--realistic-noise", action="store_true",
                        help="also run the default PlantedSweep (0.1%% per-run noise, 5 sizes)")
    parser.add_argument("--bootstrap", choices=fit.BOOTSTRAPS, default="runs",
                        help="how the intervals' resample rows are drawn (FitOptions.bootstrap)")
    args = parser.parse_args(argv)
    designs = [("recovery design (0.02% run noise, 6 sizes)", PlantedSweep.recovery())]
    if args.realistic_noise:
        designs.append(("paper-like design (0.1% run noise, 5 sizes)", PlantedSweep()))
    for title, sweep in designs:
        summary = study(sweep, args.reps, args.resamples, bootstrap=args.bootstrap)
        print(f"\n{title}: {args.reps} seeded sweeps x {args.resamples} resamples "
              f"({args.bootstrap} bootstrap)")
        print(f"{'law':10s} {'exponent':8s} {'truth':>8s} {'max |err|':>10s} {'mean err':>9s} "
              f"{'coverage':>9s}")
        for (law, name), row in summary.items():
            print(f"{law:10s} {name:8s} {row['truth']:8.4f} {row['max_abs_rel_error']:10.2%} "
                  f"{row['mean_rel_error']:+9.2%} {row['coverage']:9.0%}")
        ext = extrapolation(sweep, 1000)
        if "summary" in ext:
            s = ext["summary"]
            print(f"leave-largest-out (seed 0, 1000 resamples): loss error at largest T "
                  f"{s['loss_rel_error_at_largest_tokens']:+.3%}, mean |loss error| "
                  f"{s['mean_abs_loss_rel_error']:.3%}, mean |log eta err| "
                  f"{s['mean_abs_lr_log_error']:.3f}, mean |log B err| "
                  f"{s['mean_abs_batch_log_error']:.3f}, loss cost of predicted HP "
                  f"{s['mean_loss_cost_of_predicted_hp'] or float('nan'):.1e} (measured grid)")
            print("baselines on the held-out size: " + ", ".join(
                f"{k} {v:.4f}" for k, v in ext["baselines"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
