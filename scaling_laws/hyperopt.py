"""Optimal hyperparameters per (N, T) cell and the power laws eta_opt(N,T), B_opt(N,T).

A *cell* is one model size N at one token count T. Its runs sample a grid in
(x = log eta, y = log B); the optimum is the minimum of a polynomial surface in (x, y)
fitted to the loss by least squares (:data:`SURFACE_TERMS`; the default, quartic in lr
where the grid allows it (:func:`resolve_form`), lets the valley be asymmetric), not the
argmin of the grid, so a noisy best run does not move the optimum a whole grid step. (The loss itself, not its log, is fitted: a
multiplicative penalty ``L*(1 + q(x, y))`` is then exactly polynomial when q is.)
Points whose loss exceeds the cell's best by more than ``window`` are left out of the
surface; the window widens until the surface is identifiable.

Everything here is vectorised over bootstrap resamples: ``weights`` is a
``(num_resamples, num_runs)`` array of how often each run was drawn (all ones for the
plain fit), and weighted least squares turns duplicates into weights.

The laws' token exponents come from :func:`within_run_slopes` (how each run's loss
changes between token counts) unless the fit asks for the cell optima's slope.

Legend for array suffixes: ``_R`` resamples, ``_C`` cells, ``_M`` members of one cell,
``_P`` surface parameters, ``_G`` points of the vertex search grid.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from scaling_laws.compute import to_billions, training_flops
from scaling_laws.records import RunSet

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
    accounting: str = "video"  # compute.ACCOUNTINGS: how ``flops`` counts
    form: str = "quadratic"    # the surface form it is fitted with (resolve_form)

    @property
    def n_billion(self) -> float:
        return float(to_billions(self.params_nonembed))

    @property
    def t_billion(self) -> float:
        return float(to_billions(self.tokens))

    @property
    def flops(self) -> float:
        return float(training_flops(self.params_nonembed, self.tokens_per_sample,
                                    self.hidden_size, self.tokens, self.accounting))


SIZE_RTOL = 1e-3  # parameter counts within 0.1% are one model size (rounding in records)


def same_size(params, size) -> np.ndarray:
    """Whether parameter counts ``params`` are the model size ``size`` (broadcasts)."""
    return np.abs(np.asarray(params, float) / size - 1) < SIZE_RTOL


def size_labels(params: np.ndarray) -> np.ndarray:
    """Label runs by model size, merging counts within :data:`SIZE_RTOL`."""
    order = np.argsort(params)
    labels = np.empty(len(params), int)
    label, last = -1, None
    for i in order:
        if last is None or params[i] > last * (1 + SIZE_RTOL):
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


_MAX_WINDOW_DOUBLINGS = 64


def window_mask(cell: "Cell", window: float, num_params: int = MIN_SETTINGS) -> np.ndarray:
    """The cell's runs a ``num_params`` surface uses at relative loss ``window``."""
    return _choose_window(cell.log_loss, cell.log_lr, cell.log_batch, window, num_params)


def _choose_window(log_loss, log_lr, log_batch, window: float,
                   num_params: int = MIN_SETTINGS) -> np.ndarray:
    """Runs within ``window`` of the best, widened until the surface keeps >= 2 residual
    degrees of freedom (P points would be interpolated exactly, noise and all)."""
    if not (np.isfinite(window) and window > 0):
        raise ValueError(f"window must be a finite number > 0, got {window}")
    best = log_loss.min()
    w = window
    for _ in range(_MAX_WINDOW_DOUBLINGS):
        keep = log_loss <= best + np.log1p(w)
        enough = keep.sum() >= num_params + 2 or keep.all()
        if (_identifiable(log_lr[keep], log_batch[keep]) and enough) or keep.all():
            return keep
        w *= 2
    return np.ones_like(keep)  # a window 2^64 times the loss: every run (bounded loop)


def resolve_form(form: str, num_settings: int, num_lr_levels: int | None = None) -> str:
    """``auto``: the richest surface the cell's grid supports with two residual degrees
    of freedom: the quartic (13 coefficients) where it has >= 15 (eta, B) settings and
    >= 5 lr values, else the cubic (>= 12 settings: a 4 x 3 grid), else the quadratic
    (a 3 x 3 grid has 9 settings, fewer than the cubic's 10 coefficients)."""
    if form != "auto":
        return form
    quartic_levels = num_lr_levels is None or num_lr_levels >= 5
    if num_settings >= len(SURFACE_TERMS["quartic"]) + 2 and quartic_levels:
        return "quartic"
    return "cubic" if num_settings >= len(SURFACE_TERMS["cubic"]) + 2 else "quadratic"


