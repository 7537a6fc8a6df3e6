"""How precisely a planted sweep can determine the hyperparameter laws at all:
``python -m scaling_laws.bound``.

  python -m scaling_laws.bound [--design realistic|recovery] [--noise 0.003] [--sweeps 40]
                               [--bar 0.03] [--check-sweeps 0]

The Cramer-Rao bound of an *oracle* estimator that knows the planted family
(:class:`scaling_laws.synthetic.PlantedSweep`: the power laws of eta_opt and B_opt, the
valley's shape, the noise model) and only has to fit its parameters. No estimator that
is unbiased on the sweep can have a smaller variance; a real one, which does not know
the family, has more. It tells a target that the estimator misses from one that the
sweep's design cannot support.

Parameters (all free, the truth as the expansion point):
- the six exponents and log levels of the eta_opt and B_opt laws;
- the valley's shape (its nonzero curvature, asymmetry and coupling fields), with a
  ``shape_scope``: ``"shared"`` by every size, free per model size (``"size"``, what the
  within-run token slopes assume: one shape per size, moving with T), or free per
  (size, token count) cell (``"cell"``, as free as the fitter's cell surfaces);
- a free log-loss level per (size, token count), so the loss law is not assumed.

Noise model: the log loss of run ``r`` at token count ``k`` carries a run offset (shared
by its whole curve) plus a point offset, so the covariance of a run's curve is
``s_run^2 11' + s_point^2 I``. The bound is the Gaussian one at the design's noise
variances; Student-t noise of the same variance carries more information about a
location (x ``(df+1) df / ((df+3)(df-2))``: 1.43 at 4 dof), which
:func:`student_t_information_factor` gives and the report applies as a second column:
an upper limit on the extra information, not a spread any fit is shown to reach.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import sys

import numpy as np
from tqdm.auto import tqdm

from megatron_vdit.cli.errors import NON_NEGATIVE, POSITIVE, integer_at_least

from scaling_laws.compute import to_billions
from scaling_laws.synthetic import PlantedSweep

LAW_PARAMS = (("eta_law", "alpha"), ("eta_law", "beta"), ("eta_law", "gamma"),
              ("batch_law", "alpha"), ("batch_law", "beta"), ("batch_law", "gamma"))
SHAPE_FIELDS = ("k_lr", "k_batch", "k_cross", "skew", "lr_asymmetry", "batch_asymmetry",
                "lr_batch_coupling")
EXPONENTS = (("eta", "beta", 1), ("eta", "gamma", 2), ("batch", "beta", 4),
             ("batch", "gamma", 5))
_STEP = 1e-5  # central-difference step in each parameter (log alpha, exponents, shape)
SHAPE_SCOPES = ("shared", "size", "cell")


def student_t_information_factor(df: float | None) -> float:
    """Fisher information about a location under unit-variance Student-t noise with
    ``df`` degrees of freedom, over that under Gaussian noise of the same variance."""
    if df is None:
        return 1.0
    if not df > 2:
        raise ValueError(f"Student-t noise needs more than 2 degrees of freedom for a "
                         f"variance, got {df}")
    return (df + 1) * df / ((df + 3) * (df - 2))


def shape_fields(sweep: PlantedSweep) -> tuple:
    """The valley's shape parameters the oracle fits: those nonzero in the truth."""
    return tuple(name for name in SHAPE_FIELDS if getattr(sweep, name) != 0)


def _moved(sweep: PlantedSweep, param, step: float) -> PlantedSweep:
    group, key = param
    if group is None:
        return dataclasses.replace(sweep, **{key: getattr(sweep, key) + step})
    law = dict(getattr(sweep, group))
    law[key] = law[key] * math.exp(step) if key == "alpha" else law[key] + step
    return dataclasses.replace(sweep, **{group: law})


def _design(sweep: PlantedSweep):
    """The completed runs' (size index, n_billion, lr, batch_tokens), the token counts."""
    runs = [r for r in sweep.records(seed=0) if r["status"] == "completed"]
    sizes = sorted({r["params_nonembed"] for r in runs})
    size_index = np.array([sizes.index(r["params_nonembed"]) for r in runs])
    n_b = np.array([float(to_billions(r["params_nonembed"])) for r in runs])
    lr = np.array([r["lr"] for r in runs])
    batch = np.array([float(r["batch_tokens"]) for r in runs])
    t_b = np.array([float(to_billions(t)) for t in sorted(sweep.curve_tokens)])
    return size_index, n_b, lr, batch, t_b, len(sizes)


