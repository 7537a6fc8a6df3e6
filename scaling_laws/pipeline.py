"""From run records to a law file: fit, intervals, baselines, extrapolation check."""
from __future__ import annotations

import numpy as np

from scaling_laws import (allocation, baselines, extrapolation, fit, hyperopt, lawfile,
                          gates, loss_law, measured)
from scaling_laws.compute import UNITS, ComputeModel
from scaling_laws.records import RunSet


def _coefficients(core) -> tuple[dict, dict]:
    law, ci = {}, {}
    for key, arr, names in (("eta_opt", core["eta"], lawfile.HP_KEYS),
                            ("batch_opt", core["batch"], lawfile.HP_KEYS),
                            ("loss", core["loss"], loss_law.LOSS_KEYS),
                            ("n_opt", core["n_opt"], lawfile.N_OPT_KEYS)):
        law[key] = {k: float(arr[0, i]) for i, k in enumerate(names)}
        ci[key] = {k: fit.interval(arr[1:, i]) for i, k in enumerate(names)}
    return law, ci


def _cells_table(core) -> list[dict]:
    rows = []
    for j, (cell, surf) in enumerate(zip(core["cells"], core["surfaces"])):
        valid = bool(surf["valid"][0])
        status = "ok" if valid else ("not convex" if not surf["convex"][0] else
                                     "optimum outside grid" if not surf["inside"][0] else
                                     "not identifiable")
        row = {"params_nonembed": cell.params_nonembed, "train_tokens": cell.tokens,
               "num_runs": int(len(cell.run_index)), "num_in_surface": int(cell.in_window.sum()),
               "num_interpolated": cell.interpolated, "status": status, "surface": surf["form"],
               "best_run_loss": float(np.exp(cell.log_loss.min())),
               "num_runs_within_0.25pct_of_best": measured.near_optimal_set(cell)["num_runs"],
               # Measured runs within 0.25% of the best, not a fitted surface's level set.
               "near_optimal_region": measured.near_optimal_set(cell)}
        if valid:
            row.update({
                "lr_opt": float(np.exp(surf["log_lr"][0])),
                "lr_opt_ci95": fit.interval(np.exp(surf["log_lr"][1:])),
                "batch_tokens_opt": float(np.exp(surf["log_batch"][0])),
                "batch_tokens_opt_ci95": fit.interval(np.exp(surf["log_batch"][1:])),
                "loss_opt": float(np.exp(surf["log_loss"][0])),
                "loss_opt_ci95": fit.interval(np.exp(surf["log_loss"][1:])),
                "bootstrap_valid_fraction": float(surf["valid"][1:].mean())
                if len(surf["valid"]) > 1 else None})
        rows.append(row)
    return rows


def _predictions(law_core: dict) -> list[dict]:
    out = []
    for budget in lawfile.REFERENCE_BUDGETS_FLOPS:
        n, n_ci = lawfile.n_opt_params(law_core, budget)
        compute = ComputeModel.from_json(law_core["compute"])
        tokens = float(compute.tokens_for_budget(n, budget))
        out.append({"budget_flops": budget, "params_nonembed": n, "params_nonembed_ci95": n_ci,
                    "train_tokens": tokens, **lawfile.predict_point(law_core, n, tokens)})
    return out


def _diagnostics(runs: RunSet, core) -> dict:
    ok = core["stack"]["valid"][0]
    n_C, t_C = core["n_C"][ok], core["t_C"][ok]
    loss_C = np.exp(core["stack"]["log_loss"][0, ok])
    law = {k: core["loss"][0, i] for i, k in enumerate(loss_law.LOSS_KEYS)}
    pred = loss_law.predict_loss(law, n_C, t_C)
    diag = {"num_runs_used": runs.num_runs,
            "runs_excluded": {k: len(v) for k, v in runs.excluded.items()},
            "dropped_curve_points": runs.dropped_curve_points,
            "num_cells": len(core["cells"]), "num_cells_used": int(ok.sum()),
            "cells_skipped": [{"params_nonembed": n, "train_tokens": t, "reason": r}
                              for n, t, r in core["skipped"]],
            "loss_fit": {"mse": float(np.mean((pred - loss_C) ** 2)),
                         "rmse_rel": float(np.sqrt(np.mean((pred / loss_C - 1) ** 2))),
                         "huber_delta": loss_law.HUBER_DELTA, "num_points": int(ok.sum())},
            "bootstrap_failures": {
                key: int(np.sum(~np.all(np.isfinite(core[key][1:]), axis=1)))
                for key in ("eta", "batch", "loss", "n_opt")},
            "cells": _cells_table(core)}
    for key, name in (("eta", "log_lr"), ("batch", "log_batch")):
        resid = core["stack"][name][0, ok] - np.log(hyperopt.predict_hp(core[key][0], n_C, t_C))
        diag[f"{key}_law_rms_log_resid"] = float(np.sqrt(np.mean(resid ** 2)))
    return diag


