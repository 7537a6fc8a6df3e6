import math

import pytest

from megatron_vdit.training.schedule import learning_rate

BASE = dict(lr=1e-3, min_lr=1e-4, warmup_samples=64, total_samples=640)


def test_linear_warmup_in_samples_reaches_lr_exactly():
    # Batch 16: steps consume 16, 32, 48, 64 samples during warmup.
    lrs = [learning_rate(16 * (k + 1), style="constant", **BASE) for k in range(6)]
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lrs[4:] == [1e-3, 1e-3]


def test_cosine_decays_to_min_lr():
    mid = learning_rate(64 + 288, style="cosine", **BASE)
    assert mid == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert learning_rate(640, style="cosine", **BASE) == pytest.approx(1e-4)
    assert learning_rate(64, style="cosine", **BASE) == pytest.approx(1e-3)


def test_wsd_is_flat_then_linear():
    assert learning_rate(480, style="wsd", decay_fraction=0.25, **BASE) == pytest.approx(1e-3)
    assert learning_rate(560, style="wsd", decay_fraction=0.25, **BASE) == pytest.approx(
        1e-3 + (1e-4 - 1e-3) * (560 - 480) / 160)
    assert learning_rate(640, style="wsd", decay_fraction=0.25, **BASE) == pytest.approx(1e-4)


def test_unknown_style():
    with pytest.raises(ValueError, match="unknown lr decay style 'step'"):
        learning_rate(100, style="step", **BASE)
