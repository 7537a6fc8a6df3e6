"""bench/bench_cpu_efficiency.py --smoke: the step and both GEMMs timed, rates and
efficiencies finite, the FLOP counts exact, the profile broken into categories, all in
well-formed JSON and a table."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CATEGORIES = {"matmul", "attention", "norm", "rope", "elementwise", "reductions", "copies",
              "optimizer", "other"}


def expected_flops(shape: dict, meta: dict) -> tuple[int, int]:
    """(model FLOPs, FlopCounterMode FLOPs) of one training step, from the architecture.

    Forward per sample: per layer the video-token linears (qkv 3d, self out d, cross q d,
    cross out d, fc1 4d, fc2 4d: 14 d^2 per token), the caption K/V (2 d^2 per text
    token), self-attention scores and values (2 x 2 n^2 d), cross-attention (2 x 2 n s d);
    then the patch embedding and final layer (p = channels x patch 1x2x2 features each way)
    and the caption projection (text width -> d -> d). Model FLOPs = 3x that. The counter
    also sees the per-sample conditioning (timestep MLP 256 -> d -> d, adaLN-single
    d -> 6d), 3x like the rest, and a backward without the input gradients nobody needs
    (patch embedding, caption fc1, timestep fc1)."""
    layers, d = shape["num_layers"], shape["hidden_size"]
    n, s, batch = shape["tokens_per_sample"], shape["text_tokens"], shape["batch"]
    p, text_dim, freq = meta["channels"] * 4, meta["text_dim"], 256
    per_layer = 2 * n * 14 * d * d + 2 * s * 2 * d * d + 4 * n * n * d + 4 * n * s * d
    forward = layers * per_layer + 2 * (2 * n * p * d) + 2 * s * (text_dim * d + d * d)
    conditioning = 2 * (freq * d + d * d + d * 6 * d)
    unneeded = 2 * (n * p * d + s * text_dim * d + freq * d)
    return 3 * forward * batch, batch * (3 * (forward + conditioning) - unneeded)


def check_stats(s: dict, count: int, upper: float = math.inf) -> None:
    assert len(s["all"]) == count
    assert all(math.isfinite(v) and 0 < v < upper for v in s["all"])
    assert s["min"] <= s["median"] <= s["max"]


def test_smoke_run_is_well_formed(tmp_path):
    out = tmp_path / "eff.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_cpu_efficiency.py"),
                           "--smoke", "--json", str(out)],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    meta = data["meta"]
    for key in ("command", "machine", "cpu_count", "load_avg", "load_avg_end", "python",
                "torch", "date", "threads", "repeats", "batch", "latent"):
        assert meta[key], key
    assert "--smoke" in meta["command"]
    [result] = data["results"]
    shape, repeats = result["shape"], meta["repeats"]
    assert shape["tokens_per_step"] == shape["batch"] * shape["tokens_per_sample"]

    model_flops, counted = expected_flops(shape, meta)
    assert result["flops"]["model_per_step"] == model_flops
    assert result["flops"]["counted_per_step"] == counted
    assert sum(result["flops"]["counted_by_op"].values()) == counted

    for gemm in ("square", "model_shape"):
        check_stats(result["gemm"][gemm]["gflops"], repeats)
    eager = result["eager"]
    check_stats(eager["step_s"], repeats)
    check_stats(eager["gflops"], repeats)
    check_stats(eager["efficiency"], repeats, upper=2)
    check_stats(eager["efficiency_vs_model_shape_gemm"], repeats, upper=2)
    for achieved, t in zip(eager["gflops"]["all"], eager["step_s"]["all"]):
        assert achieved == pytest.approx(model_flops / t / 1e9)
    assert result["compiled"] == {"mode": "none"}  # --smoke does not compile

    brk = result["breakdown"]
    assert set(brk["category_ms"]) == CATEGORIES
    assert all(v >= 0 for v in brk["category_ms"].values())
    assert sum(brk["category_ms"].values()) == pytest.approx(brk["profiled_total_ms"])
    assert brk["timed_step_ms"] == pytest.approx(1e3 * eager["step_s"]["median"])
    assert brk["uncategorized_ms"] == pytest.approx(
        brk["timed_step_ms"] - brk["profiled_total_ms"] + brk["category_ms"]["other"])
    for category in ("matmul", "attention", "norm", "rope", "optimizer"):
        assert brk["category_ms"][category] > 0, category  # each is found in a real step
    counts = result["flops"]["counted_by_op"]
    assert brk["matmul_flops_per_step"] == counts["aten.mm"] + counts["aten.addmm"]
    assert brk["matmul_gflops"] == pytest.approx(
        brk["matmul_flops_per_step"] / brk["category_ms"]["matmul"] / 1e6)
    assert brk["attention_flops_per_step"] == counts["aten.bmm"]
    assert brk["attention_gflops"] == pytest.approx(
        counts["aten.bmm"] / brk["category_ms"]["attention"] / 1e6)
    assert f"| {result['preset']} ({shape['num_layers']}, {shape['hidden_size']}) |" in proc.stdout
    assert "| matmul-only GFLOP/s (/ bare GEMM, / fc1-shape GEMM) |" in proc.stdout
