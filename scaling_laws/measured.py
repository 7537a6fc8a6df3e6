"""Judging hyperparameters on measured runs, never on a fitted surface.

A fitted surface shares the bias of the estimator that produced the optimum, so a
check made on it passes by construction. Here the loss at a setting is read off the
cell's observed (eta, B) grid: bilinear interpolation of log loss in (log eta, log B)
between the four grid points around it. Settings outside the grid, or next to a grid
point that has no loss (a diverged run, or one never run), have no measured loss and
say why.
"""
from __future__ import annotations

import numpy as np

NEAR_OPTIMAL_REL = 0.0025  # "within 0.25% of the best" (DeepSeek, Step Law)


def _grid(cell):
    """(x levels, y levels, log loss table with NaN where no run) of the cell."""
    xs = np.unique(cell.log_lr.round(9))
    ys = np.unique(cell.log_batch.round(9))
    table = np.full((len(xs), len(ys)), np.nan)
    counts = np.zeros_like(table)
    i = np.searchsorted(xs, cell.log_lr.round(9))
    j = np.searchsorted(ys, cell.log_batch.round(9))
    np.add.at(counts, (i, j), 1.0)
    sums = np.zeros_like(table)
    np.add.at(sums, (i, j), cell.log_loss)  # repeated settings (seeds): their mean
    table[counts > 0] = sums[counts > 0] / counts[counts > 0]
    return xs, ys, table


def _bracket(levels, value):
    """(lower index, weight of the upper level), or None outside the levels."""
    if value < levels[0] - 1e-9 or value > levels[-1] + 1e-9:
        return None
    if len(levels) == 1:
        return 0, 0.0
    k = int(np.clip(np.searchsorted(levels, value) - 1, 0, len(levels) - 2))
    return k, float(np.clip((value - levels[k]) / (levels[k + 1] - levels[k]), 0, 1))


def grid_loss_at(cell, log_lr: float, log_batch: float) -> tuple[float, str]:
    """(measured loss at the setting, "" or why there is none)."""
    xs, ys, table = _grid(cell)
    bx, by = _bracket(xs, log_lr), _bracket(ys, log_batch)
    if bx is None or by is None:
        axis = "eta" if bx is None else "B"
        return float("nan"), f"outside the measured grid in {axis}"
    (i, wx), (j, wy) = bx, by
    corners, weights = [], []
    for di, fx in ((0, 1 - wx), (1, wx)):
        for dj, fy in ((0, 1 - wy), (1, wy)):
            if fx * fy > 0:
                corners.append(table[min(i + di, len(xs) - 1), min(j + dj, len(ys) - 1)])
                weights.append(fx * fy)
    corners = np.array(corners)
    if not np.all(np.isfinite(corners)):
        return float("nan"), "a neighbouring grid point diverged or was not run"
    return float(np.exp(np.dot(weights, corners) / np.sum(weights))), ""


def cost_at(cell, log_lr: float, log_batch: float) -> tuple[float, str]:
    """Measured loss at the setting relative to the cell's best run, minus one."""
    loss, why = grid_loss_at(cell, log_lr, log_batch)
    return (float(loss / np.exp(cell.log_loss.min()) - 1) if not why else float("nan")), why


def nearest_grid_cost(cell, log_lr: float, log_batch: float) -> float:
    """Cost of the measured grid point nearest the setting (in grid steps)."""
    xs, ys, table = _grid(cell)
    step_x = np.diff(xs).min() if len(xs) > 1 else 1.0
    step_y = np.diff(ys).min() if len(ys) > 1 else 1.0
    dist = np.hypot((xs[:, None] - log_lr) / step_x, (ys[None, :] - log_batch) / step_y)
    dist[~np.isfinite(table)] = np.inf
    i, j = np.unravel_index(np.argmin(dist), dist.shape)
    return float(np.exp(table[i, j] - cell.log_loss.min()) - 1)


def grid_steps_off(cell, log_lr: float, log_batch: float) -> tuple[float, float]:
    """(eta, B) distance of the setting from the cell's best run, in grid steps."""
    xs, ys, _ = _grid(cell)
    best = int(np.argmin(cell.log_loss))
    step_x = np.diff(xs).min() if len(xs) > 1 else np.nan
    step_y = np.diff(ys).min() if len(ys) > 1 else np.nan
    return (float((log_lr - cell.log_lr[best]) / step_x),
            float((log_batch - cell.log_batch[best]) / step_y))


def near_optimal_set(cell, rel: float = NEAR_OPTIMAL_REL) -> dict:
    """The measured runs within ``rel`` of the cell's best: how many, and their ranges."""
    keep = cell.log_loss <= cell.log_loss.min() + np.log1p(rel)
    lr, batch = np.exp(cell.log_lr[keep]), np.exp(cell.log_batch[keep])
    return {"num_runs": int(keep.sum()), "lr": [float(lr.min()), float(lr.max())],
            "batch_tokens": [float(batch.min()), float(batch.max())]}
