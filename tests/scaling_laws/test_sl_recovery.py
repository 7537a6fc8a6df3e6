"""Planted-law recovery: exponents within 2% and honest 95% intervals.

Design (PlantedSweep.recovery): six sizes 0.017B..1.07B, curves 1B..16B tokens, a 7 x 5
(eta, B) grid per size, noise 0.02% per run and 0.01% per logged point.

Coverage is checked over 40 seeded sweeps x 200 resamples: 200 resamples put the 2.5%
and 97.5% percentiles on 5 draws each, enough for a yes/no "covers the truth" per
sweep. 40 sweeps (about a minute on 2 cores) because 20 are too few to tell 90% from 95%
(one sweep is 5 points of coverage). Measured (``python -m scaling_laws.validate``,
default surface and within-run T slopes): 98-100% for every exponent, worst error
2.3%; the bars are the issue's >= 90% and 3%.
"""
import pytest

from scaling_laws import fit
from scaling_laws.records import prepare
from scaling_laws.synthetic import PlantedSweep
from scaling_laws.validate import EXPONENTS, one_repetition, truths

SWEEP = PlantedSweep.recovery()


def test_every_exponent_within_two_percent_with_1000_resamples():
    core = fit.core_fit(prepare(SWEEP.records(seed=0)), fit.FitOptions(num_resamples=1000))
    truth = truths(SWEEP, core)
    for law, name, key, col in EXPONENTS:
        true = truth[(law, name)]
        assert core[key][0, col] == pytest.approx(true, rel=0.02), (law, name)
        low, high = fit.interval(core[key][1:, col])
        assert low <= true <= high, (law, name, low, high, true)


def test_intervals_cover_truth_in_90_percent_of_repetitions():
    reps = [one_repetition(SWEEP, seed, num_resamples=200) for seed in range(40)]
    for law, name, _, _ in EXPONENTS:
        covered = sum(r[(law, name)][1] for r in reps)
        assert covered >= 36, f"{law}.{name}: interval covered the truth in {covered}/40"
        worst = max(abs(r[(law, name)][0]) for r in reps)
        assert worst < 0.03, f"{law}.{name}: worst relative error {worst:.2%}"
