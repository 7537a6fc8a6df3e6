"""End-to-end training on the embedded default with a tiny model (in-process, world of one)."""
import json

import pytest
import torch

from megatron_vdit import train as train_cli
from megatron_vdit.training import checkpoint as ckpt
from megatron_vdit.training.config import JobConfig, load_config
from megatron_vdit.training.loop import Trainer, train
from megatron_vdit.training.records import read_metrics

TINY = ["--data", "synthetic", "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "2",
        "--latent-frames", "2", "--latent-height", "8", "--latent-width", "8",
        "--text-hidden-size", "32", "--max-text-tokens", "12", "--micro-batch-size", "4",
        "--global-batch-size", "8", "--eval-samples", "16", "--eval-interval", "5",
        "--log-interval", "5", "--wandb-mode", "disabled", "--lr", "2e-3"]


def tiny(tmp_path, *extra) -> JobConfig:
    return load_config(TINY + ["--run-dir", str(tmp_path / "run")] + list(extra))


@pytest.mark.parametrize("objective", ["ddpm", "v", "flow"])
def test_each_objective_trains(tmp_path, objective):
    record = train(tiny(tmp_path, "--objective", objective, "--train-iters", "40"))
    start = record["val_loss_curve"][0]["val_loss"]
    assert record["status"] == "completed"
    assert record["val_loss"] < 0.8 * start, (objective, start, record["val_loss"])


def test_run_record_fields_and_units(tmp_path):
    cfg = tiny(tmp_path, "--train-tokens", str(10 * 8 * 32))
    record = train(cfg)
    on_disk = json.loads((tmp_path / "run" / "run.json").read_text())
    required = ["run_id", "params_nonembed", "params_total", "hidden_size", "num_layers",
                "tokens_per_sample", "train_tokens", "batch_tokens", "batch_samples", "lr",
                "val_loss", "status", "train_loss", "flops", "val_loss_curve", "wall_time_s"]
    assert all(k in on_disk for k in required)
    assert on_disk["tokens_per_sample"] == 2 * 4 * 4
    assert on_disk["batch_samples"] == 8 and on_disk["batch_tokens"] == 8 * 32
    assert on_disk["train_tokens"] == 10 * 8 * 32 and on_disk["iterations"] == 10
    n = on_disk["params_nonembed"]
    assert on_disk["flops"] == pytest.approx(0.75 * n * (7 + 32 / 64) * 10 * 8 * 32)
    assert [p["tokens"] for p in on_disk["val_loss_curve"]] == [0, 5 * 256, 10 * 256]
    assert on_disk["val_loss"] == record["val_loss"]
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000


def test_validation_is_deterministic(tmp_path):
    trainer = Trainer(tiny(tmp_path, "--train-iters", "3"))
    for _ in range(3):
        trainer.train_step()
    first = trainer.validate()
    assert trainer.validate() == first
    # A different batching gives the same number.
    assert trainer.validate(micro_batch_size=5) == pytest.approx(first, rel=1e-6)


@pytest.mark.parametrize("save_mode", [[], ["--async-save"]], ids=["sync", "async"])
def test_resume_gives_identical_losses(tmp_path, save_mode):
    every = ["--save-interval", "6", "--log-interval", "1"] + save_mode
    full = train(tiny(tmp_path / "a", "--train-iters", "12", *every))
    # Run a's iteration-6 checkpoint was published while training went on.
    assert sorted(p.name for p in (tmp_path / "a" / "run" / "checkpoints").glob("iter_*")) == [
        "iter_0000006", "iter_0000012"]
    train(tiny(tmp_path / "b", "--train-iters", "6", *every))
    resumed = train(tiny(tmp_path / "b", "--train-iters", "12", *every))
    losses = lambda d: [(r["iteration"], r["train_loss"]) for r in read_metrics(d / "run")
                        if "train_loss" in r]
    assert len(losses(tmp_path / "a")) == 12
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert resumed["val_loss"] == full["val_loss"]
    assert ckpt.latest_checkpoint(str(tmp_path / "b" / "run" / "checkpoints")).name == "iter_0000012"


