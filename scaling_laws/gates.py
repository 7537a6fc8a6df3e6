"""Quality gates: the fit judges its own law before anyone plans from it.

:func:`judge` reads a fitted law (the ``law.json`` dict) and returns the reasons it is
not usable, each with what to change in the sweep. ``fit`` stores them as
``usable: false`` and ``unusable_reasons`` and exits 1; the planner refuses such a law
(:func:`require_usable`). The thresholds are deliberately loose: they catch laws that
are broken (an exponent pinned at its bound, a loss that does not fall with size,
intervals of orders of magnitude), not laws that are merely imprecise.
"""
from __future__ import annotations

import numpy as np

from scaling_laws import loss_law

MAX_FAILED_FRACTION = 0.5      # of bootstrap resamples, per law part
MIN_USED_CELL_FRACTION = 0.5   # cells whose optimum lies inside the grid
MIN_USED_CELLS = 6
MAX_INTERVAL_RATIO = 10.0      # high / low of a 95% interval on N_opt, eta or B
_BOUND_RTOL = 1e-3


def _at_bound(value: float, low: float, high: float) -> bool:
    return abs(value / low - 1) < _BOUND_RTOL or abs(value / high - 1) < _BOUND_RTOL


def _loss_law_reasons(law: dict) -> list[str]:
    loss = law.get("loss") or {}
    out = []
    for key in ("alpha_T", "alpha_N"):
        if key in loss and _at_bound(loss[key], *loss_law.EXPONENT_BOUNDS):
            out.append(f"loss-law exponent {key} = {loss[key]:.4g} sits at its bound "
                       f"{loss_law.EXPONENT_BOUNDS}: the data do not determine it; cover a "
                       "wider range of " + ("token counts" if key == "alpha_T" else
                                            "model sizes") + " or lower the noise per run")
    cells = [c for c in (law.get("diagnostics") or {}).get("cells", []) if c["status"] == "ok"]
    if "L_inf" in loss and cells:
        best = min(c["loss_opt"] for c in cells)
        if loss["L_inf"] < 1e-3 * best:
            out.append(f"irreducible loss L_inf = {loss['L_inf']:.3g} is ~0 (best optimum "
                       f"{best:.4g}): the loss does not level off within the sweep, so the "
                       "law's split between its terms is arbitrary; add larger sizes or more "
                       "tokens")
    out += _not_decreasing(cells)
    return out


def _not_decreasing(cells: list[dict]) -> list[str]:
    """Optimal loss must fall with size at a shared token count, and with tokens per size."""
    out = []
    by_t: dict[float, list] = {}
    for c in cells:
        by_t.setdefault(round(np.log(c["train_tokens"]), 2), []).append(c)
    shared = [v for v in by_t.values() if len({c["params_nonembed"] for c in v}) >= 2]
    if shared:
        row = max(shared, key=len)
        small = min(row, key=lambda c: c["params_nonembed"])
        large = max(row, key=lambda c: c["params_nonembed"])
        if large["loss_opt"] >= small["loss_opt"]:
            out.append(f"the optimal loss does not fall with model size (at T = "
                       f"{small['train_tokens']:.3g} tokens: {small['loss_opt']:.4g} at N = "
                       f"{small['params_nonembed']:.3g}, {large['loss_opt']:.4g} at N = "
                       f"{large['params_nonembed']:.3g}): train longer, use harder data, or "
                       "spread the sizes further apart")
    return out


def _bootstrap_reasons(law: dict) -> list[str]:
    failures = (law.get("diagnostics") or {}).get("bootstrap_failures") or {}
    total = (law.get("provenance") or {}).get("num_resamples") or 0
    out = []
    for key, count in failures.items():
        if total and count > MAX_FAILED_FRACTION * total:
            out.append(f"{count} of {total} bootstrap resamples failed for the {key} law: the "
                       "fit hangs on a few runs; add runs (more grid points per size) or sizes")
    return out


def _cell_reasons(law: dict) -> list[str]:
    diag = law.get("diagnostics") or {}
    used, total = diag.get("num_cells_used", 0), diag.get("num_cells", 0)
    if total and (used < MIN_USED_CELLS or used < MIN_USED_CELL_FRACTION * total):
        return [f"only {used} of {total} (N, T) cells have an optimum inside their grid: widen "
                "or re-centre the (eta, B) grids (the cell table shows which edge the best "
                "runs sit on)"]
    return []


def _interval_reasons(law: dict) -> list[str]:
    out = []
    for p in law.get("predictions") or []:
        for key, label in (("params_nonembed_ci95", "N_opt"), ("lr_ci95", "eta_opt"),
                           ("batch_tokens_ci95", "B_opt")):
            ci = p.get(key)
            if ci and ci[0] and ci[0] > 0 and ci[1] / ci[0] > MAX_INTERVAL_RATIO:
                out.append(f"the 95% interval of {label} at C = {p['budget_flops']:.3g} FLOPs "
                           f"spans {ci[1] / ci[0]:.0f}x ({ci[0]:.3g} .. {ci[1]:.3g}): add sizes "
                           "or runs per size, or lower the noise per run")
        if out:
            break  # the smallest budget that fails says it; more would repeat it
    return out


def judge(law: dict) -> list[str]:
    """Reasons this fitted law should not be planned from (empty: usable)."""
    reasons = []
    a = (law.get("n_opt") or {}).get("a")
    if a is not None and not 0 < a < 1:
        reasons.append(f"N_opt exponent a = {a:.4g} is outside (0, 1): the loss law does not "
                       "trade size against tokens; cover more sizes and token counts")
    reasons += _loss_law_reasons(law)
    reasons += _bootstrap_reasons(law)
    reasons += _cell_reasons(law)
    reasons += _interval_reasons(law)
    return reasons


def require_usable(law: dict) -> None:
    """ValueError naming the reasons when ``law`` is marked unusable."""
    if law.get("usable", True) is False:
        reasons = law.get("unusable_reasons") or ["no reason recorded"]
        raise ValueError(f"law {law.get('name', '?')!r} is marked unusable by the fit; refit "
                         "after changing the sweep:\n  - " + "\n  - ".join(reasons))
