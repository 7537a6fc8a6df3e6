"""The oracle's Cramer-Rao bound on the planted sweeps (scaling_laws.bound): its algebra
against closed forms, and the bound against the spread of the oracle's own fits."""
import math

import numpy as np
import pytest
from scipy import integrate, stats

from scaling_laws import bound
from scaling_laws.synthetic import PlantedSweep


def test_covariance_bound_of_a_shared_location_matches_the_closed_form():
    """One mean ``mu`` seen by R runs of K points with covariance s_r^2 11' + s_p^2 I:
    the best variance is (s_r^2 + s_p^2 / K) / R."""
    num_runs, num_t, s_run, s_point = 30, 6, 3e-3, 3e-4
    jac = np.ones((num_runs, num_t, 1))
    cov = s_run ** 2 * np.ones((num_t, num_t)) + s_point ** 2 * np.eye(num_t)
    expected = (s_run ** 2 + s_point ** 2 / num_t) / num_runs
    assert bound.covariance_bound(jac, cov)[0, 0] == pytest.approx(expected, rel=1e-9)


def test_student_t_factor_matches_the_fisher_information_integral():
    """Fisher information of a unit-variance t location, integrated numerically."""
    for df in (3.0, 4.0, 10.0):
        scale = math.sqrt((df - 2) / df)
        dist = stats.t(df, scale=scale)
        # d/dmu log f(x - mu) = (df + 1) x / (df scale^2 + x^2)
        info = integrate.quad(lambda x: ((df + 1) * x / (df * scale ** 2 + x ** 2)) ** 2
                              * dist.pdf(x), -np.inf, np.inf)[0]
        assert bound.student_t_information_factor(df) == pytest.approx(info, rel=1e-6)
    assert bound.student_t_information_factor(None) == 1.0
    with pytest.raises(ValueError, match="more than 2 degrees"):
        bound.student_t_information_factor(2.0)