def test_crash_during_save_keeps_previous_checkpoint(tmp_path):
    save_dir = tmp_path / "ckpt"
    ckpt.save_checkpoint(str(save_dir), 1, lambda d: (d / "state").write_text("one"))

    def crash(d):
        (d / "state").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        ckpt.save_checkpoint(str(save_dir), 2, crash)
    latest = ckpt.latest_checkpoint(str(save_dir))
    assert latest.name == "iter_0000001" and (latest / "state").read_text() == "one"
    ckpt.save_checkpoint(str(save_dir), 3, lambda d: (d / "state").write_text("three"))
    assert not list(save_dir.glob("*.tmp")), "stale temp dirs are cleaned on the next save"
    assert ckpt.latest_checkpoint(str(save_dir)).name == "iter_0000003"


@pytest.mark.parametrize("flags,message", [
    (["--num-attention-heads", "3"], "num_attention_heads=3 does not divide hidden_size=64"),
    (["--latent-height", "7"], "patch size 2 does not divide latent height=7"),
    (["--train-tokens", "100"], "smaller than one global batch"),
    (["--train-tokens", "1000"], "not a whole number of global batches"),
    (["--model-size", "nope"], "--model-size='nope'; expected one of"),
    (["--objective", "score"], "--objective='score'"),
    (["--global-batch-size", "6"], "not a multiple of --micro-batch-size=4"),
    (["--tensor-model-parallel-size", "2"], "world size 1 is not divisible"),
])
def test_bad_configs_fail_before_work(tmp_path, capsys, flags, message):
    argv = TINY + ["--run-dir", str(tmp_path / "run"), "--train-iters", "5"] + flags
    assert train_cli.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists(), "nothing is written before validation passes"


def test_divergence_is_recorded(tmp_path):
    record = train(tiny(tmp_path, "--lr", "1e6", "--clip-grad", "0", "--train-iters", "30"))
    assert record["status"] == "diverged" and record["val_loss"] is None


def test_wandb_offline_writes_a_run(tmp_path):
    cfg = tiny(tmp_path, "--train-iters", "2", "--wandb-mode", "offline")
    train(cfg)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_resave_same_iteration_and_prune_keep_latest(tmp_path):
    save_dir = str(tmp_path / "ckpt")
    for it in (200, 300):
        ckpt.save_checkpoint(save_dir, it, lambda d: (d / "state").write_text("old"))
    # A new run reusing the directory saves an earlier iteration: it must survive pruning.
    ckpt.save_checkpoint(save_dir, 120, lambda d: (d / "state").write_text("new"), keep=2)
    latest = ckpt.latest_checkpoint(save_dir)
    assert latest.name == "iter_0000120" and (latest / "state").read_text() == "new"
    # Re-saving the published iteration replaces it; `latest` never names a missing dir.
    ckpt.save_checkpoint(save_dir, 120, lambda d: (d / "state").write_text("again"), keep=2)
    assert (ckpt.latest_checkpoint(save_dir) / "state").read_text() == "again"
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "iter_0000120", "iter_0000300", "latest"]


def test_rerun_of_finished_run_keeps_its_record(tmp_path):
    first = train(tiny(tmp_path, "--train-iters", "4", "--save-interval", "2"))
    again = train(tiny(tmp_path, "--train-iters", "4", "--save-interval", "2"))
    assert again["val_loss_curve"] == first["val_loss_curve"]
    assert again["val_loss"] == first["val_loss"]


def test_resume_with_a_changed_config_is_refused(tmp_path, capsys):
    train(tiny(tmp_path, "--train-iters", "2", "--save-interval", "2"))
    argv = TINY + ["--run-dir", str(tmp_path / "run"), "--train-iters", "4",
                   "--save-interval", "2", "--global-batch-size", "4"]
    assert train_cli.main(argv) == 2
    assert "config changed (global_batch_size: 8 -> 4" in capsys.readouterr().err


def test_bf16_keeps_timesteps_in_float32(tmp_path):
    trainer = Trainer(tiny(tmp_path, "--train-iters", "2", "--bf16"))
    seen = []
    model = trainer.engine.model_chunks[0]
    model.timestep_embedder.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randn(2, 4, 2, 8, 8)
    text, mask = torch.randn(2, 12, 32), torch.ones(2, 12, dtype=torch.bool)
    trainer.engine.eval_loss(x, torch.tensor([997.0, 999.0]), text, mask, x)
    assert seen[0].dtype == torch.float32 and seen[0].tolist() == [997.0, 999.0]
    assert next(model.blocks.parameters()).dtype == torch.float32  # fp32 master weights

