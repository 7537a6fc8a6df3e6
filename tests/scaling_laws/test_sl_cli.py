"""Law file, paper preset, planner and the command lines, end to end."""
import json
import subprocess
import sys

import numpy as np
import pytest

from scaling_laws import lawfile, loss_law, pipeline, planner, report
from scaling_laws.fit import FitOptions
from scaling_laws.records import prepare
from scaling_laws.synthetic import PAPER_BATCH, PAPER_ETA, PLANTED_LOSS, PlantedSweep

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]
# The paper's compute-allocation law (Yin et al. 2025), C in FLOPs, N in parameters.
PAPER_N_OPT = lambda budget: 0.8705 * budget ** 0.4294  # noqa: E731


@pytest.fixture(scope="module")
def fitted_law(tmp_path_factory):
    runs = prepare(PlantedSweep().records(seed=2))
    law = pipeline.fit_law(runs, FitOptions(num_resamples=100))
    path = tmp_path_factory.mktemp("law") / "law.json"
    lawfile.save_law(law, path)
    return path


@pytest.mark.parametrize("tokens, lr, batch", [(4e9, 1.86e-4, 6.8e4), (10e9, 1.78e-4, 1.42e5)])
def test_paper_preset_hyperparameters(tokens, lr, batch):
    point = lawfile.predict_point(lawfile.paper_law(), 1.07e9, tokens)
    assert point["lr"] == pytest.approx(lr, rel=0.01)
    assert point["batch_tokens"] == pytest.approx(batch, rel=0.01)


@pytest.mark.parametrize("budget, published", [(5.85e20, 0.72e9), (1e22, 2.43e9)])
def test_paper_preset_n_opt(budget, published):
    """The preset follows the published formula, which gives the paper's own
    validation points (0.72B at 5.85e20 FLOPs, about 2.43B at 1e22)."""
    result = planner.plan("paper", budget)
    assert result["params_nonembed"] == pytest.approx(PAPER_N_OPT(budget), rel=1e-9)
    assert result["params_nonembed"] == pytest.approx(published, rel=0.01)
    assert "loss" not in result and "unverified" in result["loss_note"]
    assert any("loss-law coefficients" in c for c in result["warnings"])


def _planted_n_opt(budget: float) -> float:
    """The compute-optimal N of the planted loss law, by brute force over N."""
    compute = PlantedSweep().compute
    grid = np.logspace(7, 12, 200001)
    tokens = compute.tokens_for_budget(grid, budget)
    return float(grid[np.argmin(loss_law.predict_loss(PLANTED_LOSS, grid / 1e9, tokens / 1e9))])


def test_law_file_intervals_hold_the_planted_truth(fitted_law):
    """The records come from known laws (`PlantedSweep`): every 95% interval in law.json
    holds the planted coefficient, each exponent's is narrower than +-0.075, and N_opt's
    interval holds the planted loss law's brute-force optimum."""
    law = json.loads(fitted_law.read_text())
    for key, truth in (("eta_opt", PAPER_ETA), ("batch_opt", PAPER_BATCH),
                       ("loss", PLANTED_LOSS)):
        for name, value in truth.items():
            low, high = law["ci95"][key][name]
            assert low < value < high, (key, name, value, (low, high))
            if name in ("beta", "gamma", "alpha_T", "alpha_N"):
                assert high - low < 0.15, (key, name, (low, high))
    for budget in (1e19, 1e21):  # inside the fitted range of budgets
        _, (low, high) = lawfile.n_opt_params(law, budget)
        assert low < _planted_n_opt(budget) < high, (budget, (low, high))
    assert set(law["units"]) >= {"N", "T", "B", "C"}
    assert law["provenance"]["runs_used"] and law["provenance"]["runs_excluded"]
    assert law["diagnostics"]["runs_excluded"]["status=diverged"] > 0
    assert abs(law["extrapolation"]["summary"]["mean_abs_loss_rel_error"]) < 0.005
    assert law["baselines"]["fixed_hp"]["mse"] > law["baselines"]["optimal_hp"]["mse"]


def test_planner_max_params_costs_loss(fitted_law):
    free = planner.plan(str(fitted_law), 1e21)
    capped = planner.plan(str(fitted_law), 1e21, max_params=free["params_nonembed"] / 3)
    assert capped["train_tokens"] > free["train_tokens"]
    assert capped["loss_increase"] > 0 and capped["loss"] > free["loss"]
    low, high = free["loss_ci95"]  # holds the planted law's loss at the planned (N, T)
    assert low < loss_law.predict_loss(PLANTED_LOSS, free["params_nonembed"] / 1e9,
                                       free["train_tokens"] / 1e9) < high
    assert free["batch_samples"] == round(free["batch_tokens"] / free["tokens_per_sample"])
    assert abs(planner.round_trip_check(str(fitted_law), 1e21)) < 0.1
    assert "loss cost vs N_opt" in planner.format_plan(capped)


def test_planner_rejects_bad_input():
    with pytest.raises(ValueError, match="positive"):
        planner.plan("paper", 0)
    with pytest.raises(ValueError, match="not found"):
        planner.plan("/nonexistent/law.json", 1e21)


def test_report_sections(fitted_law):
    text = report.format_law(str(fitted_law))
    for section in ("Cell optima", "Baselines", "fixed HP", "Kaplan", "Extrapolation check",
                    "Predictions", "95% CI"):
        assert section in text


def _run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO,
                          timeout=120)