def _shape_groups(shape_scope: str, size_index: np.ndarray, num_sizes: int, num_t: int):
    """(suffix, (runs, token counts) mask) of every group that gets its own shape."""
    if shape_scope not in SHAPE_SCOPES:
        raise ValueError(f"shape_scope must be one of {SHAPE_SCOPES}, got {shape_scope!r}")
    every_t = np.ones(num_t, bool)
    if shape_scope == "shared":
        return [("", np.ones((len(size_index), num_t), bool))]
    if shape_scope == "size":
        return [(f"[{s}]", (size_index == s)[:, None] & every_t) for s in range(num_sizes)]
    return [(f"[{s},{k}]", (size_index == s)[:, None] & (np.arange(num_t) == k))
            for s in range(num_sizes) for k in range(num_t)]


def jacobians(sweep: PlantedSweep, shape_scope: str = "size") -> tuple[np.ndarray, list]:
    """(runs, token counts, params) derivatives of each run's log loss curve, and the
    parameter names, in the order: :data:`LAW_PARAMS`, the shape (one set per group of
    ``shape_scope``), the free level of every (size, token count)."""
    size_index, n_b, lr, batch, t_b, num_sizes = _design(sweep)
    num_runs, num_t = len(lr), len(t_b)

    def log_loss(s: PlantedSweep) -> np.ndarray:
        return np.log(s.loss(n_b[:, None], t_b[None, :], lr[:, None], batch[:, None]))

    def derivative(param) -> np.ndarray:
        return (log_loss(_moved(sweep, param, _STEP))
                - log_loss(_moved(sweep, param, -_STEP))) / (2 * _STEP)

    columns = [derivative(p) for p in LAW_PARAMS]
    names = [f"{group.split('_')[0]}.{key}" for group, key in LAW_PARAMS]
    groups = _shape_groups(shape_scope, size_index, num_sizes, num_t)
    for field in shape_fields(sweep):
        d = derivative((None, field))
        for suffix, mask in groups:
            columns.append(np.where(mask, d, 0.0))
            names.append(f"{field}{suffix}")
    for size in range(num_sizes):
        for k in range(num_t):
            level = np.zeros((num_runs, num_t))
            level[size_index == size, k] = 1.0
            columns.append(level)
            names.append(f"level[{size},{k}]")
    return np.stack(columns, axis=-1), names


def _curve_cov(sweep: PlantedSweep, num_t: int) -> np.ndarray:
    return sweep.noise_run ** 2 * np.ones((num_t, num_t)) + sweep.noise_point ** 2 * np.eye(num_t)


def covariance_bound(jacobian_RKP: np.ndarray, curve_cov_KK: np.ndarray) -> np.ndarray:
    """Inverse Fisher information ``(sum_r J_r' S^-1 J_r)^-1`` for runs with independent
    curves of covariance ``S`` each and mean derivatives ``J_r``."""
    precision = np.linalg.inv(curve_cov_KK)
    info = np.einsum("rkp,kl,rlq->pq", jacobian_RKP, precision, jacobian_RKP)
    return np.linalg.inv(info)


def exponent_bounds(sweep: PlantedSweep, shape_scope: str = "size") -> dict:
    """Smallest standard deviation (Gaussian noise) of each law exponent, relative to
    its planted value: ``{"eta.beta": sd / |beta|, ...}``."""
    jac, _ = jacobians(sweep, shape_scope)
    sd = np.sqrt(np.diag(covariance_bound(jac, _curve_cov(sweep, jac.shape[1]))))
    laws = {"eta": sweep.eta_law, "batch": sweep.batch_law}
    return {f"{key}.{name}": float(sd[col] / abs(laws[key][name]))
            for key, name, col in EXPONENTS}