def build_cells(runs: RunSet, window: float = 0.20, min_tokens_ratio: float = 1.25,
                num_params: int = MIN_SETTINGS, form: str | None = None):
    """Group loss points into (N, T) cells. Returns ``(cells, skipped)``.

    Token targets per size are the distinct token counts of its points (3 significant
    figures), thinned from the top so neighbours differ by ``min_tokens_ratio``; a run
    contributes at a target by an exact point or by interpolating its curve (never
    extrapolating). ``skipped`` lists (N, T, reason) for targets with too few settings.
    ``form`` (a surface form or ``auto``) sets each cell's surface and with it the
    ``num_params`` its window must leave identifiable.
    """
    size_label = size_labels(runs.params_nonembed)
    cells, skipped = [], []
    for label in np.unique(size_label):
        members = np.flatnonzero(size_label == label)
        pts = np.isin(runs.point_run, members)
        candidates = np.unique(np.float64(["%.3g" % t for t in runs.point_tokens[pts]]))
        kept_targets = []
        for target in candidates[::-1]:
            if kept_targets and kept_targets[-1] / target < min_tokens_ratio:
                continue
            cell, reason = _make_cell(runs, members, target, window, num_params, form)
            if cell is None:
                skipped.append((float(np.median(runs.params_nonembed[members])), target, reason))
                continue
            kept_targets.append(target)
            cells.append(cell)
    return cells, skipped


def _make_cell(runs: RunSet, members: np.ndarray, target: float, window: float,
               num_params: int, form: str | None = None):
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
    resolved = "quadratic"
    if form is not None:
        settings = len({(a, b) for a, b in zip(log_lr.round(6), log_batch.round(6))})
        resolved = resolve_form(form, settings, len(np.unique(log_lr.round(6))))
        num_params = len(SURFACE_TERMS[resolved])
    keep = _choose_window(log_loss, log_lr, log_batch, window, num_params)
    cell = Cell(float(np.median(runs.params_nonembed[rows])), float(target),
                float(np.median(runs.hidden_size[rows])),
                float(np.median(runs.tokens_per_sample[rows])), rows, log_lr, log_batch,
                log_loss, keep, interpolated, form=resolved)
    return cell, ""


def _level_count(weights_RM: np.ndarray, values_M: np.ndarray) -> np.ndarray:
    _, inverse = np.unique(values_M.round(6), return_inverse=True)
    onehot = np.eye(inverse.max() + 1)[inverse]
    return ((weights_RM @ onehot) > 0).sum(axis=1)


SURFACE_TERMS = {
    # Columns of the design in (dx, dy), the centred log eta and log B.
    "quadratic": ("1", "x", "y", "xx", "xy", "yy"),
    # Every term of degree <= 3: lets the valley be steeper on one side (a high-lr wall)
    # and the lr valley bend with the batch, which a quadratic turns into a vertex bias.
    "cubic": ("1", "x", "y", "xx", "xy", "yy", "xxx", "yyy", "xxy", "xyy"),
    # The cubic plus the degree-4 terms with at least two lr factors: a high-lr wall that
    # rises faster than a cubic, also where the lr valley moves with the batch (xxxy,
    # xxyy). Stays cubic in B: a B grid has ~5 levels, which a quartic would interpolate.
    "quartic": ("1", "x", "y", "xx", "xy", "yy", "xxx", "yyy", "xxy", "xyy", "xxxx",
                "xxxy", "xxyy"),
    # No surface: the mean (log eta, log B) of the runs within 0.25% of the best run, as
    # DeepSeek LLM and Step Law take it; compared in docs/scaling_laws.md.
    "near_set": ("1",),
}
NEAR_SET_REL = 0.0025
_VERTEX_GRID = (61, 41)  # (eta, B) points of the vertex search in each cell's box


