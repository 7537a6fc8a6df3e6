"""The layout planner's memory arithmetic and choices (pure Python)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_vdit.parallel.memory import GIB, estimate_memory_gib, suggest_layout

ROOT = Path(__file__).resolve().parents[2]


def test_memory_estimate_by_hand():
    states, acts = estimate_memory_gib(params_total=1e9, num_layers=10, hidden_size=1000,
                                       tokens_per_sample=8000, tp=2, cp=2, pp=1, dp=2)
    assert states == pytest.approx((16e9 / 8 + 2e9 / 10 / 2) / GIB)
    assert acts == pytest.approx(34 * 4000 * 1000 / 2 * 10 / GIB)
    _, full = estimate_memory_gib(params_total=1e9, num_layers=10, hidden_size=1000,
                                  tokens_per_sample=8000, tp=2, cp=2, pp=1, dp=2,
                                  recompute="full")
    assert full == pytest.approx((2 * 4000 * 1000 / 2 * 10 + 34 * 4000 * 1000 / 2) / GIB)


def test_small_model_short_clips_is_pure_data_parallel():
    est = suggest_layout(params_total=1.1e9, num_layers=28, hidden_size=1536,
                         num_attention_heads=12, tokens_per_sample=1280, num_gpus=8)
    assert (est.tensor_model_parallel_size, est.context_parallel_size,
            est.pipeline_model_parallel_size, est.data_parallel_size) == (1, 1, 1, 8)
    assert est.recompute_granularity is None and est.memory_gib < 74


def test_long_sequences_get_context_parallel_and_fit():
    est = suggest_layout(params_total=18e9, num_layers=30, hidden_size=6144,
                         num_attention_heads=48, tokens_per_sample=131072, num_gpus=64)
    assert est.context_parallel_size * est.tensor_model_parallel_size > 1
    assert est.memory_gib <= 80 - 6
    assert 48 % est.tensor_model_parallel_size == 0 and est.tensor_model_parallel_size <= 8
    assert "--context-parallel-size" in est.flags()


def test_nothing_fits_is_a_clear_error():
    with pytest.raises(ValueError, match="no layout of 2 GPUs with 80.0 GiB fits"):
        suggest_layout(params_total=30e9, num_layers=28, hidden_size=8192,
                       num_attention_heads=64, tokens_per_sample=65536, num_gpus=2)


def test_predict_config_reports_a_layout():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "predict_config.py"),
                          "--budget", "1e24", "--gpus", "64", "--tokens-per-sample", "65536",
                          "--json"], capture_output=True, text=True, check=True).stdout
    layout = json.loads(out)["parallel_layout"]
    assert layout["memory_gib_per_gpu"] <= 74 and "--context-parallel-size" in layout["flags"]
