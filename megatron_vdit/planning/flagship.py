"""Assemble a flagship plan: law -> N, T, lr, batch -> shape -> layout -> days (pure).

``make_plan`` returns one dict (the ``--json`` output); ``train_config`` turns it into
the trainer's flat YAML fields (``training/config.py`` names).
"""
from __future__ import annotations

import dataclasses
import math

from ..models import accounting
from ..parallel.memory import GIB, RESERVE_GIB
from . import layouts, tradeoff
from .gpus import GpuSpec
from .step_time import StepInputs
from .video import LatentShape


@dataclasses.dataclass(frozen=True)
class Cluster:
    num_gpus: int
    gpu: GpuSpec
    gpus_per_node: int
    mfu: float
    memory_margin: float


@dataclasses.dataclass(frozen=True)
class Conditioning:
    """What the model sees besides the video tokens (sets embedding params and FLOPs)."""

    latent_channels: int = 16
    text_hidden_size: int = 4096
    text_tokens: int = 128
    sampling_steps: int = 50


def full_shape(shape: dict, latent: LatentShape, cond: Conditioning) -> accounting.ModelShape:
    pt, ph, pw = latent.patch
    return accounting.ModelShape(shape["num_layers"], shape["hidden_size"],
                                 shape["num_attention_heads"], cond.latent_channels,
                                 pt * ph * pw, cond.text_hidden_size, cond.text_tokens)


def step_inputs(shape: dict, latent: LatentShape, cond: Conditioning, cluster: Cluster,
                batch_target: float) -> StepInputs:
    model = full_shape(shape, latent, cond)
    n, d = latent.tokens, shape["hidden_size"]
    return StepInputs(
        params_total=accounting.params_total(model), num_layers=shape["num_layers"],
        hidden_size=d, tokens_per_sample=n,
        flops_per_sample=accounting.model_flops_per_sample(model, n, cond.text_tokens),
        attention_flops_per_sample=3.0 * shape["num_layers"] * 4 * n * n * d,
        global_batch=max(1, round(batch_target)), num_gpus=cluster.num_gpus, gpu=cluster.gpu,
        gpus_per_node=cluster.gpus_per_node, mfu=cluster.mfu,
        params_replicated=accounting.embedding_params(model))


def choose_layout(shape, latent, cond, cluster, batch_samples, train_samples) -> dict:
    """The fastest layout that fits, the runners-up, and why; ValueError if none fits."""
    run = step_inputs(shape, latent, cond, cluster, batch_samples)
    fits, every = layouts.search(run, shape["num_attention_heads"], batch_samples,
                                 train_samples, cluster.memory_margin)
    if not fits:
        small = min(every, key=lambda x: x.memory.total) if every else None
        need = (f"the smallest layout needs {small.memory_gib:.1f} GiB per GPU "
                f"({small.label()})" if small else "no layout satisfies the constraints")
        raise ValueError(f"--gpus {cluster.num_gpus} --gpu {cluster.gpu.name} "
                         f"({cluster.gpu.memory_gib:g} GiB, margin {cluster.memory_margin:.0%}"
                         f"): no layout fits a {shape['num_layers']}x{shape['hidden_size']} "
                         f"model; {need}; use more GPUs or a larger GPU")
    best = fits[0]
    return {"best": best, "top": fits[:5],
            "why": layouts.explain(best, fits, every, cluster.gpu.memory_gib, train_samples)}


def layout_json(best: layouts.Layout, shape: dict) -> dict:
    per_virtual = shape["num_layers"] // (best.pp * best.vpp) if best.vpp > 1 else None
    return {"tp": best.tp, "pp": best.pp, "vpp": best.vpp, "cp": best.cp,
            "cp_comm_type": best.cp_comm_type,
            "ulysses_size": best.ulysses if best.cp_comm_type == "a2a+p2p" else None,
            "dp": best.dp, "zero_stage": best.zero_stage,
            "micro_batch_size": best.micro_batch_size,
            "num_microbatches": best.num_microbatches, "recompute": best.recompute,
            "sequence_parallel": best.tp > 1,
            "num_layers_per_virtual_pipeline_stage": per_virtual,
            "step_time_s": best.times["total"],
            "step_time_breakdown_s": {k: v for k, v in best.times.items() if k != "total"}}


