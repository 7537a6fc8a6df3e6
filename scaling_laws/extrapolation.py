"""Validation by extrapolation: leave the largest model size out, fit, predict it.

For every (N, T) cell of the held-out size the check compares the law fitted on the
smaller sizes with what the held-out runs show: the loss under optimal hyperparameters
(the cell's fitted surface minimum), eta_opt and B_opt (the surface optimum), and the
*loss cost* of training at the predicted (eta, B). The cost is read off the held-out
size's measured grid (:mod:`scaling_laws.measured`), never off a fitted surface, which
would share the estimator's bias. The baselines are checked the same way where they
make a comparable prediction.
"""
from __future__ import annotations

import numpy as np

from scaling_laws import baselines, fit, hyperopt, loss_law, measured
from scaling_laws.compute import BILLION


def _held_out_cells(runs, largest, opts):
    keep = hyperopt.same_size(runs.params_nonembed, largest)
    cells, _ = hyperopt.build_cells(runs.subset(keep), opts.window, opts.min_tokens_ratio,
                                    form=opts.surface)
    out = []
    for cell in cells:
        cell.accounting = opts.compute
        surf = fit.fitted_surface(cell, np.ones((1, keep.sum())), opts.surface)
        if surf["valid"][0]:
            out.append((cell, surf))
    return out


def _cell_check(cell, surf, core) -> dict:
    n_b, t_b = cell.n_billion, cell.t_billion
    loss_R = fit.loss_fn_rows(core["loss"])(n_b, t_b)[:, 0, 0]
    eta_R = hyperopt.predict_hp(core["eta"], n_b, t_b)
    batch_R = hyperopt.predict_hp(core["batch"], n_b, t_b)
    observed = float(np.exp(surf["log_loss"][0]))
    cost, why = measured.cost_at(cell, np.log(eta_R[0]), np.log(batch_R[0]))
    lr_steps, batch_steps = measured.grid_steps_off(cell, np.log(eta_R[0]), np.log(batch_R[0]))
    best = int(np.argmin(cell.log_loss))
    out = {
        "params_nonembed": cell.params_nonembed, "train_tokens": cell.tokens,
        "loss_observed": observed, "loss_best_run": float(np.exp(cell.log_loss.min())),
        "loss_predicted": float(loss_R[0]), "loss_predicted_ci95": fit.interval(loss_R[1:]),
        "loss_rel_error": float(loss_R[0] / observed - 1),
        "lr_observed": float(np.exp(surf["log_lr"][0])), "lr_predicted": float(eta_R[0]),
        "lr_predicted_ci95": fit.interval(eta_R[1:]),
        "lr_log_error": float(np.log(eta_R[0]) - surf["log_lr"][0]),
        "batch_tokens_observed": float(np.exp(surf["log_batch"][0])),
        "batch_tokens_predicted": float(batch_R[0]),
        "batch_tokens_predicted_ci95": fit.interval(batch_R[1:]),
        "batch_log_error": float(np.log(batch_R[0]) - surf["log_batch"][0]),
        "lr_best_run": float(np.exp(cell.log_lr[best])),
        "batch_tokens_best_run": float(np.exp(cell.log_batch[best])),
        "lr_steps_off": lr_steps, "batch_steps_off": batch_steps,
        # Measured: the held-out grid interpolated at the predicted setting, over its best run.
        "loss_cost_of_predicted_hp": cost,
        "within_near_optimal_region": bool(cost <= measured.NEAR_OPTIMAL_REL) if not why
        else None,
    }
    if why:
        out["loss_cost_note"] = why
    return out


