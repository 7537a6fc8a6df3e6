"""The loss law ``L(N, T) = (T_c/T)^alpha_T + (N_c/N)^alpha_N + L_inf`` and Kaplan's form.

Units: N and T in billions (``scaling_laws.compute``), so ``N_c`` and ``T_c`` are in
billions of parameters and tokens too.

Fit recipe (Chinchilla approach 3, Hoffmann et al. 2022): minimise a Huber loss
(``delta = 1e-3``) of ``log L_pred - log L_obs`` with L-BFGS-B from a grid of starts and
keep the best. The law is parameterised as a log-sum-exp,
``log L = LSE(b_T - alpha_T log T, b_N - alpha_N log N, e)`` with
``T_c = exp(b_T / alpha_T)``, ``N_c = exp(b_N / alpha_N)``, ``L_inf = exp(e)``, which
keeps every term positive and gives exact gradients. The objective is divided by
``delta^2`` so L-BFGS's absolute tolerances stay meaningful for residuals of ~1e-3.
"""
from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import minimize
from scipy.special import logsumexp, softmax

from scaling_laws.robust_fit import huber as _huber, huber_lm

HUBER_DELTA = 1e-3
LOSS_KEYS = ("T_c", "alpha_T", "N_c", "alpha_N", "L_inf")
KAPLAN_KEYS = ("N_c", "alpha_N", "D_c", "alpha_D")
EXPONENT_BOUNDS = (1e-3, 5.0)


def _law_model(log_n_C, log_t_C):
    """(pred, jacobian) of log L for rows of theta: the batched form of the law."""
    def model(theta_RP):
        terms = np.stack([theta_RP[:, 0, None] - theta_RP[:, 1, None] * log_t_C,
                          theta_RP[:, 2, None] - theta_RP[:, 3, None] * log_n_C,
                          np.broadcast_to(theta_RP[:, 4, None],
                                          (len(theta_RP), len(log_t_C)))], axis=1)
        share = softmax(terms, axis=1)
        jac = np.stack([share[:, 0], -share[:, 0] * log_t_C, share[:, 1],
                        -share[:, 1] * log_n_C, share[:, 2]], axis=-1)
        return logsumexp(terms, axis=1), jac
    return model


def _law_projector(max_log_loss):
    def project(theta_RP):
        theta_RP[:, 1] = np.clip(theta_RP[:, 1], *EXPONENT_BOUNDS)
        theta_RP[:, 3] = np.clip(theta_RP[:, 3], *EXPONENT_BOUNDS)
        theta_RP[:, 4] = np.minimum(theta_RP[:, 4], max_log_loss)
        return theta_RP
    return project


def _law_terms(theta, log_n, log_t):
    b_t, a_t, b_n, a_n, e = theta
    return np.stack([b_t - a_t * log_t, b_n - a_n * log_n, np.full_like(log_t, e)], axis=0)


def _law_objective(theta, log_n, log_t, log_loss, delta):
    terms = _law_terms(theta, log_n, log_t)
    resid = logsumexp(terms, axis=0) - log_loss
    value, dvalue = _huber(resid, delta)
    share = softmax(terms, axis=0)
    dpred = np.stack([share[0], -share[0] * log_t, share[1], -share[1] * log_n, share[2]])
    scale = 1.0 / (delta ** 2 * len(resid))
    return value.sum() * scale, (dpred @ dvalue) * scale


def theta_to_law(theta) -> dict:
    b_t, a_t, b_n, a_n, e = (float(v) for v in theta)
    return {"T_c": float(np.exp(b_t / a_t)), "alpha_T": a_t, "N_c": float(np.exp(b_n / a_n)),
            "alpha_N": a_n, "L_inf": float(np.exp(e))}


def law_to_theta(law: dict) -> np.ndarray:
    return np.array([law["alpha_T"] * np.log(law["T_c"]), law["alpha_T"],
                     law["alpha_N"] * np.log(law["N_c"]), law["alpha_N"], np.log(law["L_inf"])])


def predict_loss(law: dict, n_billion, t_billion):
    """L(N, T) with N, T in billions (broadcasts)."""
    n, t = np.asarray(n_billion, float), np.asarray(t_billion, float)
    return (law["T_c"] / t) ** law["alpha_T"] + (law["N_c"] / n) ** law["alpha_N"] + law["L_inf"]


def _default_starts(log_n, log_t, log_loss):
    floor = np.exp(log_loss.min())
    mid_t, mid_n = np.median(log_t), np.median(log_n)
    starts = []
    for a_t, a_n, f_t, f_n, f_inf in itertools.product(
            (0.15, 0.35, 0.7), (0.15, 0.35, 0.7), (0.03, 0.15), (0.03, 0.15), (0.6, 0.9)):
        # Each term starts at a fraction of the smallest observed loss at the median T, N.
        starts.append([np.log(f_t * floor) + a_t * mid_t, a_t,
                       np.log(f_n * floor) + a_n * mid_n, a_n, np.log(f_inf * floor)])
    return np.array(starts)


def _minimise(objective, starts, bounds, args):
    best = None
    for start in starts:
        res = minimize(objective, start, args=args, jac=True, method="L-BFGS-B", bounds=bounds,
                       options={"maxiter": 200, "ftol": 1e-15, "gtol": 1e-10})
        if np.isfinite(res.fun) and (best is None or res.fun < best.fun):
            best = res
    if best is None:
        raise ValueError("the loss-law fit failed from every start (non-finite objective)")
    return best