def level_bounds(sweep: PlantedSweep, shape_scope: str = "size") -> dict:
    """Smallest sd of log eta_opt and log B_opt at each model size and the sweep's middle
    token count (geometric mean), the optima free per size (the laws' alpha and gamma
    replaced by a level per size; the T exponents and the shape stay free): how well one
    size's grid can place its optimum. ``{"eta": [sd per size], "batch": [...]}`` in
    natural-log units."""
    jac, names = jacobians(sweep, shape_scope)
    size_index, _, _, _, t_b, num_sizes = _design(sweep)
    tied = ("eta.alpha", "eta.gamma", "batch.alpha", "batch.gamma")
    keep = [i for i, name in enumerate(names) if name not in tied]
    columns = [jac[..., i] for i in keep]
    kept_names = [names[i] for i in keep]
    for law in ("eta", "batch"):
        for size in range(num_sizes):
            columns.append(np.where((size_index == size)[:, None],
                                    jac[..., names.index(f"{law}.alpha")], 0.0))
            kept_names.append(f"{law}.level[{size}]")
    bound_cov = covariance_bound(np.stack(columns, axis=-1), _curve_cov(sweep, jac.shape[1]))
    log_t_mid = float(np.mean(np.log(t_b)))  # the level parameter sits at T = 1 billion
    out = {}
    for law in ("eta", "batch"):
        out[law] = []
        for size in range(num_sizes):
            grad = np.zeros(len(kept_names))
            grad[kept_names.index(f"{law}.level[{size}]")] = 1.0
            grad[kept_names.index(f"{law}.beta")] = log_t_mid
            out[law].append(float(np.sqrt(grad @ bound_cov @ grad)))
    return out


def median_standard_error(sd: float, num_sweeps: int) -> float:
    """Standard error of the median of ``num_sweeps`` normal draws of spread ``sd``."""
    return math.sqrt(math.pi / 2) * sd / math.sqrt(num_sweeps)


def chance_within(bar: float, sd: float, num_sweeps: int) -> float:
    """Chance that an unbiased estimator of spread ``sd`` has a median over
    ``num_sweeps`` sweeps within ``bar`` of the truth (normal approximation)."""
    se = median_standard_error(sd, num_sweeps)
    return math.erf(bar / (se * math.sqrt(2)))


def oracle_fit(sweep: PlantedSweep, records: list, shape_scope: str = "size") -> dict:
    """The oracle itself: generalised least squares of the planted family's parameters
    (those of :func:`jacobians` with this ``shape_scope``) to ``records`` (as
    :meth:`PlantedSweep.records` writes them), started at the truth. Gaussian maximum
    likelihood, so on sweeps with Gaussian noise its spread approaches
    ``exponent_bounds(sweep, shape_scope)``. Returns the fitted exponents."""
    from scipy.optimize import least_squares

    size_index, n_b, lr, batch, t_b, num_sizes = _design(sweep)
    by_key = {(r["lr"], r["batch_tokens"], r["params_nonembed"]): r for r in records}
    runs = [by_key[(r["lr"], r["batch_tokens"], r["params_nonembed"])]
            for r in sweep.records(seed=0) if r["status"] == "completed"]
    observed = np.log([[p["val_loss"] for p in r["val_loss_curve"]] + [r["val_loss"]]
                       for r in runs])
    num_t = len(t_b)
    fields = shape_fields(sweep)
    groups = _shape_groups(shape_scope, size_index, num_sizes, num_t)
    first_level = len(LAW_PARAMS) + len(fields) * len(groups)
    # Fuller-Battese: subtracting this share of each run's mean whitens its curve.
    share = 1 - math.sqrt(sweep.noise_point ** 2
                          / (sweep.noise_point ** 2 + num_t * sweep.noise_run ** 2))

    def residuals(theta: np.ndarray) -> np.ndarray:
        mean = np.empty_like(observed)
        for g, (_, mask) in enumerate(groups):
            s = sweep
            for j, param in enumerate(LAW_PARAMS):
                s = _moved(s, param, theta[j])
            for q, field in enumerate(fields):
                s = _moved(s, (None, field), theta[len(LAW_PARAMS) + q * len(groups) + g])
            full = np.log(s.loss(n_b[:, None], t_b[None, :], lr[:, None], batch[:, None]))
            mean[mask] = full[mask]
        r = observed - mean - theta[first_level:].reshape(num_sizes, num_t)[size_index]
        return ((r - share * r.mean(axis=1, keepdims=True)) / sweep.noise_point).ravel()

    theta = least_squares(residuals, np.zeros(first_level + num_sizes * num_t), method="lm").x
    laws = {"eta": sweep.eta_law, "batch": sweep.batch_law}
    return {f"{key}.{name}": float(laws[key][name] + theta[col])
            for key, name, col in EXPONENTS}