def _baseline_checks(runs_fit, core, held, runs_all) -> dict:
    cells = [c for c, s in held]
    n_h = np.array([c.n_billion for c in cells])
    t_h = np.array([c.t_billion for c in cells])
    observed = np.array([np.exp(s["log_loss"][0]) for c, s in held])
    ok = core["stack"]["valid"][0]
    n_C, t_C = core["n_C"][ok], core["t_C"][ok]
    loss_C = np.exp(core["stack"]["log_loss"][0, ok])
    kap = loss_law.fit_kaplan(n_C, t_C, loss_C)
    chin = baselines.fit_chinchilla3([c for c, v in zip(core["cells"], ok) if v],
                                     core["compute"], core["budgets"])["loss_law_form"]
    out = {"kaplan_loss_rel_error": float(np.mean(np.abs(
               loss_law.predict_kaplan(kap, n_h, t_h) / observed - 1))),
           "chinchilla3_argmin_loss_rel_error": float(np.mean(np.abs(
               loss_law.predict_loss(chin, n_h, t_h) / observed - 1)))}
    flops = np.array([c.flops for c in core["cells"]])[ok]
    ds = baselines.fit_deepseek(flops, core["stack"]["log_lr"][0, ok],
                                core["stack"]["log_batch"][0, ok])
    eta_ds, b_ds = baselines.predict_deepseek(ds, np.array([c.flops for c in cells]))
    out["deepseek_lr_abs_log_error"] = float(np.mean(np.abs(
        np.log(eta_ds) - np.array([s["log_lr"][0] for c, s in held]))))
    out["deepseek_batch_abs_log_error"] = float(np.mean(np.abs(
        np.log(b_ds) - np.array([s["log_batch"][0] for c, s in held]))))
    setting = baselines.fixed_setting(runs_fit, core["cells"])
    fixed = baselines.fit_fixed_hp(runs_fit, core["cells"], core["compute"], core["budgets"],
                                   setting)
    held_setting = baselines.fixed_setting(runs_all, cells, setting["lr"], setting["batch_tokens"])
    n_f, t_f, l_f = baselines._fixed_points(runs_all, cells, held_setting)
    if len(l_f):
        pred = loss_law.predict_loss(fixed["law"], n_f, t_f)
        out["fixed_hp_loss_rel_error_on_fixed_runs"] = float(np.mean(np.abs(pred / l_f - 1)))
        out["fixed_hp_loss_rel_error_vs_optimal"] = float(np.mean(np.abs(
            loss_law.predict_loss(fixed["law"], n_h, t_h) / observed - 1)))
    return out


def leave_largest_out(runs, opts: "fit.FitOptions") -> dict:
    """The extrapolation report; ``{"skipped": reason}`` when it cannot be run."""
    sizes = np.unique(hyperopt.size_labels(runs.params_nonembed))
    largest = runs.params_nonembed.max()
    fit_rows = ~hyperopt.same_size(runs.params_nonembed, largest)
    if len(sizes) < fit.MIN_MODEL_SIZES + 1:
        return {"skipped": f"needs >= {fit.MIN_MODEL_SIZES + 1} model sizes, have {len(sizes)}"}
    held = _held_out_cells(runs, largest, opts)
    if not held:
        return {"skipped": "no cell of the largest size has its optimum inside its grid"}
    runs_fit = runs.subset(fit_rows)
    try:
        core = fit.core_fit(runs_fit, opts)
    except ValueError as err:
        return {"skipped": f"fit without the largest size failed: {err}"}
    checks = [_cell_check(c, s, core) for c, s in held]
    last = max(checks, key=lambda r: r["train_tokens"])
    summary = {
        "held_out_params_nonembed": float(largest),
        "fitted_sizes_params": [float(s) for s in np.unique(core["n_C"]) * BILLION],
        "loss_rel_error_at_largest_tokens": last["loss_rel_error"],
        "mean_abs_loss_rel_error": float(np.mean([abs(r["loss_rel_error"]) for r in checks])),
        "mean_abs_lr_log_error": float(np.mean([abs(r["lr_log_error"]) for r in checks])),
        "mean_abs_batch_log_error": float(np.mean([abs(r["batch_log_error"]) for r in checks])),
        "mean_loss_cost_of_predicted_hp": _mean_finite(
            [r["loss_cost_of_predicted_hp"] for r in checks]),
        "fraction_cells_predicted_hp_near_optimal": _mean_finite(
            [r["within_near_optimal_region"] for r in checks]),
        "num_cells_cost_measured": int(sum(r["within_near_optimal_region"] is not None
                                           for r in checks)),
    }
    return {"summary": summary, "cells": checks,
            "baselines": _baseline_checks(runs_fit, core, held, runs)}


def _mean_finite(values) -> float | None:
    arr = np.array([v for v in values if v is not None], float)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else None
