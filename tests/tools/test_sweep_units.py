"""Sweep pieces with hand-computed expectations: bad input, grid growth, validation.json."""
import math
from pathlib import Path

import pytest

from megatron_vdit.cli import sweep as run_sweep
from megatron_vdit.sweep import grid, heldout
from megatron_vdit.sweep.spec import load_spec

ROOT = Path(__file__).resolve().parents[2]

PLAIN = ["--presets", "cpu-0.13m", "--train-tokens", "3072", "--lrs", "1e-3",
         "--batch-sizes", "8", "--tokens-per-sample", "192", "--dry-run"]


def _with(flag, *values):
    argv = list(PLAIN)
    i = argv.index(flag)
    j = i + 1
    while j < len(argv) and not argv[j].startswith("--"):
        j += 1
    return argv[:i + 1] + list(values) + argv[j:]


@pytest.mark.parametrize("argv, flag", [
    (_with("--batch-sizes", "0"), "--batch-sizes"),
    (_with("--tokens-per-sample", "0"), "--tokens-per-sample"),
    (PLAIN + ["--evals-per-run", "0"], "--evals-per-run"),
    (_with("--presets", "bogus"), "--presets"),
    (_with("--lrs", "nan"), "--lrs"),
    (PLAIN + ["--config", "no/such/base.yaml"], "--config"),
    (["--sweep", "no/such/sweep.yaml", "--dry-run"], "--config"),
])
def test_bad_grid_is_exit_2_naming_the_flag(argv, flag, capsys):
    assert run_sweep.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("run_sweep: error: ") and flag in err[0], err


def _sweep_file(tmp_path, text):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


SPEC = """base: {data: synthetic, latent_frames: 2, latent_height: 8, latent_width: 8}
sizes:
  - {name: a, shape: [1, 32, 2], train_tokens: 4096}
  - {name: b, preset: cpu-0.13m, train_tokens: 4096}
heldout: {name: h, shape: [2, 96, 2], train_tokens: 4096}
prior: {lr: 1.0e-3, batch_samples: 8}
"""


@pytest.mark.parametrize("extra, key", [("grid: {lr_factor: 0.5}\n", "lr_factor"),
                                        ("bogus_key: 1\n", "bogus_key"),
                                        ("prior: {lr: -1}\n", "prior.lr"),
                                        ("evals_per_run: 0\n", "evals_per_run")])
def test_bad_sweep_file_names_the_key(tmp_path, extra, key, capsys):
    text = SPEC.replace("prior: {lr: 1.0e-3, batch_samples: 8}\n", "") if "prior" in extra else SPEC
    path = _sweep_file(tmp_path, text + extra)
    assert run_sweep.main(["--sweep", str(path), "--dry-run", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("run_sweep: error: ") and key in err, err


def test_grid_is_log_spaced_around_the_prior(tmp_path):
    spec = load_spec(_sweep_file(tmp_path, SPEC))
    lrs, batches = spec.grid(spec.sizes[0])
    assert lrs == [float(f"{1e-3 / 1.5:.3g}"), 1e-3, 1.5e-3] and batches == [4, 8, 16]


def test_bracketing_adds_the_next_point_beyond_an_edge_up_to_the_limit(tmp_path):
    spec = load_spec(_sweep_file(tmp_path, SPEC + "grid: {bracket_limit: 1}\n"))
    lrs, batches = [1e-3, 1.5e-3, 2.25e-3], [4, 8, 16]
    losses = {(lr, b): 1.0 for lr in lrs for b in batches}
    losses[(2.25e-3, 8)] = 0.9                      # best: highest lr, middle batch
    added = {}
    new_lrs, new_b, notes = grid.bracket(spec, lrs, batches, losses, added)
    assert new_lrs == lrs + [float(f"{2.25e-3 * 1.5:.3g}")] and new_b == batches
    assert notes == ["best lr 0.00225 on the high edge: added lr 0.00337"]
    losses[(3.37e-3, 4)] = 0.8                      # still on the edge, and on batch's low edge
    again = grid.bracket(spec, new_lrs, new_b, losses, added)
    assert again[0] == new_lrs and again[1] == [2, 4, 8, 16]
    assert "optimum not bracketed" in again[2][0] and "added batch 2" in again[2][1]
    interior = {k: 1.0 for k in losses}
    interior[(1.5e-3, 8)] = 0.5
    assert grid.bracket(spec, lrs, batches, interior, {})[2] == []


def test_validation_record_from_measured_runs():
    predicted = {"lr": 1e-3, "batch_tokens": 4000.0, "batch_samples": 16, "loss": 0.101}
    runs = [{"run_id": str(i), "lr": lr, "batch_samples": b, "batch_tokens": 256 * b,
             "val_loss": loss, "status": "completed"}
            for i, (lr, b, loss) in enumerate([(1e-3, 16, 0.105), (6.67e-4, 16, 0.110),
                                               (1.5e-3, 16, 0.100), (1e-3, 32, 0.108),
                                               (1e-3, 8, 0.112)])]
    val = heldout.validation_record(params=10 ** 6, tokens=2 ** 20, predicted=predicted, runs=runs,
                                    lr_factor=1.5, batch_factor=2, noise=0.01, law_usable=True,
                                    reasons=[])
    assert set(heldout.KEYS) <= set(val)
    assert val["measured_val_loss"] == 0.100 and val["best_lr"] == 1.5e-3
    assert val["lr_steps_off"] == 1 and val["batch_steps_off"] == 0
    assert val["best_batch_tokens"] == 256 * 16
    assert val["loss_rel_error"] == pytest.approx(0.101 / 0.100 - 1)
    assert val["loss_cost_of_predicted"] == pytest.approx(0.105 / 0.100 - 1)
    assert heldout.seed_noise_rel([1.0, 2.0, 3.0]) == pytest.approx(0.5)   # sd 1 / mean 2
    assert heldout.seed_noise_rel([1.0, math.nan]) is None


def test_neighbours_are_one_grid_step_each_way():
    assert heldout.neighbours(1e-3, 16, 1.5, 2) == [(1e-3, 16), (6.67e-4, 16), (1.5e-3, 16),
                                                   (1e-3, 32), (1e-3, 8)]
