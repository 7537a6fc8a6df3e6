"""Training on precomputed shards (the embedded default path, tiny shapes)."""
import pytest

from megatron_vdit.training.config import load_config
from megatron_vdit.training.data import ShardSource
from megatron_vdit.training.loop import prepare, train
from megatron_vdit.training.records import read_metrics

# Tiny-VAE latents [4, 2, 4, 4] (5 frames of 32x32), 32 byte tokens of captions.
ARGS = ["--data", "default", "--num-layers", "2", "--hidden-size", "64",
        "--num-attention-heads", "2", "--latent-frames", "2", "--latent-height", "4",
        "--latent-width", "4", "--max-text-tokens", "32", "--micro-batch-size", "4",
        "--global-batch-size", "4", "--eval-samples", "8", "--eval-interval", "3",
        "--log-interval", "1", "--wandb-mode", "disabled", "--default-data-train-clips", "24",
        "--default-data-val-clips", "8"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("default_data"))


def cfg_for(tmp_path, data_dir, *extra):
    return load_config(ARGS + ["--default-data-dir", data_dir, "--run-dir",
                               str(tmp_path / "run")] + list(extra))


def test_train_and_resume_on_shards(tmp_path, data_dir):
    full = train(cfg_for(tmp_path / "a", data_dir, "--train-iters", "6", "--save-interval", "3"))
    assert full["status"] == "completed" and full["tokens_per_sample"] == 8
    train(cfg_for(tmp_path / "b", data_dir, "--train-iters", "3", "--save-interval", "3"))
    resumed = train(cfg_for(tmp_path / "b", data_dir, "--train-iters", "6", "--save-interval", "3"))
    losses = lambda d: [(r["iteration"], r["train_loss"]) for r in read_metrics(d / "run")
                        if "train_loss" in r]
    assert len(losses(tmp_path / "a")) == 6
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert resumed["val_loss"] == full["val_loss"]


def test_shard_validation_splits_evenly_over_dp(tmp_path, data_dir):
    job = cfg_for(tmp_path, data_dir, "--train-iters", "2")
    p = prepare(job)  # builds the shards and names their directory
    ranks = [ShardSource(p.data_root, job, p.resolved, r, 2) for r in (0, 1)]
    one = ShardSource(p.data_root, job, p.resolved, 0, 1)
    seen = {r: [(i, b["latent"]) for i, b in ranks[r].val_batches(8, 3)] for r in (0, 1)}
    assert [len(v) for v in seen.values()] == [2, 2], "equal batch counts on every rank"
    everything = {i[0]: b["latent"][0] for i, b in one.val_batches(8, 1)}
    for r in (0, 1):
        for indices, latent in seen[r]:
            assert all(i % 2 == r for i in indices)
            for j, i in enumerate(indices):
                assert (latent[j] == everything[i]).all()


def test_more_eval_samples_than_the_val_split(tmp_path, data_dir, capsys):
    from megatron_vdit import train as train_cli
    argv = ARGS + ["--default-data-dir", data_dir, "--run-dir", str(tmp_path / "run"),
                   "--train-iters", "2", "--eval-samples", "16"]
    assert train_cli.main(argv) == 2
    assert "--eval-samples=16 but the val split" in capsys.readouterr().err
