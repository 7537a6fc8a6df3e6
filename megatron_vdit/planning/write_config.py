"""The plan as a training config: flat YAML of ``training/config.py`` field names that
``python -m megatron_vdit.train --config PATH`` and ``examples/slurm/train.sbatch`` take.

``data`` is the planner's ``--data DIR`` (a directory made by
``tools/precompute_latents.py``); without it the file says ``data: synthetic``, a
placeholder that lets the dry run check the config and the layout, which a launch
overrides (``sbatch examples/slurm/train.sbatch PATH --data DIR``).
"""
from __future__ import annotations

import pathlib

import yaml

from ..utils.atomic_io import write_text_atomic

EVAL_SAMPLES = 64  # rounded up to a multiple of DP x PP


def train_config(plan: dict, cond, run_name: str = "flagship", data: str | None = None) -> dict:
    layout = plan["layout"] or {}
    tp, pp, dp = layout.get("tp", 1), layout.get("pp", 1), layout.get("dp", 1)
    frames, height, width = plan["latent_shape"]
    per_eval = dp * pp
    out = {
        "data": data or "synthetic",
        "num_layers": plan["num_layers"], "hidden_size": plan["hidden_size"],
        "num_attention_heads": plan["num_attention_heads"],
        "in_channels": cond.latent_channels, "latent_frames": frames,
        "latent_height": height, "latent_width": width, "patch_size": plan["patch_size"],
        "text_hidden_size": cond.text_hidden_size, "max_text_tokens": cond.text_tokens,
        "bf16": True,
        "lr": float(f"{plan['lr']:.4g}"), "lr_decay_style": "constant",
        "lr_warmup_samples": int(plan["warmup_steps"] * plan["batch_samples"]),
        "global_batch_size": int(plan["batch_samples"]), "train_iters": int(plan["train_steps"]),
        "micro_batch_size": layout.get("micro_batch_size", 1),
        "tensor_model_parallel_size": tp, "sequence_parallel": tp > 1,
        "pipeline_model_parallel_size": pp,
        "context_parallel_size": layout.get("cp", 1),
        "zero_stage": layout.get("zero_stage", 2),
        "eval_samples": per_eval * -(-EVAL_SAMPLES // per_eval),
        "run_dir": f"runs/{run_name}", "save": f"checkpoints/{run_name}",
        "save_interval": 500, "async_save": True,  # training goes on while it writes
    }
    optional = {"num_layers_per_virtual_pipeline_stage":
                layout.get("num_layers_per_virtual_pipeline_stage"),
                "cp_comm_type": layout.get("cp_comm_type"),
                "ulysses_size": layout.get("ulysses_size"),
                "recompute_granularity": layout.get("recompute")}
    out.update({k: v for k, v in optional.items() if v is not None})
    return out


def check_target(path: str, force: bool, flag: str = "--write-config") -> pathlib.Path:
    """Refuse, before any work, a path that exists (without ``--force``) or has no
    directory to go in."""
    target = pathlib.Path(path)
    if target.is_dir():
        raise ValueError(f"{flag} {target} is a directory; give the file to write")
    if target.exists() and not force:
        raise ValueError(f"{flag} {target} already exists; pass --force to overwrite it")
    if not target.parent.is_dir():
        raise ValueError(f"{flag} {target}: directory {target.parent} does not exist")
    return target


def write_config(plan: dict, cond, target: pathlib.Path, data: str | None = None) -> None:
    fields = train_config(plan, cond, run_name=target.stem, data=data)
    head = (f"# Written by tools/predict_config.py for C = {plan['budget_flops']:.3g} FLOPs "
            f"(law: {plan['law']}).\n# Layout: {plan['parallel_layout']['flags']}\n"
            if plan.get("parallel_layout") else
            f"# Written by tools/predict_config.py for C = {plan['budget_flops']:.3g} FLOPs "
            f"(law: {plan['law']}); no --gpus, so no layout.\n")
    if data is None:
        head += ("# data: synthetic is a placeholder: launch with --data DIR "
                 "(tools/precompute_latents.py).\n")
    write_text_atomic(target, head + yaml.safe_dump(fields, sort_keys=False))
