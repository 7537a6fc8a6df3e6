"""Compute accounting as a choice (video default, 6N), defined once, torch-free."""
import subprocess
import sys

import numpy as np
import pytest

from megatron_vdit.models import accounting
from scaling_laws import fit, planner, pipeline
from scaling_laws.compute import ComputeModel, flops_per_token
from scaling_laws.records import prepare
from scaling_laws.synthetic import PlantedSweep


def test_six_n_is_six_n_and_video_is_the_paper_formula():
    n = 16 * 16 * 2048 ** 2
    assert flops_per_token(n, 1280, 2048, "6n") == 6.0 * n
    assert flops_per_token(n, 1280, 2048) == 0.75 * n * (7 + 1280 / 2048)
    assert accounting.lm_flops_per_token(n) == 6.0 * n
    with pytest.raises(ValueError, match="accounting"):
        flops_per_token(n, 1280, 2048, "5n")


def test_scaling_laws_imports_no_torch():
    code = ("import sys, scaling_laws.pipeline, scaling_laws.planner; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_fit_and_plan_with_6n():
    runs = prepare(PlantedSweep.recovery().records(seed=0))
    law = pipeline.fit_law(runs, fit.FitOptions(num_resamples=0, compute="6n"),
                           extrapolate=False)
    assert law["compute"]["accounting"] == "6n"
    assert ComputeModel.from_json(law["compute"]).accounting == "6n"
    out = planner.plan(law, 1e22)
    # T = C / (6 N), hand-computed from the plan's own N.
    assert out["train_tokens"] == pytest.approx(1e22 / (6 * out["params_nonembed"]), rel=1e-12)
    video = pipeline.fit_law(runs, fit.FitOptions(num_resamples=0), extrapolate=False)
    # Same runs, other accounting: C_token differs, so N_opt(C) differs.
    assert not np.isclose(planner.plan(video, 1e22)["params_nonembed"], out["params_nonembed"])
