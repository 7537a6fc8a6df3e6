"""bench/bench_cp_scaling.py --smoke (CP 1 and 2, Ulysses and ring, 32 and 64 tokens)
writes well-formed results, its byte counts are the exchanges the CP code makes, and
per-rank activation memory halves at CP 2 (docs/benchmarks.md, "Sequence-length scaling
with context parallelism")."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS, HIDDEN, FP32 = 2, 64, 4  # the bench's --smoke model, float32
TOKENS, REPEATS = (32, 64), 2


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("cp_scaling") / "rows.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_cp_scaling.py"),
                           "--smoke", "--json", str(out)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| CP | comm | tokens |" in proc.stdout
    return json.loads(out.read_text())


def _rows(result):
    return {(r["cp"], r["comm"], r["tokens"]): r for r in result["rows"]}


def test_well_formed(result):
    for key in ("command", "machine", "torch", "date", "shape", "rows"):
        assert result[key], key
    assert "--smoke" in result["command"]
    expected = {(1, "-", t) for t in TOKENS} | {(2, c, t) for c in ("a2a", "p2p")
                                                for t in TOKENS}
    assert set(_rows(result)) == expected
    for r in result["rows"]:
        assert len(r["step_times_s"]) == REPEATS
        assert all(math.isfinite(s) and s > 0 for s in r["step_times_s"])
        assert r["saved_total_bytes"] > r["saved_per_block_bytes"] > 0


def _expected_sent(comm: str, cp: int, tokens: int) -> int:
    """Bytes a rank sends per step, from the exchanges context_parallel.py makes per
    self-attention (shard = this rank's tokens x hidden x 4 bytes)."""
    shard = tokens // cp * HIDDEN * FP32
    off_rank = (cp - 1) / cp  # an all-to-all keeps 1/cp of its input at home
    if comm == "a2a":
        forward = 3 * shard * off_rank + shard * off_rank   # q, k, v stacked; the output
        backward = shard * off_rank + 3 * shard * off_rank  # d output; d q, k, v
    else:
        forward = (cp - 1) * 2 * shard                      # K and V to the next rank
        backward = (cp - 1) * 2 * shard + cp * 2 * shard    # K, V again; dK, dV home
    return int(LAYERS * (forward + backward))


def test_bytes_moved_match_the_exchanges(result):
    for (cp, comm, tokens), r in _rows(result).items():
        if cp == 1:
            assert r["sent_bytes"] == 0 and r["formula_bytes"] == 0
            continue
        expected = _expected_sent(comm, cp, tokens)
        assert r["sent_bytes"] == expected, (comm, tokens)
        assert r["formula_bytes"] == expected and r["bytes_ratio"] == 1.0
        other = "p2p_sent_bytes" if comm == "a2a" else "a2a_sent_bytes"
        assert r[other] == 0  # each flavour uses only its own collective


def test_memory_per_rank_halves_at_cp2(result):
    rows = _rows(result)
    for comm in ("a2a", "p2p"):
        for tokens in TOKENS:
            one, two = rows[(1, "-", tokens)], rows[(2, comm, tokens)]
            # Per block, x CP against CP 1: at least 1 (nothing shrinks faster than
            # 1/CP) and at most 1.10 for the ring, 1.15 for Ulysses. What every rank keeps
            # whole (the 8 caption tokens' K/V, per-sample modulation vectors) measures
            # 1-2% at these sizes; Ulysses also keeps its received q/k/v buffer and hands
            # the output projection a contiguous all-to-all result, which it saves, where
            # one process passes a free view of SDPA's sequence-first output (about 10%).
            bound = 1.15 if comm == "a2a" else 1.10
            assert 1.0 <= two["block_x_cp_vs_cp1"] <= bound, (comm, tokens)
            assert two["block_x_cp_vs_cp1"] == pytest.approx(
                2 * two["saved_per_block_bytes"] / one["saved_per_block_bytes"])
            assert 1.0 <= two["total_x_cp_vs_cp1"] <= 1.15, (comm, tokens)
    # What the ring does not halve: a part independent of the length, plus exactly one
    # [S / 2, B, D] float32 tensor per block. The ring's attention output arrives as a
    # contiguous [B, H, S / 2, E], so its sequence-first copy for the output projection
    # is saved; one process hands the projection a free view of SDPA's output instead.
    residual = [2 * rows[(2, "p2p", t)]["saved_per_block_bytes"]
                - rows[(1, "-", t)]["saved_per_block_bytes"] for t in TOKENS]
    assert residual[0] > 0
    assert residual[1] - residual[0] == 2 * (TOKENS[1] - TOKENS[0]) // 2 * HIDDEN * FP32
