"""The fit: cell optima -> hyperparameter laws -> loss law -> N_opt(C), with bootstrap.

Every quantity is computed for R = 1 + num_resamples rows at once: row 0 is the plain
fit on all runs, rows 1.. are bootstrap resamples. Resampling draws *runs* with
replacement within each model size (the sweep is a designed experiment: each size keeps
its number of runs), so a run's whole validation curve travels together and the
correlation between its T points is respected. Quantities a resample cannot identify
(a cell whose surface loses convexity, a loss fit that fails) are NaN in that row and
counted in ``bootstrap_failures``; intervals are percentiles over the finite rows. The
resampled cell optima get a degrees-of-freedom correction (``_df_correct``).
``FitOptions.bootstrap = "wild"`` draws the rows differently: every run kept, the signs of
its residuals from the plain cell surface flipped per row (``wild_losses``).

Legend: ``_R`` rows (plain fit + resamples), ``_C`` cells, ``_K`` budgets.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from scaling_laws import allocation, hyperopt, loss_law
from scaling_laws.compute import ComputeModel
from scaling_laws.records import RunSet

MIN_MODEL_SIZES = 3


@dataclasses.dataclass
class FitOptions:
    num_resamples: int = 1000
    seed: int = 0
    window: float = 0.20          # surface uses points within 20% of the cell's best loss
    surface: str = "auto"         # hyperopt.SURFACE_TERMS or "auto" (quartic in lr, cubic or
                                  # quadratic, as the grid allows: hyperopt.resolve_form)
    # Windows the bootstrap rows cycle through (empty: ``window`` only), so intervals
    # carry the sensitivity of the optimum to the window as well as to the runs. Off by
    # default: it doubles the fit's time (docs/scaling_laws.md).
    bootstrap_windows: tuple = ()
    # Surface forms the bootstrap rows cycle through (empty: ``surface`` only), so the
    # level intervals carry the estimator choice too (a form richer than a cell's grid
    # allows falls back to the cell's own). Off by default, like the windows.
    bootstrap_surfaces: tuple = ()
    # How resample rows are drawn: "runs" resamples each size's runs with replacement;
    # "wild" keeps every run and flips the sign of its residuals from the plain cell
    # surfaces (one sign per run, shared by its whole curve). docs/scaling_laws.md.
    bootstrap: str = "runs"
    # How the eta and B laws get their token exponent (beta): "within_run" from how each
    # run's loss changes between token counts (hyperopt.within_run_slopes), "cells" from
    # the cell optima alone. Within-run falls back to cells where no size has two cells.
    t_slope: str = "within_run"
    compute: str = "video"        # compute.ACCOUNTINGS: C_token = 3/4 N (7 + n_ctx/d), or 6N
    min_tokens_ratio: float = 1.25
    budgets_flops: tuple | None = None
    fixed_lr: float | None = None            # setting of the fixed-HP baseline
    fixed_batch_tokens: float | None = None


def bootstrap_weights(runs: RunSet, num_resamples: int, seed: int) -> np.ndarray:
    """(1 + num_resamples, num_runs) draw counts; row 0 is all ones (the plain fit)."""
    rng = np.random.default_rng(seed)
    labels = hyperopt.size_labels(runs.params_nonembed)
    weights = np.zeros((num_resamples + 1, runs.num_runs))
    weights[0] = 1.0
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        draws = rng.integers(0, len(members), size=(num_resamples, len(members)))
        counts = (draws[..., None] == np.arange(len(members))).sum(axis=1)
        weights[1:, members] = counts
    return weights


_FORM_ORDER = ("quadratic", "cubic", "quartic")


BOOTSTRAPS = ("runs", "wild")


def wild_signs(runs: RunSet, num_resamples: int, seed: int) -> np.ndarray:
    """(1 + num_resamples, num_runs) Rademacher signs, one per run and row; row 0 is 0
    (the plain fit sees the data as they are)."""
    rng = np.random.default_rng(seed)
    signs = rng.choice([-1.0, 1.0], size=(num_resamples + 1, runs.num_runs))
    signs[0] = 0.0
    return signs


def wild_losses(cell, signs_R_runs: np.ndarray, form: str) -> np.ndarray:
    """(R, runs of ``cell``) losses of the wild bootstrap: the plain ``form`` surface's
    fitted loss at each run of the window plus its residual, rescaled by its leverage
    (``r / sqrt(1 - h)``, so a resample's noise has the data's variance) and signed by
    the run's sign in that row. Runs outside the window keep their loss."""
    form = cell.form if form == "auto" else form
    m = cell.in_window
    loss_M = np.exp(cell.log_loss)
    x, y = cell.log_lr[m], cell.log_batch[m]
    design_MP = hyperopt._design(x - x.mean(), y - y.mean(), form)
    # Hat matrix Q Q', well conditioned for a quartic. A rank-deficient design would get
    # leverages summing to P, not its rank; fit_surface refuses such a cell in every row.
    q_MP = np.linalg.qr(design_MP)[0]
    fitted = q_MP @ (q_MP.T @ loss_M[m])
    leverage = (q_MP ** 2).sum(axis=1)
    scaled = (loss_M[m] - fitted) / np.sqrt(np.clip(1 - leverage, 1e-3, None))
    out_RM = np.tile(loss_M, (len(signs_R_runs), 1))
    signs_RM = signs_R_runs[:, cell.run_index[m]]
    out_RM[:, m] = np.where(signs_RM == 0, loss_M[m], fitted + signs_RM * scaled)
    return np.maximum(out_RM, 1e-12)