def trainer_flags(layout: dict, batch_samples: int) -> str:
    """The training CLI flags (Megatron-LM names) of the layout."""
    out = ["--bf16", f"--tensor-model-parallel-size {layout['tp']}",
           f"--pipeline-model-parallel-size {layout['pp']}",
           f"--context-parallel-size {layout['cp']}"]
    if layout["sequence_parallel"]:
        out.append("--sequence-parallel")
    if layout["num_layers_per_virtual_pipeline_stage"]:
        out.append("--num-layers-per-virtual-pipeline-stage "
                   f"{layout['num_layers_per_virtual_pipeline_stage']}")
    if layout["cp_comm_type"]:
        out.append(f"--cp-comm-type {layout['cp_comm_type']}")
    if layout["ulysses_size"]:
        out.append(f"--ulysses-size {layout['ulysses_size']}")
    out += [f"--zero-stage {layout['zero_stage']}",
            f"--micro-batch-size {layout['micro_batch_size']}",
            f"--global-batch-size {batch_samples}"]
    if layout["recompute"]:
        out.append(f"--recompute-granularity {layout['recompute']}")
    return " ".join(out)


def add_layout(plan: dict, shape: dict, latent, cond, cluster) -> dict:
    """Layout, batch rounded to it, steps, memory and wall-clock into ``plan``."""
    chosen = choose_layout(shape, latent, cond, cluster, plan["batch_samples_law"],
                           plan["train_samples"])
    best = chosen["best"]
    layout = layout_json(best, shape)
    batch = best.global_batch
    steps = max(1, round(plan["train_tokens"] / (batch * latent.tokens)))
    plan.update(batch_samples=batch, batch_tokens=batch * latent.tokens, train_steps=steps,
                layout=layout, memory_per_gpu_bytes=int(best.memory.total + RESERVE_GIB * GIB),
                est_days=best.train_days, gpu_hours=best.train_days * 24 * cluster.num_gpus,
                layout_why=chosen["why"],
                layouts_ranked=[{"layout": x.label(), "est_days": x.train_days,
                                 "memory_gib": x.memory_gib, "step_time_s": x.times["total"]}
                                for x in chosen["top"]])
    plan["parallel_layout"] = {
        "flags": trainer_flags(layout, batch), "data_parallel_size": best.dp,
        "memory_gib_per_gpu": round(best.memory_gib, 1),
        "model_states_gib": round(best.memory.model_states / GIB, 1),
        "activations_gib": round(best.memory.activations / GIB, 1)}
    return plan


def make_plan(base: dict, law: dict, latent: LatentShape, cond: Conditioning,
              cluster: Cluster | None, max_params: float | None) -> dict:
    """``base``: ``scaling_laws.planner.plan``'s result for this budget and law."""
    shape = accounting.shape_for_params(base["params_nonembed"])
    cost = tradeoff.Costing(law, base["budget_flops"], latent.tokens,
                            lambda s: full_shape(s, latent, cond), cond.sampling_steps)
    plan = {**base, **{k: shape[k] for k in ("num_layers", "hidden_size", "num_attention_heads")},
            "model_shape": shape,
            "latent_shape": [latent.frames, latent.height, latent.width],
            "patch_size": list(latent.patch), "tokens_per_sample": latent.tokens,
            "predicted_val_loss": base.get("loss"),
            "predicted_val_loss_ci95": base.get("loss_ci95"),
            "batch_samples_law": base["batch_tokens"] / latent.tokens,
            "inference_flops_per_video": cost.point(shape["params_nonembed"])[
                "inference_flops_per_video"],
            "tradeoff": tradeoff.tradeoff_table(cost, base["n_opt_params"], max_params),
            "conventional": tradeoff.conventional(cost, law, base["n_opt_params"]),
            "layout": None, "memory_per_gpu_bytes": None, "est_days": None}
    if cluster is not None:
        add_layout(plan, shape, latent, cond, cluster)
    else:
        plan["train_steps"] = max(1, math.ceil(plan["train_tokens"] / plan["batch_tokens"]))
    return plan
