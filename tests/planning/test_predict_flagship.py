"""`tools/predict_config.py` from a budget to a launchable plan: the must-show cases of
docs/planning.md, with expected values from the published laws' closed forms."""
import json
import os
import subprocess
import sys

import pytest
import yaml

from megatron_vdit.cli import predict_config
from megatron_vdit.planning.gpus import GPUS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GIB = 2 ** 30
ISSUE_KEYS = {"params_nonembed", "num_layers", "hidden_size", "num_attention_heads",
              "train_tokens", "lr", "batch_tokens", "batch_samples", "predicted_val_loss",
              "layout", "memory_per_gpu_bytes", "est_days"}
LAYOUT_KEYS = {"tp", "pp", "vpp", "cp", "cp_comm_type", "dp", "zero_stage",
               "micro_batch_size", "recompute"}


def plan(capsys, *args):
    assert predict_config.main([*args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_paper_1e22_17x256x256(capsys):
    p = plan(capsys, "--budget", "1e22", "--frames", "17", "--height", "256", "--width", "256")
    # Published allocation law N_opt = 0.8705 C^0.4294 (N in params, C in FLOPs).
    n_opt = 0.8705 * 1e22 ** 0.4294
    assert 2.3e9 < n_opt < 2.5e9
    assert p["params_nonembed"] == pytest.approx(n_opt, rel=1e-6)
    # 17 frames -> 1 + 16/4 = 5 latent frames, 256/8 = 32 latent pixels, patch 1x2x2.
    assert p["tokens_per_sample"] == 5 * 16 * 16
    d, layers = p["hidden_size"], p["num_layers"]
    assert 16 * layers * d ** 2 == pytest.approx(n_opt, rel=0.05)
    assert p["num_attention_heads"] * 128 == d or p["num_attention_heads"] * 64 == d
    # The budget is spent: C = 3/4 N (7 + n_ctx / d) T.
    assert 0.75 * n_opt * (7 + 1280 / d) * p["train_tokens"] == pytest.approx(1e22, rel=1e-4)
    n_b, t_b = n_opt / 1e9, p["train_tokens"] / 1e9
    assert p["lr"] == pytest.approx(2e-4 * t_b ** -0.0453 * n_b ** -0.1619, rel=1e-5)
    assert p["batch_tokens"] == pytest.approx(2.1797e4 * t_b ** 0.8080 * n_b ** 0.1906,
                                              rel=1e-5)
    conv = p["conventional"]
    assert conv["params_nonembed"] == pytest.approx(4.04e9, rel=1e-3)  # the paper's figure
    assert conv["params_nonembed"] > p["params_nonembed"]
    assert 0.3 < conv["inference_saving"] < 0.5  # the paper: 40.1%
    rows = p["tradeoff"]
    assert [r["fraction"] for r in rows] == [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    cost = [r["inference_flops_per_video"] for r in rows]
    assert cost == sorted(cost) and rows[-1]["inference_rel"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def fitted_law(tmp_path_factory):
    from scaling_laws import lawfile, pipeline
    from scaling_laws.fit import FitOptions
    from scaling_laws.records import prepare
    from scaling_laws.synthetic import PlantedSweep
    law = pipeline.fit_law(prepare(PlantedSweep().records(seed=2)), FitOptions(num_resamples=20))
    path = tmp_path_factory.mktemp("law") / "law.json"
    lawfile.save_law(law, path)
    return str(path)


def test_fitted_law_gives_intervals_penalties_and_the_fixed_hp_comparison(capsys, fitted_law):
    p = plan(capsys, "--budget", "1e21", "--law", fitted_law, "--gpus", "16")
    low, high = p["n_opt_params_ci95"]
    assert low < p["params_nonembed"] < high
    assert p["predicted_val_loss"] > 0 and p["predicted_val_loss_ci95"]
    half = p["tradeoff"][0]
    assert half["fraction"] == 0.5 and half["loss_penalty"] > 0
    conv = p["conventional"]
    law = json.load(open(fitted_law))["baselines"]["fixed_hp"]
    assert conv["params_nonembed"] == pytest.approx(law["k"] * 1e21 ** law["a"], rel=1e-6)
    assert "loss" in conv and "inference_saving" in conv


def test_plot_is_a_png(tmp_path, capsys):
    path = tmp_path / "plan.png"
    plan(capsys, "--budget", "1e22", "--gpus", "64", "--plot", str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert predict_config.main(["--budget", "1e22", "--plot", str(path)]) == 2
    assert "--plot" in capsys.readouterr().err


def test_max_params_picks_the_best_under_the_limit(capsys):
    p = plan(capsys, "--budget", "1e22", "--max-params", "1.5e9")
    assert p["params_nonembed"] == 1.5e9 and p["capped_by_max_params"]
    allowed = [r for r in p["tradeoff"] if r["within_max_params"]]
    assert allowed and all(r["params_nonembed"] <= 1.5e9 for r in allowed)


def _check_layout_rules(p, gpus_per_node=8):
    lay = p["layout"]
    heads, layers = p["num_attention_heads"], p["num_layers"]
    assert lay["tp"] <= gpus_per_node and heads % lay["tp"] == 0
    assert layers % (lay["pp"] * lay["vpp"]) == 0
    assert lay["tp"] * lay["pp"] * lay["cp"] * lay["dp"] == p["num_gpus"]
    assert p["batch_samples"] % (lay["dp"] * lay["micro_batch_size"]) == 0
    ulysses = {"a2a": lay["cp"], "p2p": 1, None: 1}.get(lay["cp_comm_type"],
                                                         lay["ulysses_size"])
    assert (heads // lay["tp"]) % ulysses == 0 and lay["cp"] % ulysses == 0


def test_movie_gen_scale_fits_and_uses_cp(capsys):
    p = plan(capsys, "--budget", "3e24", "--tokens-per-sample", "73728", "--max-params", "3e10",
             "--gpus", "6144", "--gpu", "h100-80gb")
    assert ISSUE_KEYS <= set(p) and LAYOUT_KEYS <= set(p["layout"])
    assert 25e9 < p["params_nonembed"] <= 3e10 and p["tokens_per_sample"] == 73728
    assert p["layout"]["cp"] > 1 and p["layout"]["cp_comm_type"] in ("p2p", "a2a", "a2a+p2p")
    assert p["memory_per_gpu_bytes"] <= GPUS["h100-80gb"].memory_gib * 0.9 * GIB
    _check_layout_rules(p)
    why = " ".join(p["layout_why"])
    assert "fits" in why and "without context parallelism" in why
    assert p["est_days"] > 0 and p["gpu_hours"] == pytest.approx(p["est_days"] * 24 * 6144)
    assert len(p["layouts_ranked"]) > 1
    days = [float(f"{r['est_days']:.3g}") for r in p["layouts_ranked"]]  # ties within 0.1%
    assert days == sorted(days)


def test_pflop_days_is_the_same_budget(capsys):
    a = plan(capsys, "--budget", "1e22")
    b = plan(capsys, "--budget", str(1e22 / 8.64e19), "--budget-unit", "pflop-days")
    assert b["params_nonembed"] == pytest.approx(a["params_nonembed"], rel=1e-9)


def test_written_config_passes_the_dry_run(tmp_path, capsys):
    path = tmp_path / "flagship.yaml"
    p = plan(capsys, "--budget", "1e24", "--frames", "129", "--height", "512", "--width", "512",
             "--gpus", "256", "--gpu", "a100-80gb", "--write-config", str(path))
    cfg = yaml.safe_load(path.read_text())
    lay = p["layout"]
    assert cfg["bf16"] is True and cfg["micro_batch_size"] == lay["micro_batch_size"]
    assert cfg["zero_stage"] == lay["zero_stage"] and cfg["context_parallel_size"] == lay["cp"]
    assert cfg.get("cp_comm_type") == lay["cp_comm_type"]
    assert cfg.get("recompute_granularity") == lay["recompute"]
    assert cfg["global_batch_size"] == p["batch_samples"]
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "megatron_vdit.train", "--config", str(path),
                          "--dry-run", "--world-size", "256"], capture_output=True, text=True,
                         cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "config ok" in out.stdout and f"DP{lay['dp']}" in out.stdout
    # The dry run's estimate is the planner's (same memory model, same layout).
    total = float(out.stdout.split(" GiB, plus a")[0].rsplit("= ", 1)[1])
    assert total + 6 == pytest.approx(p["memory_per_gpu_bytes"] / GIB, abs=0.02)
    # examples/slurm/train.sbatch reads the run dir through load_config, flags after it.
    from megatron_vdit.training.config import load_config
    job = load_config(["--config", str(path), "--data", str(tmp_path)])
    assert job.logging.run_dir == "runs/flagship" and job.data.data == str(tmp_path)
    # The same config is refused rather than overwritten.
    assert predict_config.main(["--budget", "1e22", "--write-config", str(path)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_infeasible_requests_fail_before_work(capsys):
    assert predict_config.main(["--budget", "1e10"]) == 2
    assert "smallest model" in capsys.readouterr().err
    assert predict_config.main(["--budget", "1e24", "--gpus", "4"]) == 2
    assert "no layout fits" in capsys.readouterr().err
    assert predict_config.main(["--budget", "1e22", "--gpu", "tpu-v5"]) == 2
    assert "unknown GPU type" in capsys.readouterr().err