def _alternative_form(cell, form: str) -> str:
    """``form`` for ``cell``, or the cell's own form where ``form`` is richer than the
    cell's grid supports (near_set and auto pass through)."""
    own = cell.form
    if form in _FORM_ORDER and own in _FORM_ORDER and (
            _FORM_ORDER.index(form) > _FORM_ORDER.index(own)):
        return own
    return form


def cell_surfaces(cell, weights_R: np.ndarray, opts: FitOptions,
                  loss_RM: np.ndarray | None = None) -> dict:
    """The cell's surface for every row: row 0 at ``opts.window`` with ``opts.surface``;
    resample rows cycling through every (window, form) pair of
    ``opts.bootstrap_windows`` x ``opts.bootstrap_surfaces``.

    A window's rows are resampled at that window (about its own plain fit). Another
    form's rows are the main form's resamples moved by the difference between the two
    forms' plain fits: the rows then spread over what the estimators disagree on,
    without borrowing a simpler form's smaller variance (resampling the cubic itself
    narrowed the intervals: docs/scaling_laws.md)."""
    def pick(rows):  # the wild bootstrap's losses of these rows
        return None if loss_RM is None else loss_RM[rows]

    surface = fitted_surface(cell, weights_R, opts.surface, loss_RM=loss_RM)
    choices = [(window, form) for window in (opts.bootstrap_windows or (None,))
               for form in (opts.bootstrap_surfaces or (None,))]
    if choices == [(None, None)]:
        return surface
    # The within-run slopes use this surface's coefficients in every row, so they need
    # its own validity, not that of the choice a row's optimum comes from.
    surface["coef_valid"] = surface["valid"].copy()
    main_form = cell.form if opts.surface == "auto" else opts.surface
    keys = ("log_lr", "log_batch", "log_loss", "valid", "convex", "inside")
    for i, (window, form) in enumerate(choices):
        rows = np.arange(1 + i, len(weights_R), len(choices))
        w = window or opts.window
        if window is None:  # the main fit's own rows
            plain = {key: surface[key][0] for key in keys}
            values = {key: surface[key][rows].copy() for key in keys}
        else:
            base = fitted_surface(cell, weights_R[np.r_[0, rows]], main_form,
                                  _window(cell, main_form, w), pick(np.r_[0, rows]))
            plain = {key: base[key][0] for key in keys}
            values = {key: base[key][1:] for key in keys}
        form = _alternative_form(cell, form or main_form)
        if form != main_form:
            other = fitted_surface(cell, weights_R[:1], form, _window(cell, form, w), pick([0]))
            for key in ("log_lr", "log_batch", "log_loss"):
                values[key] = values[key] + (other[key][0] - plain[key])
            values["valid"] = values["valid"] & other["valid"][0]
        for key in keys:
            surface[key][rows] = values[key]
    return surface


