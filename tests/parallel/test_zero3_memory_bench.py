"""bench/bench_zero3_memory.py --smoke: real torchrun worlds of 1 and 2 ranks, tiny model.

Checks the result is well formed and the weights check holds (the full table, with a
model of hundreds of millions of parameters, is in docs/benchmarks.md)."""
import importlib.util
import json
import math
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_zero3_memory.py"


def test_smoke_table(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_zero3_memory", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "zero3.json"
    bench.main(["--smoke", "--json", str(out)])
    record = json.loads(out.read_text())
    assert {"command", "machine", "date", "torch"} <= set(record["meta"])
    rows = record["rows"]
    assert [r["ranks"] for r in rows] == [1, 2]
    assert len({r["params"] for r in rows}) == 1 and rows[0]["params"] > 0
    for r in rows:
        assert r["peak_mb"] >= r["floor_mb"] > 0 and math.isfinite(r["loss"])
        # Every shard drawn at its own offset: the same weights as one process.
        assert r["weights_max_rel_diff"] < 1e-12
    assert rows[0]["above_floor_vs_single"] == 1.0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1 + 2 + len(rows)
