"""bench/gpu_table.py: the GPU results table written into a markdown file, from the
JSON lines the benchmark itself produced (a CPU --tiny run)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from dist_utils import spawn_world
from test_pp_bench_and_launch import _run_bench

ROOT = Path(__file__).resolve().parents[2]


def _table_module():
    spec = importlib.util.spec_from_file_location("gpu_table", ROOT / "bench" / "gpu_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_is_written_between_the_markers(tmp_path):
    [results] = spawn_world(_run_bench, 1, ["--tiny", "--tokens", "12", "--steps", "1",
                                            "--warmup", "0", "--peak-tflops", "1"])
    jsonl = tmp_path / "results.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in results * 2))  # a rerun, same key
    doc = tmp_path / "bench.md"
    doc.write_text("# Bench\nbefore\n<!-- gpu-table:start -->\nold\n<!-- gpu-table:end -->\nafter\n")
    table = _table_module()
    assert table.main([str(jsonl), str(doc)]) == 0
    lines = doc.read_text().splitlines()
    assert lines[:3] == ["# Bench", "before", "<!-- gpu-table:start -->"]
    assert lines[-2:] == ["<!-- gpu-table:end -->", "after"] and "old" not in lines
    rows = [l for l in lines if l.startswith("| cpu |")]
    assert len(rows) == 1  # the rerun replaced the first line
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    r = results[0]
    assert cells[1:6] == ["1 rank (1 GPU)", "12", "none", "2", "sdpa (cpu flash)"]
    assert float(cells[6]) == pytest.approx(r["step_time_s"], abs=5e-4)
    assert cells[8] == f"{100 * r['mfu']:.1f}%"


def test_missing_markers_are_a_usage_error(tmp_path, capsys):
    jsonl = tmp_path / "r.jsonl"
    jsonl.write_text('{"x": 1}\n')
    doc = tmp_path / "doc.md"
    doc.write_text("no markers\n")
    with pytest.raises(SystemExit) as exc:
        _table_module().main([str(jsonl), str(doc)])
    assert exc.value.code == 2
    assert "gpu_table.py: error:" in capsys.readouterr().err
    assert doc.read_text() == "no markers\n"
