"""Terminal report of a law file: coefficients with intervals, baselines, extrapolation."""
from __future__ import annotations

from scaling_laws import lawfile, loss_law
from scaling_laws.compute import BILLION


def _fmt(x, spec=".4g"):
    return "-" if x is None else format(x, spec)


def _ci(pair, spec=".4g"):
    return "-" if not pair or pair[0] is None else f"[{_fmt(pair[0], spec)}, {_fmt(pair[1], spec)}]"


def table(headers, rows) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(out)


def _coefficients(law) -> str:
    rows = []
    for key, names, form in (("eta_opt", lawfile.HP_KEYS, "alpha * T^beta * N^gamma"),
                             ("batch_opt", lawfile.HP_KEYS, "alpha * T^beta * N^gamma [tokens]"),
                             ("loss", loss_law.LOSS_KEYS, "(T_c/T)^alpha_T + (N_c/N)^alpha_N + L_inf"),
                             ("n_opt", lawfile.N_OPT_KEYS, "k * C^a [params, C in FLOPs]")):
        if not law.get(key):
            rows.append((key, "-", "-", "-", "not in this law"))
            continue
        ci = (law.get("ci95") or {}).get(key) or {}
        for i, name in enumerate(names):
            rows.append((key if i == 0 else "", name, _fmt(law[key][name]), _ci(ci.get(name)),
                         form if i == 0 else ""))
    return table(["law", "coef", "value", "95% CI", "form"], rows)


def _cells(law) -> str:
    rows = []
    for c in (law.get("diagnostics") or {}).get("cells", []):
        rows.append((f"{c['params_nonembed'] / BILLION:.4g}", f"{c['train_tokens'] / BILLION:.3g}",
                     c["num_runs"], c["status"], _fmt(c.get("lr_opt"), ".3g"),
                     _ci(c.get("lr_opt_ci95"), ".3g"), _fmt(c.get("batch_tokens_opt"), ".3g"),
                     _fmt(c.get("loss_opt"), ".5f"), _ci((c.get("near_optimal_region") or {})
                                                         .get("lr"), ".3g"),
                     _ci((c.get("near_optimal_region") or {}).get("batch_tokens"), ".3g"),
                     c["num_runs_within_0.25pct_of_best"]))
    return table(["N [B]", "T [B]", "runs", "status", "eta*", "eta* CI", "B* [tok]", "L*",
                  "eta within 0.25%", "B within 0.25%", "runs<=0.25%"], rows)


def _baselines(law) -> str:
    base = law.get("baselines") or {}
    rows = []
    for name, label in (("optimal_hp", "optimal HP (this law)"), ("fixed_hp", "fixed HP"),
                        ("kaplan", "Kaplan form"), ("chinchilla3", "Chinchilla 3 (argmin)"),
                        ("chinchilla2", "Chinchilla 2 (IsoFLOP)")):
        b = base.get(name)
        if not b:
            continue
        n_ref = b.get("n_opt_at_1e22_params")
        rows.append((label, _fmt(b.get("mse"), ".3g"), _fmt(b.get("a"), ".4f"),
                     "-" if n_ref is None else f"{n_ref / BILLION:.3g}B", b.get("note", "")))
    text = table(["method", "fit MSE", "N_opt exponent a", "N_opt(1e22)", "note"], rows)
    ds = base.get("deepseek")
    if ds:
        diag = law.get("diagnostics", {})
        text += ("\nDeepSeek compute-only laws: eta_opt = {:.3g} C^{:.4f}, B_opt = {:.3g} C^{:.4f}"
                 "\n  rms log residual on cell optima: eta {:.3f} (N,T law {:.3f}), "
                 "B {:.3f} (N,T law {:.3f})").format(
            ds["eta_opt"]["k"], ds["eta_opt"]["exponent"], ds["batch_opt"]["k"],
            ds["batch_opt"]["exponent"], ds["eta_opt"]["rms_log_resid"],
            diag.get("eta_law_rms_log_resid", float("nan")), ds["batch_opt"]["rms_log_resid"],
            diag.get("batch_law_rms_log_resid", float("nan")))
    return text