def _window(cell, form: str, window: float) -> np.ndarray:
    """The runs a ``form`` surface of ``cell`` uses at relative loss ``window``."""
    return hyperopt.window_mask(
        cell, window, hyperopt.num_surface_params(cell.form if form == "auto" else form))


def fitted_surface(cell, weights_R: np.ndarray, form: str, in_window=None,
                   loss_RM: np.ndarray | None = None) -> dict:
    """``hyperopt.fit_surface`` with the degrees-of-freedom correction. A quartic places
    the optimum and the cubic on the same runs gives its level: near the optimum the
    loss is flat, so the cubic's location bias (a few %) moves its minimum by about
    ``k u^2`` (1e-5), while its three fewer coefficients narrow the loss law's
    intervals (with the quartic's level the recovery design's alpha_T erred by 4.6%)."""
    def correct(surface: dict) -> dict:
        # The wild bootstrap's residuals are already rescaled by their leverage.
        return _df_correct(surface) if loss_RM is None else surface

    surface = correct(hyperopt.fit_surface(cell, weights_R, form, in_window, loss_RM))
    if surface["form"] == "quartic":
        level = correct(hyperopt.fit_surface(cell, weights_R, "cubic", in_window, loss_RM))
        surface["log_loss"] = np.where(surface["valid"], level["log_loss"], np.nan)
    return surface


def _df_correct(surface: dict) -> dict:
    """Widen resampled cell optima about the plain fit by ``sqrt(m / (m - p))``.

    Resampling m runs to refit a p-parameter surface underestimates the variance of
    its vertex by about (m - p) / m (the pairs bootstrap has no degrees-of-freedom
    correction; cf. HC1 standard errors). Everything downstream is fitted from the cell
    optima, so correcting them here carries through to every interval.
    """
    m, p = surface["num_in_surface"], surface["num_params"]
    scale = np.sqrt(m / max(m - p, 1))
    for key in ("log_lr", "log_batch", "log_loss"):
        rows = surface[key]
        rows[1:] = rows[0] + scale * (rows[1:] - rows[0])
    return surface


def _edge_summary(cells) -> str:
    """Where the best run of each cell sits on its grid: tells which way to widen it."""
    edges = {"lowest eta": 0, "highest eta": 0, "smallest B": 0, "largest B": 0}
    for cell in cells:
        best = np.argmin(cell.log_loss)
        x, y = cell.log_lr, cell.log_batch
        edges["lowest eta"] += int(np.isclose(x[best], x.min()))
        edges["highest eta"] += int(np.isclose(x[best], x.max()))
        edges["smallest B"] += int(np.isclose(y[best], y.min()))
        edges["largest B"] += int(np.isclose(y[best], y.max()))
    return f"best run at the grid's edge, of {len(cells)} cells: " + ", ".join(
        f"{name} {count}" for name, count in edges.items() if count)


def _check_cells(cells, skipped, runs: RunSet) -> None:
    if not cells:
        reasons = sorted({r for _, _, r in skipped})
        raise ValueError("no (N, T) cell can locate an optimum: " + "; ".join(reasons[:3]))
    sizes = sorted({c.params_nonembed for c in cells})
    if len(sizes) < MIN_MODEL_SIZES:
        all_sizes = np.unique(runs.params_nonembed)
        raise ValueError(
            f"need >= {MIN_MODEL_SIZES} model sizes with a usable (eta, B) grid to fit the "
            f"laws, got {len(sizes)} ({[f'{s:.3g}' for s in sizes]}; sizes in the records: "
            f"{[f'{s:.3g}' for s in all_sizes]})")


