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


def test_cosine_matches_its_closed_form_at_every_step():
    """Every step of a run (batch 16, 40 steps) against cos^2, an independent form of
    min + (lr - min) (1 + cos(pi p)) / 2, with p the post-warmup progress; and the
    curve's symmetry about the midpoint of the decay."""
    lr, low, warmup, total = BASE["lr"], BASE["min_lr"], BASE["warmup_samples"], BASE["total_samples"]
    for step in range(40):
        samples = 16 * (step + 1)
        got = learning_rate(samples, style="cosine", **BASE)
        if samples < warmup:
            expected = lr * samples / warmup
        else:
            progress = (samples - warmup) / (total - warmup)
            expected = low + (lr - low) * math.cos(math.pi / 2 * progress) ** 2
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-15), step
    mid = (warmup + total) / 2
    for offset in (16, 96, 256):
        pair = (learning_rate(int(mid - offset), style="cosine", **BASE)
                + learning_rate(int(mid + offset), style="cosine", **BASE))
        assert pair == pytest.approx(lr + low, rel=1e-12)
    # Past the end the rate stays at min_lr (a resumed or extended run never goes below).
    assert learning_rate(total + 160, style="cosine", **BASE) == pytest.approx(low, rel=1e-12)
