"""A cooldown branch is the run a wsd schedule of that length would be, and leaves no trace."""
import pytest

from megatron_vdit.training.config import load_config
from megatron_vdit.training.loop import train

TINY = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "2",
        "--latent-frames", "2", "--latent-height", "8", "--latent-width", "8",
        "--text-hidden-size", "32", "--max-text-tokens", "12", "--micro-batch-size", "4",
        "--global-batch-size", "4", "--eval-samples", "8", "--log-interval", "5",
        "--wandb-mode", "disabled", "--lr", "3e-3", "--data", "synthetic",
        "--lr-decay-style", "wsd", "--lr-wsd-decay-fraction", "0.2"]


def run(tmp_path, name, *extra):
    return train(load_config(TINY + ["--run-dir", str(tmp_path / name)] + list(extra)))


def test_branch_equals_a_shorter_cooled_down_run_and_the_main_run_is_untouched(tmp_path):
    # 20 iterations, decay from 16; a branch at 8 cools down over 8 * 0.2 / 0.8 = 2 steps.
    branched = run(tmp_path, "branched", "--train-iters", "20", "--eval-interval", "8",
                   "--eval-cooldown-fraction", "0.2")
    short = run(tmp_path, "short", "--train-iters", "10", "--eval-interval", "100")
    plain = run(tmp_path, "plain", "--train-iters", "20", "--eval-interval", "100")
    points = {p["iteration"]: p for p in branched["val_loss_curve"]}
    assert sorted(points) == [0, 10, 20], "one branch (at 8 -> 10); none from 16 (decay began)"
    assert points[10]["branch_from_iteration"] == 8
    assert points[10]["tokens"] == 10 * 4 * 32
    assert points[10]["val_loss"] == pytest.approx(short["val_loss"], rel=1e-6)
    assert branched["val_loss"] == pytest.approx(plain["val_loss"], rel=1e-6)
    assert branched["iterations"] == 20 and branched["train_tokens"] == 20 * 4 * 32
