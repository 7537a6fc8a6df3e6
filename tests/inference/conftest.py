"""A tiny trained run shared by the inference tests (trained once per session, in a temp dir).

Tiny-VAE latents [4, 2, 4, 4] (5 frames of 32x32), 2 layers of width 64, 2 heads (so
TP2 and CP2 Ulysses divide them), 8 video tokens; 6 steps on the embedded default data
with caption dropout and EMA, checkpoint at the end.
"""
import pytest

TRAIN_ARGS = ["--data", "default", "--num-layers", "2", "--hidden-size", "64",
              "--num-attention-heads", "2", "--latent-frames", "2", "--latent-height", "4",
              "--latent-width", "4", "--max-text-tokens", "32", "--micro-batch-size", "4",
              "--global-batch-size", "4", "--eval-samples", "8", "--eval-interval", "3",
              "--log-interval", "1", "--wandb-mode", "disabled",
              "--default-data-train-clips", "24", "--default-data-val-clips", "8",
              "--train-iters", "6", "--save-interval", "6", "--lr", "3e-3",
              "--text-dropout", "0.25", "--ema-decay", "0.9"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    from megatron_vdit.training.config import load_config
    from megatron_vdit.training.loop import train
    root = tmp_path_factory.mktemp("inference_run")
    run_dir = root / "run"
    train(load_config(TRAIN_ARGS + ["--default-data-dir", str(root / "data"),
                                    "--run-dir", str(run_dir)]))
    import torch.distributed as dist
    if dist.is_initialized():  # forked gloo worlds of the tests must start clean
        dist.destroy_process_group()
    return run_dir
