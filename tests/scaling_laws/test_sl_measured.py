"""Reading losses off a measured grid, and the extrapolation check that uses it."""
import numpy as np
import pytest

from scaling_laws import fit, hyperopt, measured, pipeline
from scaling_laws.records import prepare
from scaling_laws.synthetic import PlantedSweep


def _plane_cell():
    """A 3 x 3 grid whose log loss is a plane: bilinear interpolation is exact there."""
    x, y = np.meshgrid(np.log([1e-4, 2e-4, 4e-4]), np.log([1e4, 2e4, 4e4]))
    x, y = x.ravel(), y.ravel()
    log_loss = np.log(0.5) + 0.01 * (x - x[0]) - 0.02 * (y - y[0])
    return hyperopt.Cell(1e8, 1e9, 512, 256, np.arange(9), x, y, log_loss, np.ones(9, bool))


def test_grid_points_and_interpolation_are_exact_on_a_plane():
    cell = _plane_cell()
    for i in range(9):
        loss, why = measured.grid_loss_at(cell, cell.log_lr[i], cell.log_batch[i])
        assert not why and loss == pytest.approx(np.exp(cell.log_loss[i]), rel=1e-9)
    x, y = np.log(1.5e-4), np.log(3e4)
    expected = 0.5 * np.exp(0.01 * (x - np.log(1e-4)) - 0.02 * (y - np.log(1e4)))
    loss, why = measured.grid_loss_at(cell, x, y)
    assert not why and loss == pytest.approx(expected, rel=1e-9)
    best = np.exp(cell.log_loss.min())
    assert measured.cost_at(cell, x, y)[0] == pytest.approx(expected / best - 1, rel=1e-9)


def test_no_measured_loss_outside_the_grid_or_next_to_a_diverged_run():
    cell = _plane_cell()
    assert "outside" in measured.grid_loss_at(cell, np.log(8e-4), np.log(2e4))[1]
    keep = np.arange(9) != 8  # the (4e-4, 4e4) run diverged: it is not in the cell
    hole = hyperopt.Cell(1e8, 1e9, 512, 256, np.arange(8), cell.log_lr[keep],
                         cell.log_batch[keep], cell.log_loss[keep], np.ones(8, bool))
    loss, why = measured.grid_loss_at(hole, np.log(3e-4), np.log(3e4))
    assert np.isnan(loss) and "diverged" in why
    assert not measured.grid_loss_at(hole, np.log(1.5e-4), np.log(1.5e4))[1]


def test_steps_off_and_nearest_grid_point():
    cell = _plane_cell()  # best run: the lowest lr (slope +0.01) at the largest batch
    steps = measured.grid_steps_off(cell, np.log(4e-4), np.log(1e4))
    assert steps == pytest.approx((2.0, -2.0))
    assert measured.nearest_grid_cost(cell, np.log(1.1e-4), np.log(3.9e4)) == 0.0


def test_extrapolation_judges_hyperparameters_on_measured_runs():
    sweep = PlantedSweep.realistic(sizes_params=(0.017e9, 0.057e9, 0.13e9, 0.26e9, 1.07e9))
    runs = prepare(sweep.records(seed=0))
    ext = pipeline.extrapolation.leave_largest_out(runs, fit.FitOptions(num_resamples=20))
    held = hyperopt.build_cells(runs.subset(hyperopt.same_size(
        runs.params_nonembed, runs.params_nonembed.max())))[0]
    by_tokens = {c.tokens: c for c in held}
    for row in ext["cells"]:
        cell = by_tokens[row["train_tokens"]]
        # Recompute the cost by hand: bilinear log-loss interpolation over the best run.
        x, y = np.log(row["lr_predicted"]), np.log(row["batch_tokens_predicted"])
        xs, ys = np.unique(cell.log_lr.round(9)), np.unique(cell.log_batch.round(9))
        i, j = np.searchsorted(xs, x) - 1, np.searchsorted(ys, y) - 1
        fx, fy = (x - xs[i]) / (xs[i + 1] - xs[i]), (y - ys[j]) / (ys[j + 1] - ys[j])

        def at(a, b):
            hit = np.isclose(cell.log_lr, xs[a]) & np.isclose(cell.log_batch, ys[b])
            return cell.log_loss[hit].mean() if hit.any() else np.nan

        z = ((1 - fx) * (1 - fy) * at(i, j) + fx * (1 - fy) * at(i + 1, j)
             + (1 - fx) * fy * at(i, j + 1) + fx * fy * at(i + 1, j + 1))
        cost = np.exp(z - cell.log_loss.min()) - 1
        if np.isfinite(cost):
            assert row["loss_cost_of_predicted_hp"] == pytest.approx(cost, rel=1e-9)
            assert row["within_near_optimal_region"] == (cost <= 0.0025)
        else:
            assert row["within_near_optimal_region"] is None and row["loss_cost_note"]