def _fit_loss_rows(n_C, t_C, log_loss_RC) -> np.ndarray:
    """(R, 5) loss-law coefficients in LOSS_KEYS order; row 0 from the start grid, the
    resamples by a batched fit started from row 0."""
    ok0 = np.isfinite(log_loss_RC[0])
    full = loss_law.fit_loss_law(n_C[ok0], t_C[ok0], np.exp(log_loss_RC[0, ok0]))
    out = np.empty((log_loss_RC.shape[0], len(loss_law.LOSS_KEYS)))
    out[0] = [full[k] for k in loss_law.LOSS_KEYS]
    if log_loss_RC.shape[0] > 1:
        out[1:] = loss_law.fit_loss_law_rows(n_C, t_C, log_loss_RC[1:], full)
    return out


def loss_fn_rows(loss_RP: np.ndarray):
    """A broadcasting L(N, T) over rows of loss-law coefficients, shaped (R, 1, 1)."""
    t_c, a_t, n_c, a_n, l_inf = (loss_RP[:, i, None, None] for i in range(5))
    return lambda n, t: (t_c / t) ** a_t + (n_c / n) ** a_n + l_inf


def _check_bootstrap(opts: FitOptions) -> None:
    if opts.bootstrap not in BOOTSTRAPS:
        raise ValueError(f"bootstrap must be one of {BOOTSTRAPS}, got {opts.bootstrap!r}")
    if opts.bootstrap == "wild" and opts.surface == "near_set":
        raise ValueError("bootstrap 'wild' needs a fitted cell surface to take residuals "
                         "from; surface 'near_set' has none (use bootstrap 'runs')")
    if opts.bootstrap == "wild" and opts.bootstrap_windows:
        raise ValueError("bootstrap 'wild' does not combine with bootstrap_windows: runs "
                         "outside the main window would keep their loss in every row")


def _resampled_surfaces(cells, runs: RunSet, opts: FitOptions):
    """(row weights over runs, each cell's surfaces) for ``opts.bootstrap``."""
    if opts.bootstrap == "wild":
        weights_R = np.ones((opts.num_resamples + 1, runs.num_runs))
        signs_R = wild_signs(runs, opts.num_resamples, opts.seed)
        return weights_R, [cell_surfaces(c, weights_R, opts,
                                         wild_losses(c, signs_R, opts.surface)) for c in cells]
    weights_R = bootstrap_weights(runs, opts.num_resamples, opts.seed)
    return weights_R, [cell_surfaces(c, weights_R, opts) for c in cells]


def _within_run_or_none(cells, surfaces, weights_R, runs: RunSet, opts: FitOptions):
    """(within-run slopes per row or None, the guard's attenuation). The guard reads
    run-resampled rows whatever ``opts.bootstrap`` is (its bar was set on them; wild
    rows read less), so the choice of bootstrap never changes the plain fit."""
    slopes_R2 = hyperopt.within_run_slopes(cells, surfaces, weights_R)
    if opts.bootstrap == "runs":
        guard_R2 = slopes_R2
    else:
        guard_weights = bootstrap_weights(runs, opts.num_resamples, opts.seed)
        guard = dataclasses.replace(opts, bootstrap="runs", bootstrap_surfaces=())
        guard_R2 = hyperopt.within_run_slopes(
            cells, [cell_surfaces(c, guard_weights, guard) for c in cells], guard_weights)
    attenuation = _slope_attenuation(guard_R2)
    if slopes_R2 is None or (attenuation is not None
                             and abs(attenuation) > MAX_SLOPE_ATTENUATION):
        return None, attenuation
    return slopes_R2, attenuation


