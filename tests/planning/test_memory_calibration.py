"""The memory model stays within 10% of measurement (bench/bench_memory_model.py, two
gloo ranks): TP2 + SP and CP2 (Ulysses), the layouts whose terms the planner relies on
most; docs/benchmarks.md has the whole grid."""
import json
import os
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_predicted_bytes_within_ten_percent(tmp_path):
    out = tmp_path / "rows.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           os.path.join(REPO, "bench", "bench_memory_model.py"), "--layouts", "TP2+SP",
           "CP2 a2a", "--hidden", "128", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert len(rows) == 4  # 2 layouts x (no recompute, full)
    for r in rows:
        assert abs(r["act_predicted"] / r["act_measured"] - 1) <= 0.10, r
        assert abs(r["states_predicted"] / r["states_measured"] - 1) <= 0.10, r
