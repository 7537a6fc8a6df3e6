"""bench/bench_precompute.py --smoke: the in-process rows (sweep data encoding, clip
cache, ShardLoader) are measured and printed, with the run's command, machine and
versions."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_smoke_run_is_well_formed():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_precompute.py"), "--smoke"],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    header, *table = proc.stdout.strip().splitlines()
    meta = json.loads(header)
    assert meta["command"].endswith("bench_precompute.py --smoke")
    for key in ("machine", "torch", "diffusers", "av", "date"):
        assert meta[key], key
    rows = {line.split(" | ")[0].strip("| "): line.strip("|").split(" | ")[1:]
            for line in table if line.startswith("| ") and not line.startswith("|--")}
    # --smoke renders 2 frames of 8x8 pixels: 2x2 space-to-depth of RGB gives 12 channels.
    assert "sweep data (`--data natural`), latent 12x2x4x4" in rows
    for name in ("render + encode (no cache)", "clip cache read (another run of the sweep)",
                 "read + decode + shuffle + collate, 0 workers"):
        value = float(rows[name][-1])
        assert math.isfinite(value) and value > 0, (name, value)
    assert rows["read + decode + shuffle + collate, 0 workers"][0].strip() == "2"   # batch size
    for name in ("serial (read, step, read, ...)",
                 "prefetch worker (next batch read during the step)", "prefetch / serial"):
        value = float(rows[name][-1])
        assert math.isfinite(value) and value > 0, (name, value)
