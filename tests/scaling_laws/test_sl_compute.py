"""Compute accounting: hand-computed values, the paper's validation point, model shapes."""
import numpy as np
import pytest

from megatron_vdit.models import accounting
from scaling_laws.compute import ComputeModel, flops_per_token, to_billions, training_flops


def test_flops_per_token_hand_computed():
    # N = 16 L d^2 with L = 16, d = 2048 (1.07B); n_ctx = 1280: 3/4 N (7 + 0.625).
    n = 16 * 16 * 2048 ** 2
    assert flops_per_token(n, 1280, 2048) == pytest.approx(0.75 * n * 7.625, rel=1e-12)
    assert training_flops(n, 1280, 2048, 1e9) == pytest.approx(0.75 * n * 7.625 * 1e9)
    assert to_billions(2.5e9) == pytest.approx(2.5)


def test_paper_validation_point_tokens():
    # The paper's validation run (Yin et al. 2025): 0.72B model, 140B tokens,
    # C = 5.85e20 -> n_ctx/d of about 0.74.
    compute = ComputeModel()
    tokens = compute.tokens_for_budget(0.72e9, 5.85e20)
    assert tokens == pytest.approx(140e9, rel=0.03)


def test_default_hidden_rule_tracks_model_shapes():
    rule = ComputeModel()
    for n in (1.7e7, 1.3e8, 1.07e9, 7e9):
        shape = accounting.shape_for_params(n)
        assert rule.hidden_size(n) == pytest.approx(shape["hidden_size"], rel=0.3)


def test_compute_model_fit_recovers_power_rule():
    params = np.array([1e7, 1e8, 1e9, 1e10])
    hidden = 0.3 * params ** 0.4
    fitted = ComputeModel.fit(params, hidden, [1280] * 4)
    assert fitted.hidden_exponent == pytest.approx(0.4, rel=1e-9)
    assert fitted.hidden_coef == pytest.approx(0.3, rel=1e-9)
    round_trip = ComputeModel.from_json(fitted.to_json())
    assert round_trip == fitted