def test_jacobian_of_eta_level_matches_the_linex_derivative():
    """d log L / d log alpha_eta = -k_lr linex'(u) / shape (u falls by one per unit)."""
    sweep = PlantedSweep.realistic()
    jac, names = bound.jacobians(sweep, shape_scope="size")
    size_index, n_b, lr, batch, t_b, _ = bound._design(sweep)
    a = sweep.lr_asymmetry
    for run in (0, len(lr) // 2, len(lr) - 1):
        u, v = sweep._uv(n_b[run], t_b, lr[run], batch[run])
        shape = sweep.loss(n_b[run], t_b, lr[run], batch[run]) / (
            sweep.loss(n_b[run], t_b, sweep.eta_opt(n_b[run], t_b), sweep.batch_opt(n_b[run], t_b)))
        d_linex = 2 * (a * np.expm1(a * u)) / a ** 2
        expected = -sweep.k_lr * d_linex / shape
        assert jac[run, :, names.index("eta.alpha")] == pytest.approx(expected, rel=1e-6)
    # Every run sees exactly one free level per token count: its size's.
    levels = jac[..., [i for i, n in enumerate(names) if n.startswith("level")]]
    assert np.all(levels.sum(axis=-1) == 1.0)
    assert names.count("k_lr[0]") == 1 and len(np.unique(size_index)) == 5
    # A cell's shape touches only that cell's token count.
    jac_cell, names_cell = bound.jacobians(sweep, shape_scope="cell")
    column = jac_cell[..., names_cell.index("k_lr[2,3]")]
    assert np.all(column[size_index != 2] == 0) and np.all(column[:, [0, 1, 2, 4, 5]] == 0)
    assert np.any(column[size_index == 2, 3] != 0)
    with pytest.raises(ValueError, match="shape_scope"):
        bound.jacobians(sweep, shape_scope="run")


@pytest.mark.parametrize("scope, num_sweeps, low, high", [("shared", 40, 0.7, 1.4),
                                                         ("size", 20, 0.6, 1.6)])
def test_oracle_fits_spread_as_the_bound_says(scope, num_sweeps, low, high):
    """The oracle's own fits on Gaussian-noise realistic sweeps: spread within 0.7-1.4x of
    the bound over 40 sweeps (a 40-sample sd is good to about 11%), 0.6-1.6x over 20 with
    the shape per size; no bias beyond 3 standard errors. 300 sweeps gave 0.94-1.02 of
    it (shared) and 0.94-1.04 (per size): `python -m scaling_laws.bound --check-sweeps 300`."""
    sweep = PlantedSweep.realistic(noise_df=None)
    expected = bound.exponent_bounds(sweep, shape_scope=scope)
    laws = {"eta": sweep.eta_law, "batch": sweep.batch_law}
    errors = {label: [] for label in expected}
    for seed in range(num_sweeps):
        fitted = bound.oracle_fit(sweep, sweep.records(seed=seed), shape_scope=scope)
        for label in expected:
            key, name = label.split(".")
            errors[label].append(fitted[label] / laws[key][name] - 1)
    for label, sd in expected.items():
        e = np.array(errors[label])
        assert low * sd < e.std() < high * sd, (label, e.std(), sd)
        assert abs(e.mean()) < 3 * sd / math.sqrt(len(e)), (label, e.mean(), sd)


def test_bound_scales_with_the_noise_and_the_design_limits_eta_beta():
    """Halving both noises halves every bound; at the realistic design's 0.3% noise even
    the oracle's eta T exponent spreads by about 10% per sweep, its B exponents by < 1%."""
    base = bound.exponent_bounds(PlantedSweep.realistic(), shape_scope="size")
    half = bound.exponent_bounds(PlantedSweep.realistic(noise_run=1.5e-3, noise_point=1.5e-4),
                                 shape_scope="size")
    for label in base:
        assert half[label] == pytest.approx(base[label] / 2, rel=1e-6)
    assert 0.08 < base["eta.beta"] < 0.13 and base["batch.beta"] < 0.01
    assert bound.chance_within(0.03, base["eta.beta"], 40) < 0.9
    # Freer shapes can only loosen the bound.
    cell = bound.exponent_bounds(PlantedSweep.realistic(), shape_scope="cell")
    shared = bound.exponent_bounds(PlantedSweep.realistic(), shape_scope="shared")
    for label in base:
        assert shared[label] <= base[label] * (1 + 1e-9) <= cell[label] * (1 + 1e-9)


def test_bound_command_reports_and_refuses_bad_flags(capsys):
    assert bound.main(["--sweeps", "40"]) == 0
    out = capsys.readouterr().out
    assert "eta.beta" in out and "free per size" in out and "free per (size, T) cell" in out
    assert bound.main(["--check-sweeps", "2"]) == 0
    assert "oracle fits, shape size, 2 Gaussian-noise sweeps" in capsys.readouterr().out
    for argv, flag in ((["--sweeps", "0"], "--sweeps"), (["--noise", "-1"], "--noise"),
                       (["--noise", "nan"], "--noise"), (["--design", "paper"], "--design"),
                       (["--bar", "nan"], "--bar"), (["--bar", "0"], "--bar"),
                       (["--check-sweeps", "-1"], "--check-sweeps")):
        with pytest.raises(SystemExit) as exit_info:
            bound.main(argv)
        assert exit_info.value.code == 2
        assert flag in capsys.readouterr().err


def test_freeing_each_sizes_optimum_only_loosens_the_bound():
    """A size's optimum free of the power law can only be placed less precisely than the
    law's level at that size (more free parameters, larger bound), and halving the
    noise halves it."""
    sweep = PlantedSweep.realistic()
    free = bound.level_bounds(sweep)
    jac, names = bound.jacobians(sweep, shape_scope="size")
    num_t = jac.shape[1]
    cov = sweep.noise_run ** 2 * np.ones((num_t, num_t)) + sweep.noise_point ** 2 * np.eye(num_t)
    tied_cov = bound.covariance_bound(jac, cov)
    _, n_b, _, _, t_b, _ = bound._design(sweep)
    log_t_mid = float(np.mean(np.log(t_b)))
    for key in ("eta", "batch"):
        idx = [names.index(f"{key}.{p}") for p in ("alpha", "beta", "gamma")]
        for size, log_n in enumerate(np.log(np.unique(n_b))):
            grad = np.array([1.0, log_t_mid, log_n])
            tied_sd = math.sqrt(grad @ tied_cov[np.ix_(idx, idx)] @ grad)
            assert free[key][size] > tied_sd
    half = bound.level_bounds(PlantedSweep.realistic(noise_run=1.5e-3, noise_point=1.5e-4))
    assert np.allclose(half["eta"], np.array(free["eta"]) / 2, rtol=1e-6)


def test_level_bound_is_taken_at_the_middle_token_count():
    """Token counts centred (geometric mean) on 1 billion, where the level parameter sits:
    the level bound is that parameter's own sd, with no share of the T exponent's."""
    sweep = PlantedSweep.realistic(curve_tokens=(0.25e9, 0.5e9, 1e9, 2e9, 4e9))
    free = bound.level_bounds(sweep)
    jac, names = bound.jacobians(sweep, shape_scope="size")
    size_index = bound._design(sweep)[0]
    tied = ("eta.alpha", "eta.gamma", "batch.alpha", "batch.gamma")
    keep = [i for i, n in enumerate(names) if n not in tied]
    columns = [jac[..., i] for i in keep]
    for law in ("eta", "batch"):
        for size in range(5):
            columns.append(np.where((size_index == size)[:, None],
                                    jac[..., names.index(f"{law}.alpha")], 0.0))
    cov = (sweep.noise_run ** 2 * np.ones((5, 5)) + sweep.noise_point ** 2 * np.eye(5))
    sd = np.sqrt(np.diag(bound.covariance_bound(np.stack(columns, -1), cov)))
    np.testing.assert_allclose(free["eta"], sd[-10:-5], rtol=1e-9)
    np.testing.assert_allclose(free["batch"], sd[-5:], rtol=1e-9)
    # Off-centre tokens: the level moves to the middle T through beta's share.
    sweep = PlantedSweep.realistic()
    free = bound.level_bounds(sweep)
    jac, names = bound.jacobians(sweep, shape_scope="size")
    size_index, _, _, _, t_b, _ = bound._design(sweep)
    columns = [jac[..., i] for i, n in enumerate(names) if n not in tied]
    kept = [n for n in names if n not in tied]
    for law in ("eta", "batch"):
        for size in range(5):
            columns.append(np.where((size_index == size)[:, None],
                                    jac[..., names.index(f"{law}.alpha")], 0.0))
    num_t = len(t_b)
    cov = sweep.noise_run ** 2 * np.ones((num_t, num_t)) + sweep.noise_point ** 2 * np.eye(num_t)
    c = bound.covariance_bound(np.stack(columns, -1), cov)
    log_t_mid, b = float(np.mean(np.log(t_b))), kept.index("eta.beta")
    for size in range(5):
        lvl = len(kept) + size
        expected = math.sqrt(c[lvl, lvl] + 2 * log_t_mid * c[lvl, b] + log_t_mid ** 2 * c[b, b])
        assert free["eta"][size] == pytest.approx(expected, rel=1e-6)
        assert abs(free["eta"][size] - math.sqrt(c[lvl, lvl])) > 1e-4
