"""Cell optima, loss law, allocation and the degenerate inputs that must fail clearly."""
import dataclasses

import numpy as np
import pytest

from scaling_laws import allocation, fit, hyperopt, loss_law, measured
from scaling_laws.compute import ComputeModel
from scaling_laws.fit import FitOptions, core_fit
from scaling_laws.records import prepare
from scaling_laws.synthetic import PLANTED_LOSS, PlantedSweep

FAST = FitOptions(num_resamples=20)


def _noise_free(**kw):
    return PlantedSweep(noise_run=0.0, noise_point=0.0, **kw)


@pytest.mark.parametrize("form", ["quadratic", "cubic", "quartic"])
def test_surface_vertex_exact_on_planted_quadratic(form):
    sweep = _noise_free()
    runs = prepare(sweep.records())
    cells, skipped = hyperopt.build_cells(runs, window=10.0)
    assert not skipped and len(cells) == 5 * 6
    for cell in cells:
        surf = hyperopt.fit_surface(cell, np.ones((1, runs.num_runs)), form)
        assert surf["valid"][0]
        assert np.exp(surf["log_lr"][0]) == pytest.approx(
            sweep.eta_opt(cell.n_billion, cell.t_billion), rel=1e-6)
        assert np.exp(surf["log_batch"][0]) == pytest.approx(
            sweep.batch_opt(cell.n_billion, cell.t_billion), rel=1e-6)
        assert np.exp(surf["log_loss"][0]) == pytest.approx(
            loss_law.predict_loss(PLANTED_LOSS, cell.n_billion, cell.t_billion), rel=1e-9)
        region = measured.near_optimal_set(cell)
        # Penalty 0.02 u^2 + 0.01 v^2 + 0.004 u v >= 0.0196 u^2, so a run within 0.25%
        # of the optimum has |u| <= sqrt(0.0025 / 0.0196) = 0.357.
        eta = sweep.eta_opt(cell.n_billion, cell.t_billion)
        assert region["num_runs"] >= 1
        assert eta * np.exp(-0.36) <= region["lr"][0] <= region["lr"][1] <= eta * np.exp(0.36)


def test_interpolates_curves_logged_at_batch_dependent_tokens():
    sweep = _noise_free()
    records = sweep.records()
    for rec in records:  # eval every k steps: token counts depend on the batch size
        for point in rec["val_loss_curve"]:
            point["tokens"] = int(point["tokens"] * (1 + 1e-3 * (rec["batch_samples"] % 7)))
    cells, _ = hyperopt.build_cells(prepare(records), window=10.0)
    assert sum(c.interpolated for c in cells) > 0
    for cell in cells:
        surf = hyperopt.fit_surface(cell, np.ones((1, len(records))))
        assert np.exp(surf["log_lr"][0]) == pytest.approx(
            sweep.eta_opt(cell.n_billion, cell.t_billion), rel=0.02)


def test_power_law_exact_and_needs_three_sizes():
    n = np.array([0.1, 0.1, 0.5, 0.5, 2.0, 2.0])
    t = np.array([1.0, 4.0, 1.0, 4.0, 1.0, 4.0])
    y = np.log(3e-4 * t ** -0.05 * n ** -0.2)[None]
    alpha, beta, gamma = hyperopt.fit_power_law(y, t, n)
    assert (alpha[0], beta[0], gamma[0]) == pytest.approx((3e-4, -0.05, -0.2), rel=1e-9)
    y2 = y.copy()
    y2[0, 4:] = np.nan  # only two sizes left
    assert np.isnan(hyperopt.fit_power_law(y2, t, n)[1][0])
    # A given token exponent: only alpha and gamma are fitted, one token count suffices.
    one_t = np.array([2.0] * 3)
    y3 = np.log(3e-4 * one_t ** -0.05 * n[::2] ** -0.2)[None]
    alpha, beta, gamma = hyperopt.fit_power_law(y3, one_t, n[::2], np.array([-0.05]))
    assert (alpha[0], beta[0], gamma[0]) == pytest.approx((3e-4, -0.05, -0.2), rel=1e-9)


