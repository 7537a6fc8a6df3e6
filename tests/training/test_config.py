"""Config loading and validation: every mistake is a ValueError naming it, before work."""
import pytest

from megatron_vdit.training.config import load_config
from megatron_vdit.training.resolved import resolve as resolve_job

BASE = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "2",
        "--latent-frames", "2", "--latent-height", "8", "--latent-width", "8",
        "--micro-batch-size", "4", "--train-iters", "5", "--eval-samples", "8"]


def resolve(argv):
    """At the smallest world the layout needs (data-parallel size 1)."""
    job = load_config(BASE + argv)
    p = job.parallel
    world = p.tensor_model_parallel_size * p.pipeline_model_parallel_size * p.context_parallel_size
    return resolve_job(job, world)


def test_yaml_values_are_typed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-3\nmicro_batch_size: '4'\npatch_size: [1, 2, 2]\nbf16: 'no'\n"
                    "save_interval: null\n")
    cfg = load_config(["--config", str(path)])
    assert cfg.optimizer.lr == 1e-3 and cfg.schedule.micro_batch_size == 4
    assert cfg.model.patch_size == (1, 2, 2)
    assert cfg.model.bf16 is False and cfg.checkpoint.save_interval is None
    # Flags override YAML.
    assert load_config(["--config", str(path), "--lr", "2e-3"]).optimizer.lr == 2e-3


@pytest.mark.parametrize("yaml_text,message", [
    ("patch_size: 2\n", "'patch_size': 2 is not a valid list of 3 ints"),
    ("patch_size: '122'\n", "'patch_size': '122' is not a valid list of 3 ints"),
    ("micro_batch_size: 2.5\n", "'micro_batch_size': 2.5 is not a valid int"),
    ("bf16: maybe\n", "'bf16': 'maybe' is not a valid bool"),
    ("lr: fast\n", "'lr': 'fast' is not a valid float"),
    ("micro_batch_size: null\n", "'micro_batch_size' may not be null"),
    ("learning_rate: 1\n", "line 1: unknown key 'learning_rate'"),
    ("- 1\n- 2\n", "expected a mapping"),
])
def test_bad_yaml(tmp_path, yaml_text, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ValueError) as err:
        load_config(["--config", str(path)])
    assert str(path) in str(err.value)
    assert message in str(err.value)


@pytest.mark.parametrize("flags,message", [
    (["--patch-size", "0", "2", "2"], "--patch-size needs 3 positive numbers"),
    (["--num-layers", "0"], "--num-layers=0 must be >= 1"),
    (["--global-batch-size", "0"], "--global-batch-size=0 must be >= 1"),
    (["--global-batch-tokens", "-32"], "--global-batch-tokens=-32 must be >= 1"),
    (["--eval-micro-batch-size", "0"], "--eval-micro-batch-size=0 must be >= 1"),
    (["--hidden-size", "-64"], "--hidden-size=-64 must be >= 1"),
    (["--min-lr", "nan"], "--min-lr=nan must be finite"),
    (["--clip-grad", "-1"], "--clip-grad=-1.0 must be finite and >= 0"),
    (["--adam-beta2", "2"], "--adam-beta2=2.0 must be in [0, 1)"),
    (["--lr-warmup-samples", "20"], "covers the whole run (20 samples)"),
    (["--lr-warmup-samples", "-5"], "--lr-warmup-samples=-5 must be finite and >= 0"),
    (["--eval-samples", "7", "--pipeline-model-parallel-size", "2"], "--eval-samples=7 must be a multiple"),
    (["--global-batch-tokens", "100"], "not a whole number of samples of 32 tokens"),
])
def test_bad_values(flags, message):
    with pytest.raises(ValueError) as err:
        resolve(flags)
    assert message in str(err.value)


def test_batch_in_tokens_and_exact_duration():
    cfg = resolve(["--global-batch-tokens", "256", "--train-iters", "7"])
    assert cfg.global_batch_size == 8 and cfg.batch_tokens == 256
    assert cfg.train_tokens == 7 * 256 and cfg.num_microbatches == 2
    assert cfg.data_parallel_size == 1