def check_oracle(sweep: PlantedSweep, num_sweeps: int, shape_scope: str) -> dict:
    """The oracle's own fits on ``num_sweeps`` seeded sweeps of ``sweep`` with Gaussian
    noise of the same variance: per exponent, (sd of the relative errors over the bound,
    median relative error)."""
    gaussian = dataclasses.replace(sweep, noise_df=None)
    bounds = exponent_bounds(gaussian, shape_scope)
    laws = {"eta": gaussian.eta_law, "batch": gaussian.batch_law}
    errors = {label: [] for label in bounds}
    for seed in tqdm(range(num_sweeps), desc=f"oracle fits, shape {shape_scope}"):
        fitted = oracle_fit(gaussian, gaussian.records(seed=seed), shape_scope)
        for label in bounds:
            key, name = label.split(".")
            errors[label].append(fitted[label] / laws[key][name] - 1)
    return {label: (float(np.std(e) / bounds[label]), float(np.median(e)))
            for label, e in errors.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--design", choices=("realistic", "recovery"), default="realistic")
    parser.add_argument("--noise", type=NON_NEGATIVE, default=None,
                        help="per-run relative noise (default: the design's)")
    parser.add_argument("--sweeps", type=integer_at_least(1), default=40,
                        help="sweeps a target's median is taken over (>= 1)")
    parser.add_argument("--bar", type=POSITIVE, default=0.03,
                        help="relative bar on the median exponent error (default 3%%)")
    parser.add_argument("--check-sweeps", type=integer_at_least(0), default=0,
                        help="also fit the oracle itself to this many Gaussian-noise sweeps "
                        "per shape scope (shared, size) and print its spread over the bound")
    args = parser.parse_args(argv)
    overrides = {} if args.noise is None else {"noise_run": args.noise}
    sweep = getattr(PlantedSweep, args.design)(**overrides)
    factor = student_t_information_factor(sweep.noise_df)
    print(f"{args.design} planted sweep: noise {sweep.noise_run:.2%} per run, "
          f"{sweep.noise_point:.3%} per point; oracle knows the family, fits "
          f"{', '.join(shape_fields(sweep))} and the laws")
    scopes = {"shared": "shared by all sizes", "size": "free per size (what the within-run "
              "T slopes assume)", "cell": "free per (size, T) cell (as free as the cell "
              "surfaces)"}
    for scope, title in scopes.items():
        bounds = exponent_bounds(sweep, scope)
        print(f"\nshape {title}: smallest "
              f"relative sd per sweep (Gaussian; x{1 / math.sqrt(factor):.2f} for noise "
              f"with the design's tails), and an unbiased oracle's chance that its median "
              f"over {args.sweeps} sweeps is within {args.bar:.0%}")
        for label, sd in bounds.items():
            sd_t = sd / math.sqrt(factor)
            print(f"  {label:12s} sd {sd:7.2%} ({sd_t:7.2%})  median's se "
                  f"{median_standard_error(sd, args.sweeps):6.2%}  chance "
                  f"{chance_within(args.bar, sd, args.sweeps):5.1%} "
                  f"({chance_within(args.bar, sd_t, args.sweeps):5.1%})")
    print("\noptimum free per size: smallest sd of its log eta_opt / log B_opt at the "
          "middle T, per size (Gaussian)")
    for scope in ("size", "cell"):
        levels = level_bounds(sweep, scope)
        for key in ("eta", "batch"):
            print(f"  shape per {scope:4s} {key:6s} " + " ".join(f"{v:.4f}" for v in levels[key]))
    for scope in ("shared", "size") if args.check_sweeps else ():
        check = check_oracle(sweep, args.check_sweeps, scope)
        print(f"\noracle fits, shape {scope}, {args.check_sweeps} Gaussian-noise sweeps: sd / "
              "bound (median error)")
        for label, (ratio, median) in check.items():
            print(f"  {label:12s} {ratio:5.2f} ({median:+.2%})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