def test_design_derivatives_match_finite_differences():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=5), rng.normal(size=5)
    h = 1e-6
    for form in ("quadratic", "cubic", "quartic"):
        coef = rng.normal(size=(1, hyperopt.num_surface_params(form)))
        f = lambda a, b: (coef @ hyperopt._design(a, b, form).T)[0]  # noqa: E731
        grad, hess = hyperopt._grad_hess(coef, form, x, y)
        assert grad[..., 0] == pytest.approx((f(x + h, y) - f(x - h, y)) / (2 * h), rel=1e-6)
        assert grad[..., 1] == pytest.approx((f(x, y + h) - f(x, y - h)) / (2 * h), rel=1e-6)
        k = 1e-4  # second differences: a wider step (rounding error ~ eps / k^2)
        hxy = (f(x + k, y + k) - f(x + k, y - k) - f(x - k, y + k) + f(x - k, y - k)) / (4 * k * k)
        hxx = (f(x + k, y) - 2 * f(x, y) + f(x - k, y)) / (k * k)
        assert hess[..., 0, 1] == pytest.approx(hxy, rel=1e-5, abs=1e-6)
        assert hess[..., 0, 0] == pytest.approx(hxx, rel=1e-5, abs=1e-6)


def test_auto_surface_is_the_richest_the_grid_supports():
    assert hyperopt.resolve_form("auto", 35, 7) == "quartic"
    assert hyperopt.resolve_form("auto", 15, 5) == "quartic"
    assert hyperopt.resolve_form("auto", 16, 4) == "cubic"   # x^4 needs 5 lr values
    assert hyperopt.resolve_form("auto", 14, 7) == "cubic"
    assert hyperopt.resolve_form("auto", 12, 4) == "cubic"
    assert hyperopt.resolve_form("auto", 9, 3) == "quadratic"
    assert hyperopt.resolve_form("cubic", 35, 7) == "cubic"


def test_loss_law_recovers_noise_free_law_and_reports_mse():
    n, t = np.meshgrid([0.017, 0.057, 0.13, 0.26], [2.0, 4.0, 8.0, 12.0])
    loss = loss_law.predict_loss(PLANTED_LOSS, n.ravel(), t.ravel())
    law = loss_law.fit_loss_law(n.ravel(), t.ravel(), loss)
    for key in ("alpha_T", "alpha_N", "L_inf"):
        assert law[key] == pytest.approx(PLANTED_LOSS[key], rel=1e-3)
    assert law["mse"] < 1e-12
    rows = loss_law.fit_loss_law_rows(n.ravel(), t.ravel(), np.log(loss)[None].repeat(3, 0),
                                      {**law, "alpha_T": 0.4, "alpha_N": 0.2})
    assert rows[:, 1] == pytest.approx(PLANTED_LOSS["alpha_T"], rel=1e-3)


def test_kaplan_form_fits_its_own_law():
    truth = {"N_c": 1e-3, "alpha_N": 0.08, "D_c": 2e-3, "alpha_D": 0.1}
    n, t = np.meshgrid([0.02, 0.06, 0.13, 0.26], [2.0, 4.0, 8.0, 12.0])
    loss = loss_law.predict_kaplan(truth, n.ravel(), t.ravel())
    law = loss_law.fit_kaplan(n.ravel(), t.ravel(), loss)
    assert law["mse"] < 1e-8
    assert law["alpha_D"] == pytest.approx(0.1, rel=0.05)


def test_allocation_matches_brute_force_and_power_law():
    compute = ComputeModel()
    budgets = np.logspace(19, 23, 9)
    n_opt = allocation.optimal_params(
        lambda n, t: loss_law.predict_loss(PLANTED_LOSS, n, t), compute, budgets)
    grid = np.logspace(7, 12, 200001)
    for budget, found in zip(budgets[::4], n_opt[::4]):
        tokens = compute.tokens_for_budget(grid, budget)
        brute = grid[np.argmin(loss_law.predict_loss(PLANTED_LOSS, grid / 1e9, tokens / 1e9))]
        assert found == pytest.approx(brute, rel=1e-3)
    k, a = allocation.fit_allocation(budgets, 0.87 * budgets ** 0.43)
    assert (k, a) == pytest.approx((0.87, 0.43), rel=1e-9)


def test_fewer_than_three_sizes_fails():
    runs = prepare(PlantedSweep(sizes_params=(0.017e9, 0.057e9)).records())
    with pytest.raises(ValueError, match="need >= 3 model sizes"):
        core_fit(runs, FAST)


def test_single_setting_per_cell_fails():
    sweep = PlantedSweep(lr_steps=(0,), batch_steps=(0,))
    with pytest.raises(ValueError, match=r"1 \(eta, B\) setting"):
        core_fit(prepare(sweep.records()), FAST)


def test_one_dimensional_grid_fails():
    sweep = PlantedSweep(batch_steps=(0,))
    with pytest.raises(ValueError, match="values per axis"):
        core_fit(prepare(sweep.records()), FAST)


