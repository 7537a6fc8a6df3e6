"""Choosing the CP flavour (Ulysses when heads allow) and the TransformerEngine backend."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dist_utils import spawn_world
from test_pp_bench_and_launch import _run_bench
from megatron_vdit.parallel.context_parallel import transformer_engine_problem
from megatron_vdit.parallel.layout import default_cp_comm_type

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("heads, tp, cp, expected", [
    (32, 8, 2, "a2a"),       # the 7b flagship: 4 heads per TP rank over CP 2
    (24, 1, 8, "a2a"),
    (12, 1, 8, "a2a+p2p"),   # 12 heads: Ulysses 4 inside, ring 2 across
    (4, 2, 4, "a2a+p2p"),
    (3, 1, 2, "p2p"),        # an odd head count cannot be split over 2 ranks
    (32, 8, 1, "a2a"),
])
def test_default_cp_comm_type_prefers_ulysses(heads, tp, cp, expected):
    assert default_cp_comm_type(heads, tp, cp) == expected


def test_bench_defaults_to_ulysses_and_reports_the_backend():
    results = spawn_world(_run_bench, 2, ["--tiny", "--tokens", "12", "--steps", "1",
                                          "--warmup", "0", "--context-parallel-size", "2",
                                          "--zero-stage", "1"])
    result = results[0][0]
    assert result["layout"]["cp_comm_type"] == "a2a" and result["zero_stage"] == 1
    assert result["attention_backend"] == "sdpa (cpu flash)"


@pytest.mark.skipif(transformer_engine_problem() is None, reason="TransformerEngine runs here")
def test_bench_te_backend_without_te_is_a_clear_usage_error():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu_step.py"), "--tiny",
                           "--cp-backend", "te"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "bench_gpu_step.py: error: --cp-backend te: TransformerEngine")
