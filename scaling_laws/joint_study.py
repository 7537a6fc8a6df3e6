"""A joint translating-surface fit of the token exponents, tried against the within-run
slopes: ``python -m scaling_laws.joint_study``.

  python -m scaling_laws.joint_study [--reps 20] [--noise 0.003] [--per-size]

The default fit takes the laws' token exponents (beta of eta_opt and B_opt) from how each
run's loss changes between token counts (:func:`scaling_laws.hyperopt.within_run_slopes`).
The alternative here fits, per model size, one surface shared by all of its token counts
and moved along log T: ``log L = l(T) + s(x - b_x tau, y - b_y tau)`` with ``tau`` the
centred log T, a free level ``l`` per T, ``s`` the cell polynomial (quartic in lr, cubic
in B) or that plus the degree-5 terms, and ``(b_x, b_y)`` found by nonlinear least
squares (the polynomial profiled out). Weighting by a random run effect (generalised
least squares, the Fuller-Battese transform with the planted ratio of run to point
variance) leans on the precise within-run changes instead. The size's (b_x, b_y) are
averaged (median) over sizes and compared with the planted exponents on the realistic
sweeps (:meth:`scaling_laws.synthetic.PlantedSweep.realistic`).

Plain fits only (no bootstrap). docs/scaling_laws.md ("eta's T exponent stays
unresolved") reports what this command gives and why the fit was not adopted.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
from scipy.optimize import least_squares
from tqdm.auto import tqdm

from megatron_vdit.cli.errors import NON_NEGATIVE, integer_at_least

from scaling_laws import fit, hyperopt
from scaling_laws.records import prepare
from scaling_laws.synthetic import PlantedSweep

QUARTIC = hyperopt.SURFACE_TERMS["quartic"]
# Every term of degree 5 at most and cubic at most in B that the quartic lacks.
DEGREE5 = QUARTIC + tuple("x" * i + "y" * j for i in range(6) for j in range(4)
                          if 2 <= i + j <= 5 and "x" * i + "y" * j not in QUARTIC)
SURFACES = {"quartic": QUARTIC, "degree5": DEGREE5}
# Variance of a run's own offset over that of one logged point, as planted (0.3% / 0.03%).
PLANTED_RUN_EFFECT_RATIO = 100.0


def translation(cells: list, terms: tuple, run_effect_ratio: float | None) -> np.ndarray:
    """(b_x, b_y) of one model size's cells: the surface's shift per unit of log T."""
    m = [c.in_window for c in cells]
    x = np.concatenate([c.log_lr[k] for c, k in zip(cells, m)])
    y = np.concatenate([c.log_batch[k] for c, k in zip(cells, m)])
    z = np.concatenate([c.log_loss[k] for c, k in zip(cells, m)])
    tau = np.concatenate([np.full(k.sum(), np.log(c.t_billion)) for c, k in zip(cells, m)])
    cell_of = np.concatenate([np.full(k.sum(), j) for j, k in enumerate(m)])
    run_of = np.unique(np.concatenate([c.run_index[k] for c, k in zip(cells, m)]),
                       return_inverse=True)[1]
    tau, x, y = tau - tau.mean(), x - x.mean(), y - y.mean()
    levels = np.eye(len(cells))[cell_of]
    count = np.bincount(run_of).astype(float)
    # Fuller-Battese: subtract theta times the run's mean (theta = 0: ordinary least squares).
    theta = (np.zeros_like(count) if run_effect_ratio is None
             else 1 - np.sqrt(1 / (1 + count * run_effect_ratio)))

    def demean(v):
        sums = np.zeros((len(count),) + v.shape[1:])
        np.add.at(sums, run_of, v)
        mean = sums / count.reshape((-1,) + (1,) * (v.ndim - 1))
        return v - theta[run_of].reshape((-1,) + (1,) * (v.ndim - 1)) * mean[run_of]

    target = demean(z)

    def residuals(b):
        dx, dy = x - b[0] * tau, y - b[1] * tau
        design = demean(np.concatenate(
            [levels, np.stack([hyperopt._monomial(t, dx, dy) for t in terms[1:]], -1)], 1))
        coef = np.linalg.lstsq(design, target, rcond=None)[0]
        return target - design @ coef

    return least_squares(residuals, np.array([-0.04, 0.3]), x_scale=0.1, diff_step=1e-4).x


FITS = {"quartic": ("quartic", None), "degree5": ("degree5", None),
        "quartic, run effect (GLS)": ("quartic", PLANTED_RUN_EFFECT_RATIO),
        "degree5, run effect (GLS)": ("degree5", PLANTED_RUN_EFFECT_RATIO)}


def one_sweep(sweep: PlantedSweep, seed: int) -> dict:
    """Relative errors of (eta beta, B beta): the default's within-run slopes and each
    joint fit (median over sizes), plus each joint fit's errors per size."""
    core = fit.core_fit(prepare(sweep.records(seed=seed)), fit.FitOptions(num_resamples=0))
    truth = np.array([sweep.eta_law["beta"], sweep.batch_law["beta"]])
    out = {"within-run (default)": np.array([core["eta"][0, 1], core["batch"][0, 1]]) / truth - 1,
           "per_size": {}}
    sizes = sorted({round(c.n_billion, 9) for c in core["cells"]})
    for name, (surface, ratio) in FITS.items():
        per_size = np.array([translation([c for c in core["cells"] if round(c.n_billion, 9) == n],
                                         SURFACES[surface], ratio) for n in sizes]) / truth - 1
        out[name] = np.median(per_size, 0)
        out["per_size"][name] = per_size
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=integer_at_least(1), default=20,
                        help="seeded realistic sweeps (>= 1)")
    parser.add_argument("--noise", type=NON_NEGATIVE, default=0.003,
                        help="per-run relative noise (per point: a tenth of it)")
    parser.add_argument("--per-size", action="store_true",
                        help="also print each joint fit's errors per model size (first sweep)")
    args = parser.parse_args(argv)
    sweep = PlantedSweep.realistic(noise_run=args.noise, noise_point=args.noise / 10)
    results = [one_sweep(sweep, seed) for seed in tqdm(range(args.reps), desc="sweeps")]
    print(f"realistic planted sweeps, per-run noise {args.noise:.2%}, {args.reps} sweep(s); "
          "relative error of the token exponents, median over sweeps (median |error|):")
    for name in ["within-run (default)", *FITS]:
        err = np.array([r[name] for r in results])
        print(f"  {name:28s} eta beta {np.median(err[:, 0]):+7.1%} ({np.median(abs(err[:, 0])):.1%})"
              f"   B beta {np.median(err[:, 1]):+7.1%} ({np.median(abs(err[:, 1])):.1%})")
    if args.per_size:
        print("per model size, first sweep (eta beta, B beta):")
        for name, per_size in results[0]["per_size"].items():
            print(f"  {name:28s} " + "  ".join(f"{e:+.1%}/{b:+.1%}" for e, b in per_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