def test_optimum_outside_grid_is_flagged_not_used():
    sweep = PlantedSweep(grid_offset=(20.0, 1.0), diverge_lr_factor=1e9)  # LR grid too high
    with pytest.raises(ValueError, match="inside"):
        core_fit(prepare(sweep.records()), FAST)


def test_edge_optimum_error_says_which_way_to_widen():
    sweep = PlantedSweep(grid_offset=(0.05, 1.0), diverge_lr_factor=1e9)  # LR grid too low
    with pytest.raises(ValueError, match="highest eta"):
        core_fit(prepare(sweep.records()), FAST)


def test_bootstrap_surfaces_cycle_the_resample_rows_through_the_forms():
    """Rows 1, 3, 5 resample the default (quartic) surface; rows 2, 4, 6 are the same
    resamples moved by the cubic's plain optimum minus the quartic's; row 0 stays the
    default's plain fit."""
    runs = prepare(PlantedSweep.realistic().records(seed=0))
    base = FitOptions(num_resamples=6, seed=3)
    cells, _ = hyperopt.build_cells(runs, base.window, base.min_tokens_ratio, form=base.surface)
    cell = next(c for c in cells if c.form == "quartic")
    weights = fit.bootstrap_weights(runs, 6, 3)
    alt = fit.cell_surfaces(cell, weights, FitOptions(num_resamples=6, seed=3,
                                                      bootstrap_surfaces=("quartic", "cubic")))
    quartic = fit.fitted_surface(cell, weights, "quartic")
    cubic_mask = hyperopt.window_mask(cell, base.window, len(hyperopt.SURFACE_TERMS["cubic"]))
    cubic = hyperopt.fit_surface(cell, weights[:1], "cubic", cubic_mask)
    for key in ("log_lr", "log_batch"):
        np.testing.assert_array_equal(alt[key][[0, 1, 3, 5]], quartic[key][[0, 1, 3, 5]])
        shift = cubic[key][0] - quartic[key][0]
        assert shift != 0
        np.testing.assert_allclose(alt[key][[2, 4, 6]], quartic[key][[2, 4, 6]] + shift,
                                   rtol=0, atol=1e-12)
    # A form richer than a cell's grid allows falls back to the cell's own.
    small = dataclasses.replace(cell, form="cubic")
    assert fit._alternative_form(small, "quartic") == "cubic"
    assert fit._alternative_form(small, "quadratic") == "quadratic"


def test_bootstrap_choices_leave_the_within_run_slopes_alone():
    """The within-run T slopes use the main surface's coefficients in every row, so the
    rows' other windows or forms must not drop pairs from them (a cubic row whose vertex
    leaves the box once took most pairs out and left a slope near 0)."""
    runs = prepare(PlantedSweep.realistic().records(seed=0))
    weights = fit.bootstrap_weights(runs, 20, 0)
    slopes = []
    for extra in ({}, {"bootstrap_surfaces": ("quartic", "cubic")},
                  {"bootstrap_windows": (0.05, 0.20)}):
        opts = FitOptions(num_resamples=20, seed=0, **extra)
        cells, _ = hyperopt.build_cells(runs, opts.window, opts.min_tokens_ratio,
                                        form=opts.surface)
        surfaces = [fit.cell_surfaces(c, weights, opts) for c in cells]
        slopes.append(hyperopt.within_run_slopes(cells, surfaces, weights))
    np.testing.assert_array_equal(slopes[0], slopes[1])
    np.testing.assert_array_equal(slopes[0], slopes[2])


def test_wild_losses_are_the_plain_fit_plus_leverage_scaled_signed_residuals():
    """Row 0 sees the data; in a row with signs s each window run gets
    ``fitted + s_run r / sqrt(1 - h)``, with ``h`` from the hat matrix of the cell's
    (quartic) design and the sign of that run; runs outside the window keep their loss."""
    runs = prepare(PlantedSweep.realistic().records(seed=3))
    cells = hyperopt.build_cells(runs, window=0.05, form="auto")[0]
    cell = next(c for c in cells if c.form == "quartic" and (~c.in_window).sum() >= 3)
    signs = fit.wild_signs(runs, 4, seed=7)
    loss_RM = fit.wild_losses(cell, signs, "auto")
    m = cell.in_window
    x, y = cell.log_lr[m] - cell.log_lr[m].mean(), cell.log_batch[m] - cell.log_batch[m].mean()
    design = np.stack([x ** t.count("x") * y ** t.count("y")
                       for t in hyperopt.SURFACE_TERMS["quartic"]], 1)
    q, _ = np.linalg.qr(design)  # the hat matrix as Q Q', well conditioned for a quartic
    hat = q @ q.T
    z = np.exp(cell.log_loss[m])
    fitted = hat @ z
    scaled = (z - fitted) / np.sqrt(1 - np.diag(hat))
    np.testing.assert_allclose(loss_RM[0], np.exp(cell.log_loss))
    for row in range(1, 5):
        run_signs = signs[row, cell.run_index[m]]
        assert set(np.unique(run_signs)) == {-1.0, 1.0}
        np.testing.assert_allclose(loss_RM[row][m], fitted + run_signs * scaled, rtol=1e-6)
        np.testing.assert_allclose(loss_RM[row][~m], np.exp(cell.log_loss[~m]))
    assert np.all(signs[0] == 0) and set(np.unique(signs[1:])) == {-1.0, 1.0}