def core_fit(runs: RunSet, opts: FitOptions) -> dict:
    """All fitted quantities as arrays over rows (plain fit + resamples)."""
    if opts.t_slope not in ("within_run", "cells"):
        raise ValueError(f"t_slope must be 'within_run' or 'cells', got {opts.t_slope!r}")
    _check_bootstrap(opts)
    cells, skipped = hyperopt.build_cells(runs, opts.window, opts.min_tokens_ratio,
                                          form=opts.surface)
    _check_cells(cells, skipped, runs)
    for cell in cells:
        cell.accounting = opts.compute
    weights_R, surfaces = _resampled_surfaces(cells, runs, opts)
    stack = {k: np.stack([s[k] for s in surfaces], axis=1) for k in ("log_lr", "log_batch",
                                                                     "log_loss", "valid")}
    if stack["valid"][0].sum() == 0:
        raise ValueError("no cell has its optimum inside its (eta, B) grid; widen the grids "
                         f"({_edge_summary(cells)})")
    n_C = np.array([c.n_billion for c in cells])
    t_C = np.array([c.t_billion for c in cells])
    usable_sizes = np.unique(n_C[stack["valid"][0]])
    if len(usable_sizes) < MIN_MODEL_SIZES:
        raise ValueError(f"only {len(usable_sizes)} model sizes have a cell whose optimum lies "
                         f"inside the grid (N = {usable_sizes} billion); need {MIN_MODEL_SIZES} "
                         f"({_edge_summary(cells)})")
    slopes_R2, t_slope, attenuation = None, "cells", None
    if opts.t_slope == "within_run":
        slopes_R2, attenuation = _within_run_or_none(cells, surfaces, weights_R, runs, opts)
        t_slope = "within_run" if slopes_R2 is not None else "cells"
    eta = hyperopt.fit_power_law(stack["log_lr"], t_C, n_C,
                                 None if slopes_R2 is None else slopes_R2[:, 0])
    batch = hyperopt.fit_power_law(stack["log_batch"], t_C, n_C,
                                   None if slopes_R2 is None else slopes_R2[:, 1])
    loss_RP = _fit_loss_rows(n_C, t_C, stack["log_loss"])
    compute = ComputeModel.fit(runs.params_nonembed, runs.hidden_size, runs.tokens_per_sample,
                               opts.compute)
    budgets = np.asarray(opts.budgets_flops if opts.budgets_flops is not None else
                         allocation.default_budgets(min(c.flops for c in cells),
                                                    max(c.flops for c in cells)))
    n_opt_RK = allocation.optimal_params(loss_fn_rows(loss_RP), compute, budgets)
    k_R, a_R = allocation.fit_allocation(budgets, n_opt_RK)
    return {"cells": cells, "skipped": skipped, "surfaces": surfaces, "stack": stack,
            "n_C": n_C, "t_C": t_C, "eta": np.stack(eta, 1), "batch": np.stack(batch, 1),
            "loss": loss_RP, "compute": compute, "budgets": budgets, "n_opt_RK": n_opt_RK,
            "n_opt": np.stack([k_R, a_R], 1), "weights": weights_R, "t_slope": t_slope,
            "t_slope_attenuation": attenuation}


# Within-run slopes are refused (cell slopes used) when the run-resampling bootstrap
# says they are attenuated by more than this (read on run-resampled rows under either
# bootstrap): the surfaces' gradients are then too noisy (on the
# realistic planted sweeps: -1.1% at 0.1% noise per run, -5.8% at 0.3%, -21% at 1%,
# medians from python -m scaling_laws.hp_study --estimators default --noise X).
MAX_SLOPE_ATTENUATION = 0.10
MIN_ROWS_FOR_ATTENUATION = 20


def _slope_attenuation(slopes_R2) -> float | None:
    """The bootstrap's estimate of the relative bias of B_opt's within-run T slope,
    ``mean(resampled) / plain - 1``, or None with too few finite resamples.

    The slopes regress loss changes on gradients of fitted surfaces; noise in those
    gradients biases the slope toward 0 (errors in variables), and a resample's
    surfaces are noisier again, so the resampled slopes sit below the plain one by
    about the plain one's own attenuation."""
    if slopes_R2 is None:
        return None
    rows = slopes_R2[1:, 1]
    rows = rows[np.isfinite(rows)]
    if len(rows) < MIN_ROWS_FOR_ATTENUATION or not slopes_R2[0, 1]:
        return None
    return float(rows.mean() / slopes_R2[0, 1] - 1)


def interval(samples: np.ndarray) -> list:
    """95% percentile interval over finite bootstrap rows (rows 1..), or [nan, nan]."""
    finite = samples[np.isfinite(samples)]
    if finite.size < 2:
        return [float("nan"), float("nan")]
    return [float(v) for v in np.percentile(finite, [2.5, 97.5])]
