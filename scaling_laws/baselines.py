"""Conventional laws fitted on the same records, for comparison with the optimal-HP law.

- ``fixed_hp``: the loss law fitted to the runs at one (eta, B) setting, as studies that
  do not tune per size do (the paper's "fixed hyperparameters"). Grids are usually
  per size, so the setting is the one most runs share, or else each size's grid point
  nearest (in log eta, log B) to the sweep's median setting; the choice is reported.
- ``kaplan``: Kaplan et al. 2020, ``L = [(N_c/N)^(a_N/a_D) + D_c/D]^a_D``, on the
  optimal-HP points.
- ``chinchilla3``: Chinchilla approach 3, ``L = E + A/N^a + B/D^b`` (N in parameters,
  D in tokens) on the *argmin* run of each cell (no surface smoothing).
- ``chinchilla2``: Chinchilla approach 2, a parabola in log N per IsoFLOP curve, the
  curves read off the per-size optimal-loss-vs-T points.
- ``deepseek``: DeepSeek LLM's compute-only laws ``eta_opt = k C^a``, ``B_opt = k C^b``.

Baselines carry point estimates only (the bootstrap is spent on the main law).
"""
from __future__ import annotations

import numpy as np

from scaling_laws import allocation, hyperopt, loss_law
from scaling_laws.compute import BILLION

REFERENCE_FLOPS = 1e22


def _n_opt_summary(loss_fn, compute, budgets) -> dict:
    n_opt = allocation.optimal_params(loss_fn, compute, budgets)
    if np.isfinite(n_opt).sum() < 3:
        return {"k": None, "a": None, "n_opt_at_1e22_params": None}
    k, a = allocation.fit_allocation(budgets, n_opt)
    n_ref = allocation.optimal_params(loss_fn, compute, [REFERENCE_FLOPS])[0]
    return {"k": float(k), "a": float(a),
            "n_opt_at_1e22_params": float(n_ref) if np.isfinite(n_ref) else None}


def fixed_setting(runs, cells, lr=None, batch_tokens=None) -> dict:
    """{size params: run row} of the runs at the fixed setting (see module docstring)."""
    sizes = sorted({c.params_nonembed for c in cells})
    by_size = {}
    if lr is None or batch_tokens is None:
        keys, counts = np.unique(np.stack([runs.lr, runs.batch_tokens], 1), axis=0,
                                 return_counts=True)
        median = np.median(np.log(np.stack([runs.lr, runs.batch_tokens], 1)), axis=0)
        lr, batch_tokens = np.exp(median)
        if counts.max() >= 3:  # a setting shared by >= 3 sizes: the one nearest the median
            shared = keys[counts == counts.max()]
            lr, batch_tokens = shared[np.argmin(np.abs(np.log(shared) - median).sum(1))]
    for size in sizes:
        rows = np.flatnonzero(hyperopt.same_size(runs.params_nonembed, size))
        dist = np.hypot(np.log(runs.lr[rows] / lr), np.log(runs.batch_tokens[rows] / batch_tokens))
        by_size[size] = int(rows[np.argmin(dist)])
    return {"lr": float(lr), "batch_tokens": float(batch_tokens), "rows": by_size}


def _fixed_points(runs, cells, setting):
    n, t, loss = [], [], []
    for cell in cells:
        row = setting["rows"].get(cell.params_nonembed)
        hit = np.flatnonzero(cell.run_index == row)
        if len(hit):
            n.append(cell.n_billion)
            t.append(cell.t_billion)
            loss.append(float(np.exp(cell.log_loss[hit[0]])))
    return np.array(n), np.array(t), np.array(loss)


def fit_fixed_hp(runs, cells, compute, budgets, setting) -> dict:
    n, t, loss = _fixed_points(runs, cells, setting)
    law = loss_law.fit_loss_law(n, t, loss)
    used = {f"{s / BILLION:.4g}B": {"lr": float(runs.lr[r]),
                                    "batch_tokens": float(runs.batch_tokens[r])}
            for s, r in setting["rows"].items()}
    return {"law": {k: law[k] for k in loss_law.LOSS_KEYS}, "mse": law["mse"],
            "num_points": law["num_points"], "settings": used,
            **_n_opt_summary(lambda nb, tb: loss_law.predict_loss(law, nb, tb), compute, budgets)}