def _baselines(runs, core, opts) -> dict:
    ok = core["stack"]["valid"][0]
    cells = [c for c, v in zip(core["cells"], ok) if v]
    n_C, t_C = core["n_C"][ok], core["t_C"][ok]
    loss_C = np.exp(core["stack"]["log_loss"][0, ok])
    setting = baselines.fixed_setting(runs, core["cells"], opts.fixed_lr, opts.fixed_batch_tokens)
    out = {"fixed_hp": baselines.fit_fixed_hp(runs, core["cells"], core["compute"],
                                              core["budgets"], setting),
           "kaplan": baselines.fit_kaplan(n_C, t_C, loss_C, core["compute"], core["budgets"]),
           "chinchilla3": baselines.fit_chinchilla3(cells, core["compute"], core["budgets"]),
           "chinchilla2": baselines.fit_chinchilla2(n_C, t_C, loss_C, core["compute"]),
           "deepseek": baselines.fit_deepseek(np.array([c.flops for c in cells]),
                                              core["stack"]["log_lr"][0, ok],
                                              core["stack"]["log_batch"][0, ok])}
    law = {k: core["loss"][0, i] for i, k in enumerate(loss_law.LOSS_KEYS)}
    n_ref = allocation.optimal_params(lambda n, t: loss_law.predict_loss(law, n, t),
                                          core["compute"], [baselines.REFERENCE_FLOPS])[0]
    out["optimal_hp"] = {"mse": float(np.mean((loss_law.predict_loss(law, n_C, t_C) - loss_C) ** 2)),
                         "num_points": int(ok.sum()), "k": float(core["n_opt"][0, 0]),
                         "a": float(core["n_opt"][0, 1]), "n_opt_at_1e22_params": float(n_ref)}
    return out


def fit_law(runs: RunSet, opts: fit.FitOptions | None = None, sources=(), extrapolate=True,
            return_core=False):
    """Everything ``law.json`` holds for these runs (and the raw fit, for plots)."""
    opts = opts or fit.FitOptions()
    core = fit.core_fit(runs, opts)
    coef, ci = _coefficients(core)
    samples = {"eta_opt": core["eta"][1:], "batch_opt": core["batch"][1:],
               "loss": core["loss"][1:], "n_opt": core["n_opt"][1:]}
    law = {"schema": lawfile.SCHEMA, "kind": "fitted", "name": "fit", **coef,
           "units": dict(UNITS), "ci95": ci, "compute": core["compute"].to_json(),
           "bootstrap_samples": samples}
    law["n_opt"]["fit_range_flops"] = [float(core["budgets"].min()), float(core["budgets"].max())]
    law["predictions"] = _predictions(law)
    law["diagnostics"] = _diagnostics(runs, core)
    law["baselines"] = _baselines(runs, core, opts)
    law["extrapolation"] = (extrapolation.leave_largest_out(runs, opts) if extrapolate
                            else {"skipped": "disabled"})
    law["provenance"] = lawfile.stamp({
        "sources": [str(s) for s in sources], "runs_used": runs.run_id.tolist(),
        "runs_excluded": runs.excluded, "num_resamples": opts.num_resamples, "seed": opts.seed,
        "resampling": ("runs with replacement within each model size" if opts.bootstrap == "runs"
                       else "wild: every run kept, its residuals' sign flipped per row"),
        "surface_window": opts.window, "surface": opts.surface,
        "bootstrap_windows": list(opts.bootstrap_windows),
        "bootstrap_surfaces": list(opts.bootstrap_surfaces), "bootstrap": opts.bootstrap,
        "compute": opts.compute,
        "t_slope": core["t_slope"], "t_slope_attenuation": core["t_slope_attenuation"],
        "cell_flops_range": [float(min(c.flops for c in core["cells"])),
                             float(max(c.flops for c in core["cells"]))],
        "sizes_params": sorted(
            {float(c.params_nonembed) for c in core["cells"]})})
    reasons = gates.judge(law)
    law["usable"], law["unusable_reasons"] = not reasons, reasons
    law["caveats"] = [f"Fitted on N = {min(core['n_C']):.3g}B..{max(core['n_C']):.3g}B and "
                      f"T = {min(core['t_C']):.3g}B..{max(core['t_C']):.3g}B tokens; "
                      "predictions outside that range are extrapolations."]
    return (law, core) if return_core else law