def _monomial(term: str, dx, dy, d_x: int = 0, d_y: int = 0):
    """``d^(d_x + d_y) / dx^d_x dy^d_y`` of the monomial ``term`` ("1", "x", "xxy", ...)."""
    i, j = term.count("x"), term.count("y")
    if d_x > i or d_y > j:
        return np.zeros_like(dx)
    factor = float(np.prod(np.arange(i - d_x + 1, i + 1)) * np.prod(np.arange(j - d_y + 1, j + 1)))
    return factor * dx ** (i - d_x) * dy ** (j - d_y)


def _design(dx, dy, form: str, d_x: int = 0, d_y: int = 0) -> np.ndarray:
    """(..., P) design columns of ``form`` at ``dx``, ``dy`` (any matching shapes), or
    their partial derivatives of order (``d_x``, ``d_y``)."""
    dx, dy = np.broadcast_arrays(np.asarray(dx, float), np.asarray(dy, float))
    return np.stack([_monomial(t, dx, dy, d_x, d_y) for t in SURFACE_TERMS[form]], axis=-1)


def num_surface_params(form: str) -> int:
    """Coefficients of a surface form; ``auto`` counts as its smaller choice."""
    return len(SURFACE_TERMS["quadratic" if form == "auto" else form])


def _grad_hess(coef_RP, form: str, px, py):
    """Gradient (R,2) and Hessian (R,2,2) of the surface at (px, py) per row."""
    at = lambda d_x, d_y: np.einsum("rp,rp->r", coef_RP, _design(px, py, form, d_x, d_y))  # noqa: E731
    hxx, hxy, hyy = at(2, 0), at(1, 1), at(0, 2)
    hess = np.stack([np.stack([hxx, hxy], -1), np.stack([hxy, hyy], -1)], -2)
    return np.stack([at(1, 0), at(0, 1)], -1), hess


def _vertex(coef_RP, form: str, box):
    """Minimum of each row's surface in the box ``(x_lo, x_hi, y_lo, y_hi)``.

    Quadratic: the closed-form vertex. Cubic: the argmin over a grid of the box, then
    Newton steps. Returns (vertex (R,2), hessian there (R,2,2), convex (R,), inside (R,)).
    """
    x_lo, x_hi, y_lo, y_hi = box
    if form == "quadratic":
        grad, hess = _grad_hess(coef_RP, form, 0.0 * coef_RP[:, 0], 0.0 * coef_RP[:, 0])
        det = hess[:, 0, 0] * hess[:, 1, 1] - hess[:, 0, 1] ** 2
        convex = (det > 0) & (hess[:, 0, 0] > 0)
        safe = np.where(convex[:, None, None], hess, np.eye(2))
        vertex = -np.linalg.solve(safe, grad[..., None])[..., 0]
    else:
        gx, gy = np.meshgrid(np.linspace(x_lo, x_hi, _VERTEX_GRID[0]),
                             np.linspace(y_lo, y_hi, _VERTEX_GRID[1]))
        values_RG = coef_RP @ _design(gx.ravel(), gy.ravel(), form).T
        best = np.argmin(values_RG, axis=1)
        vertex = np.stack([gx.ravel()[best], gy.ravel()[best]], 1)
        for _ in range(4):
            grad, hess = _grad_hess(coef_RP, form, vertex[:, 0], vertex[:, 1])
            det = hess[:, 0, 0] * hess[:, 1, 1] - hess[:, 0, 1] ** 2
            ok = (det > 0) & (hess[:, 0, 0] > 0)
            step = -np.linalg.solve(np.where(ok[:, None, None], hess, np.eye(2)),
                                    grad[..., None])[..., 0]
            vertex = vertex + np.where(ok[:, None], step, 0.0)
        _, hess = _grad_hess(coef_RP, form, vertex[:, 0], vertex[:, 1])
        det = hess[:, 0, 0] * hess[:, 1, 1] - hess[:, 0, 1] ** 2
        convex = (det > 0) & (hess[:, 0, 0] > 0)
    inside = ((vertex[:, 0] >= x_lo) & (vertex[:, 0] <= x_hi)
              & (vertex[:, 1] >= y_lo) & (vertex[:, 1] <= y_hi))
    return vertex, hess, convex, inside