def fit_loss_law(n_billion, t_billion, loss, init=None, delta=HUBER_DELTA) -> dict:
    """Fit L(N, T); ``init`` (a law dict) replaces the start grid (used by the bootstrap).

    Returns the law plus ``huber`` (objective), ``mse`` (plain mean squared error of L,
    the number the paper reports), ``rmse_rel`` and ``num_points``.
    """
    log_n, log_t = np.log(np.asarray(n_billion, float)), np.log(np.asarray(t_billion, float))
    log_loss = np.log(np.asarray(loss, float))
    if len(np.unique(log_n.round(6))) < 2 or len(np.unique(log_t.round(6))) < 2:
        raise ValueError("the loss law needs >= 2 model sizes and >= 2 token counts, got "
                         f"{len(np.unique(log_n.round(6)))} and {len(np.unique(log_t.round(6)))}")
    starts = _default_starts(log_n, log_t, log_loss) if init is None else [law_to_theta(init)]
    bounds = [(None, None), EXPONENT_BOUNDS, (None, None), EXPONENT_BOUNDS,
              (None, float(log_loss.min()))]
    project = _law_projector(log_loss.min())
    starts = project(np.array(starts, float))
    # The batched LM takes every start most of the way; L-BFGS-B polishes the best one.
    theta, value = huber_lm(_law_model(log_n, log_t), starts,
                            np.tile(log_loss, (len(starts), 1)), delta, project, max_iter=100)
    best = theta[np.argsort(value)[:1]]
    res = _minimise(_law_objective, best, bounds, (log_n, log_t, log_loss, delta))
    law = theta_to_law(res.x)
    pred = predict_loss(law, np.exp(log_n), np.exp(log_t))
    obs = np.exp(log_loss)
    return {**law, "huber": float(res.fun), "mse": float(np.mean((pred - obs) ** 2)),
            "rmse_rel": float(np.sqrt(np.mean((pred / obs - 1) ** 2))),
            "num_points": int(len(obs))}


# Kaplan et al. 2020: L = [(N_c/N)^(a_N/a_D) + D_c/D]^a_D, no irreducible term.
def predict_kaplan(law: dict, n_billion, t_billion):
    n, t = np.asarray(n_billion, float), np.asarray(t_billion, float)
    ratio = law["alpha_N"] / law["alpha_D"]
    return ((law["N_c"] / n) ** ratio + law["D_c"] / t) ** law["alpha_D"]


def fit_kaplan(n_billion, t_billion, loss, delta=HUBER_DELTA) -> dict:
    """Kaplan's L(N, D) by the same Huber recipe (N, D in billions), batched LM only."""
    log_n, log_t = np.log(np.asarray(n_billion, float)), np.log(np.asarray(t_billion, float))
    log_loss = np.log(np.asarray(loss, float))
    starts = np.array([[r * np.log(nc), r, np.log(dc), ad]
                       for r, nc, dc, ad in itertools.product((0.5, 1.0, 2.0), (1e-4, 1e-2),
                                                              (1e-4, 1e-2), (0.02, 0.1))])
    bounds = [(None, None), (1e-3, 50.0), (None, None), (1e-4, 5.0)]

    def project(theta_RP):
        theta_RP[:, 1] = np.clip(theta_RP[:, 1], *bounds[1])
        theta_RP[:, 3] = np.clip(theta_RP[:, 3], *bounds[3])
        return theta_RP

    def model(theta_RP):
        terms = np.stack([theta_RP[:, 0, None] - theta_RP[:, 1, None] * log_n,
                          theta_RP[:, 2, None] - log_t + 0 * theta_RP[:, 2, None]], axis=1)
        lse, share, a_d = logsumexp(terms, axis=1), softmax(terms, axis=1), theta_RP[:, 3, None]
        jac = np.stack([a_d * share[:, 0], -a_d * share[:, 0] * log_n, a_d * share[:, 1], lse],
                       axis=-1)
        return a_d * lse, jac

    theta, value = huber_lm(model, starts, np.tile(log_loss, (len(starts), 1)), delta, project,
                            max_iter=100)
    best = int(np.argmin(value))
    c1, ratio, c2, a_d = theta[best]
    law = {"N_c": float(np.exp(c1 / ratio)), "alpha_N": float(ratio * a_d),
           "D_c": float(np.exp(c2)), "alpha_D": float(a_d)}
    pred = predict_kaplan(law, np.exp(log_n), np.exp(log_t))
    obs = np.exp(log_loss)
    return {**law, "huber": float(value[best]) / (delta ** 2 * len(obs)),
            "mse": float(np.mean((pred - obs) ** 2)), "num_points": int(len(obs))}


def fit_loss_law_rows(n_billion_C, t_billion_C, log_loss_RC, init: dict,
                      delta=HUBER_DELTA, max_iter=200) -> np.ndarray:
    """The same Huber fit for many rows at once (bootstrap), every row started at ``init``
    (batched Levenberg-Marquardt, :mod:`scaling_laws.robust_fit`).

    NaN entries of ``log_loss_RC`` are left out of their row. Returns (R, 5)
    coefficients in ``LOSS_KEYS`` order, NaN where a row has fewer than 5 points.
    """
    log_n, log_t = np.log(n_billion_C), np.log(t_billion_C)
    theta0 = np.tile(law_to_theta(init), (log_loss_RC.shape[0], 1))
    project = _law_projector(np.nanmin(log_loss_RC, axis=1))
    theta, _ = huber_lm(_law_model(log_n, log_t), theta0, log_loss_RC, delta, project, max_iter)
    out = np.array([[*theta_to_law(row).values()] for row in theta])
    out[np.isfinite(log_loss_RC).sum(1) < 5] = np.nan
    return out
