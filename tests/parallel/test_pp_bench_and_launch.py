"""The GPU step benchmark runs on CPU with a tiny model, and the launch scripts only
use flags the training CLI knows."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dist_utils import spawn_world
from megatron_vdit.models import accounting

ROOT = Path(__file__).resolve().parents[2]


def _run_bench(argv):
    spec = importlib.util.spec_from_file_location("bench_gpu_step", ROOT / "bench" / "bench_gpu_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(argv)
    return [{k: v for k, v in r.items()} for r in results]


def _check(result: dict, tokens: int, world: int) -> None:
    assert result["tokens_per_sample"] == tokens
    assert result["world_size"] == world and result["dtype"] == "fp32"
    assert result["step_time_s"] > 0 and math.isfinite(result["loss"])
    cfg_shape = accounting.ModelShape(num_layers=4, hidden_size=64, num_attention_heads=4,
                                      in_channels=4, patch_volume=4, text_hidden_size=32,
                                      max_text_tokens=8, timestep_embed_dim=64)
    flops = accounting.model_flops_per_sample(cfg_shape, tokens) * result["global_batch_samples"]
    assert result["model_flops_per_step"] == pytest.approx(flops)
    # MFU against the 1 TFLOP/s peak given on the command line.
    assert result["mfu"] == pytest.approx(flops / result["step_time_s"] / (1e12 * world))
    assert result["peak_memory_gib"] > 0


def test_bench_tiny_single_process(tmp_path):
    """One process, as a user runs it: a plain subprocess (no launcher, no forked world)."""
    out = tmp_path / "bench.jsonl"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu_step.py"), "--tiny",
                           "--tokens", "12", "24", "--steps", "2", "--warmup", "1",
                           "--peak-tflops", "1", "--json-out", str(out)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["tokens_per_sample"] for r in results] == [12, 24]
    for r in results:
        _check(r, r["tokens_per_sample"], 1)


def test_bench_tiny_pipeline_parallel():
    results = spawn_world(_run_bench, 2, ["--tiny", "--tokens", "12", "--steps", "1",
                                          "--warmup", "1", "--peak-tflops", "1",
                                          "--pipeline-model-parallel-size", "2",
                                          "--num-microbatches", "2"])
    assert results[0][0]["layout"]["pp"] == 2 and results[0][0]["global_batch_samples"] == 2
    _check(results[0][0], 12, 2)
    assert results[0][0]["loss"] == results[1][0]["loss"]  # identical on every rank


LAUNCH_SCRIPTS = ("train_single_node.sh", "train_multi_node.sh", "slurm_flagship.sh",
                  "bench_gpu_step.sh")
LAUNCHER_FLAGS = {"kill-on-bad-exit", "standalone", "nproc-per-node", "nnodes", "node-rank", "rdzv-backend",
                  "rdzv-endpoint", "rdzv-id"}


def _flags(script: Path) -> set[str]:
    """Long flags in a launch script, minus srun's and torchrun's (SBATCH lines are comments)."""
    lines = [ln for ln in script.read_text().splitlines() if not ln.lstrip().startswith("#")]
    found = set(re.findall(r"(?<![\w-])--([a-z][a-z0-9-]+)", "\n".join(lines)))
    return found - LAUNCHER_FLAGS


def test_launch_scripts_parse_and_use_known_flags():
    from megatron_vdit.training.config import FIELDS
    train_known = {spec.flag[2:] for spec in FIELDS.values()} | {"config"}
    spec = importlib.util.spec_from_file_location("bench_gpu_step", ROOT / "bench" / "bench_gpu_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench_known = {o.lstrip("-") for a in bench.build_parser()._actions for o in a.option_strings}
    scripts = [ROOT / "examples" / name for name in LAUNCH_SCRIPTS]
    used = set()
    for script in scripts:
        subprocess.run(["bash", "-n", str(script)], check=True)
        known = bench_known if "bench_gpu_step.py" in script.read_text() else train_known
        flags = _flags(script)
        assert flags <= known, f"{script.name}: unknown flags {sorted(flags - known)}"
        used |= flags
    assert {"tensor-model-parallel-size", "pipeline-model-parallel-size",
            "num-layers-per-virtual-pipeline-stage", "context-parallel-size"} <= used



@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bench_tiny_on_gpu_bf16(tmp_path):
    out = tmp_path / "gpu.jsonl"
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc-per-node=1", str(ROOT / "bench" / "bench_gpu_step.py"), "--tiny",
                    "--tokens", "48", "--steps", "2", "--warmup", "1", "--json-out", str(out)],
                   check=True, cwd=ROOT)
    [result] = [json.loads(line) for line in out.read_text().splitlines()]
    assert result["dtype"] == "bf16" and result["device"] != "cpu"
    assert math.isfinite(result["loss"]) and result["step_time_s"] > 0
    assert result["peak_memory_gib"] > 0