def fit_surface(cell: Cell, weights_R_runs: np.ndarray, form: str = "quadratic",
                in_window: np.ndarray | None = None, loss_RM: np.ndarray | None = None) -> dict:
    """Weighted least-squares surface of the loss in (log eta, log B) for every resample.

    ``form`` picks the columns (:data:`SURFACE_TERMS`); ``in_window`` the runs used
    (default ``cell.in_window``). Returns arrays over resamples: ``log_lr``,
    ``log_batch`` (the minimum's location), ``log_loss`` (surface minimum), ``hessian``
    (R,2,2) there, ``valid`` (identifiable, convex, minimum inside the sampled box).
    Invalid resamples hold NaN. ``loss_RM`` (R, the cell's runs) gives every row its own
    losses (the wild bootstrap); by default every row sees the cell's own.
    """
    if form == "auto":
        form = cell.form
    if form == "near_set":
        return _near_set_optimum(cell, weights_R_runs)
    m = cell.in_window if in_window is None else in_window
    x, y, z = cell.log_lr[m], cell.log_batch[m], np.exp(cell.log_loss[m])
    x0, y0 = x.mean(), y.mean()
    dx, dy = x - x0, y - y0
    design_MP = _design(dx, dy, form)
    num_params = design_MP.shape[1]
    w_RM = weights_R_runs[:, cell.run_index[m]]
    settings = np.unique(np.stack([x, y], 1).round(6), axis=0, return_inverse=True)[1].ravel()
    ok_R = ((_level_count(w_RM, x) >= MIN_LEVELS) & (_level_count(w_RM, y) >= MIN_LEVELS)
            & (_level_count(w_RM, settings.astype(float)) >= num_params))
    gram_RPP = np.einsum("rm,mi,mj->rij", w_RM, design_MP, design_MP)
    if loss_RM is None:
        rhs_RP = np.einsum("rm,mi,m->ri", w_RM, design_MP, z)
    else:
        rhs_RP = np.einsum("rm,mi,rm->ri", w_RM, design_MP, loss_RM[:, m])
    # Enough levels is necessary, not sufficient (settings can still be collinear).
    eig_RP = np.linalg.eigvalsh(gram_RPP)
    ok_R &= eig_RP[:, 0] > (1e-9 if form == "quadratic" else 1e-12) * np.maximum(
        eig_RP[:, -1], 1e-300)
    gram_RPP[~ok_R] = np.eye(num_params)
    coef_RP = np.linalg.solve(gram_RPP, rhs_RP[..., None])[..., 0]
    vertex_R2, hess_R22, convex_R, inside_R = _vertex(
        coef_RP, form, (dx.min(), dx.max(), dy.min(), dy.max()))
    valid_R = ok_R & convex_R & inside_R
    min_R = np.einsum("rp,rp->r", coef_RP, _design(vertex_R2[:, 0], vertex_R2[:, 1], form))
    valid_R &= min_R > 0
    nan = np.where(valid_R, 0.0, np.nan)
    run_log_loss = None if loss_RM is None else np.log(loss_RM)
    return {"log_lr": vertex_R2[:, 0] + x0 + nan, "log_batch": vertex_R2[:, 1] + y0 + nan,
            "run_log_loss": run_log_loss,
            "log_loss": np.log(np.where(valid_R, min_R, 1.0)) + nan, "hessian": hess_R22,
            "valid": valid_R, "convex": convex_R, "inside": inside_R, "form": form,
            "num_params": num_params, "num_in_surface": int(m.sum()),
            "coef": coef_RP, "centre": (float(x0), float(y0))}


def _near_set_optimum(cell: Cell, weights_R_runs: np.ndarray) -> dict:
    """The near-optimal-set estimator, in :func:`fit_surface`'s return format."""
    w_RM = weights_R_runs[:, cell.run_index]
    drawn_RM = w_RM > 0
    best_R = np.where(drawn_RM, cell.log_loss, np.inf).min(axis=1)
    near_RM = drawn_RM & (cell.log_loss <= best_R[:, None] + np.log1p(NEAR_SET_REL))
    wn_RM = w_RM * near_RM
    total_R = wn_RM.sum(axis=1)
    valid_R = total_R > 0
    mean = lambda v: (wn_RM @ v) / np.where(valid_R, total_R, 1.0)  # noqa: E731
    nan = np.where(valid_R, 0.0, np.nan)
    return {"log_lr": mean(cell.log_lr) + nan, "log_batch": mean(cell.log_batch) + nan,
            "log_loss": best_R + nan, "hessian": np.tile(np.eye(2), (len(w_RM), 1, 1)),
            "valid": valid_R, "convex": valid_R, "inside": valid_R, "form": "near_set",
            "num_params": 1, "num_in_surface": int(len(cell.run_index))}


