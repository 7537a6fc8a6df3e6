"""The sweep runner launches real training subprocesses and resumes by skipping done runs."""
import json
from pathlib import Path

from megatron_vdit.cli import sweep as run_sweep

ROOT = Path(__file__).resolve().parents[2]

# The tiny base config shared with the other sweep tests.
BASE = (ROOT / "tests" / "tools" / "tiny_sweep_base.yaml").read_text()


def test_sweep_runs_records_and_resumes(tmp_path):
    config = tmp_path / "base.yaml"
    config.write_text(BASE)
    argv = ["--config", str(config), "--presets", "cpu-0.13m", "--train-tokens", "512",
            "--lrs", "1e-3", "3e-3", "--batch-sizes", "8", "--tokens-per-sample", "32",
            "--evals-per-run", "2", "--out", str(tmp_path / "sweep")]
    assert run_sweep.main(argv) == 0
    records = sorted((tmp_path / "sweep").glob("*/run.json"))
    assert [r.parent.name for r in records] == ["cpu-0.13m_T512_lr0.001_B8", "cpu-0.13m_T512_lr0.003_B8"]
    for path in records:
        record = json.loads(path.read_text())
        assert record["status"] == "completed" and record["train_tokens"] == 512
        assert record["batch_samples"] == 8 and len(record["val_loss_curve"]) == 3
    stamp = records[0].stat().st_mtime_ns
    assert run_sweep.main(argv) == 0, "rerun skips finished runs"
    assert records[0].stat().st_mtime_ns == stamp


def test_sweep_rejects_token_budgets_that_do_not_divide(capsys):
    argv = ["--presets", "cpu-0.13m", "--train-tokens", "1000", "--lrs", "1e-3",
            "--batch-sizes", "8", "--dry-run"]
    assert run_sweep.main(argv) == 2
    assert "not a whole number of batches" in capsys.readouterr().err
