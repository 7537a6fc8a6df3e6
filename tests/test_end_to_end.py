"""The whole loop as a user runs it, with real processes: tiny training runs (the training
CLI, synthetic data) -> run records -> `python -m scaling_laws fit` -> `plan` and
`tools/predict_config.py`.

Four runs (2 sizes x 2 learning rates) are far too few for the laws: a quadratic
(eta, B) surface needs 3 values per axis and the laws need 3 sizes. So the fit may
answer either with a law file or with its explicit verdict (exit 2, one `error:` line
saying why); a crash or a silent success without a file fails. Planning then uses the
fitted law if there is one, else the published preset, for the runs' clip length.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_vdit.models.accounting import paper_flops_per_token
from scaling_laws.records import REQUIRED

ROOT = Path(__file__).resolve().parents[1]
SIZES = [("1", "32"), ("2", "64")]  # (num_layers, hidden_size); 2 heads each
LRS = ["1e-3", "3e-3"]
TOKENS_PER_SAMPLE = 2 * 2 * 2  # latent 2 x 4 x 4, patches 1 x 2 x 2
COMMON = ["--data", "synthetic", "--num-attention-heads", "2", "--latent-frames", "2",
          "--latent-height", "4", "--latent-width", "4", "--text-hidden-size", "16",
          "--max-text-tokens", "4", "--micro-batch-size", "4", "--global-batch-size", "4",
          "--train-iters", "6", "--eval-interval", "3", "--eval-samples", "8",
          "--log-interval", "3", "--wandb-mode", "disabled"]


def _env() -> dict:
    # One intra-op thread per process: four runs share the machine's cores.
    return dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")


def _run(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                          timeout=timeout, env=_env(), cwd=ROOT)


def _train_all(runs_dir: Path) -> list[Path]:
    """Launch every (size, lr) run at once; return their run dirs once all are done."""
    procs = {}
    for layers, hidden in SIZES:
        for lr in LRS:
            run_dir = runs_dir / f"L{layers}_d{hidden}_lr{lr}"
            argv = ["-m", "megatron_vdit.train", *COMMON, "--num-layers", layers,
                    "--hidden-size", hidden, "--lr", lr, "--run-dir", str(run_dir)]
            procs[run_dir] = subprocess.Popen([sys.executable, *argv], env=_env(), cwd=ROOT,
                                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                              text=True)
    for run_dir, proc in procs.items():
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{run_dir.name} exited {proc.returncode}:\n{output[-3000:]}"
    return list(procs)


def _check_record(run_dir: Path) -> dict:
    record = json.loads((run_dir / "run.json").read_text())
    missing = set(REQUIRED) - set(record)
    assert not missing, f"{run_dir.name}: run.json lacks {sorted(missing)}"
    assert record["status"] == "completed" and math.isfinite(record["val_loss"])
    assert record["tokens_per_sample"] == TOKENS_PER_SAMPLE
    assert record["train_tokens"] == 6 * 4 * TOKENS_PER_SAMPLE and record["flops"] > 0
    assert [p["tokens"] for p in record["val_loss_curve"]] == [0, 12 * TOKENS_PER_SAMPLE,
                                                                24 * TOKENS_PER_SAMPLE]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert any("train_loss" in m for m in metrics)
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return record


def _fit(runs_dir: Path, out: Path) -> str:
    """Fit the records; return the law to plan with ('paper' when the fit declined)."""
    plots = out.parent / "plots"
    fit = _run(["-m", "scaling_laws", "fit", str(runs_dir), "--out", str(out),
                "--plots", str(plots), "--resamples", "20"])
    assert "Traceback" not in fit.stderr, fit.stderr[-3000:]
    if fit.returncode == 0:
        law = json.loads(out.read_text())
        assert {"eta_opt", "batch_opt", "n_opt", "ci95", "units"} <= set(law)
        assert any(p.suffix == ".png" for p in plots.iterdir())
        return str(out)
    assert fit.returncode == 2, (fit.returncode, fit.stderr[-3000:])
    verdict = fit.stderr.strip().splitlines()[-1]
    assert "error: " in verdict and len(verdict.split("error: ", 1)[1]) > 20, verdict
    assert not out.exists(), "a declined fit must not leave a law file"
    return "paper"


@pytest.mark.slow
def test_runs_fit_and_plan_end_to_end(tmp_path):
    runs_dir = tmp_path / "runs"
    records = [_check_record(d) for d in _train_all(runs_dir)]
    assert len({r["params_nonembed"] for r in records}) == len(SIZES)
    law = _fit(runs_dir, tmp_path / "law.json")

    plan = _run(["-m", "scaling_laws", "plan", "--budget", "1e18", "--law", law,
                 "--tokens-per-sample", str(TOKENS_PER_SAMPLE), "--json"])
    assert plan.returncode == 0, plan.stderr[-3000:]
    result = json.loads(plan.stdout)
    assert result["params_nonembed"] > 0 and result["lr"] > 0 and result["batch_tokens"] > 0
    # The plan spends the budget: tokens x per-token FLOPs of the planned size = C.
    per_token = paper_flops_per_token(result["params_nonembed"], TOKENS_PER_SAMPLE,
                                      result["hidden_size_used"])
    assert per_token * result["train_tokens"] == pytest.approx(1e18, rel=1e-3)

    predicted = _run(["tools/predict_config.py", "--budget", "1e18", "--law", law,
                      "--tokens-per-sample", str(TOKENS_PER_SAMPLE), "--gpus", "8", "--json"])
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    config = json.loads(predicted.stdout)
    assert config["params_nonembed"] == pytest.approx(result["params_nonembed"], rel=1e-6)
    assert {"num_layers", "hidden_size", "num_attention_heads"} <= set(config["model_shape"])
    assert "--context-parallel-size" in config["parallel_layout"]["flags"]
