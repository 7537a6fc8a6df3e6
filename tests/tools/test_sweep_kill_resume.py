"""SIGKILL a sweep mid-run; the rerun finishes the same records and resumes, never restarts."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_run_sweep import BASE  # the same tiny base config

ROOT = Path(__file__).resolve().parents[2]


def _sweep(tmp_path):
    config = tmp_path / "base.yaml"
    config.write_text(BASE)
    return [sys.executable, str(ROOT / "tools" / "run_sweep.py"), "--config", str(config),
            "--presets", "cpu-0.13m", "--train-tokens", str(80 * 8 * 32), "--lrs", "1e-3", "2e-3",
            "--batch-sizes", "8", "--tokens-per-sample", "32", "--evals-per-run", "2",
            "--parallel", "2", "--out", str(tmp_path / "sweep")]


def _checkpointed_unfinished(out: Path) -> dict:
    found = {}
    for run in out.glob("*"):
        latest = run / "checkpoints" / "latest"
        if latest.exists() and not (run / "run.json").exists():
            found[run.name] = latest.read_text().strip()
    return found


def _holders(path: Path) -> list[int]:
    """Pids of live processes with `path` open (an orphaned run keeps its stdout.log open)."""
    pids = []
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            if any(os.readlink(fd) == str(path) for fd in fd_dir.iterdir()):
                pids.append(int(fd_dir.parent.name))
        except OSError:
            continue  # gone meanwhile, or not ours to read
    return pids


def test_sigkill_mid_sweep_then_rerun_resumes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd, out = _sweep(tmp_path), tmp_path / "sweep"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, caught = time.time() + 900, {}
    while time.time() < deadline and proc.poll() is None:
        caught = _checkpointed_unfinished(out)
        if caught:
            break
        time.sleep(0.2)
    assert caught, "the sweep ended (or timed out) before a run had checkpointed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(2)  # the runs die with the sweep (pidfd watch; PR_SET_PDEATHSIG for subprocesses)
    orphans = {log.parent.name: _holders(log) for log in out.glob("*/stdout.log")}
    caught = [name for name in caught if not (out / name / "run.json").exists()]
    assert not any(orphans.values()), f"runs outlived the killed sweep: {orphans}"
    marks = {name: (out / name / "stdout.log").stat().st_size for name in caught}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    records = {p.parent.name: json.loads(p.read_text()) for p in out.glob("*/run.json")}
    assert sorted(records) == ["cpu-0.13m_T20480_lr0.001_B8", "cpu-0.13m_T20480_lr0.002_B8"]
    assert all(r["status"] == "completed" and r["iterations"] == 80 for r in records.values())
    for name, size in marks.items():
        rerun_log = (out / name / "stdout.log").read_text()[size:]
        assert "resumed from" in rerun_log, f"{name} restarted instead of resuming:\n{rerun_log[-800:]}"
