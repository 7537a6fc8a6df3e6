"""Quality gates: a broken law is marked unusable, fit exits 1, the planner refuses it."""
import copy
import json

import pytest

from scaling_laws import fit, gates, pipeline, planner
from scaling_laws.__main__ import main
from scaling_laws.records import prepare
from scaling_laws.synthetic import PLANTED_LOSS, PlantedSweep


@pytest.fixture(scope="module")
def good_law():
    runs = prepare(PlantedSweep.recovery().records(seed=0))
    return pipeline.fit_law(runs, fit.FitOptions(num_resamples=50), extrapolate=False)


def _broken(law, edit):
    law = copy.deepcopy(law)
    edit(law)
    return gates.judge(law)


def test_good_law_passes(good_law):
    assert good_law["usable"] is True and good_law["unusable_reasons"] == []
    assert planner.plan(good_law, 1e22)["extrapolation_params"] > 1


@pytest.mark.parametrize("edit, words", [
    (lambda law: law["loss"].update(alpha_T=5.0), "alpha_T"),
    (lambda law: law["loss"].update(alpha_N=1e-3), "alpha_N"),
    (lambda law: law["loss"].update(L_inf=1e-6), "L_inf"),
    (lambda law: law["n_opt"].update(a=1.004), "N_opt exponent"),
    (lambda law: law["diagnostics"]["bootstrap_failures"].update(loss=40), "40 of 50"),
    (lambda law: law["diagnostics"].update(num_cells_used=5, num_cells=18), "only 5 of 18"),
    (lambda law: law["predictions"][0].update(params_nonembed_ci95=[1e8, 1e10]), "spans 100x"),
])
def test_each_gate_names_its_reason(good_law, edit, words):
    reasons = _broken(good_law, edit)
    assert len(reasons) == 1 and words in reasons[0], reasons


def test_loss_not_falling_with_size_is_caught(good_law):
    def flatten(law):
        for cell in law["diagnostics"]["cells"]:
            cell["loss_opt"] = 0.5 + 1e-12 * cell["params_nonembed"]  # rises with N
    reasons = _broken(good_law, flatten)
    assert any("does not fall with model size" in r for r in reasons), reasons


def test_planner_refuses_unusable_law_naming_reasons(good_law):
    law = dict(good_law, usable=False, unusable_reasons=["alpha_T at its bound: cover more T"])
    with pytest.raises(ValueError, match="(?s)marked unusable.*alpha_T at its bound"):
        planner.plan(law, 1e22)


def test_planner_refuses_absurd_shapes_and_runs_shorter_than_warmup(good_law):
    deep = copy.deepcopy(good_law)
    deep["n_opt"].update(k=1e6, a=0.9)  # N_opt in the 1e25s: far too deep at d(N)
    with pytest.raises(ValueError, match="layers"):
        planner.plan(deep, 1e22)
    huge_batch = copy.deepcopy(good_law)
    huge_batch["batch_opt"]["alpha"] *= 1e4  # a few optimizer steps for the whole budget
    huge_batch["bootstrap_samples"].pop("batch_opt")
    steps = planner.plan(huge_batch, 1e20, warmup_steps=0)["train_steps"]
    assert steps < 200
    with pytest.raises(ValueError, match="fewer than a 200-step warm-up"):
        planner.plan(huge_batch, 1e20)


def test_fit_cli_writes_unusable_law_and_exits_1(tmp_path, capsys):
    # Loss that barely depends on size: alpha_N runs to its bound, the gates say so.
    flat = PlantedSweep.recovery(loss_law={**PLANTED_LOSS, "N_c": 1e-30},
                                 sizes_params=(0.017e9, 0.057e9, 0.13e9, 0.26e9))
    records = tmp_path / "runs.jsonl"
    records.write_text("\n".join(json.dumps(r) for r in flat.records(seed=0)))
    out = tmp_path / "law.json"
    code = main(["fit", str(records), "--out", str(out), "--resamples", "20",
                 "--no-extrapolation"])
    law = json.loads(out.read_text())
    assert code == 1 and law["usable"] is False and law["unusable_reasons"]
    assert "not usable" in capsys.readouterr().err
    assert main(["plan", "--budget", "1e22", "--law", str(out)]) == 2
    assert "marked unusable" in capsys.readouterr().err
