"""Compute-optimal model size: ``N_opt(C) = argmin_N L(N, T = C / C_token(N))``.

``C`` in FLOPs, ``N`` in non-embedding parameters; ``C_token(N)`` comes from a
:class:`scaling_laws.compute.ComputeModel`. The minimisation is numerical (a log-spaced
grid over 1e5..1e14 parameters, then two rounds of parabolic refinement) and
vectorised, so a whole bootstrap of laws is handled at once. A power law
``N_opt = k * C^a`` is then fitted in log space over a range of budgets.
"""
from __future__ import annotations

import numpy as np

from scaling_laws.compute import ComputeModel, to_billions

_LOG_N_GRID = np.linspace(np.log(1e5), np.log(1e14), 181)


def _parabola_vertex(log_n_G, values_XG):
    """Refine the grid argmin of each row by a parabola through its neighbours."""
    idx = np.argmin(values_XG, axis=-1)
    interior = (idx > 0) & (idx < values_XG.shape[-1] - 1)
    i = np.clip(idx, 1, values_XG.shape[-1] - 2)
    left, mid, right = (np.take_along_axis(values_XG, (i + k)[..., None], -1)[..., 0]
                        for k in (-1, 0, 1))
    step = log_n_G[1] - log_n_G[0]
    curv = left - 2 * mid + right
    shift = np.where(curv > 0, 0.5 * (left - right) / np.where(curv > 0, curv, 1), 0.0)
    return log_n_G[i] + np.clip(shift, -1, 1) * step, interior


def optimal_params(loss_fn, compute: ComputeModel, budgets_flops):
    """N_opt (parameters) for each budget.

    ``loss_fn(n_billion, t_billion)`` must broadcast; to vectorise over R laws, let it
    hold parameters shaped ``(R, 1, 1)``. Returns an array shaped like the broadcast of
    ``(R, K)`` (K budgets), NaN where the minimum sits on the edge of the search range.
    """
    log_c_K = np.log(np.asarray(budgets_flops, float))
    n_G = np.exp(_LOG_N_GRID)
    t_KG = np.exp(log_c_K)[:, None] / compute.flops_per_token(n_G)[None, :]
    values = loss_fn(to_billions(n_G), to_billions(t_KG))
    best, interior = _parabola_vertex(_LOG_N_GRID, values)
    best = _refine_rows(loss_fn, compute, log_c_K, best, _LOG_N_GRID[1] - _LOG_N_GRID[0])
    return np.where(interior, np.exp(best), np.nan)


def _refine_rows(loss_fn, compute, log_c_K, best, step):
    """Per-row refinement when rows have different minima (vectorised local grids)."""
    for _ in range(2):
        offsets_G = np.linspace(-2 * step, 2 * step, 41)
        log_n = best[..., None] + offsets_G
        n = np.exp(log_n)
        t = np.exp(log_c_K)[..., :, None] / compute.flops_per_token(n)
        values = loss_fn(to_billions(n), to_billions(t))
        idx = np.clip(np.argmin(values, axis=-1), 1, len(offsets_G) - 2)
        left, mid, right = (np.take_along_axis(values, (idx + k)[..., None], -1)[..., 0]
                            for k in (-1, 0, 1))
        curv = left - 2 * mid + right
        sub = offsets_G[1] - offsets_G[0]
        shift = np.where(curv > 0, 0.5 * (left - right) / np.where(curv > 0, curv, 1), 0.0)
        best = np.take_along_axis(log_n, idx[..., None], -1)[..., 0] + np.clip(shift, -1, 1) * sub
        step = sub
    return best


def fit_allocation(budgets_flops, n_opt_params):
    """``log N_opt = log k + a log C`` per row (last axis = budgets). Returns (k, a)."""
    log_c = np.log(np.asarray(budgets_flops, float))
    log_n = np.log(np.asarray(n_opt_params, float))
    ok = np.isfinite(log_n)
    w = ok.astype(float)
    log_n = np.where(ok, log_n, 0.0)
    sw = w.sum(-1)
    mean_c = (w * log_c).sum(-1) / sw
    mean_n = (w * log_n).sum(-1) / sw
    dc = log_c - mean_c[..., None]
    slope = (w * dc * (log_n - mean_n[..., None])).sum(-1) / (w * dc * dc).sum(-1)
    slope = np.where(sw >= 3, slope, np.nan)
    return np.exp(mean_n - slope * mean_c), slope


def default_budgets(min_flops: float, max_flops: float, num: int = 25) -> np.ndarray:
    """Budgets for the N_opt power-law fit: the sweep's smallest run to 1e4 x its largest."""
    return np.logspace(np.log10(min_flops), np.log10(max_flops * 1e4), num)
