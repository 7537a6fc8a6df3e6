"""The job config: frozen, nested, the same from flat or nested YAML, flags win, --help
documents every flag; resolved values live apart from it."""
import dataclasses

import pytest
import yaml

from megatron_vdit.training.config import (FIELDS, SECTIONS, JobConfig, build_parser,
                                           load_config)
from megatron_vdit.training.resolved import resolve

FLAT = {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "lr": 2e-3,
        "micro_batch_size": 2, "train_iters": 3, "tensor_model_parallel_size": 1,
        "patch_size": [1, 2, 2], "data": "synthetic", "run_dir": "runs/x"}
NESTED = {"model": {"num_layers": 2, "hidden_size": 64, "num_attention_heads": 2,
                    "patch_size": [1, 2, 2]},
          "optimizer": {"lr": 2e-3}, "schedule": {"micro_batch_size": 2, "train_iters": 3},
          "parallel": {"tensor_model_parallel_size": 1}, "data": {"data": "synthetic"},
          "logging": {"run_dir": "runs/x"}}


def _write(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(obj))
    return str(path)


def test_sections_are_frozen_and_nested():
    job = load_config(["--lr", "3e-3", "--tensor-model-parallel-size", "2"])
    assert job.optimizer.lr == 3e-3 and job.parallel.tensor_model_parallel_size == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.optimizer.lr = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.optimizer = None
    assert set(SECTIONS) == {"model", "data", "optimizer", "schedule", "parallel",
                             "checkpoint", "logging"}


def test_flat_and_nested_yaml_give_the_same_config(tmp_path):
    flat = load_config(["--config", _write(tmp_path, "flat.yaml", FLAT)])
    nested = load_config(["--config", _write(tmp_path, "nested.yaml", NESTED)])
    mixed = load_config(["--config", _write(tmp_path, "mixed.yaml",
                                            {**NESTED, "data": "synthetic"})])
    assert flat == nested == mixed
    assert flat.model.patch_size == (1, 2, 2) and flat.data.data == "synthetic"
    assert flat != JobConfig()


def test_flags_override_yaml_and_defaults(tmp_path):
    path = _write(tmp_path, "c.yaml", NESTED)
    job = load_config(["--config", path, "--lr", "5e-4", "--bf16"])
    assert job.optimizer.lr == 5e-4 and job.model.bf16 is True
    assert job.schedule.micro_batch_size == 2  # from the file
    assert job.optimizer.adam_beta2 == 0.999  # the default


def test_flat_form_round_trips_through_yaml(tmp_path):
    job = load_config(["--config", _write(tmp_path, "c.yaml", FLAT), "--seed", "7"])
    again = load_config(["--config", _write(tmp_path, "again.yaml", {
        k: list(v) if isinstance(v, tuple) else v for k, v in job.flat().items()})])
    assert again == job


def test_field_types_come_from_the_annotations():
    expected = {"lr": (float, False), "num_layers": (int, True), "bf16": (bool, False),
                "patch_size": (tuple, False), "load": (str, True), "ulysses_size": (int, True)}
    for name, (kind, optional) in expected.items():
        assert (FIELDS[name].kind, FIELDS[name].optional) == (kind, optional), name


def test_help_documents_every_field():
    parser = build_parser()
    actions = {a.option_strings[0]: a for a in parser._actions if a.option_strings}
    for spec in FIELDS.values():
        action = actions[spec.flag]
        assert action.help and "default:" in action.help, spec.flag
        for choice in spec.choices or ():
            assert str(choice) in action.help, (spec.flag, choice)
        if spec.unit:
            assert f"[{spec.unit}]" in action.help, spec.flag
    text = parser.format_help()
    assert all(spec.flag in text for spec in FIELDS.values())
    assert "--dry-run" in text and "--config" in text


def test_resolved_values_do_not_touch_the_config():
    job = load_config(["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "2",
                       "--global-batch-tokens", "192", "--train-tokens", "1920",
                       "--micro-batch-size", "2", "--data", "synthetic"])
    before = job.flat()
    r = resolve(job, world_size=1)
    assert job.flat() == before and job.schedule.global_batch_size is None
    # 3 x 4 x 4 = 48 tokens per sample: 192 tokens = 4 samples; 1920 tokens = 10 steps.
    assert (r.tokens_per_sample, r.global_batch_size, r.train_iters) == (48, 4, 10)
    assert r.num_microbatches == 2 and r.data_parallel_size == 1


def test_preset_fills_the_shape_and_explicit_values_win():
    job = load_config(["--model-size", "cpu-0.6m", "--num-layers", "3", "--train-iters", "2",
                       "--data", "synthetic"])
    r = resolve(job, 1)
    assert job.model.num_layers == 3 and job.model.hidden_size is None
    assert r.num_layers == 3 and r.hidden_size > 0 and r.num_attention_heads > 0
