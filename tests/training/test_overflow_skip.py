"""A step whose gradients really overflow is skipped; the next step trains normally.

The overflow is an exploding gradient made real: during the real backward pass each
block multiplies the gradient of its output by 2^100 (a tensor hook), so after two
blocks the activation gradients exceed float32's range and become inf (and NaN where
inf meets inf), while the forward pass and the loss are untouched. Nothing is stubbed:
the engine's own `clip_grad_norm_` sees the overflowed gradients.
"""
import math

import torch

from megatron_vdit.training.config import load_config
from megatron_vdit.training.loop import Trainer

TINY = ["--data", "synthetic", "--num-layers", "2", "--hidden-size", "64",
        "--num-attention-heads", "2", "--latent-frames", "2", "--latent-height", "8",
        "--latent-width", "8", "--text-hidden-size", "32", "--max-text-tokens", "12",
        "--micro-batch-size", "4", "--global-batch-size", "8", "--eval-samples", "8",
        "--wandb-mode", "disabled", "--train-iters", "3", "--clip-grad", "1.0",
        "--ema-decay", "0.9"]
GROWTH = 2.0 ** 100  # per block; 2^200 is far past float32's 3.4e38


def _amplify_output_gradient(module, inputs, output):
    output.register_hook(lambda grad: grad * GROWTH)


def _snapshot(trainer):
    params = [p.detach().clone() for p in trainer.engine.parameters()]
    moments = [{k: v.clone() for k, v in trainer.optimizer.state[p].items()}
               for p in trainer.engine.parameters()]
    ema = [v.clone() for v in trainer.ema.shadow.values()]
    return params, moments, ema, trainer.ema.num_updates


def test_overflowed_gradients_skip_the_step_and_training_goes_on(tmp_path):
    trainer = Trainer(load_config(TINY + ["--run-dir", str(tmp_path / "run")]))
    model = trainer.engine.model_chunks[0]
    # One normal step first: the zero-initialised output layer passes no gradient into
    # the blocks until it has been updated once.
    assert all(math.isfinite(v) for v in trainer.train_step()[:2])
    params, moments, ema, ema_updates = _snapshot(trainer)

    hooks = [b.register_forward_hook(_amplify_output_gradient) for b in model.blocks.values()]
    loss, grad_norm, _ = trainer.train_step()
    for hook in hooks:
        hook.remove()
    assert math.isfinite(loss) and not math.isfinite(grad_norm), (loss, grad_norm)
    assert trainer.skipped_steps == 1
    after_params, after_moments, after_ema, after_ema_updates = _snapshot(trainer)
    assert all(torch.equal(a, b) for a, b in zip(params, after_params)), "skipped step moved weights"
    for a, b in zip(moments, after_moments):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), \
            "a skipped step must not touch AdamW's moments or step count"
    assert ema_updates == after_ema_updates == 1, "a skipped step is no EMA update"
    assert all(torch.equal(a, b) for a, b in zip(ema, after_ema)), "skipped step moved the EMA"

    loss, grad_norm, _ = trainer.train_step()
    assert math.isfinite(loss) and math.isfinite(grad_norm) and trainer.skipped_steps == 1
    assert trainer.ema.num_updates == 2, "the next step updates the EMA again"
    final = [p.detach() for p in trainer.engine.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(params, final)), "training goes on"
    assert all(torch.isfinite(p).all() for p in final)