def predict_hp(law, n_billion, t_billion):
    """``alpha * T^beta * N^gamma`` (N, T in billions): the one evaluation of an HP law.

    ``law`` is a dict ``{alpha, beta, gamma}`` (scalars or arrays) or an array whose
    last axis is (alpha, beta, gamma), e.g. bootstrap rows (R, 3).
    """
    if isinstance(law, dict):
        alpha, beta, gamma = (np.asarray(law[k], float) for k in ("alpha", "beta", "gamma"))
    else:
        alpha, beta, gamma = np.moveaxis(np.asarray(law, float), -1, 0)
    return alpha * np.power(t_billion, beta) * np.power(n_billion, gamma)


def fit_power_law(log_target_RC: np.ndarray, t_billion_C: np.ndarray, n_billion_C: np.ndarray,
                  beta_R: np.ndarray | None = None):
    """Least squares of ``log y = log alpha + beta log T + gamma log N`` per resample.

    With ``beta_R`` (the token exponent per row, e.g. from :func:`within_run_slopes`)
    only ``alpha`` and ``gamma`` are fitted, to ``log y - beta log T``. NaN targets
    (invalid cells) get zero weight. Returns (alpha_R, beta_R, gamma_R); resamples with
    fewer than 3 model sizes (or, fitting beta, 2 token counts) among valid cells are NaN.
    """
    log_t_C, log_n_C = np.log(t_billion_C), np.log(n_billion_C)
    valid_RC = np.isfinite(log_target_RC)
    if beta_R is None:
        design_CP = np.stack([np.ones_like(log_t_C), log_t_C, log_n_C], 1)
        target_RC = log_target_RC
    else:
        design_CP = np.stack([np.ones_like(log_t_C), log_n_C], 1)
        target_RC = log_target_RC - beta_R[:, None] * log_t_C
        valid_RC &= np.isfinite(beta_R)[:, None]
    w_RC = valid_RC.astype(float)
    target_RC = np.where(valid_RC, target_RC, 0.0)
    n_sizes_R = _level_count(w_RC, log_n_C)
    ok_R = n_sizes_R >= 3
    if beta_R is None:
        ok_R &= _level_count(w_RC, log_t_C) >= 2
    num_p = design_CP.shape[1]
    gram_RPP = np.einsum("rc,ci,cj->rij", w_RC, design_CP, design_CP)
    gram_RPP[~ok_R] = np.eye(num_p)
    rhs_RP = np.einsum("rc,ci,rc->ri", w_RC, design_CP, target_RC)
    coef_RP = np.linalg.solve(gram_RPP, rhs_RP[..., None])[..., 0]
    coef_RP[~ok_R] = np.nan
    if beta_R is None:
        return np.exp(coef_RP[:, 0]), coef_RP[:, 1], coef_RP[:, 2]
    return np.exp(coef_RP[:, 0]), np.where(ok_R, beta_R, np.nan), coef_RP[:, 1]


WITHIN_RUN_WINDOW = 0.10  # runs within 10% of the best loss in both cells of a pair
MIN_PAIR_RUNS = 4


def _log_gradient(surface: dict, cell: Cell, members: np.ndarray) -> np.ndarray:
    """(R, M, 2) gradient of the log of each row's fitted surface at the runs ``members``
    (indices into the cell's runs) in (log eta, log B)."""
    x0, y0 = surface["centre"]
    dx, dy = cell.log_lr[members] - x0, cell.log_batch[members] - y0
    coef_RP = surface["coef"]
    value_RM = coef_RP @ _design(dx, dy, surface["form"]).T
    gx_RM = coef_RP @ _design(dx, dy, surface["form"], 1, 0).T
    gy_RM = coef_RP @ _design(dx, dy, surface["form"], 0, 1).T
    with np.errstate(divide="ignore", invalid="ignore"):
        grad_RM2 = np.stack([gx_RM, gy_RM], -1) / value_RM[..., None]
    # A surface that is not positive at a run (a resample's wild fit) has no log there.
    return np.where((value_RM > 0)[..., None], grad_RM2, np.nan)


