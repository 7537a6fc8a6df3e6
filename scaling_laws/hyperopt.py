"""Optimal hyperparameters per (N, T) cell and the power laws eta_opt(N,T), B_opt(N,T).

A *cell* is one model size N at one token count T. Its runs sample a grid in
(x = log eta, y = log B); the optimum is the vertex of a quadratic surface
``L = c0 + c1 x + c2 y + c3 x^2 + c4 x y + c5 y^2`` fitted to the loss by least squares,
not the argmin of the grid, so a noisy best run does not move the optimum a whole grid
step. (The loss itself, not its log, is fitted: a multiplicative penalty
``L*(1 + q(x, y))`` is then exactly quadratic and its vertex unbiased.) Points whose loss exceeds the
cell's best by more than ``window`` are left out of the surface (quadratics hold near
the optimum only); the window widens until the surface is identifiable.

Everything here is vectorised over bootstrap resamples: ``weights`` is a
``(num_resamples, num_runs)`` array of how often each run was drawn (all ones for the
plain fit), and weighted least squares turns duplicates into weights.

Legend for array suffixes: ``_R`` resamples, ``_C`` cells, ``_M`` members of one cell,
``_P`` surface parameters (6: 1, dx, dy, dx^2, dx dy, dy^2).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from scaling_laws.compute import to_billions
from scaling_laws.records import RunSet

NEAR_OPTIMAL_REL = 0.0025  # "within 0.25% of the best" (DeepSeek, Step Law)
MIN_LEVELS = 3             # distinct values per axis a quadratic needs
MIN_SETTINGS = 6           # parameters of the quadratic surface


@dataclasses.dataclass
class Cell:
    """Runs of one model size at one token count; member arrays are per run."""

    params_nonembed: float
    tokens: float
    hidden_size: float
    tokens_per_sample: float
    run_index: np.ndarray   # rows into the RunSet
    log_lr: np.ndarray
    log_batch: np.ndarray
    log_loss: np.ndarray
    in_window: np.ndarray   # bool: used by the surface
    interpolated: int = 0

    @property
    def n_billion(self) -> float:
        return float(to_billions(self.params_nonembed))

    @property
    def t_billion(self) -> float:
        return float(to_billions(self.tokens))

    @property
    def flops(self) -> float:
        from scaling_laws.compute import training_flops
        return float(training_flops(self.params_nonembed, self.tokens_per_sample,
                                    self.hidden_size, self.tokens))


def _group_sizes(params: np.ndarray) -> np.ndarray:
    """Label runs by model size, merging counts within 0.1% (rounding in records)."""
    order = np.argsort(params)
    labels = np.empty(len(params), int)
    label, last = -1, None
    for i in order:
        if last is None or params[i] > last * 1.001:
            label += 1
            last = params[i]
        labels[i] = label
    return labels


def _run_loss_at(tokens_T: np.ndarray, loss_T: np.ndarray, target: float) -> float | None:
    """Loss of one run at ``target`` tokens: exact point, or log-log interpolation."""
    close = np.abs(tokens_T / target - 1) < 0.005
    if close.any():
        return float(loss_T[close][0])
    if target < tokens_T.min() or target > tokens_T.max():
        return None
    order = np.argsort(tokens_T)
    return float(np.exp(np.interp(np.log(target), np.log(tokens_T[order]),
                                  np.log(loss_T[order]))))


def _identifiable(log_lr, log_batch) -> bool:
    settings = {(round(a, 6), round(b, 6)) for a, b in zip(log_lr, log_batch)}
    return (len(settings) >= MIN_SETTINGS and len(np.unique(log_lr.round(6))) >= MIN_LEVELS
            and len(np.unique(log_batch.round(6))) >= MIN_LEVELS)


def _choose_window(log_loss, log_lr, log_batch, window: float) -> np.ndarray:
    """Runs within ``window`` of the best, widened until the surface keeps >= 2 residual
    degrees of freedom (6 points would be interpolated exactly, noise and all)."""
    best = log_loss.min()
    w = window
    while True:
        keep = log_loss <= best + np.log1p(w)
        enough = keep.sum() >= MIN_SETTINGS + 2 or keep.all()
        if (_identifiable(log_lr[keep], log_batch[keep]) and enough) or keep.all():
            return keep
        w *= 2


def build_cells(runs: RunSet, window: float = 0.20, min_tokens_ratio: float = 1.25):
    """Group loss points into (N, T) cells. Returns ``(cells, skipped)``.

    Token targets per size are the distinct token counts of its points (3 significant
    figures), thinned from the top so neighbours differ by ``min_tokens_ratio``; a run
    contributes at a target by an exact point or by interpolating its curve (never
    extrapolating). ``skipped`` lists (N, T, reason) for targets with too few settings.
    """
    size_label = _group_sizes(runs.params_nonembed)
    cells, skipped = [], []
    for label in np.unique(size_label):
        members = np.flatnonzero(size_label == label)
        pts = np.isin(runs.point_run, members)
        candidates = np.unique(np.float64(["%.3g" % t for t in runs.point_tokens[pts]]))
        kept_targets = []
        for target in candidates[::-1]:
            if kept_targets and kept_targets[-1] / target < min_tokens_ratio:
                continue
            cell, reason = _make_cell(runs, members, target, window)
            if cell is None:
                skipped.append((float(np.median(runs.params_nonembed[members])), target, reason))
                continue
            kept_targets.append(target)
            cells.append(cell)
    return cells, skipped


def _make_cell(runs: RunSet, members: np.ndarray, target: float, window: float):
    rows, losses, interpolated = [], [], 0
    for r in members:
        sel = runs.point_run == r
        tok, loss = runs.point_tokens[sel], runs.point_loss[sel]
        value = _run_loss_at(tok, loss, target)
        if value is not None:
            rows.append(r)
            losses.append(value)
            interpolated += int(not (np.abs(tok / target - 1) < 0.005).any())
    rows = np.array(rows, int)
    if len(rows) == 0:
        return None, "no run reaches this token count"
    log_lr, log_batch = np.log(runs.lr[rows]), np.log(runs.batch_tokens[rows])
    if not _identifiable(log_lr, log_batch):
        n_set = len({(a, b) for a, b in zip(log_lr.round(6), log_batch.round(6))})
        return None, (f"{n_set} (eta, B) setting(s), {len(np.unique(log_lr.round(6)))} "
                      f"eta and {len(np.unique(log_batch.round(6)))} B values: a surface "
                      f"needs >= {MIN_SETTINGS} settings and >= {MIN_LEVELS} values per axis")
    log_loss = np.log(np.array(losses))
    keep = _choose_window(log_loss, log_lr, log_batch, window)
    cell = Cell(float(np.median(runs.params_nonembed[rows])), float(target),
                float(np.median(runs.hidden_size[rows])),
                float(np.median(runs.tokens_per_sample[rows])), rows, log_lr, log_batch,
                log_loss, keep, interpolated)
    return cell, ""


def _level_count(weights_RM: np.ndarray, values_M: np.ndarray) -> np.ndarray:
    _, inverse = np.unique(values_M.round(6), return_inverse=True)
    onehot = np.eye(inverse.max() + 1)[inverse]
    return ((weights_RM @ onehot) > 0).sum(axis=1)


def fit_surface(cell: Cell, weights_R_runs: np.ndarray) -> dict:
    """Weighted quadratic fit of the loss in (log eta, log B) for every resample.

    Returns arrays over resamples: ``log_lr``, ``log_batch`` (vertex), ``log_loss``
    (surface minimum), ``hessian`` (R,2,2), ``valid`` (identifiable, convex, vertex
    inside the sampled box). Invalid resamples hold NaN.
    """
    m = cell.in_window
    x, y, z = cell.log_lr[m], cell.log_batch[m], np.exp(cell.log_loss[m])
    x0, y0 = x.mean(), y.mean()
    dx, dy = x - x0, y - y0
    design_MP = np.stack([np.ones_like(dx), dx, dy, dx * dx, dx * dy, dy * dy], axis=1)
    w_RM = weights_R_runs[:, cell.run_index[m]]
    settings = np.unique(np.stack([x, y], 1).round(6), axis=0, return_inverse=True)[1].ravel()
    ok_R = ((_level_count(w_RM, x) >= MIN_LEVELS) & (_level_count(w_RM, y) >= MIN_LEVELS)
            & (_level_count(w_RM, settings.astype(float)) >= MIN_SETTINGS))
    gram_RPP = np.einsum("rm,mi,mj->rij", w_RM, design_MP, design_MP)
    rhs_RP = np.einsum("rm,mi,m->ri", w_RM, design_MP, z)
    # Enough levels is necessary, not sufficient (settings can still be collinear).
    eig_RP = np.linalg.eigvalsh(gram_RPP)
    ok_R &= eig_RP[:, 0] > 1e-9 * np.maximum(eig_RP[:, -1], 1e-300)
    gram_RPP[~ok_R] = np.eye(6)
    coef_RP = np.linalg.solve(gram_RPP, rhs_RP[..., None])[..., 0]
    hess_R22 = np.stack([np.stack([2 * coef_RP[:, 3], coef_RP[:, 4]], -1),
                         np.stack([coef_RP[:, 4], 2 * coef_RP[:, 5]], -1)], -2)
    det_R = hess_R22[:, 0, 0] * hess_R22[:, 1, 1] - hess_R22[:, 0, 1] ** 2
    convex_R = (det_R > 0) & (hess_R22[:, 0, 0] > 0)
    safe_R22 = np.where(convex_R[:, None, None], hess_R22, np.eye(2))
    grad_R2 = coef_RP[:, 1:3]
    vertex_R2 = -np.linalg.solve(safe_R22, grad_R2[..., None])[..., 0]
    inside_R = ((vertex_R2[:, 0] >= dx.min()) & (vertex_R2[:, 0] <= dx.max())
                & (vertex_R2[:, 1] >= dy.min()) & (vertex_R2[:, 1] <= dy.max()))
    valid_R = ok_R & convex_R & inside_R
    min_R = coef_RP[:, 0] + 0.5 * np.einsum("ri,ri->r", grad_R2, vertex_R2)
    valid_R &= min_R > 0
    nan = np.where(valid_R, 0.0, np.nan)
    return {"log_lr": vertex_R2[:, 0] + x0 + nan, "log_batch": vertex_R2[:, 1] + y0 + nan,
            "log_loss": np.log(np.where(valid_R, min_R, 1.0)) + nan, "hessian": hess_R22, "valid": valid_R,
            "convex": convex_R, "inside": inside_R}


def near_optimal_region(surface: dict, index: int = 0, rel: float = NEAR_OPTIMAL_REL) -> dict:
    """Bounding box of {loss <= (1 + rel) * fitted minimum} in eta and B (absolute units)."""
    if not surface["valid"][index]:
        return {}
    cov = np.linalg.inv(surface["hessian"][index])
    half = np.sqrt(2 * rel * np.exp(surface["log_loss"][index]) * np.diag(cov))
    x, y = surface["log_lr"][index], surface["log_batch"][index]
    return {"lr": [float(np.exp(x - half[0])), float(np.exp(x + half[0]))],
            "batch_tokens": [float(np.exp(y - half[1])), float(np.exp(y + half[1]))]}


def fit_power_law(log_target_RC: np.ndarray, t_billion_C: np.ndarray, n_billion_C: np.ndarray):
    """Least squares of ``log y = log alpha + beta log T + gamma log N`` per resample.

    NaN targets (invalid cells) get zero weight. Returns (alpha_R, beta_R, gamma_R);
    resamples with fewer than 3 model sizes or 2 token counts among valid cells are NaN.
    """
    design_CP = np.stack([np.ones_like(t_billion_C), np.log(t_billion_C), np.log(n_billion_C)], 1)
    valid_RC = np.isfinite(log_target_RC)
    w_RC = valid_RC.astype(float)
    target_RC = np.where(valid_RC, log_target_RC, 0.0)
    n_sizes_R = _level_count(w_RC, np.log(n_billion_C))
    n_tokens_R = _level_count(w_RC, np.log(t_billion_C))
    ok_R = (n_sizes_R >= 3) & (n_tokens_R >= 2)
    gram_RPP = np.einsum("rc,ci,cj->rij", w_RC, design_CP, design_CP)
    gram_RPP[~ok_R] = np.eye(3)
    rhs_RP = np.einsum("rc,ci,rc->ri", w_RC, design_CP, target_RC)
    coef_RP = np.linalg.solve(gram_RPP, rhs_RP[..., None])[..., 0]
    coef_RP[~ok_R] = np.nan
    return np.exp(coef_RP[:, 0]), coef_RP[:, 1], coef_RP[:, 2]
