"""What a run leaves behind: JSONL metrics, wandb, a loss plot and the run record.

The run record (`<run-dir>/run.json`) is the contract with `scaling_laws`: field names
carry their units (`*_tokens`, `*_samples`, `params_*`, `flops`), see
`build_run_record`. wandb runs offline by default (files under `<run-dir>/wandb`);
`--wandb-mode online` syncs when the user has configured a key.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

from ..models.accounting import paper_params_nonembed
from ..utils import atomic_io

RUN_RECORD = "run.json"
METRICS = "metrics.jsonl"


class MetricsLog:
    """Appends one JSON object per line; mirrors scalars to wandb when enabled."""

    def __init__(self, run_dir: Path, wandb_mode: str, project: str, config: dict,
                 enabled: bool = True):
        self.enabled = enabled
        self.path = run_dir / METRICS
        self.wandb_run = None
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if wandb_mode != "disabled":
            import wandb  # imported lazily: it is slow to import and absent from workers
            os.environ.setdefault("WANDB_SILENT", "true")
            self.wandb_run = wandb.init(project=project, dir=str(run_dir), mode=wandb_mode,
                                        config=config, name=run_dir.name, reinit=True)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({k: v for k, v in record.items() if isinstance(v, (int, float))},
                               step=record.get("iteration"))

    def finish(self, summary: dict) -> None:
        if self.wandb_run is not None:
            self.wandb_run.summary.update(
                {k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
            self.wandb_run.finish()
            self.wandb_run = None


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, after_iteration: int) -> None:
    """On resume, drop lines logged after the checkpoint so the log has no duplicates
    (a resume into a new run dir starts an empty log)."""
    path = Path(run_dir) / METRICS
    kept = [r for r in read_metrics(run_dir) if r.get("iteration", 0) <= after_iteration]
    atomic_io.write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def plot_losses(run_dir: Path) -> Path | None:
    """loss.png: train loss per iteration and validation loss vs tokens."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    train = [(r["tokens"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["tokens"], r["val_loss"]) for r in records if "val_loss" in r]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", alpha=0.6)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss (deterministic)")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(Path(run_dir).name)
    out = Path(run_dir) / "loss.png"
    fig.tight_layout()
    atomic_io.save_figure_atomic(fig, out, dpi=100)
    plt.close(fig)
    return out


def build_run_record(job, r, identity: dict, *, run_id: str, params_nonembed: int,
                     params_total: int, flops: float, model_flops: float, train_loss: float,
                     val_loss: float, val_loss_curve: list[dict], iterations: int,
                     wall_time_s: float, status: str) -> dict:
    """The record `scaling_laws` consumes; units are in the field names. `job` is the
    `JobConfig`, `r` its `Resolved`, `identity` the resolved flat config (stored as
    "config")."""
    finite = lambda x: x if x is not None and math.isfinite(x) else None  # noqa: E731
    return {
        "run_id": run_id,
        "status": status,
        "params_nonembed": params_nonembed,
        "params_total": params_total,
        "params_paper": paper_params_nonembed(r.num_layers, r.hidden_size),
        "hidden_size": r.hidden_size,
        "num_layers": r.num_layers,
        "num_attention_heads": r.num_attention_heads,
        "tokens_per_sample": r.tokens_per_sample,
        "train_tokens": iterations * r.batch_tokens,
        "train_tokens_target": r.train_tokens,
        "train_samples": iterations * r.batch_samples,
        "iterations": iterations,
        "batch_tokens": r.batch_tokens,
        "batch_samples": r.batch_samples,
        "lr": job.optimizer.lr,
        "lr_schedule": job.schedule.lr_decay_style,
        "lr_warmup_samples": job.schedule.lr_warmup_samples,
        "objective": job.model.objective,
        "train_loss": finite(train_loss),
        "val_loss": finite(val_loss),
        "val_loss_curve": val_loss_curve,
        "flops": flops,
        "flops_model": model_flops,
        "wall_time_s": wall_time_s,
        "config": identity,
    }


def write_json_atomic(path: Path, obj: dict) -> None:
    """Run records and loader states: indent 2, anything else JSON lacks as str."""
    atomic_io.write_json_atomic(path, obj, indent=2, default=str)
