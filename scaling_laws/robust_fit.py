"""Batched robust least squares: Huber loss minimised for many rows at once.

Levenberg-Marquardt on iteratively reweighted least squares (Huber weights
``min(1, delta / |r|)``). Each row is an independent problem (a start of a multi-start
fit, or a bootstrap resample); a step is kept only where it lowers that row's Huber
objective, so every row descends to a stationary point. Vectorising over rows is what
makes 1000 bootstrap refits cost well under a second.

Legend: ``_R`` rows, ``_C`` data points, ``_P`` parameters.
"""
from __future__ import annotations

import numpy as np


def huber(resid, delta):
    """(value, derivative) of the Huber function, elementwise."""
    a = np.abs(resid)
    value = np.where(a <= delta, 0.5 * resid ** 2, delta * (a - 0.5 * delta))
    return value, np.clip(resid, -delta, delta)


def huber_lm(model, theta_RP, target_RC, delta, project=None, max_iter=200):
    """Minimise ``sum_C huber(model(theta)_RC - target_RC)`` row by row.

    ``model(theta_RP) -> (pred_RC, jac_RCP)``; NaN targets are left out of their row;
    ``project(theta_RP) -> theta_RP`` enforces bounds. Returns (theta_RP, value_R).
    """
    theta = theta_RP.copy()
    mask = np.isfinite(target_RC)
    target = np.where(mask, target_RC, 0.0)
    rows, num_params = theta.shape
    project = project or (lambda t: t)

    def evaluate(th):
        pred, jac = model(th)
        resid = np.where(mask, pred - target, 0.0)
        return huber(resid, delta)[0].sum(-1), resid, jac

    value, resid, jac = evaluate(theta)
    lam = np.full(rows, 1e-3)
    converged = np.zeros(rows, bool)
    eye = np.eye(num_params)
    for _ in range(max_iter):
        w = mask * np.where(np.abs(resid) <= delta, 1.0, delta / np.maximum(np.abs(resid), 1e-300))
        gram = np.einsum("rc,rci,rcj->rij", w, jac, jac)
        grad = np.einsum("rc,rci,rc->ri", w, jac, resid)
        diag = np.diagonal(gram, axis1=1, axis2=2)
        # Marquardt scaling plus a floor, so saturated (zero-gradient) directions stay solvable.
        floor = 1e-9 * diag.max(axis=1) + 1e-300
        damp = gram + eye * (lam[:, None] * diag + floor[:, None])[:, None, :]
        trial = project(theta - np.linalg.solve(damp, grad[..., None])[..., 0])
        t_value, t_resid, t_jac = evaluate(trial)
        better = t_value < value
        improvement = np.where(better, value - t_value, 0.0)
        theta[better], resid[better], jac[better] = trial[better], t_resid[better], t_jac[better]
        value = np.where(better, t_value, value)
        lam = np.where(better, lam / 3, lam * 4)
        converged |= (better & (improvement <= 1e-10 * np.maximum(value, 1e-30))) | (lam > 1e6)
        if converged.all():
            break
    return theta, value