def fit_kaplan(n, t, loss, compute, budgets) -> dict:
    law = loss_law.fit_kaplan(n, t, loss)
    coef = {k: law[k] for k in loss_law.KAPLAN_KEYS}
    return {"law": coef, "mse": law["mse"], "num_points": law["num_points"],
            **_n_opt_summary(lambda nb, tb: loss_law.predict_kaplan(coef, nb, tb), compute,
                             budgets)}


def fit_chinchilla3(cells, compute, budgets) -> dict:
    n = np.array([c.n_billion for c in cells])
    t = np.array([c.t_billion for c in cells])
    loss = np.array([np.exp(c.log_loss.min()) for c in cells])
    law = loss_law.fit_loss_law(n, t, loss)
    coef = {"E": law["L_inf"], "A": (law["N_c"] * BILLION) ** law["alpha_N"],
            "alpha": law["alpha_N"], "B": (law["T_c"] * BILLION) ** law["alpha_T"],
            "beta": law["alpha_T"]}
    return {"law": coef, "units": "N in parameters, D in tokens", "mse": law["mse"],
            "num_points": law["num_points"],
            "loss_law_form": {k: law[k] for k in loss_law.LOSS_KEYS},
            **_n_opt_summary(lambda nb, tb: loss_law.predict_loss(law, nb, tb), compute, budgets)}


def fit_chinchilla2(n_C, t_C, loss_C, compute, num_budgets: int = 12) -> dict:
    """IsoFLOP parabolas; curves interpolate each size's L*(T) in log-log (no extrapolation)."""
    sizes = np.unique(n_C)
    flops = compute.flops_per_token(n_C * BILLION) * t_C * BILLION
    budgets = np.logspace(np.log10(flops.min()), np.log10(flops.max()), num_budgets)
    found_c, found_n = [], []
    for c in budgets:
        log_n, log_l = [], []
        for size in sizes:
            sel = n_C == size
            t_need = c / compute.flops_per_token(size * BILLION) / BILLION
            ts, ls = t_C[sel], loss_C[sel]
            if ts.min() <= t_need <= ts.max() and sel.sum() >= 2:
                order = np.argsort(ts)
                log_l.append(np.interp(np.log(t_need), np.log(ts[order]), np.log(ls[order])))
                log_n.append(np.log(size))
        if len(log_n) < 3:
            continue
        a2, a1, _ = np.polyfit(log_n, np.exp(log_l), 2)
        vertex = -a1 / (2 * a2) if a2 > 0 else np.nan
        if np.isfinite(vertex) and min(log_n) <= vertex <= max(log_n):
            found_c.append(c)
            found_n.append(np.exp(vertex) * BILLION)
    if len(found_c) < 3:
        return {"k": None, "a": None, "num_isoflops": len(found_c),
                "note": "fewer than 3 IsoFLOP curves with >= 3 sizes and an interior minimum"}
    k, a = allocation.fit_allocation(np.array(found_c), np.array(found_n))
    return {"k": float(k), "a": float(a), "num_isoflops": len(found_c),
            "n_opt_at_1e22_params": float(k * REFERENCE_FLOPS ** a)}


def fit_deepseek(flops_C, log_lr_C, log_batch_C) -> dict:
    """Compute-only laws; residual RMS (natural log) to compare with the (N, T) laws."""
    out = {}
    for name, target in (("eta_opt", log_lr_C), ("batch_opt", log_batch_C)):
        slope, intercept = np.polyfit(np.log(flops_C), target, 1)
        resid = target - (intercept + slope * np.log(flops_C))
        out[name] = {"k": float(np.exp(intercept)), "exponent": float(slope),
                     "rms_log_resid": float(np.sqrt(np.mean(resid ** 2)))}
    out["units"] = "C in training FLOPs, B in tokens"
    return out


def predict_deepseek(fit: dict, flops):
    return (fit["eta_opt"]["k"] * np.power(flops, fit["eta_opt"]["exponent"]),
            fit["batch_opt"]["k"] * np.power(flops, fit["batch_opt"]["exponent"]))
