"""`examples/run_sweep.sh --quick`: the whole main job with real training, at toy scale.

Asserts that the outputs exist and are well formed, not what the law's values are.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_vdit.sweep.heldout import KEYS

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(3600)  # <= 5 minutes on 2 idle cores; far more on a shared machine
def test_quick_sweep_writes_every_output(tmp_path):
    out = tmp_path / "quick"
    env = {**os.environ, "PY": sys.executable,
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(["bash", str(ROOT / "examples" / "run_sweep.sh"), "--quick", "--out",
                           str(out)], env=env, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((out / "runs").glob("*/run.json"))
    assert len(runs) >= 3 * 9, "3 sizes x a 3x3 grid, grown at the edges"
    assert proc.stdout.count(": completed val_loss=") >= len(runs)
    assert len(list((out / "noise").glob("*/run.json"))) == 1
    val = json.loads((out / "validation.json").read_text())
    assert set(KEYS) <= set(val) and isinstance(val["law_usable"], bool)
    assert val["heldout_params_nonembed"] > 2 * max(json.loads(p.read_text())["params_nonembed"]
                                                    for p in runs)
    assert val["seed_noise_rel"] is None or val["seed_noise_rel"] >= 0
    if val["law_usable"]:
        assert len(list((out / "heldout").glob("*/run.json"))) == 5
        assert val["measured_val_loss"] > 0 and val["lr_steps_off"] in (-1, 0, 1)
        assert json.loads((out / "law.json").read_text())["loss"]
    else:
        assert val["unusable_reasons"] and val["predicted_val_loss"] is None
    report = (out / "report.md").read_text()
    for section in ("## Headline", "## Held-out check", "## Fitted laws", "## Plan"):
        assert section in report
    if (out / "law.json").exists():
        assert list((out / "plots").glob("*.png"))
    assert (out / "plan.txt").read_text().strip()
    assert f"report: {out / 'report.md'}" in proc.stdout
