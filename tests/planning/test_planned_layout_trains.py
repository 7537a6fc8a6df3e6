"""A config written by `tools/predict_config.py --write-config`, scaled down to a tiny
model but kept at its parallel layout, trains two steps under torchrun on CPU (gloo)."""
import json
import math
import os
import socket
import subprocess
import sys

import yaml

from megatron_vdit.cli import predict_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# 32k-token videos of a 0.9B model on two A100s: the plan splits each sample over CP2.
PLAN = ["--budget", "1e21", "--tokens-per-sample", "32768", "--gpus", "2", "--gpu", "a100-80gb"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scaled_down(cfg: dict, run_dir: str) -> dict:
    """Tiny shape and data, the layout's keys untouched."""
    pp, per_chunk = cfg["pipeline_model_parallel_size"], cfg.get(
        "num_layers_per_virtual_pipeline_stage")
    vpp = cfg["num_layers"] // pp // per_chunk if per_chunk else 1
    dp = 2 // (cfg["tensor_model_parallel_size"] * pp * cfg["context_parallel_size"])
    tiny = dict(cfg, data="synthetic", num_layers=pp * vpp if per_chunk else 2 * pp,
                hidden_size=64, num_attention_heads=4, in_channels=4, latent_frames=2,
                latent_height=8, latent_width=8, text_hidden_size=32, max_text_tokens=8,
                global_batch_size=dp * cfg["micro_batch_size"] * pp, train_iters=2,
                lr_warmup_samples=0, eval_samples=2 * dp * pp, eval_interval=2,
                log_interval=1, wandb_mode="disabled", run_dir=run_dir)
    if per_chunk:
        tiny["num_layers_per_virtual_pipeline_stage"] = 1
    for key in ("save", "save_interval"):
        tiny.pop(key)
    return tiny


def test_planned_layout_trains_two_steps(tmp_path, capsys):
    written = tmp_path / "plan.yaml"
    assert predict_config.main([*PLAN, "--write-config", str(written), "--json"]) == 0
    layout = json.loads(capsys.readouterr().out)["layout"]
    model_parallel = layout["tp"] * layout["pp"] * layout["cp"]
    assert model_parallel == 2, layout  # the two ranks exercise the planned layout
    tiny = scaled_down(yaml.safe_load(written.read_text()), str(tmp_path / "run"))
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "megatron_vdit.train", "--config", str(config)]
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "run.json").read_text())["config"]
    assert record["context_parallel_size"] == layout["cp"]
    assert record["tensor_model_parallel_size"] == layout["tp"]
    assert record["zero_stage"] == layout["zero_stage"] and record["bf16"] is True
    lines = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
    losses = [r["train_loss"] for r in lines if "train_loss" in r]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