def test_within_run_slopes_of_a_wild_row_equal_a_fit_to_that_rows_losses():
    """Row r of the batched wild slopes equals the slopes of cells whose losses are row
    r's, fitted on their own (every run in the pairs, so both pick the same runs)."""
    runs = prepare(PlantedSweep.realistic().records(seed=1))
    cells = hyperopt.build_cells(runs, window=0.2, form="auto")[0]
    signs = fit.wild_signs(runs, 3, seed=5)
    ones = np.ones((4, runs.num_runs))
    losses = [fit.wild_losses(c, signs, "auto") for c in cells]
    surfaces = [fit.fitted_surface(c, ones, c.form, loss_RM=loss) for c, loss in zip(cells, losses)]
    batched = hyperopt.within_run_slopes(cells, surfaces, ones, window=10.0)
    for row in (1, 3):
        own = [dataclasses.replace(c, log_loss=np.log(loss[row])) for c, loss in zip(cells, losses)]
        alone = hyperopt.within_run_slopes(
            own, [fit.fitted_surface(c, ones[:1], c.form) for c in own], ones[:1], window=10.0)
        np.testing.assert_allclose(batched[row], alone[0], rtol=1e-9)
    assert not np.allclose(batched[1], batched[0])


def test_wild_bootstrap_rows_equal_the_plain_fit_on_an_exact_surface():
    """Noise-free symmetric sweep: the loss is a quadratic in (log eta, log B) times a
    level, so every cell surface fits it exactly, the residuals are 0 and every wild
    row (optima and within-run slopes) repeats the plain fit."""
    core = core_fit(prepare(_noise_free().records()), FitOptions(num_resamples=8,
                                                                 bootstrap="wild"))
    for key in ("log_lr", "log_batch"):
        rows = core["stack"][key]
        np.testing.assert_allclose(rows[1:], np.broadcast_to(rows[0], rows[1:].shape),
                                   atol=1e-6)
    for law in ("eta", "batch"):
        np.testing.assert_allclose(core[law][1:], np.broadcast_to(core[law][0], (8, 3)),
                                   rtol=1e-5)
    with pytest.raises(ValueError, match="bootstrap must be one of"):
        core_fit(prepare(_noise_free().records()), FitOptions(num_resamples=2, bootstrap="pairs"))


def test_the_bootstrap_choice_leaves_the_plain_fit_alone():
    """At 1% noise the attenuation guard decides between within-run and cell slopes; it
    reads run-resampled rows under either bootstrap, so the plain fit is the same (it
    once read the wild rows, which read less attenuation: B beta 0.720 -> 0.505 here)."""
    sweep = PlantedSweep.realistic(noise_run=0.01, noise_point=3e-4)
    runs = prepare(sweep.records(seed=9))
    cores = {b: core_fit(runs, FitOptions(num_resamples=60, seed=9, bootstrap=b))
             for b in fit.BOOTSTRAPS}
    assert cores["wild"]["t_slope"] == cores["runs"]["t_slope"]
    assert cores["wild"]["t_slope_attenuation"] == cores["runs"]["t_slope_attenuation"]
    for law in ("eta", "batch"):
        np.testing.assert_allclose(cores["wild"][law][0], cores["runs"][law][0], rtol=1e-12)


@pytest.mark.parametrize("options, message", [
    (dict(surface="near_set"), "near_set"), (dict(bootstrap_windows=(0.05, 0.2)), "windows")])
def test_wild_bootstrap_refuses_what_it_cannot_resample(options, message):
    runs = prepare(PlantedSweep().records(seed=0))
    with pytest.raises(ValueError, match=message):
        core_fit(runs, FitOptions(num_resamples=4, bootstrap="wild", **options))