def within_run_slopes(cells: list, surfaces: list, weights_R_runs: np.ndarray | None = None,
                      window: float = WITHIN_RUN_WINDOW) -> np.ndarray | None:
    """Token exponents of eta_opt and B_opt from how each run's loss changes with T.

    The surface of a size keeps its shape over the sweep's token range and moves: with
    ``tau = log T``, ``log L(x, y, tau) = l(tau) + s(x - b_x tau, y - b_y tau)``, so
    between two token counts of the same run
    ``d log L = d l - grad s(x, y) . (b_x, b_y) d tau``. The run's own noise (its seed,
    shared by its whole curve) cancels in ``d log L``; ``grad s`` is the mean of the two
    cells' fitted surfaces' log-gradient at the run. One least-squares fit over every
    pair of neighbouring cells of every size (a free ``d l`` per pair) gives
    ``(b_x, b_y)``, the laws' beta for eta and B. Only runs within ``window`` of both
    cells' best loss enter, where the polynomial surfaces follow the valley.

    ``weights_R_runs`` (R, num_runs) weight the runs per row (default: every run once,
    in as many rows as the surfaces have). Returns (R, 2), rows whose pairs do not determine
    the slopes NaN, or None when no size has two cells with a surface.
    """
    pairs = []
    by_size: dict = {}
    for cell, surface in zip(cells, surfaces):
        if "coef" in surface:
            by_size.setdefault(round(cell.n_billion, 9), []).append((cell.t_billion, cell, surface))
    for group in by_size.values():
        group.sort(key=lambda item: item[0])
        for (t1, c1, s1), (t2, c2, s2) in zip(group[:-1], group[1:]):
            common, i1, i2 = np.intersect1d(c1.run_index, c2.run_index, return_indices=True)
            near = ((c1.log_loss[i1] <= c1.log_loss.min() + np.log1p(window))
                    & (c2.log_loss[i2] <= c2.log_loss.min() + np.log1p(window)))
            if near.sum() < MIN_PAIR_RUNS:
                continue
            i1, i2, common = i1[near], i2[near], common[near]
            valid_R = s1.get("coef_valid", s1["valid"]) & s2.get("coef_valid", s2["valid"])
            grad_RM2 = 0.5 * (_log_gradient(s1, c1, i1) + _log_gradient(s2, c2, i2))
            if s1.get("run_log_loss") is None or s2.get("run_log_loss") is None:
                d_RM = (c2.log_loss[i2] - c1.log_loss[i1])[None, :]
            else:  # the wild bootstrap's rows carry their own losses
                d_RM = s2["run_log_loss"][:, i2] - s1["run_log_loss"][:, i1]
            pairs.append((common, d_RM, -grad_RM2 * np.log(t2 / t1), valid_R))
    if not pairs:
        return None
    num_rows = len(pairs[0][3])
    gram_R22, rhs_R2 = np.zeros((num_rows, 2, 2)), np.zeros((num_rows, 2))
    for common, d_RM, g_RM2, valid_R in pairs:
        if weights_R_runs is None:
            w_RM = np.ones((num_rows, len(common)))
        else:
            w_RM = weights_R_runs[:, common]
        finite_RM = np.isfinite(g_RM2).all(-1)
        w_RM = w_RM * valid_R[:, None] * finite_RM
        g_RM2 = np.where(finite_RM[..., None], g_RM2, 0.0)
        total_R = np.maximum(w_RM.sum(1), 1e-300)
        # The pair's free d l: centre d and the gradients on their weighted means.
        g_c = g_RM2 - (np.einsum("rm,rmk->rk", w_RM, g_RM2) / total_R[:, None])[:, None, :]
        d_RM = np.broadcast_to(d_RM, w_RM.shape)
        d_c = d_RM - (np.einsum("rm,rm->r", w_RM, d_RM) / total_R)[:, None]
        gram_R22 += np.einsum("rm,rmi,rmj->rij", w_RM, g_c, g_c)
        rhs_R2 += np.einsum("rm,rmi,rm->ri", w_RM, g_c, d_c)
    eig_R2 = np.linalg.eigvalsh(gram_R22)
    ok_R = eig_R2[:, 0] > 1e-12 * np.maximum(eig_R2[:, -1], 1e-300)
    gram_R22[~ok_R] = np.eye(2)
    slopes_R2 = np.linalg.solve(gram_R22, rhs_R2[..., None])[..., 0]
    slopes_R2[~ok_R] = np.nan
    if not ok_R[0]:
        return None
    return slopes_R2
