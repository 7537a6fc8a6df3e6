"""A non-finite loss ends the run as diverged, and nothing after it is trained or saved as
resumable, although the loop only notices at its next log, eval, save or exit point.

The NaN is real: a forward hook makes one block's output NaN on the chosen step, so the
loss of the real forward pass is NaN. The exit signal is a real SIGTERM sent to this
process during a step, caught by the trainer's own handler (`--exit-signal-handler`).
"""
import json
import os
import signal

import pytest
import torch

from megatron_vdit.training.config import load_config
from megatron_vdit.training.loop import Trainer

TINY = ["--data", "synthetic", "--num-layers", "2", "--hidden-size", "64",
        "--num-attention-heads", "2", "--latent-frames", "2", "--latent-height", "8",
        "--latent-width", "8", "--text-hidden-size", "32", "--max-text-tokens", "12",
        "--micro-batch-size", "2", "--global-batch-size", "4", "--eval-samples", "4",
        "--wandb-mode", "disabled", "--train-iters", "8", "--log-interval", "4",
        "--eval-interval", "100", "--ema-decay", "0.9"]
NAN_STEP = 2  # the 2nd step's loss is NaN; the next read point is after step 4


def _trainer(tmp_path, *extra):
    return Trainer(load_config(TINY + ["--run-dir", str(tmp_path / "run"), *extra]))


def _inject(trainer, on_step: dict):
    """Run `on_step[k](output)` in the first block's forward during step k (1-based)."""
    block = next(iter(trainer.engine.model_chunks[0].blocks.values()))

    def hook(module, inputs, output):
        action = on_step.get(trainer.iteration + 1)
        return action(output) if action is not None and module.training else output
    return block.register_forward_hook(hook)


def _state(trainer):
    params = [p.detach().clone() for p in trainer.engine.parameters()]
    steps = {float(s["step"]) for s in trainer.optimizer.state.values()}
    return params, steps, [v.clone() for v in trainer.ema.shadow.values()]


def _metrics(tmp_path):
    return [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def test_late_detection_keeps_the_last_good_step_and_names_the_nan_step(tmp_path):
    trainer = _trainer(tmp_path, "--save-interval", "100")
    snapshots = {}
    _inject(trainer, {NAN_STEP: lambda out: out * float("nan")})
    original = trainer.train_step

    def step(*args, **kwargs):  # the state after each step, to compare with the end
        result = original(*args, **kwargs)
        snapshots[trainer.iteration] = _state(trainer)
        return result
    trainer.train_step = step
    record = trainer.run()
    assert record["status"] == "diverged"
    line = [m for m in _metrics(tmp_path) if m.get("status") == "diverged"]
    assert len(line) == 1 and line[0]["iteration"] == NAN_STEP, line
    assert line[0]["train_loss"] != line[0]["train_loss"], "the NaN step's loss is recorded"
    assert trainer.iteration == 4, "found at the next log point"
    # Steps 2-4 ran but none was applied: weights, AdamW steps and EMA are step 1's.
    good_params, good_steps, good_ema = snapshots[NAN_STEP - 1]
    end_params, end_steps, end_ema = _state(trainer)
    assert good_steps == end_steps == {1.0}
    assert all(torch.equal(a, b) for a, b in zip(good_params, end_params))
    assert all(torch.equal(a, b) for a, b in zip(good_ema, end_ema))
    assert trainer.ema.num_updates == 1


def test_exit_signal_after_a_nan_ends_diverged_not_preempted(tmp_path):
    trainer = _trainer(tmp_path, "--save-interval", "100", "--exit-signal-handler")
    try:
        _inject(trainer, {NAN_STEP: lambda out: out * float("nan"),
                          NAN_STEP + 1: lambda out: os.kill(os.getpid(), signal.SIGTERM) or out})
        record = trainer.run()  # would raise SystemExit(4) if it checkpointed to resume
    finally:
        trainer.exit_handler.release()
    assert record["status"] == "diverged" and trainer.iteration == NAN_STEP + 1
    assert not (tmp_path / "run" / "preempted.json").exists()
    statuses = [m.get("status") for m in _metrics(tmp_path)]
    assert statuses.count("diverged") == 1


@pytest.mark.parametrize("clip", ["1.0", "0"])
def test_overflow_is_skipped_with_or_without_clipping_and_the_count_survives_resume(
        tmp_path, clip):
    growth = 2.0 ** 100  # per block: past float32's range after two blocks, forward untouched
    trainer = _trainer(tmp_path, "--clip-grad", clip, "--train-iters", "3",
                       "--save-interval", "3")
    model = trainer.engine.model_chunks[0]

    def amplify(module, inputs, output):
        if trainer.iteration + 1 == 2:
            output.register_hook(lambda grad: grad * growth)
    hooks = [b.register_forward_hook(amplify) for b in model.blocks.values()]
    record = trainer.run()
    for h in hooks:
        h.remove()
    assert record["status"] == "completed"
    assert trainer.skipped_steps == 1
    assert {float(s["step"]) for s in trainer.optimizer.state.values()} == {2.0}
    assert all(torch.isfinite(p).all() for p in trainer.engine.parameters())
    trainer.source.close()
    resumed = _trainer(tmp_path, "--clip-grad", clip, "--train-iters", "5",
                       "--save-interval", "3")
    assert resumed.iteration == 3 and resumed.skipped_steps == 1
