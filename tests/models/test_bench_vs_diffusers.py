"""bench/bench_vs_diffusers.py --smoke: both models built at the same shape, both timed,
parameters counted, peak memory and saved-for-backward bytes measured, all in
well-formed JSON and a table."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_is_well_formed(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_vs_diffusers.py"),
                           "--smoke", "--saved", "3", "--json", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    meta = data["meta"]
    assert meta["torch"] and meta["diffusers"] and meta["date"] and meta["command"]
    [result] = data["results"]
    ours, theirs = result["shape"]["ours"], result["shape"]["diffusers"]
    assert ours == theirs  # depth, width, heads, FFN, patch, channels, text width
    assert ours["depth"] >= 1 and ours["width"] % ours["heads"] == 0
    for which in ("ours", "diffusers"):
        times = result["step_s"][which]
        assert len(times["all"]) == meta["repeats"]
        assert 0 < times["min"] <= times["median"] <= times["max"]
        assert result["params"][which] > 0 and result["peak_mib"][which] > 0
        assert sum(result["saved_for_backward_mib"][which].values()) > 0
    # Same design up to the q/k norm width: the counts differ by well under 1%.
    assert result["params"]["ours"] == pytest.approx(result["params"]["diffusers"], rel=0.01)
    ratio = result["step_s"]["diffusers"]["median"] / result["step_s"]["ours"]["median"]
    assert result["ratio_diffusers_over_ours"] == pytest.approx(ratio)
    assert f"| {result['preset']} |" in proc.stdout
