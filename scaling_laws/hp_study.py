"""Hyperparameter estimators on realistic planted sweeps: ``python -m scaling_laws.hp_study``.

  python -m scaling_laws.hp_study [--reps 40] [--resamples 200] [--estimators ...] [--png F]

Fits seeded sweeps from :meth:`scaling_laws.synthetic.PlantedSweep.realistic` (an
asymmetric valley with a divergence wall, lr-batch coupling, heavy-tailed 0.3% noise,
off-centre grids) with each candidate cell estimator and reports, per estimator:

- the eta_opt and B_opt laws' exponents: median signed and median absolute relative
  error, and how often the 95% interval covers the truth;
- the laws' *levels* at every model size (at the sweep's middle token count): median
  ratio to the truth, and interval coverage;
- the loss cost of training at the law's predicted (eta, B), read off each cell's
  measured grid (:mod:`scaling_laws.measured`), next to the cost of the grid point
  nearest the true optimum, and the true (noise-free) cost from the planted surface.

The numbers in docs/scaling_laws.md ("Hyperparameter estimators on realistic surfaces")
come from this command.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
from tqdm.auto import tqdm

from megatron_vdit.cli.errors import NON_NEGATIVE, integer_at_least, output_file

from scaling_laws import fit, hyperopt, measured
from scaling_laws.compute import to_billions
from scaling_laws.records import prepare
from scaling_laws.synthetic import PlantedSweep

# name: FitOptions overrides; the default FitOptions is one of them (see the docs).
ESTIMATORS = {
    "quadratic-20%": dict(surface="quadratic", window=0.20, t_slope="cells"),
    "quadratic-2%": dict(surface="quadratic", window=0.02, t_slope="cells"),
    "near-set-0.25%": dict(surface="near_set", t_slope="cells"),
    "cubic": dict(surface="cubic", window=0.20, t_slope="cells"),
    # Bootstrap rows alternate between a 5% and a 20% window.
    "cubic+windows": dict(surface="cubic", window=0.20, bootstrap_windows=(0.05, 0.20),
                          t_slope="cells"),
    "quartic": dict(surface="quartic", window=0.20, t_slope="cells"),
    "cubic+within-run": dict(surface="cubic", window=0.20, t_slope="within_run"),
    # The default FitOptions: quartic where the grid allows it, T slopes within runs.
    "default": dict(),
    # The default with resample rows alternating quartic and cubic cell surfaces.
    "default+surfaces": dict(bootstrap_surfaces=("quartic", "cubic")),
    # The default with the wild bootstrap (every run kept, residual signs flipped).
    "default+wild": dict(bootstrap="wild"),
}
BLOCK = 40  # the targets are medians over 40 sweeps; longer studies print each block's
HP_EXPONENTS = (("eta", "beta", 1), ("eta", "gamma", 2), ("batch", "beta", 1),
                ("batch", "gamma", 2))


def _levels(sweep, core, key) -> list[tuple[float, bool, float]]:
    """Per size: (log(law / truth) at the middle T, 95% interval covers the truth, that
    interval's width in log units)."""
    t_mid = float(np.exp(np.mean(np.log(to_billions(sweep.curve_tokens)))))
    truth_fn = sweep.eta_opt if key == "eta" else sweep.batch_opt
    out = []
    for params in sweep.sizes_params:
        n_b = float(to_billions(sweep.shape(params)[2]))
        rows = np.log(hyperopt.predict_hp(core[key], n_b, t_mid) / truth_fn(n_b, t_mid))
        low, high = fit.interval(rows[1:]) if len(rows) > 1 else (np.nan, np.nan)
        out.append((float(rows[0]), bool(low <= 0 <= high), float(high - low)))
    return out


def _costs(sweep, core) -> dict:
    """Mean over cells: measured cost at the law's (eta, B), at the true optimum's
    nearest grid point, and the planted (noise-free) cost at the law's (eta, B)."""
    pred, nearest, true = [], [], []
    for cell in core["cells"]:
        n_b, t_b = cell.n_billion, cell.t_billion
        x = np.log(hyperopt.predict_hp(core["eta"][0], n_b, t_b))
        y = np.log(hyperopt.predict_hp(core["batch"][0], n_b, t_b))
        cost, why = measured.cost_at(cell, x, y)
        if why:
            continue
        pred.append(cost)
        nearest.append(measured.nearest_grid_cost(cell, np.log(sweep.eta_opt(n_b, t_b)),
                                                  np.log(sweep.batch_opt(n_b, t_b))))
        true.append(sweep.loss(n_b, t_b, np.exp(x), np.exp(y))
                    / sweep.loss(n_b, t_b, sweep.eta_opt(n_b, t_b), sweep.batch_opt(n_b, t_b))
                    - 1)
    return {"cost_predicted": float(np.mean(pred)), "cost_true_opt_nearest": float(
        np.mean(nearest)), "cost_noise_free": float(np.mean(true)),
        "cells_judged": len(pred), "cells": len(core["cells"])}


def one_sweep(sweep: PlantedSweep, seed: int, num_resamples: int, options: dict) -> dict:
    core = fit.core_fit(prepare(sweep.records(seed=seed)),
                        fit.FitOptions(num_resamples=num_resamples, seed=seed, **options))
    out = {"costs": _costs(sweep, core), "t_slope": core["t_slope"],
           "t_slope_attenuation": core["t_slope_attenuation"]}
    for key, name, col in HP_EXPONENTS:
        true = (sweep.eta_law if key == "eta" else sweep.batch_law)[name]
        low, high = fit.interval(core[key][1:, col])
        out[(key, name)] = (float(core[key][0, col] / true - 1), bool(low <= true <= high),
                            float(high - low))
    out["levels"] = {key: _levels(sweep, core, key) for key in ("eta", "batch")}
    return out


def summarise(results: list[dict]) -> dict:
    summary = {}
    for key, name, _ in HP_EXPONENTS:
        errs = np.array([r[(key, name)][0] for r in results])
        summary[f"{key}.{name}"] = {
            "median_rel_error": float(np.median(errs)),
            "median_abs_rel_error": float(np.median(np.abs(errs))),
            # Sweep-to-sweep spread, comparable with python -m scaling_laws.bound.
            "sd_rel_error": float(np.std(errs)),
            # 1.4826 MAD: the errors are heavy-tailed, so the sd overstates the bulk.
            "robust_sd_rel_error": float(1.4826 * np.median(np.abs(errs - np.median(errs)))),
            "block_medians": [float(np.median(errs[i:i + BLOCK]))
                              for i in range(0, len(errs) - BLOCK + 1, BLOCK)],
            "coverage": float(np.mean([r[(key, name)][1] for r in results])),
            "median_interval_width": float(np.median([r[(key, name)][2] for r in results]))}
    for key in ("eta", "batch"):
        logs, cover, width = (np.array([[level[i] for level in r["levels"][key]]
                                        for r in results]) for i in range(3))
        summary[f"{key}.level"] = {"median_ratio_per_size": np.exp(np.median(logs, 0)).tolist(),
                                   "sd_log_per_size": logs.std(0).tolist(),
                                   "coverage_per_size": cover.mean(0).tolist(),
                                   "median_log_interval_width_per_size":
                                       np.median(width, 0).tolist()}
    for k in ("cost_predicted", "cost_true_opt_nearest", "cost_noise_free"):
        summary[k] = float(np.mean([r["costs"][k] for r in results]))
    att = [r["t_slope_attenuation"] for r in results if r["t_slope_attenuation"] is not None]
    summary["within_run_share"] = float(np.mean([r["t_slope"] == "within_run" for r in results]))
    summary["median_t_slope_attenuation"] = float(np.median(att)) if att else None
    summary["cost_excess_over_true_opt_nearest"] = (summary["cost_predicted"]
                                                    - summary["cost_true_opt_nearest"])
    return summary


def study(sweep, reps, num_resamples, options, progress=True, desc="sweeps") -> dict:
    results = [one_sweep(sweep, seed, num_resamples, options)
               for seed in tqdm(range(reps), desc=desc, disable=not progress)]
    return summarise(results)


def format_summary(name: str, s: dict) -> str:
    lines = [f"\n{name}:"]
    for label in ("eta.beta", "eta.gamma", "batch.beta", "batch.gamma"):
        r = s[label]
        lines.append(f"  {label:12s} median err {r['median_rel_error']:+7.2%}  median |err| "
                     f"{r['median_abs_rel_error']:6.2%}  sd {r['sd_rel_error']:6.2%} (robust "
                     f"{r['robust_sd_rel_error']:6.2%})  coverage "
                     f"{r['coverage']:4.0%}  median 95% interval width "
                     f"{r['median_interval_width']:.4f}")
        if len(r["block_medians"]) > 1:
            lines.append(f"  {'':12s} median err per block of {BLOCK} sweeps: " + " ".join(
                f"{m:+.1%}" for m in r["block_medians"]))
    for key in ("eta", "batch"):
        r = s[f"{key}.level"]
        lines.append(f"  {key} level / truth per size: " + " ".join(
            f"{v:.3f}" for v in r["median_ratio_per_size"]) + "; coverage " + " ".join(
            f"{c:.0%}" for c in r["coverage_per_size"]) + "; median 95% interval width (log) "
            + " ".join(f"{w:.4f}" for w in r["median_log_interval_width_per_size"])
            + "; sd (log) " + " ".join(f"{v:.3f}" for v in r["sd_log_per_size"]))
    lines.append(f"  measured cost at predicted (eta, B) {s['cost_predicted']:.3%}; at the "
                 f"true optimum's nearest grid point {s['cost_true_opt_nearest']:.3%}; excess "
                 f"{s['cost_excess_over_true_opt_nearest']:+.3%}; noise-free cost "
                 f"{s['cost_noise_free']:.3%}")
    att = s["median_t_slope_attenuation"]
    lines.append(f"  T slopes within runs in {s['within_run_share']:.0%} of sweeps" + (
        f"; median bootstrap attenuation of the within-run B slope {att:+.1%}"
        if att is not None else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=integer_at_least(1), default=40,
                        help="seeded sweeps per estimator (>= 1)")
    parser.add_argument("--resamples", type=integer_at_least(0), default=200,
                        help="bootstrap resamples (>= 0)")
    parser.add_argument("--estimators", nargs="+", default=list(ESTIMATORS),
                        choices=list(ESTIMATORS))
    parser.add_argument("--noise", type=NON_NEGATIVE, default=None,
                        help="per-run relative noise (default: the realistic design's 0.3%%)")
    parser.add_argument("--png", type=output_file, default=None,
                        help="also draw the levels and exponent errors of every estimator")
    parser.add_argument("--noise-point", type=NON_NEGATIVE, default=None,
                        help="per-logged-point relative noise (default: the design's 0.03%%)")
    args = parser.parse_args(argv)
    overrides = {} if args.noise is None else {"noise_run": args.noise}
    if args.noise_point is not None:
        overrides["noise_point"] = args.noise_point
    sweep = PlantedSweep.realistic(**overrides)
    print(f"realistic planted sweeps: {args.reps} seeds x {args.resamples} resamples, "
          f"per-run noise {sweep.noise_run:.2%}, per point {sweep.noise_point:.3%} (Student-t, "
          f"{sweep.noise_df:g} dof)")
    summaries = {}
    for name in args.estimators:
        summaries[name] = study(sweep, args.reps, args.resamples, ESTIMATORS[name], desc=name)
        print(format_summary(name, summaries[name]), flush=True)
    if args.png:
        from scaling_laws import plots

        sizes = [float(to_billions(sweep.shape(p)[2])) for p in sweep.sizes_params]
        print(f"wrote {plots.estimator_study(summaries, sizes, args.png)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