def _extrapolation(law) -> str:
    ext = law.get("extrapolation") or {}
    if "summary" not in ext:
        return f"skipped: {ext.get('skipped', 'not run')}"
    s = ext["summary"]
    rows = [(f"{c['train_tokens'] / BILLION:.3g}", f"{c['loss_observed']:.5f}",
             f"{c['loss_predicted']:.5f}", _ci(c["loss_predicted_ci95"], ".5f"),
             f"{c['loss_rel_error']:+.3%}", f"{c['lr_observed']:.3g}/{c['lr_predicted']:.3g}",
             f"{c['batch_tokens_observed']:.3g}/{c['batch_tokens_predicted']:.3g}",
             _fmt(c["loss_cost_of_predicted_hp"], ".2e")) for c in ext["cells"]]
    head = (f"held out N = {s['held_out_params_nonembed'] / BILLION:.4g}B, fitted on "
            + ", ".join(f"{n / BILLION:.3g}B" for n in s["fitted_sizes_params"])
            + f"\nloss error at the largest T: {s['loss_rel_error_at_largest_tokens']:+.3%}; "
            f"mean |loss error| {s['mean_abs_loss_rel_error']:.3%}; mean |log eta error| "
            f"{s['mean_abs_lr_log_error']:.3f}; mean |log B error| "
            f"{s['mean_abs_batch_log_error']:.3f}; loss cost of predicted HP on the measured "
            f"grid {_fmt(s['mean_loss_cost_of_predicted_hp'], '.2e')} (within 0.25% of the best "
            f"run in {_fmt(s['fraction_cells_predicted_hp_near_optimal'], '.0%')} of "
            f"{s.get('num_cells_cost_measured', '?')} cells judged)\n")
    body = table(["T [B]", "L* observed", "L predicted", "95% CI", "error", "eta obs/pred",
                  "B obs/pred", "measured cost of HP"], rows)
    base = "\n".join(f"  {k}: {v:.4g}" for k, v in (ext.get("baselines") or {}).items())
    return head + body + ("\nbaselines on the held-out size:\n" + base if base else "")


def _method(law) -> str:
    """One line: the cells' surface forms and where the laws' token exponents came from."""
    cells = (law.get("diagnostics") or {}).get("cells", [])
    forms: dict = {}
    for c in cells:
        if c.get("surface"):
            forms[c["surface"]] = forms.get(c["surface"], 0) + 1
    prov = law.get("provenance") or {}
    out = []
    if forms:
        out.append("cell surfaces: " + ", ".join(f"{k} x{v}" for k, v in sorted(forms.items())))
    if prov.get("t_slope"):
        slope = {"within_run": "within runs (loss change between token counts)",
                 "cells": "the cell optima"}.get(prov["t_slope"], prov["t_slope"])
        att = prov.get("t_slope_attenuation")
        out.append(f"token exponents from {slope}" + (
            f", bootstrap attenuation of the within-run slope {att:+.1%}" if att is not None
            else ""))
    return ("Method: " + "; ".join(out)) if out else ""


def format_law(law: dict) -> str:
    law = lawfile.load_law(law)
    parts = [f"Scaling law '{law.get('name', '?')}' ({law.get('kind', '?')})", "",
             "Units: " + "; ".join(f"{k}: {v}" for k, v in law["units"].items()), "",
             _coefficients(law)]
    method = _method(law)
    if method:
        parts += ["", method]
    if law.get("usable") is False:
        parts[1:1] = ["", "NOT USABLE: the fit judged this law broken; do not plan from it:"] + [
            f"  - {r}" for r in law.get("unusable_reasons") or []]
    diag = law.get("diagnostics") or {}
    if "loss_fit" in diag:
        lf = diag["loss_fit"]
        parts += ["", f"Runs used {diag['num_runs_used']}, excluded {diag['runs_excluded']}; "
                      f"cells used {diag['num_cells_used']}/{diag['num_cells']}; loss-law fit "
                      f"MSE {lf['mse']:.3g} (rel. RMSE {lf['rmse_rel']:.3%}, {lf['num_points']} "
                      f"points); bootstrap failures {diag['bootstrap_failures']}",
                  "", "Cell optima:", _cells(law)]
    if law.get("baselines"):
        parts += ["", "Baselines (same records):", _baselines(law)]
    if law.get("extrapolation"):
        parts += ["", "Extrapolation check (leave the largest size out):", _extrapolation(law)]
    if law.get("predictions"):
        rows = [(f"{p['budget_flops']:.3g}", f"{p['params_nonembed'] / BILLION:.3g}B",
                 _ci([v / BILLION for v in p["params_nonembed_ci95"]] if p.get(
                     "params_nonembed_ci95") else None, ".3g"),
                 f"{p['train_tokens'] / BILLION:.4g}B", f"{p['lr']:.3g}", f"{p['batch_tokens']:.3g}",
                 _fmt(p.get("loss"), ".4f"), _ci(p.get("loss_ci95"), ".4f"))
                for p in law["predictions"]]
        parts += ["", "Predictions:", table(["C [FLOPs]", "N_opt", "N CI [B]", "T", "eta",
                                             "B [tok]", "loss", "loss CI"], rows)]
    if law.get("caveats"):
        parts += ["", "Caveats:"] + [f"  - {c}" for c in law["caveats"]]
    return "\n".join(parts)