def test_cli_fit_report_plan(tmp_path):
    runs = tmp_path / "runs.jsonl"
    runs.write_text("\n".join(json.dumps(r) for r in PlantedSweep().records(seed=4)))
    out = _run("-m", "scaling_laws", "fit", str(runs), "--out", str(tmp_path / "law.json"),
               "--plots", str(tmp_path / "plots"), "--resamples", "50")
    assert out.returncode == 0, out.stderr
    assert "Extrapolation check" in out.stdout
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert {"hp_laws.png", "loss_vs_tokens.png", "isoflop.png", "n_opt.png"} <= set(pngs)
    assert sum(p.startswith("heatmap_") for p in pngs) == 5
    rep = _run("-m", "scaling_laws", "report", str(tmp_path / "law.json"))
    assert rep.returncode == 0 and "Baselines" in rep.stdout
    # 7 x 5 grids (>= 15 settings, 7 lr values): every cell gets the quartic; curves
    # give every size several token counts, so the T exponents come from within runs.
    law = json.loads((tmp_path / "law.json").read_text())
    cells = law["diagnostics"]["cells"]
    assert "Method: cell surfaces: quartic x%d; token exponents from within runs" % len(
        cells) in rep.stdout
    assert law["provenance"]["t_slope"] == "within_run"
    assert abs(law["provenance"]["t_slope_attenuation"]) < 0.1
    plan = _run("tools/predict_config.py", "--budget", "1e21", "--law", str(tmp_path / "law.json"),
                "--max-params", "3e8", "--json")
    assert plan.returncode == 0, plan.stderr
    result = json.loads(plan.stdout)
    assert result["params_nonembed"] == 3e8 and result["loss_increase"] > 0
    assert result["model_shape"] is None or result["model_shape"]["hidden_size"] > 0


def test_cli_errors_are_clear(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in PlantedSweep(
        sizes_params=(0.017e9, 0.057e9)).records()))
    out = _run("-m", "scaling_laws", "fit", str(bad), "--out", str(tmp_path / "law.json"))
    assert out.returncode == 2 and "need >= 3 model sizes" in out.stderr
    assert not (tmp_path / "law.json").exists()
    plan = _run("-m", "scaling_laws", "plan", "--budget", "1e22")
    assert plan.returncode == 0 and f"{PAPER_N_OPT(1e22) / 1e9:.3f}B" in plan.stdout


@pytest.mark.parametrize("window", [0.0, float("nan"), -0.1])
def test_fit_refuses_a_window_that_cannot_widen(window):
    """Doubling a window of 0 or NaN never widens it: refused, not an endless loop."""
    runs = prepare(PlantedSweep().records(seed=2))
    with pytest.raises(ValueError, match="window must be a finite number > 0"):
        pipeline.fit_law(runs, FitOptions(num_resamples=0, window=window), extrapolate=False)


def test_law_file_check_on_load(tmp_path):
    law = lawfile.paper_law()
    law["n_opt"]["a"] = 1.7
    lawfile.save_law(law, tmp_path / "law.json")
    with pytest.raises(ValueError, match=r"law\.json: law key n_opt\.a = 1\.7 .*\(0, 1\)"):
        planner.plan(str(tmp_path / "law.json"), 1e21)
    lawfile.save_law(lawfile.paper_law(), tmp_path / "good.json")
    assert planner.plan(str(tmp_path / "good.json"), 1e21)["params_nonembed"] > 0


def _fit_planted(tmp_path, *flags, out_name="law.json"):
    """``scaling_laws fit`` on a planted sweep's records with ``flags``: (result, law path)."""
    runs = tmp_path / "runs.jsonl"
    runs.write_text("\n".join(json.dumps(r) for r in PlantedSweep().records(seed=0)))
    law_path = tmp_path / out_name
    return _run("-m", "scaling_laws", "fit", str(runs), "--out", str(law_path), *flags), law_path


@pytest.mark.parametrize("flag, value", [("--t-slope", "both"), ("--surface", "quintic"),
                                         ("--bootstrap-surfaces", "quintic"),
                                         ("--bootstrap-windows", "0"),
                                         ("--bootstrap-windows", "-0.1"),
                                         ("--bootstrap-windows", "nan"),
                                         ("--bootstrap", "pairs")])
def test_fit_refuses_an_unknown_estimator_choice(tmp_path, flag, value):
    out, law_path = _fit_planted(tmp_path, flag, value)
    assert out.returncode == 2 and flag in out.stderr and value in out.stderr, out.stderr
    assert not law_path.exists()


def test_fit_records_the_bootstrap_choices_it_was_given(tmp_path):
    out, law_path = _fit_planted(tmp_path, "--resamples", "4", "--no-extrapolation",
                                 "--bootstrap-windows", "0.05", "0.2",
                                 "--bootstrap-surfaces", "quartic", "cubic")
    assert law_path.exists(), out.stderr
    provenance = json.loads(law_path.read_text())["provenance"]
    assert provenance["bootstrap_windows"] == [0.05, 0.2]
    assert provenance["bootstrap_surfaces"] == ["quartic", "cubic"]
    assert provenance["bootstrap"] == "runs"


def test_fit_with_the_wild_bootstrap_records_it_and_refuses_near_set(tmp_path):
    out, law_path = _fit_planted(tmp_path, "--resamples", "4", "--no-extrapolation",
                                 "--bootstrap", "wild", "--bootstrap-surfaces", "quartic", "cubic")
    assert law_path.exists(), out.stderr
    provenance = json.loads(law_path.read_text())["provenance"]
    assert provenance["bootstrap"] == "wild" and provenance["resampling"].startswith("wild")
    out, refused = _fit_planted(tmp_path, "--bootstrap", "wild", "--surface", "near_set",
                                out_name="refused.json")
    assert out.returncode == 2 and "near_set" in out.stderr, out.stderr
    assert not refused.exists()
